"""open_store: a run store from a URL, as the CLI's ``--store`` takes it."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigurationError
from ._base import RunStore
from ._memory import MemoryRunStore
from ._redis import RedisRunStore
from ._sqlite import SQLiteRunStore

__all__ = ["STORE_URL_FORMS", "open_store"]

#: The URL forms :func:`open_store` understands, for messages and help texts.
STORE_URL_FORMS = (
    "sqlite:///absolute/path.db",
    "sqlite:relative/path.db",
    "redis://host:6379/0",
    "rediss://host:6379/0",
    "unix:///path/to/redis.sock",
    "memory:",
)


def open_store(url: str) -> RunStore:
    """The run store a URL names; it connects at first use (or on ``async with``).

    * ``sqlite:///abs/path.db`` or ``sqlite:relative/path.db`` (``~`` expands):
      a :class:`~notebookops.store.SQLiteRunStore`;
    * ``redis://``, ``rediss://`` (TLS) or ``unix://`` redis-py URLs:
      a :class:`~notebookops.store.RedisRunStore`;
    * ``memory:``: a new, empty :class:`~notebookops.store.MemoryRunStore`.

    Anything else raises :class:`~notebookops.ConfigurationError` listing these forms.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a store URL must be a string, got {type(url).__name__}")
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if colon and scheme == "sqlite":
        return SQLiteRunStore(_sqlite_path(rest))
    if colon and scheme in ("redis", "rediss", "unix"):
        return RedisRunStore(url)
    if colon and scheme == "memory" and not rest:
        return MemoryRunStore()
    shown = f"{scheme!r}" if colon else "none"
    raise ConfigurationError(
        f"unknown run store URL (scheme {shown}): use one of " + ", ".join(STORE_URL_FORMS)
    )


def _sqlite_path(rest: str) -> Path:
    if rest.startswith("//"):
        # sqlite://HOST/PATH: only an empty host (sqlite:///abs/path) names a local file.
        host, slash, path = rest[2:].partition("/")
        if host or not slash:
            raise ConfigurationError(
                "a sqlite store URL names a local file: sqlite:///absolute/path.db or "
                "sqlite:relative/path.db"
            )
        rest = "/" + path
    if not rest.strip("/"):
        raise ConfigurationError("a sqlite store URL needs a file path, e.g. sqlite:runs.db")
    return Path(rest).expanduser()
