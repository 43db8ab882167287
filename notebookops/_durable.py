"""Keyed runs: one run per idempotency key, across processes, crashes and restarts.

``run_and_wait(..., key=K, store=S)`` goes through :func:`keyed_start`:

1. the key is reserved in the store, durably, before any request is sent (with a fingerprint
   of the request: the same key with another request is an IdempotencyConflict);
2. the run is started and its handle recorded, protected, before the first status read;
3. when it ends, the final run is recorded (:func:`record_finish`).

A later call with the same key finds the record: a final run is returned as it was, a handle
is waited on again, and a reservation whose owner is still starting it is waited for. A
reservation left by a call that stopped mid-start (its process died: its lease ran out, or
its process is gone from this machine; or its start failed without telling whether a run was
made) is settled:

* if its owner had not yet marked it "sending" (the mark is written, durably, just before
  the start request goes out), no request was sent: the run is started now;
* otherwise the vendor is asked where it can be (a :class:`RunFinder`: exactly one run of
  the notebook created in the reservation's window is adopted, none means none was made);
  elsewhere it raises StartOutcomeUnknown, unless ``on_ambiguous="start_new"``.

While a keyed start of a notebook is in flight on a RunFinder backend, its process holds the
store's lease for that notebook's starts, so that no other keyed start of it (anywhere in
the fleet using the store) makes a run inside that window: what the window holds is ours.
The lease is short and renewed while the start is in flight, so one left by a process that
died is free again within :data:`START_WINDOW_TTL` (at once for the rerun of its key on the
same machine).

The "sending" mark is the record's owner with a :data:`SENDING` prefix (a compare-and-set
``take_over`` of the reservation by its own owner), so no store needs a field for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import anyio
import attrs

from ._protect import protected
from .backend import NotebookBackend, RunFinder
from .errors import (
    APIError,
    ConfigurationError,
    IdempotencyConflict,
    NotebookOpsError,
    RateLimited,
    RunTimeout,
    StartOutcomeUnknown,
    TransportError,
)
from .models import Capability, Run, RunHandle, RunRequest
from .store import RecordConflict, RecordState, RunRecord, RunStore

__all__ = [
    "START_TIMEOUT",
    "STORE_BOUND",
    "OnAmbiguous",
    "check_key",
    "fingerprint",
    "keyed_start",
    "record_finish",
]

logger = logging.getLogger("notebookops.durable")

OnAmbiguous = Literal["raise", "start_new"]
MAX_KEY_LENGTH: Final = 255
#: How long a keyed start may take before a call on another machine may settle its
#: reservation (on this machine a dead owner is noticed at once). A keyed start is bounded
#: by START_TIMEOUT, and a sent request by its own time limit, well within it.
START_LEASE: Final = 600.0
#: How long a notebook's start lease lasts unless renewed; its holder renews it every third
#: of that while its start is in flight.
START_WINDOW_TTL: Final = 5.0
#: The lease a reservation is left with when its start failed without telling whether a
#: run was made: the next call settles it at once instead of waiting for START_LEASE.
SETTLE_NOW: Final = 0.001
#: The prefix of a reservation's owner once its start request may have been sent.
SENDING: Final = "sending:"
#: The longest a keyed start may wait for its turn before it is abandoned unsent.
START_TIMEOUT: Final = 300.0
#: The longest a store operation of a keyed call is seen through a cancellation or a
#: deadline: longer than the stores' own timeouts (SQLite 30 s, Redis 10 s), so that their
#: errors, not this bound, end a slow one. A record cut short would lose a started run's
#: handle, which is what makes a later call resume instead of starting again.
STORE_BOUND: Final = 60.0
#: How often a call waits for another live call's start to be recorded.
STORE_POLL: Final = 0.2
#: Records are kept at least this long (and at least twice the run's timeout).
MIN_RETENTION: Final = 24 * 3600.0
#: Clock difference allowed between this machine and the vendor when reading a window.
CLOCK_SKEW: Final = timedelta(seconds=5)

Start = Callable[[Callable[[RunHandle], Awaitable[None]]], Awaitable[RunHandle]]


def check_key(key: object, store: object) -> tuple[str, RunStore]:
    """Validate ``key`` and ``store`` (given together), or raise ConfigurationError."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        shown = key if not isinstance(key, str) else f"a string of {len(key)} characters"
        raise ConfigurationError(
            f"key must be a non-empty string of at most {MAX_KEY_LENGTH} characters, got {shown!r}"
        )
    if store is None:
        raise ConfigurationError(
            "key= needs store= (e.g. notebookops.store.SQLiteRunStore('runs.db')): the key is "
            "only worth anything if it is recorded where a restarted process finds it"
        )
    if not isinstance(store, RunStore):
        raise ConfigurationError(f"store must be a RunStore, got {type(store).__name__}")
    return key, store


