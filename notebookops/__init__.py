"""notebookops: run notebooks on hosted notebook platforms and wait for them, behind one protocol.

Quick start::

    from notebookops import run_and_wait
    from notebookops.backends.deepnote import DeepnoteBackend

    async with DeepnoteBackend() as backend:          # DEEPNOTE_API_KEY from the environment
        run = await run_and_wait(backend, "notebook-id", inputs={"day": "2026-11-22"})
        print(run.state, run.outputs)

Vendor adapters live in ``notebookops.backends.<vendor>`` and are imported on demand, so
``import notebookops`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from .backend import BaseBackend, NotebookBackend, StateTable, StreamingBackend
from .errors import (
    APIError,
    AuthenticationError,
    BackendClosed,
    BadRequest,
    ConfigurationError,
    Conflict,
    ConnectError,
    ConnectionLost,
    NotebookOpsError,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ResponseDecodeError,
    RunCancelled,
    RunError,
    RunFailed,
    RunTimeout,
    ServerError,
    StartOutcomeUnknown,
    TransportError,
    UnsupportedOperation,
)
from .models import (
    Artifact,
    Capability,
    CellOutput,
    Run,
    RunErrorInfo,
    RunHandle,
    RunProgress,
    RunRequest,
    RunState,
)
from .orchestration import (
    DEFAULT_TIMEOUT,
    RunOutcome,
    run_and_wait,
    run_many,
    start_run,
    wait_for_run,
    watch,
)
from .policies import PollPolicy, RetryPolicy
from .ratelimit import RateLimiter

__all__ = [
    "DEFAULT_TIMEOUT",
    "APIError",
    "Artifact",
    "AuthenticationError",
    "BackendClosed",
    "BadRequest",
    "BaseBackend",
    "Capability",
    "CellOutput",
    "ConfigurationError",
    "Conflict",
    "ConnectError",
    "ConnectionLost",
    "NotFound",
    "NotebookBackend",
    "NotebookOpsError",
    "PermissionDenied",
    "PollPolicy",
    "RateLimited",
    "RateLimiter",
    "RequestTimeout",
    "ResponseDecodeError",
    "RetryPolicy",
    "Run",
    "RunCancelled",
    "RunError",
    "RunErrorInfo",
    "RunFailed",
    "RunHandle",
    "RunOutcome",
    "RunProgress",
    "RunRequest",
    "RunState",
    "RunTimeout",
    "ServerError",
    "StartOutcomeUnknown",
    "StateTable",
    "StreamingBackend",
    "TransportError",
    "UnsupportedOperation",
    "__version__",
    "run_and_wait",
    "run_many",
    "start_run",
    "wait_for_run",
    "watch",
]
