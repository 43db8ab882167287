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

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
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

#: Where each public name is defined. They are imported on first use, so that
#: ``import notebookops`` (and so the command line's start-up, where a Ctrl-C must end
#: quietly) imports nothing heavy until a name is asked for.
_EXPORTS: dict[str, str] = {
    "NotebookBackend": ".backend",
    "APIError": ".errors",
    "AuthenticationError": ".errors",
    "BackendClosed": ".errors",
    "BadRequest": ".errors",
    "ConfigurationError": ".errors",
    "Conflict": ".errors",
    "ConnectError": ".errors",
    "ConnectionLost": ".errors",
    "IdempotencyConflict": ".errors",
    "NotebookOpsError": ".errors",
    "NotFound": ".errors",
    "PermissionDenied": ".errors",
    "RateLimited": ".errors",
    "RequestTimeout": ".errors",
    "ResponseDecodeError": ".errors",
    "RunCancelled": ".errors",
    "RunError": ".errors",
    "RunFailed": ".errors",
    "RunTimeout": ".errors",
    "ServerError": ".errors",
    "StartOutcomeUnknown": ".errors",
    "TransportError": ".errors",
    "UnsupportedOperation": ".errors",
    "Artifact": ".models",
    "Capability": ".models",
    "CellOutput": ".models",
    "Run": ".models",
    "RunErrorInfo": ".models",
    "RunHandle": ".models",
    "RunProgress": ".models",
    "RunRequest": ".models",
    "RunState": ".models",
    "DEFAULT_CANCEL_TIMEOUT": ".orchestration",
    "DEFAULT_TIMEOUT": ".orchestration",
    "RunOutcome": ".orchestration",
    "run_and_wait": ".orchestration",
    "run_many": ".orchestration",
    "start_run": ".orchestration",
    "wait_for_run": ".orchestration",
    "watch": ".orchestration",
    "PollPolicy": ".policies",
    "RetryPolicy": ".policies",
    "RateLimiter": ".ratelimit",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # found here directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
