"""The RunStore protocol and its records: what ``run_and_wait(key=..., store=...)`` keeps so
that a run is started once per idempotency key, across processes and restarts."""

from __future__ import annotations

import enum
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import attrs

from ..errors import NotebookOpsError
from ..models import Run, RunHandle

__all__ = [
    "Claim",
    "RecordConflict",
    "RecordState",
    "RunRecord",
    "RunStore",
    "StoreCorrupted",
    "StoreError",
    "StoreUnavailable",
]


class StoreError(NotebookOpsError):
    """A run store failed, or holds something it cannot read."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or opened right now: Redis is down or refuses us, the
    SQLite file cannot be opened or stays locked."""


class StoreCorrupted(StoreError):
    """The store's data cannot be read: the file is not a SQLite database (or a damaged one,
    or one written by a newer notebookops), or a record does not parse."""


class RecordConflict(StoreError):
    """A key's record is not in the state a call needs: it is reserved by another owner, it
    holds another run's handle, or it is gone (released, pruned or expired)."""


class RecordState(enum.StrEnum):
    """Where the run of a key is."""

    #: The key is reserved; the run may be starting (no handle yet).
    RESERVED = "reserved"
    #: The run was started; its handle is known.
    STARTED = "started"
    #: The run ended; its final Run is known.
    FINISHED = "finished"


@attrs.frozen
class RunRecord:
    """What a store holds for one idempotency key.

    ``fingerprint`` identifies the request (backend, notebook, inputs, blocks, options): the
    same key with another fingerprint is a conflict. ``owner`` is the reserving call (a random
    id, with host and process id for diagnostics); ``lease_until`` (Unix time) is how long that
    call may take to start the run before another call may settle the reservation.
    """

    key: str
    fingerprint: str
    state: RecordState
    owner: str
    reserved_at: float
    lease_until: float
    handle: RunHandle | None = None
    run: Run | None = None
    #: Unix time after which ``prune`` may delete the record.
    expires_at: float = 0.0


@attrs.frozen
class Claim:
    """The answer to :meth:`RunStore.reserve`: ``created`` True when this call now owns a new
    reservation, else the record that was already there."""

    created: bool
    record: RunRecord


@runtime_checkable
class RunStore(Protocol):
    r"""Durable records of keyed runs. Every method is atomic with respect to every other
    process using the same store.

    Implementations: :class:`~notebookops.store.SQLiteRunStore` (one machine, several
    processes), :class:`~notebookops.store.RedisRunStore` (a fleet),
    :class:`~notebookops.store.MemoryRunStore` (tests). Stores are async context managers;
    :func:`~notebookops.store.open_store` builds one from a URL.

    Failures are :class:`StoreError`\ s: :class:`StoreUnavailable` when the store cannot be
    reached, :class:`StoreCorrupted` when its data cannot be read, :class:`RecordConflict`
    when a record is not in the state a call needs. Durations (``lease``, ``retention``,
    ``ttl``) are seconds > 0 (ConfigurationError otherwise); times are Unix times of the
    calling machine's clock. A stored final run keeps no ``raw`` payload.
    """

    async def reserve(
        self, key: str, fingerprint: str, *, owner: str, lease: float, retention: float
    ) -> Claim:
        """Create a RESERVED record owned by ``owner`` if the key has none (``created=True``),
        else return the existing record untouched. Durable before it returns.

        ``owner`` must be unique to the calling run attempt: a RESERVED record that ``owner``
        already holds is its own reservation (an earlier try whose answer was lost) and comes
        back with ``created=True``. That makes every method safe to retry.
        """
        ...

    async def take_over(
        self, key: str, *, expected_owner: str, owner: str, lease: float
    ) -> RunRecord | None:
        """Give a RESERVED record whose owner is ``expected_owner`` to ``owner`` with a new
        lease (compare-and-set); None if the record changed meanwhile. A RESERVED record that
        ``owner`` already holds (a repeated take-over) comes back with the new lease."""
        ...

    async def record_start(self, key: str, *, owner: str, handle: RunHandle) -> None:
        """RESERVED -> STARTED with the handle (only by the record's owner; a record already
        STARTED with the same handle is left as is).

        Raises :class:`RecordConflict` when the record is gone, is reserved by another owner
        (it was taken over) or holds another handle: the caller has lost the key.
        """
        ...

    async def record_finish(self, key: str, run: Run) -> None:
        """-> FINISHED with the final run (idempotent: a FINISHED record keeps the first run
        recorded). Raises :class:`RecordConflict` when the record is gone or holds another
        run's handle."""
        ...

    async def release(self, key: str, *, owner: str) -> None:
        """Delete a RESERVED record of ``owner``: its start provably sent nothing, so a later
        call may start the run. Any other record is left as is."""
        ...

    async def get(self, key: str) -> RunRecord | None:
        """The record of ``key``, or None."""
        ...

    async def acquire_lease(self, name: str, *, owner: str, ttl: float) -> bool:
        """Take the named lease (e.g. one notebook's start window) if free or expired, or
        renew it if ``owner`` holds it. True when ``owner`` holds it now."""
        ...

    async def release_lease(self, name: str, *, owner: str) -> None:
        """Give the named lease back if ``owner`` holds it (otherwise do nothing)."""
        ...

    async def prune(self, *, now: float | None = None) -> int:
        """Delete records past their ``expires_at`` (at ``now``, default the current time) and
        expired leases; return how many records. A store may also drop expired records on its
        own (Redis key expiry): ``expires_at`` is the earliest a record may go."""
        ...

    async def aclose(self) -> None:
        """Release the store's connections. Closing twice is fine."""
        ...

    # The two below have bodies so that a store subclassing this protocol inherits them.

    async def __aenter__(self) -> Self:
        """Connect (a store that cannot be reached or read raises here) and return the store."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """:meth:`aclose`."""
        await self.aclose()
