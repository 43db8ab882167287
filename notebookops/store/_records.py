"""What every store does to a record, as pure functions, so the stores that hold records as
Python objects or rows (memory, SQLite) share one copy of the rules; Redis runs the same rules
as Lua scripts, next to its keys."""

from __future__ import annotations

import time
from collections.abc import Mapping

import attrs

from .._validate import seconds
from ..errors import ConfigurationError
from ..models import Run, RunHandle
from ._base import Claim, RecordConflict, RecordState, RunRecord, StoreCorrupted

__all__ = [
    "check_seconds",
    "claim",
    "decode_record",
    "finish",
    "new_record",
    "now",
    "release_allowed",
    "same_handle",
    "start",
    "take_over",
]


def now() -> float:
    """The Unix time every store writes into records and leases."""
    return time.time()


def check_seconds(name: str, value: float) -> float:
    """A lease, retention or TTL in seconds (> 0), or ConfigurationError."""
    checked = seconds(name, value)
    assert checked is not None  # allow_none is off
    return checked


def new_record(
    key: str, fingerprint: str, *, owner: str, lease: float, retention: float, at: float
) -> RunRecord:
    """The RESERVED record ``reserve`` creates at time ``at``."""
    return RunRecord(
        key=key,
        fingerprint=fingerprint,
        state=RecordState.RESERVED,
        owner=owner,
        reserved_at=at,
        lease_until=at + check_seconds("lease", lease),
        expires_at=at + check_seconds("retention", retention),
    )


def claim(existing: RunRecord, *, owner: str) -> Claim:
    """The answer to a ``reserve`` that found ``existing``: a RESERVED record of the same owner
    is this owner's own reservation, written by an earlier try whose answer was lost."""
    mine = existing.state is RecordState.RESERVED and existing.owner == owner
    return Claim(created=mine, record=existing)


def same_handle(a: RunHandle, b: RunHandle) -> bool:
    """Whether two handles name the same run, compared as stored (JSON), so a handle read back
    from a store equals the one it was made from even when a timestamp was naive."""
    return a.to_json() == b.to_json()


def take_over(
    record: RunRecord | None, *, expected_owner: str, owner: str, lease_until: float
) -> RunRecord | None:
    """The record ``take_over`` writes, or None when the compare-and-set fails."""
    if record is None or record.state is not RecordState.RESERVED:
        return None
    # ``owner`` already holding it is this call's own take-over, repeated after a lost answer.
    if record.owner not in (expected_owner, owner):
        return None
    return attrs.evolve(record, owner=owner, lease_until=lease_until)


def start(record: RunRecord | None, key: str, *, owner: str, handle: RunHandle) -> RunRecord | None:
    """The record ``record_start`` writes, or None when it stays as is."""
    if record is None:
        raise RecordConflict(f"no record for key {key!r}: it was released, pruned or expired")
    if record.handle is not None:
        if same_handle(record.handle, handle):
            return None
        raise _other_run(key, record.handle, handle)
    if record.owner != owner:
        raise RecordConflict(
            f"key {key!r} is now reserved by {record.owner!r}, not {owner!r}: it was taken over"
        )
    return attrs.evolve(record, state=RecordState.STARTED, handle=handle)


def finish(record: RunRecord | None, key: str, run: Run) -> RunRecord | None:
    """The record ``record_finish`` writes, or None when it stays as is."""
    if record is None:
        raise RecordConflict(f"no record for key {key!r}: it was released, pruned or expired")
    if record.handle is not None and not same_handle(record.handle, run.handle):
        raise _other_run(key, record.handle, run.handle)
    if record.state is RecordState.FINISHED:
        return None
    # Stores keep no raw payload (it need not be JSON): every store returns the same run.
    kept = attrs.evolve(run, raw=None)
    return attrs.evolve(record, state=RecordState.FINISHED, handle=run.handle, run=kept)


def release_allowed(record: RunRecord | None, *, owner: str) -> bool:
    """Whether ``release`` deletes this record."""
    return record is not None and record.state is RecordState.RESERVED and record.owner == owner


def _other_run(key: str, recorded: RunHandle, given: RunHandle) -> RecordConflict:
    return RecordConflict(
        f"key {key!r} records run {recorded.backend}:{recorded.run_id}, "
        f"not {given.backend}:{given.run_id}"
    )


def _number(value: object) -> float:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"not a number: {value!r}")


def decode_record(key: str, fields: Mapping[str, object]) -> RunRecord:
    """A record from its stored fields (numbers or their text; ``handle`` and ``run`` as JSON
    or absent/None), or StoreCorrupted naming the key."""
    try:
        handle = fields.get("handle")
        run = fields.get("run")
        return RunRecord(
            key=key,
            fingerprint=str(fields["fingerprint"]),
            state=RecordState(str(fields["state"])),
            owner=str(fields["owner"]),
            reserved_at=_number(fields["reserved_at"]),
            lease_until=_number(fields["lease_until"]),
            expires_at=_number(fields["expires_at"]),
            handle=None if handle is None else RunHandle.from_json(str(handle)),
            run=None if run is None else Run.from_json(str(run)),
        )
    except (KeyError, ValueError, TypeError, ConfigurationError) as exc:
        raise StoreCorrupted(f"the stored record of key {key!r} is unreadable: {exc}") from None
