"""Pure request builders and response decoders for PostHog (no I/O, no event loop).

URL paths, query parameters and bodies (checked before anything is sent), the error-body hooks
of the :class:`~notebookops._http.VendorProfile`, and SSE frame decoding. Cells and what
running them produces are in ``_cells``.
"""

from __future__ import annotations

import json
import keyword
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from ..._api_errors import VendorProfile, default_error_message, rebuild_error
from ..._convert import format_datetime
from ..._redact import trim
from ..._sse import SSEEvent
from ..._urls import path_segment
from ..._validate import count
from ...errors import APIError, ConfigurationError, PermissionDenied, ResponseDecodeError
from ._errors import (
    CollabConflict,
    CollabStale,
    KernelStreamError,
    MissingScope,
    ScopedKeyNotAllowed,
    VersionConflict,
)
from ._wire import (
    CollabEvent,
    CollabPresence,
    CollabStep,
    CollabStreamError,
    CollabUnknownEvent,
    CollabUpdate,
    ExecutionResult,
    KernelOutput,
    KernelStreamEvent,
    decode,
)

__all__ = [
    "ALLOWED_CPU_CORES",
    "ALLOWED_IDLE_TIMEOUTS",
    "ALLOWED_MEMORY_GB",
    "MAX_CELL_TIMEOUT",
    "MAX_RUN_VARIABLES",
    "PROFILE",
    "activity_params",
    "collab_save_body",
    "contains_param",
    "decode_collab_event",
    "decode_kernel_event",
    "error_message",
    "execute_body",
    "kernel_config_body",
    "list_params",
    "markdown_save_body",
    "next_path",
    "notebook_path",
    "notebooks_path",
    "presence_body",
    "run_variables_body",
    "refine_error",
    "retry_after_from_body",
    "sharing_path",
    "update_body",
    "validate_cell_timeout",
    "web_url",
]

VENDOR: Final = "posthog"

# --------------------------------------------------------------------------- paths


def notebooks_path(project_id: str, *parts: str) -> str:
    """``/api/projects/{project_id}/notebooks/`` plus literal ``parts``, slash-terminated."""
    base = f"/api/projects/{path_segment(project_id, what='project id')}/notebooks/"
    return base + "".join(f"{part}/" for part in parts)


def notebook_path(project_id: str, short_id: str, *parts: str) -> str:
    """A notebook detail route (by short_id) plus literal ``parts``, slash-terminated.

    Callers pass dynamic segments through :func:`path_segment` themselves.
    """
    return notebooks_path(project_id, path_segment(short_id, what="notebook short_id"), *parts)


def sharing_path(project_id: str, notebook_id: str, *parts: str) -> str:
    """``/notebooks/{notebook_id}/sharing/...``: PostHog names this parameter ``notebook_id``."""
    return notebooks_path(
        project_id, path_segment(notebook_id, what="notebook id"), "sharing", *parts
    )


def web_url(host: str, project_id: str, short_id: str) -> str:
    """The page a person opens for a notebook."""
    return (
        f"{host}/project/{path_segment(project_id, what='project id')}/notebooks/"
        f"{path_segment(short_id, what='notebook short_id')}"
    )


def next_path(next_url: str, base_url: str) -> str:
    """The path and query of a pagination ``next`` URL, relative to ``base_url``.

    PostHog builds ``next`` from the request's host, which behind proxies can be ``http://``
    or an internal name; only its path and query are trusted, and a base-URL path prefix
    (self-hosted under a sub-path) is not doubled.
    """
    parts = urlsplit(next_url)
    path = parts.path or "/"
    prefix = urlsplit(base_url).path.rstrip("/")
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        path = path[len(prefix) :] or "/"
    if not path.startswith("/"):
        path = "/" + path
    return path + (f"?{parts.query}" if parts.query else "")


# --------------------------------------------------------------------------- query params