def retention_for(timeout: float | None) -> float:
    return max(MIN_RETENTION, 2 * timeout) if timeout is not None else MIN_RETENTION


def fingerprint(backend: NotebookBackend, request: RunRequest) -> str:
    """A digest of what the request asks for: the same key must always mean the same run."""
    options = request.options
    if options is not None and attrs.has(type(options)):
        described: Any = [type(options).__qualname__, attrs.asdict(options)]  # type: ignore[arg-type]
    else:
        described = repr(options)
    data = {
        "backend": backend.name,
        "notebook": request.notebook,
        "inputs": request.inputs,
        "blocks": list(request.blocks) if request.blocks is not None else None,
        "options": described,
    }
    text = json.dumps(data, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _new_owner() -> str:
    return f"{uuid.uuid4().hex}@{socket.gethostname()}:{os.getpid()}"


def _sending(owner: str) -> str:
    return owner if owner.startswith(SENDING) else SENDING + owner


def _may_have_sent(owner: str) -> bool:
    return owner.startswith(SENDING)


def _owner_is_gone(owner: str) -> bool:
    """True when the owner ran on this machine and its process no longer exists."""
    _, _, place = owner.partition("@")
    host, _, pid_text = place.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process: another call of it is starting the run
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _nothing_started(error: BaseException) -> bool:
    """Whether a failed start provably made no run (its reservation may then be released)."""
    if isinstance(error, RunTimeout):
        return error.handle is None
    if isinstance(error, TransportError):
        return not error.request_sent
    if isinstance(error, RateLimited):
        return True
    if isinstance(error, APIError):
        return error.status < 500
    return isinstance(error, ConfigurationError)


@attrs.define
class _KeyedStart:
    backend: NotebookBackend
    request: RunRequest
    key: str
    store: RunStore
    fingerprint: str
    retention: float
    on_ambiguous: OnAmbiguous
    owner: str = attrs.field(factory=_new_owner)

    @property
    def lease_name(self) -> str | None:
        """The notebook's start lease, where a window of its runs settles a dead start."""
        if not _can_find_runs(self.backend):
            return None
        return f"start:{self.backend.name}:{self.request.notebook}"

    async def run(self, start: Start) -> RunHandle | Run:
        # A key whose run is known needs no start window: resuming never waits for another
        # key's start of the same notebook.
        known = await self.store.get(self.key)
        if known is not None:
            if (found := self._known(known)) is not None:
                return found
            await self._free_lease_of(known.owner)
        while True:
            outcome = await self._in_start_window(lambda: self._claim(start))
            if outcome is not None:
                return outcome
            await anyio.sleep(STORE_POLL)  # another live call is starting it

    async def _claim(self, start: Start) -> RunHandle | Run | None:
        """Reserve the key and start its run, or find its run; None while another live call
        is starting it (or the record changed meanwhile)."""
        # Protected: a reservation made as the caller is cancelled is still known, and given
        # back (by _start), rather than left to block the key until its lease runs out.
        claim = await protected(
            lambda: self.store.reserve(
                self.key,
                self.fingerprint,
                owner=self.owner,
                lease=START_LEASE,
                retention=self.retention,
            ),
            STORE_BOUND,
        )
        if claim.created:
            return await self._start(start)
        record = claim.record
        if (found := self._known(record)) is not None:
            return found
        if record.lease_until <= time.time() or _owner_is_gone(record.owner):
            return await self._settle(record, start)
        return None

    def _known(self, record: RunRecord) -> RunHandle | Run | None:
        """The record's final run or handle (after checking it is this request's key)."""
        self._check_fingerprint(record)
        if record.state is RecordState.FINISHED and record.run is not None:
            return record.run
        if record.handle is not None:
            logger.info("key %r: resuming %s run %s", self.key, *_ids(record.handle))
            return record.handle
        return None

    def _check_fingerprint(self, record: RunRecord) -> None:
        if record.fingerprint != self.fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {self.key!r} was first used for another request (a different "
                "backend, notebook, inputs, blocks or options); its run stands. Use a new key "
                "for a different request",
                key=self.key,
            )

    async def _in_start_window(
        self, body: Callable[[], Awaitable[RunHandle | Run | None]]
    ) -> RunHandle | Run | None:
        """``body()``, holding the notebook's start lease (on a RunFinder backend), renewed
        meanwhile."""
        name = self.lease_name
        if name is None:
            return await body()
        # Polled: the store is shared with other processes, which no event here can hear.
        while not await self.store.acquire_lease(name, owner=self.owner, ttl=START_WINDOW_TTL):  # noqa: ASYNC110
            await anyio.sleep(STORE_POLL)
        outcome: RunHandle | Run | None = None
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._renew_lease, name)
                try:
                    outcome = await body()
                except Exception as error:
                    failure = error  # raised as it is, not in an ExceptionGroup
                finally:
                    group.cancel_scope.cancel()
        finally:
            await self._drop_lease(name)
        if failure is not None:
            raise failure
        return outcome

    async def _drop_lease(self, name: str) -> None:
        # A lease not given back expires in START_WINDOW_TTL: not worth hiding the start's
        # outcome (a handle) behind a store error.
        try:
            await protected(lambda: self.store.release_lease(name, owner=self.owner), STORE_BOUND)
        except Exception as error:
            logger.warning("could not give the start lease %r back: %s", name, error)

    async def _free_lease_of(self, owner: str) -> None:
        """Free the notebook's start lease if ``owner``, a process of this machine that is
        gone, holds it: a rerun after a crash need not wait for it to expire. (Renewing a
        lease as its holder succeeds only for its holder, or when it is free: either way
        it is then given back.)"""
        name = self.lease_name
        if name is None or not _owner_is_gone(owner):
            return
        holder = owner.removeprefix(SENDING)
        if await self.store.acquire_lease(name, owner=holder, ttl=START_WINDOW_TTL):
            await self.store.release_lease(name, owner=holder)

    async def _renew_lease(self, name: str) -> None:
        while True:
            await anyio.sleep(START_WINDOW_TTL / 3)
            try:
                await self.store.acquire_lease(name, owner=self.owner, ttl=START_WINDOW_TTL)
            except Exception as error:
                # The lease only keeps the window of a dead start unambiguous; a start
                # that loses it goes on (a settle then sees two runs and says so).
                logger.warning("could not renew the start lease %r: %s", name, error)

    async def _start(self, start: Start) -> RunHandle:
        """Start the run this call reserved; a start that made no run gives the key back."""
        holder = _sending(self.owner)
        # Durably marked before the request goes out: a reservation without the mark
        # provably sent nothing, whatever happened to its process.
        try:
            marked = await self.store.take_over(
                self.key, expected_owner=self.owner, owner=holder, lease=START_LEASE
            )
        except BaseException:
            # Nothing was sent (the mark may or may not have been written): give the key back.
            for owner in (self.owner, holder):
                await self._release(owner)
            raise
        if marked is None:
            raise RecordConflict(
                f"the reservation of idempotency key {self.key!r} was taken over by another "
                "call before this one sent its start (nothing was sent); call again"
            )

        async def record(handle: RunHandle) -> None:
            await self.store.record_start(self.key, owner=holder, handle=handle)

        try:
            return await start(record)
        except BaseException as error:
            if _nothing_started(error) or isinstance(error, anyio.get_cancelled_exc_class()):
                # (A cancellation reaches a start only before its request left: nothing was
                # made, see orchestration's module docs.)
                await self._release(holder)
            else:
                await self._settle_soon(holder)
            raise

    async def _release(self, owner: str) -> None:
        """Give back the reservation ``owner`` holds (protected; a store that fails here is
        logged, so that the error that ended the start is the one raised)."""
        try:
            await protected(lambda: self.store.release(self.key, owner=owner), STORE_BOUND)
        except Exception as error:
            logger.warning("key %r: could not give its reservation back: %s", self.key, error)

    async def _settle_soon(self, holder: str) -> None:
        """The start failed and may have made a run: let the next call settle the key at
        once (a record already STARTED is left as is)."""
        try:
            await protected(
                lambda: self.store.take_over(
                    self.key, expected_owner=holder, owner=holder, lease=SETTLE_NOW
                ),
                STORE_BOUND,
            )
        except Exception as error:
            logger.warning("key %r: could not mark its start for settling: %s", self.key, error)

    async def _settle(self, record: RunRecord, start: Start) -> RunHandle | None:
        """A reservation whose owner died mid-start: adopt its run, start anew where provably
        none was made, or raise StartOutcomeUnknown. None: the record changed meanwhile."""
        if not _may_have_sent(record.owner):
            # Its owner stopped before marking the start "sending": nothing was sent.
            if await self._take_over(record, self.owner) is None:
                return None
            logger.info("key %r: its earlier call sent no start; starting it now", self.key)
            return await self._start(start)
        since = datetime.fromtimestamp(record.reserved_at, UTC) - CLOCK_SKEW
        until = datetime.now(UTC) + CLOCK_SKEW
        found: list[RunHandle] | None = None
        if _can_find_runs(self.backend):
            assert isinstance(self.backend, RunFinder)
            found = await self.backend.find_runs(self.request.notebook, since=since, until=until)
            if len(found) > 1:
                raise self._unknown(
                    record,
                    f"{len(found)} runs of the notebook were created while it was reserved "
                    f"({', '.join(handle.run_id for handle in found)})",
                    advice="Find its run among them at the vendor (on_ambiguous cannot tell "
                    "them apart); a new key starts another run",
                )
        elif self.on_ambiguous != "start_new":
            raise self._unknown(
                record,
                f"the {self.backend.name} backend offers no way to look for the run it may "
                "have started",
            )
        if found:
            # Taken over still marked "sending": the run exists, so a call that finds this
            # settle dead before it recorded the run must look for it in turn, never
            # conclude that nothing was sent.
            holder = _sending(self.owner)
            if await self._take_over(record, holder) is None:
                return None
            (handle,) = found
            logger.info("key %r: adopting %s run %s", self.key, *_ids(handle))
            await self.store.record_start(self.key, owner=holder, handle=handle)
            return handle
        if await self._take_over(record, self.owner) is None:
            return None
        logger.info("key %r: its earlier start made no run; starting it now", self.key)
        return await self._start(start)

    async def _take_over(self, record: RunRecord, owner: str) -> RunRecord | None:
        return await self.store.take_over(
            self.key, expected_owner=record.owner, owner=owner, lease=START_LEASE
        )

    def _unknown(
        self,
        record: RunRecord,
        evidence: str,
        *,
        advice: str = "Check the vendor, then call again with on_ambiguous='start_new' to "
        "start one",
    ) -> StartOutcomeUnknown:
        return StartOutcomeUnknown(
            f"idempotency key {self.key!r} was reserved by {record.owner}, which stopped "
            f"before recording a run of {self.request.notebook!r}: it may or may not have "
            f"started one. {advice}",
            notebook=self.request.notebook,
            evidence=evidence,
        )


