"""PostHog notebooks: ``PostHogBackend`` runs them, ``PostHogClient`` is every endpoint.

::

    from notebookops import run_and_wait
    from notebookops.backends.posthog import PostHogBackend

    async with PostHogBackend() as backend:   # POSTHOG_PERSONAL_API_KEY, POSTHOG_PROJECT_ID
        run = await run_and_wait(backend, "aB3dE5fG", inputs={"country": "NZ"})

Which PostHog server versions have which run modes, and what each needs, is in
:mod:`notebookops.backends.posthog.backend`; errors specific to PostHog subclass the core tree.
"""

from __future__ import annotations

from ._errors import (
    CollabConflict,
    CollabStale,
    KernelRunNotFound,
    KernelStreamError,
    MissingScope,
    ModeUnavailable,
    NoRunnableCells,
    ScopedKeyNotAllowed,
    VersionConflict,
)
from ._kernel_runs import STREAM_OUTPUT_MAX_BYTES
from ._requests import (
    ALLOWED_CPU_CORES,
    ALLOWED_IDLE_TIMEOUTS,
    ALLOWED_MEMORY_GB,
    MAX_CELL_TIMEOUT,
    MAX_RUN_VARIABLES,
)
from ._wire import (
    ActivityEntry,
    ActivityPage,
    CellRunEnvelope,
    CellRunStarted,
    CellRunStatus,
    CollabEvent,
    CollabPresence,
    CollabStep,
    CollabStreamError,
    CollabUnknownEvent,
    CollabUpdate,
    DataFramePage,
    ExecutionResult,
    HogQLResult,
    KernelConfig,
    KernelOutput,
    KernelRuntime,
    KernelStatus,
    KernelStreamEvent,
    MediaItem,
    Notebook,
    NotebookPage,
    NotebookRunCell,
    NotebookRunStarted,
    NotebookRunStatus,
    NotebookSummary,
    RecordingComment,
    RunInterruptResult,
    SharePassword,
    SharePasswordCreated,
    SharingConfiguration,
    UserBasic,
    VariableInfo,
)
from .backend import PostHogBackend, PostHogRunOptions, RunMode
from .client import DEFAULT_BASE_URL, PROJECT_ENV, TOKEN_ENV, URL_ENV, PostHogClient

__all__ = [
    "ALLOWED_CPU_CORES",
    "ALLOWED_IDLE_TIMEOUTS",
    "ALLOWED_MEMORY_GB",
    "DEFAULT_BASE_URL",
    "MAX_CELL_TIMEOUT",
    "MAX_RUN_VARIABLES",
    "PROJECT_ENV",
    "STREAM_OUTPUT_MAX_BYTES",
    "TOKEN_ENV",
    "URL_ENV",
    "ActivityEntry",
    "ActivityPage",
    "CellRunEnvelope",
    "CellRunStarted",
    "CellRunStatus",
    "CollabConflict",
    "CollabEvent",
    "CollabPresence",
    "CollabStale",
    "CollabStep",
    "CollabStreamError",
    "CollabUnknownEvent",
    "CollabUpdate",
    "DataFramePage",
    "ExecutionResult",
    "HogQLResult",
    "KernelConfig",
    "KernelOutput",
    "KernelRunNotFound",
    "KernelRuntime",
    "KernelStatus",
    "KernelStreamError",
    "KernelStreamEvent",
    "MediaItem",
    "MissingScope",
    "ModeUnavailable",
    "NoRunnableCells",
    "Notebook",
    "NotebookPage",
    "NotebookRunCell",
    "NotebookRunStarted",
    "NotebookRunStatus",
    "NotebookSummary",
    "PostHogBackend",
    "PostHogClient",
    "PostHogRunOptions",
    "RecordingComment",
    "RunInterruptResult",
    "RunMode",
    "ScopedKeyNotAllowed",
    "SharePassword",
    "SharePasswordCreated",
    "SharingConfiguration",
    "UserBasic",
    "VersionConflict",
    "VariableInfo",
]