def _when(value: str | datetime | None, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigurationError(f"{what} must be a datetime or a non-empty string, got {value!r}")


def _count(value: int | None, what: str, minimum: int, maximum: int | None = None) -> int | None:
    if value is None:
        return None
    return count(what, value, minimum=minimum, maximum=maximum)


def contains_param(contains: str | Mapping[str, str | bool] | None) -> str | None:
    """PostHog's ``contains`` filter: ``target:match`` pairs (``{"python": True}`` means
    "has a ph-python node", ``False`` "has none", a string matches the node's ``attrs.id``)."""
    if contains is None:
        return None
    if isinstance(contains, str):
        if not contains.strip():
            raise ConfigurationError("contains must not be empty")
        return contains.strip()
    pairs = []
    for target, match in contains.items():
        if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", target):
            raise ConfigurationError(f"contains targets must be simple names, got {target!r}")
        text = ("true" if match else "false") if isinstance(match, bool) else str(match)
        if not text or re.search(r"[\s,:]", text):
            raise ConfigurationError(f"contains match for {target!r} is not valid: {match!r}")
        pairs.append(f"{target}:{text}")
    if not pairs:
        raise ConfigurationError("contains must not be empty")
    return ",".join(pairs)


def list_params(
    *,
    contains: str | Mapping[str, str | bool] | None = None,
    created_by: str | None = None,
    last_modified_by: str | None = None,
    date_from: str | datetime | None = None,
    date_to: str | datetime | None = None,
    user: bool = False,
    search: str | None = None,
    order: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> dict[str, str | int]:
    """Query parameters of ``GET notebooks/``. ``date_from``/``date_to`` filter on
    ``last_modified_at`` (PostHog's behaviour, whatever its schema says); ``user=True`` lists
    the caller's own notebooks."""
    params: dict[str, str | int] = {}
    values: dict[str, str | int | None] = {
        "contains": contains_param(contains),
        "created_by": created_by,
        "last_modified_by": last_modified_by,
        "date_from": _when(date_from, "date_from"),
        "date_to": _when(date_to, "date_to"),
        "user": "true" if user else None,
        "search": search,
        "order": order,
        "limit": _count(limit, "limit", 1),
        "offset": _count(offset, "offset", 0),
    }
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, str) and not value:
            raise ConfigurationError(f"{key} must not be empty")
        params[key] = value
    return params


def activity_params(*, limit: int | None = None, page: int | None = None) -> dict[str, int]:
    """``?limit=&page=`` of the (page-based) activity endpoints."""
    params: dict[str, int] = {}
    checked_limit = _count(limit, "limit", 1)
    checked_page = _count(page, "page", 1)
    if checked_limit is not None:
        params["limit"] = checked_limit
    if checked_page is not None:
        params["page"] = checked_page
    return params


# --------------------------------------------------------------------------- bodies


class _Unset:
    """Marks an argument that was not given (``None`` is a real value for some fields)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = _Unset()


def update_body(
    *,
    title: str | _Unset | None = UNSET,
    content: dict[str, Any] | _Unset | None = UNSET,
    text_content: str | _Unset | None = UNSET,
    version: int | None = None,
    deleted: bool | None = None,
) -> dict[str, Any]:
    """A notebook PATCH body. A content update must carry the version it was based on:
    PostHog treats a missing version as a conflict, so it is refused here instead."""
    body: dict[str, Any] = {}
    if not isinstance(title, _Unset):
        body["title"] = title
    if not isinstance(content, _Unset):
        if version is None:
            raise ConfigurationError(
                "a content update needs the notebook's current version (PostHog answers 409 "
                "without it); use update_notebook_content() to read and retry automatically"
            )
        body["content"] = content
    if not isinstance(text_content, _Unset):
        body["text_content"] = text_content
    if version is not None:
        if isinstance(content, _Unset):
            # PostHog writes a version sent without content straight to the row, which
            # would break every other client's next save.
            raise ConfigurationError(
                "version is only sent together with content (PostHog would store it as the "
                "notebook's version otherwise)"
            )
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigurationError(f"version must be an int, got {version!r}")
        body["version"] = version
    if deleted is not None:
        body["deleted"] = bool(deleted)
    if not body:
        raise ConfigurationError("nothing to update: pass at least one field")
    return body


def _client_id(client_id: str) -> str:
    if not isinstance(client_id, str) or not client_id or len(client_id) > 200:
        raise ConfigurationError("client_id must be a non-empty string of at most 200 characters")
    return client_id


def _version(version: int) -> int:
    return count("version", version)


def collab_save_body(
    *,
    client_id: str,
    version: int,
    steps: Sequence[Mapping[str, Any]],
    content: Mapping[str, Any],
    text_content: str = "",
    title: str | _Unset | None = UNSET,
    cursor_head: int | None = None,
) -> dict[str, Any]:
    """``collab/save/``. ``text_content`` defaults to "" exactly like PostHog (leaving it out
    clears it); ``title`` is only sent when given (leaving it out keeps the old one)."""
    candidate: object = steps
    if isinstance(candidate, str | bytes) or not all(isinstance(s, Mapping) for s in steps):
        raise ConfigurationError("steps must be a sequence of ProseMirror step objects")
    if not isinstance(content, Mapping):
        raise ConfigurationError("content must be the whole ProseMirror document (a mapping)")
    body: dict[str, Any] = {
        "client_id": _client_id(client_id),
        "version": _version(version),
        "steps": [dict(step) for step in steps],
        "content": dict(content),
        "text_content": text_content,
    }
    if not isinstance(title, _Unset):
        body["title"] = title
    if cursor_head is not None:
        body["cursor_head"] = cursor_head
    return body


def _cursor(cursor: Mapping[str, int] | None) -> dict[str, int] | None:
    if cursor is None:
        return None
    allowed = {"head", "node_index", "offset", "list_item_index"}
    clean: dict[str, int] = {}
    for key, value in cursor.items():
        if key not in allowed:
            raise ConfigurationError(f"unknown cursor field {key!r} (allowed: {sorted(allowed)})")
        clean[key] = count(f"cursor.{key}", value)
    return clean


def markdown_save_body(
    *,
    client_id: str,
    version: int,
    content: Mapping[str, Any],
    text_content: str = "",
    title: str | _Unset | None = UNSET,
    cursor: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """``collab/markdown_save/`` (markdown notebooks)."""
    if not isinstance(content, Mapping):
        raise ConfigurationError("content must be a markdown-notebook document (a mapping)")
    body: dict[str, Any] = {
        "client_id": _client_id(client_id),
        "version": _version(version),
        "content": dict(content),
        "text_content": text_content,
    }
    if not isinstance(title, _Unset):
        body["title"] = title
    clean = _cursor(cursor)
    if clean is not None:
        body["cursor"] = clean
    return body


def presence_body(*, client_id: str, version: int, cursor: Mapping[str, int]) -> dict[str, Any]:
    """``collab/presence/``: PostHog requires ``cursor`` (400 without it)."""
    if not isinstance(cursor, Mapping):
        raise ConfigurationError(
            f"cursor is required by collab/presence/ (a mapping such as {{'head': 0}}), "
            f"got {cursor!r}"
        )
    return {
        "client_id": _client_id(client_id),
        "version": _version(version),
        "cursor": _cursor(cursor),
    }


#: PostHog's bounds on an execution timeout, in seconds.
MAX_CELL_TIMEOUT: Final = 120


def validate_cell_timeout(value: float | None, what: str = "timeout") -> int | None:
    """A kernel execution timeout: whole seconds from 1 to 120.

    PostHog truncates the timeout with ``int()`` and uses it as the sandbox's limit on the
    cell's **whole run** (0.5 would become 0), so fractions are refused here.
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value != int(value)
        or not 1 <= value <= MAX_CELL_TIMEOUT
    ):
        raise ConfigurationError(
            f"{what} must be whole seconds from 1 to {MAX_CELL_TIMEOUT} (PostHog truncates "
            f"fractions and bounds the cell's whole run with it), got {value!r}"
        )
    return int(value)


