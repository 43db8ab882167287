"""The RunStore protocol and its records: what ``run_and_wait(key=..., store=...)`` keeps so
that a run is started once per idempotency key, across processes and restarts."""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

import attrs

from ..models import Run, RunHandle

__all__ = ["Claim", "RecordState", "RunRecord", "RunStore"]


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
    """Durable records of keyed runs. Every method is atomic with respect to every other
    process using the same store.

    Implementations: :class:`~notebookops.store.SQLiteRunStore` (one machine, several
    processes), :class:`~notebookops.store.RedisRunStore` (a fleet),
    :class:`~notebookops.store.MemoryRunStore` (tests). Stores are async context managers.
    """

    async def reserve(
        self, key: str, fingerprint: str, *, owner: str, lease: float, retention: float
    ) -> Claim:
        """Create a RESERVED record owned by ``owner`` if the key has none (``created=True``),
        else return the existing record untouched. Durable before it returns."""
        ...

    async def take_over(
        self, key: str, *, expected_owner: str, owner: str, lease: float
    ) -> RunRecord | None:
        """Give a RESERVED record whose owner is ``expected_owner`` to ``owner`` with a new
        lease (compare-and-set); None if the record changed meanwhile."""
        ...

    async def record_start(self, key: str, *, owner: str, handle: RunHandle) -> None:
        """RESERVED -> STARTED with the handle (only by the record's owner; a record already
        STARTED with the same handle is left as is)."""
        ...

    async def record_finish(self, key: str, run: Run) -> None:
        """-> FINISHED with the final run (idempotent)."""
        ...

    async def release(self, key: str, *, owner: str) -> None:
        """Delete a RESERVED record of ``owner``: its start provably sent nothing, so a later
        call may start the run."""
        ...

    async def get(self, key: str) -> RunRecord | None:
        """The record of ``key``, or None."""
        ...

    async def acquire_lease(self, name: str, *, owner: str, ttl: float) -> bool:
        """Take the named lease (e.g. one notebook's start window) if free or expired, or
        renew it if ``owner`` holds it. True when ``owner`` holds it now."""
        ...

    async def release_lease(self, name: str, *, owner: str) -> None:
        """Give the named lease back if ``owner`` holds it."""
        ...

    async def prune(self, *, now: float | None = None) -> int:
        """Delete records past their ``expires_at``; return how many."""
        ...

    async def aclose(self) -> None: ...
