"""PostHog-specific errors: each one a subclass of the core tree, so generic handlers still work.

::

    APIError
    ├── CollabStale (410)          collab/save: the stream no longer holds the needed steps
    ├── Conflict (409)
    │   ├── VersionConflict        content PATCH: "Someone else edited the Notebook"
    │   └── CollabConflict         collab/save: the client is behind (.steps, .client_ids, ...)
    ├── PermissionDenied (403)
    │   ├── ScopedKeyNotAllowed    kernel / HogQL / ...: scoped personal API keys refused
    │   └── MissingScope           the key lacks a scope (.scope)
    ├── NotFound (404)
    │   └── KernelRunNotFound      a kernel-mode handle unknown to this backend instance
    └── ServerError
        └── KernelStreamError      an ``event: error`` frame inside a 200 execute stream
    UnsupportedOperation
    └── ModeUnavailable            the run mode asked for does not exist on this server
    NoRunnableCells                the notebook has no cell the chosen mode can run
"""

from __future__ import annotations

from typing import Any

from ...errors import (
    APIError,
    Conflict,
    NotebookOpsError,
    NotFound,
    PermissionDenied,
    ServerError,
    UnsupportedOperation,
)

__all__ = [
    "CollabConflict",
    "CollabStale",
    "KernelRunNotFound",
    "KernelStreamError",
    "MissingScope",
    "ModeUnavailable",
    "NoRunnableCells",
    "ScopedKeyNotAllowed",
    "VersionConflict",
    "answer_of",
]


def _dict(data: object) -> dict[str, Any]:
    return data if isinstance(data, dict) else {}


class VersionConflict(Conflict):
    """A content PATCH was refused because the stored ``version`` moved on.

    Read the notebook again and re-apply the change;
    :meth:`PostHogBackend.update_notebook_content` does exactly that.
    """


class CollabConflict(Conflict):
    """``collab/save`` (409): the client is behind the collaboration stream.

    ``steps`` and ``client_ids`` are the ProseMirror steps the client missed (rich notebooks),
    ``updates`` the missed text updates (markdown notebooks), and ``version`` the server's
    current collab version: rebase onto them and save again from ``version``.
    """

    @property
    def steps(self) -> list[Any]:
        value = _dict(self.data).get("steps")
        return list(value) if isinstance(value, list) else []

    @property
    def client_ids(self) -> list[Any]:
        value = _dict(self.data).get("client_ids")
        return list(value) if isinstance(value, list) else []

    @property
    def updates(self) -> list[Any]:
        value = _dict(self.data).get("updates")
        return list(value) if isinstance(value, list) else []

    @property
    def version(self) -> int | None:
        value = _dict(self.data).get("version")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class CollabStale(APIError):
    """``collab/save`` (410, ``conflict_stale``): the server trimmed or lost the steps this
    client would need to rebase. GET the notebook again and continue from its version."""


class ScopedKeyNotAllowed(PermissionDenied):
    """PostHog refused a personal API key on an endpoint that declares no API scope.

    The kernel, HogQL-execute, recording-comments and project-wide activity endpoints declare
    no scope. Older servers refuse scoped personal API keys there (even ``*``) and accept
    keys created without scopes; newer servers refuse **every** personal API key there. On a
    newer server use server-side runs (``mode="server"``: scopes ``notebook:write`` and
    ``query:read``).
    """


class MissingScope(PermissionDenied):
    """The personal API key lacks the scope this endpoint requires (``scope``)."""

    @property
    def scope(self) -> str | None:
        detail = _dict(self.data).get("detail")
        if isinstance(detail, str) and "'" in detail:
            parts = detail.split("'")
            if len(parts) >= 3 and parts[1]:
                return parts[1]
        return None


class KernelRunNotFound(NotFound):
    """A kernel-mode run handle this backend instance did not start.

    Kernel-mode runs are driven by the backend instance that started them (PostHog has no
    server-side record of them), so their handles cannot be resumed elsewhere; use
    ``mode="server"`` for runs that can.
    """


class KernelStreamError(ServerError):
    """PostHog reported an infrastructure failure (sandbox provisioning, a crashed kernel) as
    an ``event: error`` frame inside a 200 ``kernel/execute/stream/`` response. The blocking
    endpoint reports the same failure as a 503. ``status`` is the HTTP status of the stream
    (200)."""

    @property
    def error(self) -> str:
        value = _dict(self.data).get("error")
        return value if isinstance(value, str) else self.message


def answer_of(error: APIError) -> str:
    """The status and the server's own words, e.g. ``404 Not found.``."""
    detail = _dict(error.data).get("detail")
    words = detail if isinstance(detail, str) and detail else error.message
    return f"{error.status} {words}"


class ModeUnavailable(UnsupportedOperation):
    """The run mode asked for does not exist on this PostHog server: ``mode`` names it and
    ``answer`` says what the server answered (e.g. ``404 Not Found.`` for ``runs/`` where the
    ``revamped-py-notebooks`` flag is off, or on a server that predates it)."""

    def __init__(self, message: str, *, mode: str, answer: str) -> None:
        super().__init__(message)
        self.mode = mode
        self.answer = answer


class NoRunnableCells(NotebookOpsError):
    """The notebook has no cell the chosen mode can run, so nothing was started.

    ``looked_for`` names the formats and node types searched (rich-text ``ph-python`` /
    ``ph-hogql-sql`` nodes, markdown-format ``<PythonV2>`` / ``<SQLV2>`` tags).
    """

    def __init__(self, message: str, *, notebook: str, looked_for: str) -> None:
        super().__init__(message)
        self.notebook = notebook
        self.looked_for = looked_for
