"""MemoryRunStore: records in a dict, for tests and single-process experiments."""

from __future__ import annotations

import anyio.lowlevel

from ..models import Run, RunHandle
from . import _records
from ._base import Claim, RunRecord, RunStore

__all__ = ["MemoryRunStore"]


class MemoryRunStore(RunStore):
    """A :class:`~notebookops.store.RunStore` in this process's memory: nothing survives the
    process, so it proves nothing about crashes. Use it in tests.

    Every method reads and writes its dict without awaiting in between, so each is atomic with
    respect to other tasks of the event loop. Not for use from several threads. Closing it
    keeps the records: the same instance can be used again.
    """

    def __init__(self) -> None:
        self._records: dict[str, RunRecord] = {}
        #: lease name -> (owner, Unix time it ends)
        self._leases: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"MemoryRunStore(records={len(self._records)})"

    async def reserve(
        self, key: str, fingerprint: str, *, owner: str, lease: float, retention: float
    ) -> Claim:
        """See :meth:`RunStore.reserve`."""
        record = _records.new_record(
            key, fingerprint, owner=owner, lease=lease, retention=retention, at=_records.now()
        )
        await anyio.lowlevel.checkpoint()
        existing = self._records.get(key)
        if existing is not None:
            return _records.claim(existing, owner=owner)
        self._records[key] = record
        return Claim(created=True, record=record)

    async def take_over(
        self, key: str, *, expected_owner: str, owner: str, lease: float
    ) -> RunRecord | None:
        """See :meth:`RunStore.take_over`."""
        lease_until = _records.now() + _records.check_seconds("lease", lease)
        await anyio.lowlevel.checkpoint()
        record = _records.take_over(
            self._records.get(key),
            expected_owner=expected_owner,
            owner=owner,
            lease_until=lease_until,
        )
        if record is not None:
            self._records[key] = record
        return record

    async def record_start(self, key: str, *, owner: str, handle: RunHandle) -> None:
        """See :meth:`RunStore.record_start`."""
        await anyio.lowlevel.checkpoint()
        record = _records.start(self._records.get(key), key, owner=owner, handle=handle)
        if record is not None:
            self._records[key] = record

    async def record_finish(self, key: str, run: Run) -> None:
        """See :meth:`RunStore.record_finish`."""
        await anyio.lowlevel.checkpoint()
        record = _records.finish(self._records.get(key), key, run)
        if record is not None:
            self._records[key] = record

    async def release(self, key: str, *, owner: str) -> None:
        """See :meth:`RunStore.release`."""
        await anyio.lowlevel.checkpoint()
        if _records.release_allowed(self._records.get(key), owner=owner):
            del self._records[key]

    async def get(self, key: str) -> RunRecord | None:
        """See :meth:`RunStore.get`."""
        await anyio.lowlevel.checkpoint()
        return self._records.get(key)

    async def acquire_lease(self, name: str, *, owner: str, ttl: float) -> bool:
        """See :meth:`RunStore.acquire_lease`."""
        ttl = _records.check_seconds("ttl", ttl)
        await anyio.lowlevel.checkpoint()
        at = _records.now()
        holder = self._leases.get(name)
        if holder is not None and holder[0] != owner and holder[1] > at:
            return False
        self._leases[name] = (owner, at + ttl)
        return True

    async def release_lease(self, name: str, *, owner: str) -> None:
        """See :meth:`RunStore.release_lease`."""
        await anyio.lowlevel.checkpoint()
        holder = self._leases.get(name)
        if holder is not None and holder[0] == owner:
            del self._leases[name]

    async def prune(self, *, now: float | None = None) -> int:
        """See :meth:`RunStore.prune`."""
        await anyio.lowlevel.checkpoint()
        at = _records.now() if now is None else now
        expired = [key for key, record in self._records.items() if record.expires_at <= at]
        for key in expired:
            del self._records[key]
        for name in [n for n, (_, until) in self._leases.items() if until <= at]:
            del self._leases[name]
        return len(expired)

    async def aclose(self) -> None:
        """Nothing to release: the records stay for the next use of this instance."""
        await anyio.lowlevel.checkpoint()
