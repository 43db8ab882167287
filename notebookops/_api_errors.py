"""How an HTTP error answer becomes an error of the tree: one pure mapping, per-vendor hooks."""

from __future__ import annotations

import email.utils
import json as jsonlib
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs

from ._redact import redact_url, trim
from .errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
)

__all__ = [
    "VendorProfile",
    "build_api_error",
    "default_error_message",
    "parse_retry_after",
    "rebuild_error",
]

E = TypeVar("E", bound=APIError)

_REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id", "x-amzn-requestid", "x-trace-id")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date. ``None`` if absent
    or unreadable; never negative."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


def default_error_message(data: Any, text: str) -> str | None:
    """The vendor's own words from an error body: ``message``, ``detail``, ``error`` (str or
    ``{message}``), or a short plain-text body."""
    if isinstance(data, dict):
        for key in ("message", "detail", "error", "error_description", "title"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
            if isinstance(value, dict):
                inner = value.get("message") or value.get("detail")
                if isinstance(inner, str) and inner.strip():
                    return inner.strip()
        code = data.get("code")
        if isinstance(code, str) and code:
            return code
        return None
    if isinstance(data, list) and data and isinstance(data[0], str):
        return data[0]
    stripped = text.strip()
    if not stripped:
        return None
    if stripped[:1] == "<":
        return "the server sent an HTML error page"
    return trim(stripped, 200)


_STATUS_ERRORS: Final[dict[int, type[APIError]]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}

_STATUS_HINTS: Final[dict[int, str]] = {
    401: "check that the API token is set and valid",
    403: "the token is valid but lacks access to this resource",
    404: "check the identifier, and that the token's workspace can see it",
    429: "rate limited by the vendor",
}


def rebuild_error(cls: type[E], error: APIError, message: str | None = None) -> E:
    """A ``cls`` (a subclass of ``error``'s class, or the same class) carrying everything
    ``error`` knew: status, URL, body, request id, run handle; with ``message`` in place of its
    own when given. What a ``VendorProfile.refine_error`` hook returns to say more."""
    rebuilt = cls(
        message if message is not None else error.message,
        status=error.status,
        vendor=error.vendor,
        method=error.method,
        url=error.url,
        request_id=error.request_id,
        body=error.body,
        data=error.data,
    )
    rebuilt.handle = error.handle
    return rebuilt


@attrs.frozen
class VendorProfile:
    """What differs between vendors at the HTTP level, as data and small pure hooks."""

    name: str
    #: Extracts the vendor's message from a decoded error body (``None`` if not JSON) and text.
    error_message: Callable[[Any, str], str | None] = default_error_message
    #: A retry delay hidden in an error body (PostHog: "Expected available in N seconds").
    retry_after_from_body: Callable[[Any], float | None] | None = None
    #: Last chance to replace a mapped error with a more specific one (same status family).
    refine_error: Callable[[APIError], APIError] | None = None


def build_api_error(
    profile: VendorProfile,
    *,
    status: int,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
) -> APIError:
    """Map an error response to the error tree. Pure: the one place statuses become classes."""
    text = body.decode("utf-8", errors="replace")
    data: Any = None
    if text.strip()[:1] in ("{", "["):
        try:
            data = jsonlib.loads(text)
        except (ValueError, RecursionError):  # nesting deeper than the interpreter allows
            data = None
    vendor_message = profile.error_message(data, text)
    safe_url = redact_url(url)
    request_id = next((headers[h] for h in _REQUEST_ID_HEADERS if h in headers), None)
    cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else APIError)
    summary = vendor_message or _STATUS_HINTS.get(status) or "no details given"
    message = f"{profile.name} API {method} {safe_url} returned {status}: {summary}"
    if request_id:
        message += f" (request id {request_id})"
    kwargs: dict[str, Any] = {
        "status": status,
        "vendor": profile.name,
        "method": method,
        "url": safe_url,
        "request_id": request_id,
        "body": trim(text, 2000),
        "data": data,
    }
    error: APIError
    if cls is RateLimited:
        retry_after = parse_retry_after(headers.get("retry-after"), now=now)
        if retry_after is None and profile.retry_after_from_body is not None:
            retry_after = profile.retry_after_from_body(data)
        error = RateLimited(message, retry_after=retry_after, **kwargs)
    else:
        error = cls(message, **kwargs)
    if profile.refine_error is not None:
        error = profile.refine_error(error)
    return error
