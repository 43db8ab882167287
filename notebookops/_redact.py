"""Keeping secrets out of reprs, logs and error messages."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["Secret", "redact_url", "trim"]

# Query parameters whose values are harmless and useful when debugging a failed request.
_SAFE_QUERY_KEYS = frozenset(
    {
        "limit",
        "offset",
        "page",
        "pagesize",
        "page_size",
        "snapshotdelivery",
        "namecontains",
        "variable_name",
        "order",
        "search",
        "date_from",
        "date_to",
        "recording_id",
    }
)


class Secret:
    """A string that never shows itself in ``repr``/``str``/f-strings.

    Call :meth:`reveal` at the one place the value is needed (the Authorization header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values cannot be pickled")


def redact_url(url: str) -> str:
    """``url`` without user info and with query values redacted (except known-harmless keys).

    Presigned download URLs carry signatures in the query; PostHog accepts a
    ``personal_api_key`` query parameter. Neither may reach a log line or an exception.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if ":" in (parts.hostname or "") and not netloc.startswith("["):
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    query = ""
    if parts.query:
        pairs = [
            (key, value if key.lower() in _SAFE_QUERY_KEYS else "***")
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def trim(text: str, limit: int = 500) -> str:
    """Shorten ``text`` for an error message, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"
