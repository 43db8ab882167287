"""Every error notebookops raises, in one tree.

::

    NotebookOpsError
    ├── ConfigurationError            missing token, bad base URL, invalid policy or input
    │   ├── BackendClosed             the backend was used after aclose()
    │   └── IdempotencyConflict       one idempotency key, two different requests
    ├── UnsupportedOperation          the backend lacks the capability (e.g. CANCEL)
    ├── TransportError                the request did not produce an HTTP response
    │   ├── ConnectError              could not connect: the request provably never left
    │   ├── RequestTimeout            no complete response in time
    │   └── ConnectionLost            the connection broke after the request was sent
    ├── APIError                      the vendor answered with an error status
    │   ├── BadRequest          400
    │   ├── AuthenticationError 401
    │   ├── PermissionDenied    403
    │   ├── NotFound            404
    │   ├── Conflict            409
    │   ├── RateLimited         429   (.retry_after)
    │   └── ServerError         5xx
    ├── ResponseDecodeError           the vendor sent something we cannot read
    ├── StartOutcomeUnknown           a run-starting request failed ambiguously and the
    │                                 vendor gave no way to tell whether a run began
    └── RunError                      the run itself ended badly (.run is the last Run seen)
        ├── RunFailed
        ├── RunCancelled
        └── RunTimeout                (.cancelled says whether the remote run was cancelled)

No message, repr or attribute of these errors ever holds an API token; URLs are shown
with their query values redacted (see :func:`notebookops._redact.redact_url`).

Every error raised after a run was started carries that run's :class:`RunHandle` in
``.handle``, so a caller can always resume waiting or cancel it: no started run is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Run, RunHandle

__all__ = [
    "APIError",
    "AuthenticationError",
    "BackendClosed",
    "BadRequest",
    "ConfigurationError",
    "Conflict",
    "ConnectError",
    "ConnectionLost",
    "IdempotencyConflict",
    "NotFound",
    "NotebookOpsError",
    "PermissionDenied",
    "RateLimited",
    "RequestTimeout",
    "ResponseDecodeError",
    "RunCancelled",
    "RunError",
    "RunFailed",
    "RunTimeout",
    "ServerError",
    "StartOutcomeUnknown",
    "TransportError",
    "UnsupportedOperation",
]


class NotebookOpsError(Exception):
    """Base class of every error raised by notebookops.

    ``handle`` is set on any error that escapes after a run was started, so the run is never
    lost: save it, then ``wait_for_run(backend, err.handle)`` or ``backend.cancel_run(...)``.
    """

    handle: RunHandle | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        text = self.message
        if self.handle is not None and self.handle.run_id not in text:
            text = f"{text} [run {self.handle.backend}:{self.handle.run_id}]"
        return text

    def with_handle(self, handle: RunHandle) -> NotebookOpsError:
        """Attach the handle of the run this error concerns (first one wins) and return self."""
        if self.handle is None:
            self.handle = handle
        return self


class ConfigurationError(NotebookOpsError):
    """The library was set up or called wrongly: missing credentials, bad URL, bad input."""


class BackendClosed(ConfigurationError):
    """A backend (or its transport) was used after ``aclose()``."""


class IdempotencyConflict(ConfigurationError):
    """An idempotency key was used again with a different request (another notebook, inputs,
    blocks, options or backend). ``key`` is the key; the first request's run stands."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class UnsupportedOperation(NotebookOpsError):
    """The backend does not have the capability the call needs."""

    def __init__(self, message: str, *, capability: str | None = None) -> None:
        super().__init__(message)
        self.capability = capability


class TransportError(NotebookOpsError):
    """No HTTP response was obtained.

    ``request_sent`` tells whether the request may have reached the server: False only when it
    provably did not (a refused connection, a DNS failure), which makes a retry always safe.
    """

    def __init__(
        self,
        message: str,
        *,
        vendor: str = "",
        method: str = "",
        url: str = "",
        request_sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.vendor = vendor
        self.method = method
        self.url = url
        self.request_sent = request_sent
        #: False for failures a retry cannot fix (e.g. an untrusted TLS certificate).
        self.retryable = True
        #: For event streams: True when the stream was cut in the middle of an event.
        self.partial_event = False


class ConnectError(TransportError):
    """The connection could not be made; the request never left this machine."""


class RequestTimeout(TransportError):
    """No complete response arrived within the per-request timeout."""


class ConnectionLost(TransportError):
    """The connection broke after the request was (or may have been) sent."""


class APIError(NotebookOpsError):
    """The vendor answered with an error status.

    Attributes are safe to log: ``url`` has its query values redacted and ``body`` is trimmed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        vendor: str,
        method: str,
        url: str,
        request_id: str | None = None,
        body: str = "",
        data: object = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.vendor = vendor
        self.method = method
        self.url = url
        self.request_id = request_id
        self.body = body
        #: The decoded JSON error body when there was one (vendor-specific extras live here).
        self.data = data


class BadRequest(APIError):
    """HTTP 400: the vendor rejected the request as malformed or invalid."""


class AuthenticationError(APIError):
    """HTTP 401: the token is missing, invalid or expired."""


class PermissionDenied(APIError):
    """HTTP 403: the token is valid but may not do this."""


class NotFound(APIError):
    """HTTP 404: the resource does not exist or is not visible to this token."""


class Conflict(APIError):
    """HTTP 409: the request conflicts with the resource's current state."""


class RateLimited(APIError):
    """HTTP 429. ``retry_after`` is the delay in seconds the vendor asked for, if it said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(APIError):
    """HTTP 5xx: the vendor failed."""


class ResponseDecodeError(NotebookOpsError):
    """The vendor answered, but not with anything we can read. ``body`` holds it, trimmed."""

    def __init__(
        self, message: str, *, vendor: str = "", url: str = "", status: int = 0, body: str = ""
    ) -> None:
        super().__init__(message)
        self.vendor = vendor
        self.url = url
        self.status = status
        self.body = body


class StartOutcomeUnknown(NotebookOpsError):
    """Starting a run failed in a way that leaves open whether the vendor started it.

    notebookops never retries such a request blindly (that could run the notebook twice).
    ``evidence`` says what was tried to settle the question; check the vendor's UI before
    starting the run again.
    """

    def __init__(self, message: str, *, notebook: str, evidence: str = "") -> None:
        super().__init__(message)
        self.notebook = notebook
        self.evidence = evidence


class RunError(NotebookOpsError):
    """The run ended badly. ``run`` is the last state seen (``None`` only if none was read)."""

    def __init__(self, message: str, *, run: Run | None) -> None:
        super().__init__(message)
        self.run = run
        if run is not None:
            self.handle = run.handle


class RunFailed(RunError):
    """The run reached FAILED. ``run.error`` holds the vendor's reason where it gave one."""


class RunCancelled(RunError):
    """The run reached CANCELLED (by someone else, or by us on request)."""


class RunTimeout(RunError):
    """The deadline passed before the run finished.

    ``cancelled`` is True when notebookops cancelled the remote run; otherwise the run was left
    running (``detach`` requested, or the backend cannot cancel) and ``reason`` says why.
    ``handle`` is None when the deadline came while the start still waited for its turn (the
    rate limiter, a free connection) and the vendor had taken nothing: no run was started.
    """

    def __init__(
        self,
        message: str,
        *,
        run: Run | None,
        cancelled: bool,
        reason: str = "",
        handle: RunHandle | None = None,
    ) -> None:
        super().__init__(message, run=run)
        self.cancelled = cancelled
        self.reason = reason
        if handle is not None and self.handle is None:
            self.handle = handle