def execute_body(
    code: str, *, return_variables: bool = True, timeout: float | None = None
) -> dict[str, Any]:
    """``kernel/execute/`` and ``kernel/execute/stream/``."""
    if not isinstance(code, str):
        raise ConfigurationError(f"code must be a string, got {type(code).__name__}")
    body: dict[str, Any] = {"code": code, "return_variables": bool(return_variables)}
    checked = validate_cell_timeout(timeout)
    if checked is not None:
        body["timeout"] = checked
    return body


ALLOWED_CPU_CORES: Final = (0.125, 0.25, 0.5, 1, 2, 4, 6, 8, 16, 32, 64)
ALLOWED_MEMORY_GB: Final = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
ALLOWED_IDLE_TIMEOUTS: Final = (600, 1800, 3600, 10800, 21600, 43200)


def _allowed(value: float | None, allowed: Sequence[float], what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in allowed:
        raise ConfigurationError(
            f"{what} must be one of {', '.join(f'{v:g}' for v in allowed)}; got {value!r}"
        )
    return value


#: At most this many variables per server-side run (PostHog's limit).
MAX_RUN_VARIABLES: Final = 10
_SCALAR_TYPES: Final = (("boolean", bool), ("number", int | float), ("string", str))


def _run_variable(name: object, value: object, type_: object = None) -> dict[str, Any]:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigurationError(
            f"run variable name {name!r} is not an identifier (PostHog refuses it)"
        )
    if isinstance(value, datetime | date):
        value, inferred = value.isoformat(), "date"
    elif value is None:
        inferred = "string"
    else:
        inferred = next((t for t, kind in _SCALAR_TYPES if isinstance(value, kind)), "")
        if not inferred or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigurationError(
                f"run variable {name!r} must be a scalar (str, int, float, bool, date or "
                f"None), got {type(value).__name__}"
            )
    if type_ is None:
        type_ = inferred
    elif not isinstance(type_, str) or not type_:
        raise ConfigurationError(f"run variable {name!r} has an invalid type {type_!r}")
    return {"name": name, "type": type_, "value": value}


def run_variables_body(
    variables: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """``POST runs/``: ``{"variables": [{"name", "type", "value"}, ...]}`` (or ``{}``).

    Takes a name -> value mapping (types inferred: ``string``, ``number``, ``boolean``,
    ``date``) or PostHog's list shape; at most 10, identifier names, scalar values.
    """
    if not variables:
        return {}
    items: list[dict[str, Any]] = []
    if isinstance(variables, Mapping):
        items = [_run_variable(name, value) for name, value in variables.items()]
    elif isinstance(variables, list | tuple):
        for entry in variables:
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ConfigurationError(
                    f"run variables in list form are {{'name', 'type', 'value'}} objects, "
                    f"got {entry!r}"
                )
            items.append(_run_variable(entry["name"], entry.get("value"), entry.get("type")))
    else:
        raise ConfigurationError(
            f"run variables must be a mapping or a list of {{name, type, value}}, got "
            f"{type(variables).__name__}"
        )
    if len(items) > MAX_RUN_VARIABLES:
        raise ConfigurationError(
            f"PostHog accepts at most {MAX_RUN_VARIABLES} run variables, got {len(items)}"
        )
    names = [item["name"] for item in items]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"run variable names must be unique, got {names}")
    return {"variables": items}


def kernel_config_body(
    *,
    cpu_cores: float | None = None,
    memory_gb: float | None = None,
    idle_timeout_seconds: int | None = None,
) -> dict[str, float | int]:
    """``kernel/config/``: the allowed values are checked here, before any request."""
    body: dict[str, float | int] = {}
    cpu = _allowed(cpu_cores, ALLOWED_CPU_CORES, "cpu_cores")
    memory = _allowed(memory_gb, ALLOWED_MEMORY_GB, "memory_gb")
    idle = _allowed(idle_timeout_seconds, ALLOWED_IDLE_TIMEOUTS, "idle_timeout_seconds")
    if cpu is not None:
        body["cpu_cores"] = cpu
    if memory is not None:
        body["memory_gb"] = memory
    if idle is not None:
        body["idle_timeout_seconds"] = int(idle)
    if not body:
        raise ConfigurationError(
            "kernel config needs at least one of cpu_cores, memory_gb, idle_timeout_seconds"
        )
    return body


# --------------------------------------------------------------------------- errors


_THROTTLE = re.compile(r"expected available in\s+(\d+(?:\.\d+)?)\s+seconds?", re.IGNORECASE)
_SCOPED_KEY_DETAIL: Final = "does not support personal api key access"
_MISSING_SCOPE = re.compile(r"missing required scope", re.IGNORECASE)


def error_message(data: Any, text: str) -> str | None:
    """The server's own words from any of PostHog's error shapes.

    ``{type, code, detail, attr}`` (standard), ``{detail}`` (kernel, recording comments),
    ``{error}`` (HogQL), ``{code}`` (collab 409/410, with their data summarised).
    """
    if isinstance(data, dict):
        detail = data.get("detail")
        code = data.get("code")
        attr = data.get("attr")
        if isinstance(detail, str) and detail.strip():
            message = detail.strip()
            if isinstance(attr, str) and attr:
                message += f" (field: {attr})"
            if isinstance(code, str) and code and data.get("type") == "validation_error":
                message += f" [{code}]"
            return message
        error = data.get("error")
        if isinstance(error, str) and error.strip():
            return error.strip()
        if code == "conflict_stale":
            return (
                "the collaboration stream no longer holds the steps this client needs "
                "(conflict_stale): read the notebook again and continue from its version"
            )
        if code == "conflict":
            version = data.get("version")
            steps = data.get("steps")
            updates = data.get("updates")
            missed = steps if isinstance(steps, list) else updates
            count = f"{len(missed)} missed change(s)" if isinstance(missed, list) else "changes"
            return (
                f"the client is behind the collaboration stream ({count}; server version "
                f"{version}): rebase onto them and save again"
            )
    return default_error_message(data, text)


def retry_after_from_body(data: Any) -> float | None:
    """PostHog's 429 carries no Retry-After header; the delay is in the detail text:
    ``"Request was throttled. Expected available in 12 seconds."``."""
    text: str | None = None
    if isinstance(data, dict):
        detail = data.get("detail")
        text = detail if isinstance(detail, str) else None
    elif isinstance(data, str):
        text = data
    if not text:
        return None
    match = _THROTTLE.search(text)
    if match is None:
        return None
    seconds = float(match.group(1))
    return seconds if math.isfinite(seconds) else None


_RUNS_PATH = re.compile(r"/notebooks/[^/]+/(runs|sql_v2)/")
RUNS_SCOPES: Final = "notebook:write and query:read"


def _refine_forbidden(error: APIError, detail: str) -> APIError:
    """403s with what to do: the scopes an endpoint needs, and which keys PostHog accepts."""
    runs = bool(_RUNS_PATH.search(error.url))
    if _SCOPED_KEY_DETAIL in detail.lower():
        return rebuild_error(
            ScopedKeyNotAllowed,
            error,
            f"{error.message}. This endpoint (kernel, HogQL execute, recording comments or "
            "project-wide activity) declares no API scope: older PostHog servers refuse "
            "scoped personal API keys here (even one with '*') and accept a key created "
            "without scopes; newer servers refuse every personal API key here. On a newer "
            f"server run notebooks with mode='server' (scopes {RUNS_SCOPES}).",
        )
    if _MISSING_SCOPE.search(detail):
        missing = rebuild_error(MissingScope, error)
        scope = missing.scope
        if runs:
            need = f"server-side runs need the {RUNS_SCOPES} scopes"
        elif scope:
            need = f"give the personal API key the '{scope}' scope (':write' covers ':read')"
        else:
            need = "give the personal API key the scope PostHog names"
        return rebuild_error(MissingScope, error, f"{error.message}. {need[0].upper()}{need[1:]}.")
    if runs:
        return rebuild_error(
            PermissionDenied,
            error,
            f"{error.message}. Server-side runs need the {RUNS_SCOPES} scopes and query "
            "access in this project.",
        )
    return error


def refine_error(error: APIError) -> APIError:
    """Replace generic mapped errors with the PostHog-specific ones in ``_errors``."""
    data: dict[str, Any] = error.data if isinstance(error.data, dict) else {}
    raw_detail = data.get("detail")
    detail = raw_detail if isinstance(raw_detail, str) else ""
    if error.status == 403:
        return _refine_forbidden(error, detail)
    if error.status == 409 and data.get("code") == "conflict":
        if "steps" in data or "updates" in data or "client_ids" in data:
            return rebuild_error(CollabConflict, error)
        if error.method not in ("PATCH", "PUT"):
            # e.g. POST runs/ while a run is going: a conflict, but not an edit race.
            return error
        return rebuild_error(
            VersionConflict,
            error,
            f"{error.message}. Read the notebook again and re-apply the change "
            "(update_notebook_content does this for you).",
        )
    if error.status == 410:
        return rebuild_error(CollabStale, error)
    if error.status == 400 and "/sharing/" in error.url:
        return rebuild_error(
            type(error),
            error,
            f"{error.message}. PostHog routes notebook sharing but its sharing API only "
            "serves dashboards, insights and recordings (every version read answers this): "
            "share it from the PostHog app instead",
        )
    return error


#: PostHog's HTTP profile: error words, the throttle delay in the body, refined errors.
PROFILE: Final = VendorProfile(
    VENDOR,
    error_message=error_message,
    retry_after_from_body=retry_after_from_body,
    refine_error=refine_error,
)


# --------------------------------------------------------------------------- SSE frames


def _frame_json(event: SSEEvent, stream: str) -> Any:
    try:
        return json.loads(event.data)
    except (ValueError, RecursionError):
        raise ResponseDecodeError(
            f"posthog sent a {stream} '{event.event}' event whose data is not JSON",
            vendor=VENDOR,
            body=trim(event.data, 1000),
        ) from None


def decode_kernel_event(event: SSEEvent, *, url: str = "") -> KernelStreamEvent | None:
    """One ``kernel/execute/stream/`` frame: a stdout/stderr chunk, or the result.

    An ``error`` frame (infrastructure failure inside the 200 stream) raises
    :class:`KernelStreamError`; unknown event names are skipped (None).
    """
    if event.event in ("stdout", "stderr"):
        data = _frame_json(event, "kernel stream")
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise ResponseDecodeError(
                f"posthog sent a kernel '{event.event}' frame without text",
                vendor=VENDOR,
                url=url,
                body=trim(event.data, 1000),
            )
        return KernelOutput(name="stdout" if event.event == "stdout" else "stderr", text=text)
    if event.event == "result":
        data = _frame_json(event, "kernel stream")
        return decode(data, ExecutionResult, what="a kernel result frame", url=url, status=200)
    if event.event == "error":
        data = _frame_json(event, "kernel stream")
        words = data.get("error") if isinstance(data, dict) else None
        text = words if isinstance(words, str) and words else "unknown kernel stream error"
        raise KernelStreamError(
            f"posthog kernel execution failed: {text}",
            status=200,
            vendor=VENDOR,
            method="POST",
            url=url,
            body=trim(event.data, 2000),
            data=data,
        )
    return None


def decode_collab_event(event: SSEEvent) -> CollabEvent:
    """One ``collab/stream/`` frame as a typed event (unknown names pass through)."""
    target: type[Any]
    if event.event == "step":
        target = CollabStep
    elif event.event == "update":
        target = CollabUpdate
    elif event.event == "presence":
        target = CollabPresence
    elif event.event == "error":
        target = CollabStreamError
    else:
        return CollabUnknownEvent(event=event.event, data=event.data, id=event.id)
    data = _frame_json(event, "collab stream")
    if not isinstance(data, dict):
        raise ResponseDecodeError(
            f"posthog sent a collab '{event.event}' event that is not a JSON object",
            vendor=VENDOR,
            body=trim(event.data, 1000),
        )
    fields = dict(data)
    fields["id"] = event.id
    decoded: CollabEvent = decode(fields, target, what=f"a collab '{event.event}' event")
    return decoded
