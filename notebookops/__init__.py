"""notebookops: run notebooks on hosted notebook platforms and wait for them, behind one protocol.

Quick start::

    from notebookops import run_and_wait
    from notebookops.backends.deepnote import DeepnoteBackend

    async with DeepnoteBackend() as backend:          # DEEPNOTE_API_KEY from the environment
        run = await run_and_wait(backend, "notebook-id", inputs={"day": "2026-11-22"})
        print(run.state, run.outputs)

Vendor adapters live in ``notebookops.backends.<vendor>`` and are imported on demand, so
``import notebookops`` stays cheap. What writing an adapter takes (``BaseBackend``,
``StateTable``, the ``ApiClient`` over a transport) is in :mod:`notebookops.backend`; run
stores are in :mod:`notebookops.store`; fakes for tests in :mod:`notebookops.testing`.
"""

from __future__ import annotations

import logging

from ._version import __version__
from .backend import NotebookBackend
from .errors import (
    APIError,
    AuthenticationError,
    BackendClosed,
    BadRequest,
    ConfigurationError,
    Conflict,
    ConnectError,
    ConnectionLost,
    IdempotencyConflict,
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
    DEFAULT_CANCEL_TIMEOUT,
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
    "DEFAULT_CANCEL_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "APIError",
    "Artifact",
    "AuthenticationError",
    "BackendClosed",
    "BadRequest",
    "Capability",
    "CellOutput",
    "ConfigurationError",
    "Conflict",
    "ConnectError",
    "ConnectionLost",
    "IdempotencyConflict",
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
    "TransportError",
    "UnsupportedOperation",
    "__version__",
    "run_and_wait",
    "run_many",
    "start_run",
    "wait_for_run",
    "watch",
]

# A library logs; the application decides where that goes. Without this, Python's last-resort
# handler would print the library's warnings to stderr in an application that configured no
# logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
