"""SQLiteRunStore: run records in one SQLite file, shared by the processes of one machine."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from ..models import Run, RunHandle
from . import _records
from ._base import (
    Claim,
    RunRecord,
    RunStore,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
)

__all__ = ["SQLiteRunStore", "default_store_path"]

T = TypeVar("T")

#: The schema this code writes, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    reserved_at REAL NOT NULL,
    lease_until REAL NOT NULL,
    expires_at REAL NOT NULL,
    handle TEXT,
    run TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_expiry ON runs (expires_at);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
"""

_COLUMNS = "key, fingerprint, state, owner, reserved_at, lease_until, expires_at, handle, run"

# Primary result codes (the low byte of sqlite3.Error.sqlite_errorcode).
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_UNAVAILABLE = frozenset(
    {
        "SQLITE_PERM",
        "SQLITE_BUSY",
        "SQLITE_LOCKED",
        "SQLITE_READONLY",
        "SQLITE_IOERR",
        "SQLITE_FULL",
        "SQLITE_CANTOPEN",
        "SQLITE_PROTOCOL",
        "SQLITE_AUTH",
    }
)


def default_store_path() -> Path:
    """Where the CLI keeps keyed runs by default: ``$XDG_STATE_HOME/notebookops/runs.db``, or
    ``~/.local/state/notebookops/runs.db`` when that variable is unset or not absolute."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "notebookops" / "runs.db"


class SQLiteRunStore(RunStore):
    """A :class:`~notebookops.store.RunStore` in one SQLite file: the embedded default, safe
    for several processes (and several stores in one process) on one machine.

    The file is opened at first use (or on ``async with``), created with its parent directory
    if missing (readable by its owner only), in WAL mode with ``synchronous=FULL``: a record is
    on disk before the call returns, and survives a crash of the process or the machine.
    Every write is one ``BEGIN IMMEDIATE`` transaction, so it is atomic with respect to every
    other process using the file; a writer waits up to ``timeout`` seconds for another
    process's transaction, then raises :class:`~notebookops.store.StoreUnavailable`. Each
    write waits for one ``fsync``: the disk's fsync latency is most of a write's cost.
    Records stay until :meth:`prune` deletes those past their ``expires_at``: call it now and
    then (e.g. once a day, or after a keyed run).

    Calls run the stdlib ``sqlite3`` module in worker threads (``anyio.to_thread``), never on
    the event loop. The store holds one connection, used by one thread at a time under a lock:
    SQLite serialises writers anyway, and reads are short. A call whose caller is cancelled
    still finishes (or rolls back) its transaction before the cancellation goes on. A file
    that is not a SQLite database, or was written by a newer notebookops, raises
    :class:`~notebookops.store.StoreCorrupted` on first use.

    Not for network file systems (NFS, SMB): SQLite's locking is not reliable there; use
    :class:`~notebookops.store.RedisRunStore` to share runs between machines.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        #: The database file (absolute).
        self.path = Path(path).expanduser().absolute()
        self._timeout = _records.check_seconds("timeout", timeout)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteRunStore({str(self.path)!r})"

    async def __aenter__(self) -> SQLiteRunStore:
        await self._call(lambda connection: None)
        return self

    async def reserve(
        self, key: str, fingerprint: str, *, owner: str, lease: float, retention: float
    ) -> Claim:
        """See :meth:`RunStore.reserve`."""

        def reserve(connection: sqlite3.Connection) -> Claim:
            with _transaction(connection):
                record = _records.new_record(
                    key,
                    fingerprint,
                    owner=owner,
                    lease=lease,
                    retention=retention,
                    at=_records.now(),
                )
                inserted = connection.execute(
                    f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)"
                    " ON CONFLICT (key) DO NOTHING",
                    (
                        key,
                        fingerprint,
                        record.state.value,
                        owner,
                        record.reserved_at,
                        record.lease_until,
                        record.expires_at,
                    ),
                ).rowcount
                if inserted == 1:
                    return Claim(created=True, record=record)
                existing = _select(connection, key)
                assert existing is not None  # the insert conflicted, in this transaction
                return _records.claim(existing, owner=owner)

        return await self._call(reserve)

    async def take_over(
        self, key: str, *, expected_owner: str, owner: str, lease: float
    ) -> RunRecord | None:
        """See :meth:`RunStore.take_over`."""
        _records.check_seconds("lease", lease)

        def take_over(connection: sqlite3.Connection) -> RunRecord | None:
            with _transaction(connection):
                record = _records.take_over(
                    _select(connection, key),
                    expected_owner=expected_owner,
                    owner=owner,
                    lease_until=_records.now() + lease,
                )
                if record is not None:
                    _update(connection, record)
                return record

        return await self._call(take_over)

    async def record_start(self, key: str, *, owner: str, handle: RunHandle) -> None:
        """See :meth:`RunStore.record_start`."""

        def record_start(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                record = _records.start(_select(connection, key), key, owner=owner, handle=handle)
                if record is not None:
                    _update(connection, record)

        await self._call(record_start)

    async def record_finish(self, key: str, run: Run) -> None:
        """See :meth:`RunStore.record_finish`."""

        def record_finish(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                record = _records.finish(_select(connection, key), key, run)
                if record is not None:
                    _update(connection, record)

        await self._call(record_finish)

    async def release(self, key: str, *, owner: str) -> None:
        """See :meth:`RunStore.release`."""

        def release(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                if _records.release_allowed(_select(connection, key), owner=owner):
                    connection.execute("DELETE FROM runs WHERE key = ?", (key,))

        await self._call(release)

    async def get(self, key: str) -> RunRecord | None:
        """See :meth:`RunStore.get`."""
        return await self._call(lambda connection: _select(connection, key))

    async def acquire_lease(self, name: str, *, owner: str, ttl: float) -> bool:
        """See :meth:`RunStore.acquire_lease`."""
        _records.check_seconds("ttl", ttl)

        def acquire(connection: sqlite3.Connection) -> bool:
            with _transaction(connection):
                at = _records.now()
                holder = connection.execute(
                    "SELECT owner, until FROM leases WHERE name = ?", (name,)
                ).fetchone()
                if holder is not None and holder[0] != owner and holder[1] > at:
                    return False
                connection.execute(
                    "INSERT INTO leases (name, owner, until) VALUES (?, ?, ?) ON CONFLICT (name)"
                    " DO UPDATE SET owner = excluded.owner, until = excluded.until",
                    (name, owner, at + ttl),
                )
                return True

        return await self._call(acquire)

    async def release_lease(self, name: str, *, owner: str) -> None:
        """See :meth:`RunStore.release_lease`."""

        def release(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

        await self._call(release)

    async def prune(self, *, now: float | None = None) -> int:
        """See :meth:`RunStore.prune`."""

        def prune(connection: sqlite3.Connection) -> int:
            at = _records.now() if now is None else now
            with _transaction(connection):
                pruned = connection.execute(
                    "DELETE FROM runs WHERE expires_at <= ?", (at,)
                ).rowcount
                connection.execute("DELETE FROM leases WHERE until <= ?", (at,))
                return pruned

        return await self._call(prune)

    async def aclose(self) -> None:
        """Close the connection; later calls raise :class:`~notebookops.store.StoreError`."""

        def close() -> None:
            with self._lock:
                self._closed = True
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        await anyio.to_thread.run_sync(close)

    async def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        # Not abandoned on cancellation: a write in flight completes (or rolls back) before
        # the caller sees the cancellation, so its outcome is never half-known to this process.
        return await anyio.to_thread.run_sync(self._run, operation)

    def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreError(f"{self!r} is closed")
            try:
                if self._connection is None:
                    self._connection = self._open()
                return operation(self._connection)
            except sqlite3.Error as exc:
                raise _store_error(exc, self.path) from exc

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created private before SQLite opens it: the WAL and shared-memory files it adds
            # take the database file's permissions.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the run store {self.path}: {exc}") from exc
        connection = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            _prepare(connection, self.path, self._timeout)
        except BaseException:
            connection.close()
            raise
        return connection


def _prepare(connection: sqlite3.Connection, path: Path, timeout: float) -> None:
    mode = _switch_to_wal(connection, timeout)
    if str(mode).lower() != "wal":
        raise StoreUnavailable(f"the run store {path} cannot use WAL mode (got {mode!r})")
    connection.execute("PRAGMA synchronous = FULL")
    version = _schema_version(connection)
    if version < SCHEMA_VERSION:
        # Only a new file takes the write lock to open: others open while a writer works.
        with _transaction(connection):
            version = _schema_version(connection)  # another process may have just made it
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                version = SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise StoreCorrupted(
            f"the run store {path} was written by a newer notebookops (schema {version})"
        )


def _switch_to_wal(connection: sqlite3.Connection, timeout: float) -> object:
    # SQLite does not call its busy handler while it takes the exclusive lock that turns
    # on WAL, so processes opening a new file together get "database is locked" at once,
    # whatever the connection's timeout: wait for the lock here instead, within that timeout.
    give_up_at = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            return connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= give_up_at:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _schema_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock at BEGIN: a read-then-write never finds that another
    # process wrote in between (and never fails late with SQLITE_BUSY on upgrade).
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _select(connection: sqlite3.Connection, key: str) -> RunRecord | None:
    row = connection.execute(f"SELECT {_COLUMNS} FROM runs WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    names = _COLUMNS.split(", ")
    return _records.decode_record(key, dict(zip(names, row, strict=True)))


def _update(connection: sqlite3.Connection, record: RunRecord) -> None:
    connection.execute(
        "UPDATE runs SET state = ?, owner = ?, lease_until = ?, handle = ?, run = ? WHERE key = ?",
        (
            record.state.value,
            record.owner,
            record.lease_until,
            None if record.handle is None else record.handle.to_json(),
            None if record.run is None else record.run.to_json(),
            record.key,
        ),
    )


def _store_error(exc: sqlite3.Error, path: Path) -> StoreError:
    # The primary code's name (SQLITE_IOERR for SQLITE_IOERR_SHORT_READ and the like).
    name = (getattr(exc, "sqlite_errorname", None) or "").split("_")
    code = "_".join(name[:2])
    if code in _CORRUPT:
        return StoreCorrupted(f"the run store {path} is not a readable SQLite database: {exc}")
    if code in _UNAVAILABLE:
        return StoreUnavailable(f"the run store {path} cannot be used: {exc}")
    return StoreError(f"the run store {path} failed: {exc}")