def _can_find_runs(backend: NotebookBackend) -> bool:
    return Capability.RECONCILE_START in backend.capabilities and isinstance(backend, RunFinder)


def _ids(handle: RunHandle) -> tuple[str, str]:
    return handle.backend, handle.run_id


async def keyed_start(
    backend: NotebookBackend,
    request: RunRequest,
    key: str,
    store: RunStore,
    *,
    start: Start,
    timeout: float | None,
    on_ambiguous: OnAmbiguous,
) -> RunHandle | Run:
    """The key's run: the handle of a run started now or earlier, or its recorded final Run.

    ``start(record)`` starts the run, calling ``record(handle)`` (protected) before it returns.
    """
    if on_ambiguous not in ("raise", "start_new"):
        raise ConfigurationError(
            f"on_ambiguous must be 'raise' or 'start_new', got {on_ambiguous!r}"
        )
    keyed = _KeyedStart(
        backend,
        request,
        key,
        store,
        fingerprint(backend, request),
        retention_for(timeout),
        on_ambiguous,
    )
    try:
        return await keyed.run(start)
    except NotebookOpsError:
        raise
    except Exception as error:
        error.add_note(f"notebookops: while starting the run of idempotency key {key!r}")
        raise


async def record_finish(store: RunStore, key: str, run: Run) -> None:
    """Record the run's end; a store that fails is logged, never raised (the run's result is
    what the caller waits for, and a later call finds the run finished at the vendor)."""
    try:
        await protected(lambda: store.record_finish(key, run), STORE_BOUND)
    except Exception as error:
        logger.warning(
            "could not record the end of %s run %s for key %r: %s", *_ids(run.handle), key, error
        )
