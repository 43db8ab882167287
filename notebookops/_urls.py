"""URL checks shared by every client: base URLs, origins, path segments."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, urlsplit

from ._redact import redact_url
from .errors import ConfigurationError

__all__ = ["check_base_url", "is_loopback_host", "origin_of", "path_segment"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Characters quote() never encodes (RFC 3986 unreserved): a segment made only of them is
#: already encoded.
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+", re.ASCII)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, allow_http: bool = False, what: str = "base URL") -> str:
    """Validate a vendor base URL and return it without a trailing slash.

    HTTPS is required, except for loopback hosts (test servers) or when ``allow_http`` is set
    explicitly: a token sent over plain HTTP is a token given away.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"the {what} must be a non-empty URL string")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"the {what} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"the {what} must look like https://host[:port], got {redact_url(url)!r}"
        )
    if parts.username or parts.password:
        raise ConfigurationError(f"the {what} must not contain credentials")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"the {what} must not contain a query or fragment")
    if parts.scheme == "http" and not (allow_http or is_loopback_host(parts.hostname)):
        raise ConfigurationError(
            f"refusing plain http:// for {parts.hostname}: tokens would travel unencrypted. "
            "Use https://, or pass allow_http=True if you really mean it."
        )
    del port
    return url.strip().rstrip("/")


def origin_of(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def path_segment(value: str, *, what: str = "identifier") -> str:
    """Percent-encode one path segment, refusing values that could change the path's meaning.

    ``/``, ``?``, ``#`` and ``%`` are encoded; empty values, ``.``/``..`` and control characters
    are refused with ConfigurationError (no vendor id legitimately contains them).
    """
    if type(value) is str and _UNRESERVED.fullmatch(value) and value not in (".", ".."):
        return value  # what nearly every id looks like, and what quote() would return
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    if value in (".", "..") or _CONTROL.search(value):
        raise ConfigurationError(f"{what} {value!r} is not a valid identifier")
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:  # a lone surrogate (JSON can carry one): not encodable
        raise ConfigurationError(f"{what} {value!r} is not valid text") from None
