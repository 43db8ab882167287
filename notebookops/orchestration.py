"""Start runs and follow them to the end, on any backend.

This module knows nothing about vendors: it talks to :class:`NotebookBackend` and adapts to
``backend.capabilities`` only. The guarantees (see the README's "Guarantees"):

* a run-starting request is never repeated by us; a started run's handle reaches ``on_start``
  before the first status read, and is attached (``err.handle``) to every error raised after;
* polling is capped, jittered and has a floor (:class:`PollPolicy`); transient status-read
  errors are retried until the deadline, and a failed status read never cancels a run;
* at the deadline the run is cancelled (``on_timeout="cancel"``, when the backend can) or left
  running (``"detach"``), and :class:`RunTimeout` says which;
* if the caller is cancelled, the remote run is cancelled best-effort in a shielded scope with
  its own short deadline (unless ``cancel_on_interrupt=False``), then the cancellation
  propagates. Cancellation is never swallowed.

Shielding covers every way a task is cancelled: anyio cancel scopes, and on asyncio also
``Task.cancel()`` itself (``asyncio.timeout``, ``wait_for``, a failing ``TaskGroup`` sibling),
which anyio's shield cannot stop. On asyncio a shielded section runs as a task of its own, and
a cancellation that arrives meanwhile is delivered again once it is over.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import sys
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from typing import Any, Literal, TypeVar, cast

import anyio
import attrs

from . import _deadline
from .backend import ChangeWatchingBackend, NotebookBackend, StreamingBackend
from .errors import (
    ConfigurationError,
    NotebookOpsError,
    RateLimited,
    ResponseDecodeError,
    RunCancelled,
    RunFailed,
    RunTimeout,
    ServerError,
    StartOutcomeUnknown,
    TransportError,
)
from .models import Capability, Run, RunHandle, RunRequest, RunState
from .policies import PollPolicy

__all__ = [
    "DEFAULT_TIMEOUT",
    "RunOutcome",
    "is_transient",
    "run_and_wait",
    "run_many",
    "start_run",
    "wait_for_run",
    "watch",
]

logger = logging.getLogger("notebookops.orchestration")

#: One hour: generous, because peers that shipped 10-20 minute defaults all had to raise them.
DEFAULT_TIMEOUT = 3600.0
#: Bound on how long starting a run may take (the start is shielded from caller cancellation
#: so its handle is never lost, hence it needs its own bound).
DEFAULT_START_TIMEOUT = 300.0
#: Bound on the best-effort remote cancel after a deadline or caller cancellation.
DEFAULT_CANCEL_TIMEOUT = 30.0

OnTimeout = Literal["cancel", "detach"]
UpdateCallback = Callable[[Run], Awaitable[None] | None]
StartCallback = Callable[[RunHandle], Awaitable[None] | None]

_RNG = random.Random()
_NO_CONTEXT = _deadline.NO_CONTEXT
#: The message a shielded section's own time limit cancels its task with.
_EXPIRED = _deadline.EXPIRED
_DEFAULT_POLL: PollPolicy | None = None

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


def _default_poll() -> PollPolicy:
    # PollPolicy is frozen, so one default instance serves every wait (its validation is
    # not free, and run_and_wait is called once per run).
    global _DEFAULT_POLL
    if _DEFAULT_POLL is None:
        _DEFAULT_POLL = PollPolicy()
    return _DEFAULT_POLL


def _running_asyncio() -> Any:
    """The asyncio module when the running event loop is asyncio's, else None (trio)."""
    # Not imported here: importing asyncio costs more than this whole package, and when
    # nothing has imported it, the running loop is not asyncio's.
    aio: Any = sys.modules.get("asyncio")
    if aio is not None and anyio.get_cancelled_exc_class() is aio.CancelledError:
        return aio
    return None


def _running_loop() -> Any:
    """The running asyncio event loop, or None on another anyio backend (trio)."""
    aio = _running_asyncio()
    return aio.get_running_loop() if aio is not None else None


def _loop_clock() -> tuple[Clock, Sleep]:
    """The running event loop's clock and sleep, looked up once per wait.

    anyio's module-level ``current_time`` and ``sleep`` find the running backend on every
    call, which costs more than the rest of a poll's bookkeeping. On asyncio they come down
    to ``loop.time`` and ``asyncio.sleep``, so those are used directly; anything else (trio)
    goes through anyio.
    """
    aio = _running_asyncio()
    if aio is not None:
        return aio.get_running_loop().time, aio.sleep
    return anyio.current_time, anyio.sleep


async def _shielded(
    timeout: float,
    work: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    unsent_until: float | None = None,
    record_sends: bool = False,
    gate: Any = None,
) -> tuple[bool, T | None]:
    """Await ``work(*args)`` to its end whatever happens to the caller, for up to ``timeout``
    seconds: ``(True, result)``, or ``(False, None)`` if the time ran out first (the work is
    then cancelled). The work's own errors propagate.

    A caller cancelled meanwhile is cancelled again as soon as this returns, so that no
    cancellation is lost. On asyncio the work runs as a task of its own: anyio's shield only
    holds off anyio cancel scopes, and ``Task.cancel()`` (``asyncio.timeout``, ``wait_for``,
    a task group) would otherwise abort the work mid-request.

    ``unsent_until`` (a start; asyncio only): while the work's request waits its turn in the
    transport and nothing it sent may have taken effect (only a 429 or a refused connection
    so far), the section is not shielded (a cancellation of the caller abandons the work and
    propagates) and ``timeout`` is not running: it counts from the send of a request that
    may take effect. If the vendor has taken nothing by ``unsent_until`` (loop time), the
    work is abandoned and :class:`_NotSent` raised. See :class:`_deadline.StartSection`.

    ``record_sends`` (asyncio only): the section is only recorded, never abandoned, and if its
    time runs out while its request still waits for its turn in the transport, nothing of it
    taken, :class:`_NotTaken` is raised instead of returning ``(False, None)``.

    ``gate`` (a start, asyncio only): the transport's connection gate. The caller takes a
    place there before the work gets its task, waiting for one if need be, and hands it over
    (the work's first request uses it): nothing is sent while it waits, so nothing needs
    shielding, and a start queued behind thousands keeps half the objects alive.
    """
    aio = _running_asyncio()
    if aio is None:
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + timeout):
            return True, await work(*args)
        return False, None
    loop = aio.get_running_loop()
    caller = aio.current_task()
    held: Any = None
    section: _deadline.StartSection | None = None
    if gate is not None and unsent_until is not None:
        # The start's connection is taken here, in the caller's task, before the start gets a
        # task of its own. A start that has to wait for one has sent nothing meanwhile, so
        # the wait needs no shield: a cancellation of the caller simply propagates. It waits
        # in its section already, whose timer ends the wait at the deadline (_NotSent) and
        # then goes on as the start's: no second timer per start.
        if gate.locked():
            section = _deadline.StartSection(caller, loop, timeout, unsent_until)
            section.queued = True
            _deadline._STARTS[caller] = section
            requests_before = caller.cancelling()
            try:
                await gate.acquire()
            except aio.CancelledError:
                if section.timer is not None:
                    section.timer.cancel()
                if section.outcome == _deadline.NOT_SENT and caller.uncancel() <= requests_before:
                    raise _NotSent from None
                raise
            finally:
                del _deadline._STARTS[caller]
            section.queued = False
        else:
            await gate.acquire()  # a place is free: taken at once, without suspending
        held = gate
    requests_before = caller.cancelling()
    deadline = loop.time() + timeout
    task = loop.create_task(work(*args))
    del work, args  # the task has them: fewer objects alive per start queued for a connection
    # The transport's retries see the section's own deadline, not the caller's.
    _deadline.push(task, deadline)
    timer: Any = None
    if section is not None:
        # It waited for its connection in the caller's task: its section is the task's now.
        section.task = task
        section.held = held
        _deadline._STARTS[task] = section
    elif record_sends or unsent_until is not None:
        section = _deadline.StartSection(
            task,
            loop,
            timeout,
            math.inf if unsent_until is None else unsent_until,
            abandonable=not record_sends,
            held=held,
        )
        _deadline._STARTS[task] = section
    else:
        # An empty context: a cancelled timer stays in the loop's heap (with its context)
        # until its time comes, long after the section is over. A plain function, not
        # task.cancel: a bound method would be one more object per start.
        timer = loop.call_at(deadline, _cancel_expired, task, context=_NO_CONTEXT)
    interruption: BaseException | None = None
    abandoned = False
    anyio_shield: anyio.CancelScope | None = None
    try:
        while not task.done():
            # What asyncio.shield does, with fewer objects: a start is made for every run.
            waiter = loop.create_future()
            wake = functools.partial(_wake_for, waiter)
            task.add_done_callback(wake, context=_NO_CONTEXT)
            try:
                await waiter
            except aio.CancelledError as error:
                task.remove_done_callback(wake)
                if task.done():
                    break
                interruption = error
                if (
                    section is not None
                    and section.abandonable
                    and not section.in_doubt
                    and not abandoned
                ):
                    # Nothing sent: no run can exist. Abandon the work (at once where it waits
                    # its turn, else where it next would or would send) and let the
                    # cancellation through. Work that never reaches the transport finishes.
                    abandoned = section.abandon = True
                    if section.queued:
                        task.cancel(_deadline.ABORTED)
                if anyio_shield is None and anyio.current_effective_deadline() == -math.inf:
                    # An anyio scope: it re-delivers its cancellation on every loop
                    # iteration until the task leaves it, which would make this loop spin.
                    # Entered only now: its task state would outlive the section.
                    anyio_shield = anyio.CancelScope(shield=True)
                    anyio_shield.__enter__()
    finally:
        if section is not None:
            del _deadline._STARTS[task]
            timer = section.timer
            if section.held is not None:
                section.held.release()  # the work made no request through that transport
        if timer is not None:
            timer.cancel()
        _deadline.pop(task, None)
        if anyio_shield is not None:
            anyio_shield.__exit__(None, None, None)
    if task.cancelled() and (abandoned or (section and section.outcome == _deadline.NOT_SENT)):
        # Abandoned with nothing sent: the caller's cancellation, as if never held off, or
        # else the deadline.
        if interruption is not None:
            raise interruption
        raise _NotSent
    # An anyio scope delivers its cancellation again by itself once the section is over;
    # a Task.cancel() absorbed above is asked for again here, uncancelling first so that
    # the count of requests is unchanged (asyncio.timeout tells its own cancellation by it).
    if caller.cancelling() > requests_before and anyio.current_effective_deadline() != -math.inf:
        caller.uncancel()
        caller.cancel(interruption.args[0] if interruption and interruption.args else None)
    if task.cancelled():
        try:
            task.result()
        except aio.CancelledError as cancelled:
            if section is not None and section.outcome == _deadline.EXPIRED_UNSENT:
                raise _NotTaken from None
            if cancelled.args[:1] == (_EXPIRED,) or (
                section is not None and section.outcome == _deadline.EXPIRED
            ):
                return False, None
        raise aio.CancelledError("notebookops: a shielded section was cancelled from outside")
    return True, task.result()


class _NotSent(Exception):
    """A start was abandoned at its caller's deadline, the vendor having taken nothing."""


class _NotTaken(Exception):
    """A recorded section's time ran out while the vendor had taken nothing of it."""


class _CancelNotSent(TimeoutError):
    """A remote cancel that waited its whole time limit for its turn: it was never sent."""


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying a status read for: network trouble, 429, 5xx, garbled bodies."""
    if isinstance(error, TransportError):
        return error.retryable
    return isinstance(error, RateLimited | ServerError | ResponseDecodeError)


async def _invoke(callback: Callable[[Any], Awaitable[None] | None], value: Any) -> None:
    result = callback(value)
    if inspect.isawaitable(result):
        await result


def _positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a finite number of seconds > 0, got {value!r}")


def _as_request(
    notebook: str | RunRequest,
    inputs: Mapping[str, Any] | None,
    blocks: Sequence[str] | None,
    options: object | None,
) -> RunRequest:
    if isinstance(notebook, RunRequest):
        if inputs is not None or blocks is not None or options is not None:
            raise ConfigurationError(
                "pass inputs/blocks/options inside the RunRequest, not next to it"
            )
        return notebook
    if not isinstance(notebook, str):
        raise ConfigurationError(
            f"notebook must be an id string or a RunRequest, got {type(notebook).__name__}"
        )
    return RunRequest(notebook=notebook, inputs=inputs or {}, blocks=blocks, options=options)


def _change_key(run: Run) -> tuple[object, ...]:
    return (run.state, run.vendor_state, run.progress, len(run.outputs))


def _streams(backend: NotebookBackend) -> bool:
    # The capability first: isinstance against a runtime-checkable protocol is slow.
    return Capability.STREAMING in backend.capabilities and isinstance(backend, StreamingBackend)


def _retry_delay(
    error: Exception, handle: RunHandle, poll: PollPolicy, attempt: int, elapsed: float
) -> float:
    """The wait before the next read after a transient status-read error (logged)."""
    delay = poll.delay(attempt, _RNG, elapsed=elapsed)
    if isinstance(error, RateLimited) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    logger.warning(
        "status read for %s run %s failed (%s); retrying in %.1fs",
        handle.backend,
        handle.run_id,
        error,
        delay,
    )
    return delay


async def _observe(
    backend: NotebookBackend,
    handle: RunHandle,
    poll: PollPolicy,
    tracker: _Tracker,
) -> AsyncGenerator[Run, None]:
    """Every Run read for ``handle`` until a terminal one: pushed if the backend streams,
    polled otherwise. Transient read errors are logged and retried forever; the caller's
    deadline bounds the whole thing."""
    streaming = _streams(backend)
    clock, sleep = _loop_clock()
    attempt = 0
    began = clock()
    while True:
        try:
            if streaming:
                assert isinstance(backend, StreamingBackend)
                async with aclosing(backend.watch_run(handle)) as stream:
                    async for run in stream:
                        tracker.last_error = None
                        yield run
                        if run.state.is_terminal:
                            return
            # Polling, or the stream ended without a terminal state: read once.
            run = await backend.get_run(handle)
            tracker.last_error = None
            yield run
            if run.state.is_terminal:
                return
            delay = poll.delay(attempt, _RNG, elapsed=clock() - began)
        except Exception as error:  # never BaseException: cancellation must propagate
            if not is_transient(error):
                raise
            tracker.last_error = error
            delay = _retry_delay(error, handle, poll, attempt, clock() - began)
        attempt += 1
        if tracker.expired:
            raise _DeadlineMissed
        await sleep(delay)


async def _poll(
    backend: NotebookBackend,
    handle: RunHandle,
    poll: PollPolicy,
    tracker: _Tracker,
    on_update: UpdateCallback | None,
) -> Run:
    """:func:`_observe`'s polling loop with :func:`_follow`'s handling of each read folded in:
    the same reads, retries, logs and ``on_update`` calls, without an async generator and
    its closing between every read and the caller (the per-request cost of a wait matters
    when thousands run at once). Returns the first terminal Run.

    A :class:`~notebookops.backend.ChangeWatchingBackend` that watches this run's changes is
    handed the poll schedule after the first read and returns only changes: waits that share
    reads then sleep until their run changes instead of waking for every read. When nobody
    listens (no ``on_update``), it is handed the wait before any read and returns only the
    terminal read (``quiet``): the first read is the backend's to make or skip.

    On asyncio it sleeps on a bare future and timer, as ``asyncio.sleep`` does, but with no
    coroutine of its own nor a copy of the task's context per sleep: with thousands of waits
    asleep at once, every object a sleeping wait keeps alive is walked by each full garbage
    collection."""
    loop = _running_loop()
    # Duck-typed: isinstance against a runtime-checkable Protocol costs ~20 µs, a sixth of
    # this loop's whole cost per run. Neither bound method is kept: each would be one more
    # object alive per sleeping wait.
    watches_changes: Callable[[RunHandle], bool] | None = getattr(backend, "watches_changes", None)
    hand_over = watches_changes is not None and watches_changes(handle)
    del watches_changes
    # Nobody listens for the changes of a run in progress: the backend need not wake this
    # wait for them (the deadline's RunTimeout reads the run once more instead).
    tracker.quiet = hand_over and on_update is None
    schedule = _Schedule(poll, loop)
    retrying = False
    while True:
        try:
            if hand_over and (tracker.quiet or tracker.last_run is not None) and not retrying:
                run = await cast(ChangeWatchingBackend, backend).next_change(
                    handle, tracker.last_run, schedule, quiet=tracker.quiet
                )
            else:
                run = await backend.get_run(handle)
        except Exception as error:  # never BaseException: cancellation must propagate
            if not is_transient(error):
                raise
            tracker.last_error = error
            delay = _retry_delay(error, handle, poll, schedule.attempt, schedule.elapsed())
            schedule.attempt += 1
            retrying = True
        else:
            # Outside the try: an error raised by on_update is the caller's, never a
            # transient read error to retry.
            retrying = False
            tracker.last_error = None
            # The previous read is the tracker's: no change key is kept between reads (one
            # object fewer alive per sleeping wait, none made when nobody listens).
            previous, tracker.last_run = tracker.last_run, run
            if on_update is not None and (
                previous is None or _change_key(run) != _change_key(previous)
            ):
                await _invoke(on_update, run)
            del previous
            if run.state.is_terminal:
                return run
            if not hand_over:
                delay = schedule()
            elif not tracker.expired:
                continue  # it sleeps on the schedule itself
        if tracker.expired:
            raise _DeadlineMissed
        if loop is None:
            await anyio.sleep(delay)
            continue
        waiter = loop.create_future()
        timer = loop.call_later(delay, _wake, waiter, context=_NO_CONTEXT)
        try:
            await waiter
        finally:
            timer.cancel()


def _now(loop: Any) -> float:
    return loop.time() if loop is not None else anyio.current_time()


class _Schedule:
    """A polling wait's schedule: calling it gives the delay before the next read, from its
    PollPolicy and the time waited so far. Handed to ``next_change`` as the wait's
    ``next_delay`` itself (a bound method would be one more object, a closure six, alive per
    sleeping wait)."""

    __slots__ = ("attempt", "began", "loop", "poll")

    def __init__(self, poll: PollPolicy, loop: Any) -> None:
        self.poll = poll
        self.loop = loop
        self.began = _now(loop)
        self.attempt = 0

    def elapsed(self) -> float:
        return _now(self.loop) - self.began

    def __call__(self) -> float:
        """The delay before the next read (each call is one read)."""
        delay = self.poll.delay(self.attempt, _RNG, elapsed=self.elapsed())
        self.attempt += 1
        return delay


def _cancel_expired(task: Any) -> None:
    """A shielded section's time limit: cancel its task, saying why."""
    task.cancel(_EXPIRED)


def _wake(waiter: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_for(waiter: Any, _done: object) -> None:
    # A done-callback may already be scheduled when the waiter is cancelled: check first.
    _wake(waiter)


class _DeadlineMissed(Exception):
    """Raised by a wait that finds its deadline passed without having been cancelled by it:
    code on the way swallowed the timer's cancellation. The wait then ends at its next read
    instead of polling on past the deadline."""


def _expire(tracker: _Tracker, task: Any) -> None:
    """The wait's deadline timer (asyncio): cancel the task, noting that the deadline did."""
    tracker.expired = True
    task.cancel()


async def _stream(
    backend: NotebookBackend,
    handle: RunHandle,
    poll: PollPolicy,
    tracker: _Tracker,
    on_update: UpdateCallback | None,
) -> Run:
    """:func:`_poll`'s counterpart for a backend that pushes updates (it polls only if the
    stream ends early). Returns the first terminal Run."""
    last_key: tuple[object, ...] | None = None
    async with aclosing(_observe(backend, handle, poll, tracker)) as runs:
        async for run in runs:
            tracker.last_run = run
            key = _change_key(run)
            if on_update is not None and key != last_key:
                await _invoke(on_update, run)
            last_key = key
            if run.state.is_terminal:
                return run
    raise AssertionError("unreachable: _observe ends only after a terminal Run")  # pragma: no cover


@attrs.define
class _Tracker:
    last_run: Run | None = None
    last_error: BaseException | None = None
    #: Set by the deadline's timer when it cancels the wait (asyncio only).
    expired: bool = False
    #: The backend reports this wait's run only once it is terminal, so ``last_run`` may
    #: be older than what the backend has seen (see ``next_change``'s ``quiet``).
    quiet: bool = False


async def watch(
    backend: NotebookBackend, handle: RunHandle, *, poll: PollPolicy | None = None
) -> AsyncGenerator[Run, None]:
    """Yield the run each time its state (or progress, or output count) changes, ending after
    a terminal state. Uses the backend's native stream when it has one, else polls.

    There is no deadline here: wrap it in ``anyio.fail_after`` or use :func:`wait_for_run`.
    Transient status-read errors are retried (logged); others are raised with ``err.handle``.
    """
    tracker = _Tracker()
    last_key: tuple[object, ...] | None = None
    try:
        async with aclosing(_observe(backend, handle, poll or _default_poll(), tracker)) as runs:
            async for run in runs:
                key = _change_key(run)
                if key != last_key:
                    last_key = key
                    yield run
    except NotebookOpsError as error:
        raise error.with_handle(handle) from error.__cause__


async def start_run(
    backend: NotebookBackend,
    request: RunRequest,
    *,
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> RunHandle:
    """Start a run without waiting for it: the first half of :func:`run_and_wait`.

    Once its request is sent, the start is shielded from caller cancellation (so a run the
    vendor accepted is never lost: the cancellation takes effect right after, when the handle
    is known) and bounded by ``start_timeout``; if that expires, the outcome is unknown and
    StartOutcomeUnknown says so. Before that, while the request still waits its turn in the
    transport (the rate limiter, a free connection, the pause before retrying a 429), the
    vendor has taken nothing: a cancellation abandons the start at once, and that wait does
    not count against ``start_timeout`` (thousands of starts queued behind a vendor's rate
    limit are not "outcome unknown").
    """
    _positive("start_timeout", start_timeout)
    outcome = await _shielded(
        start_timeout,
        backend.start_run,
        request,
        unsent_until=math.inf,
        gate=getattr(backend, "_connection_gate", None),
    )
    return _started(backend, request, start_timeout, outcome)


def _started(
    backend: NotebookBackend,
    request: RunRequest,
    start_timeout: float,
    outcome: tuple[bool, RunHandle | None],
) -> RunHandle:
    """The handle of a start :func:`_shielded` finished, or StartOutcomeUnknown."""
    finished, handle = outcome
    if not finished or handle is None:
        raise StartOutcomeUnknown(
            f"starting {request.notebook!r} on {backend.name} did not finish within "
            f"{start_timeout:g}s; the run may or may not have started",
            notebook=request.notebook,
            evidence="start request abandoned at its time limit",
        )
    return handle


async def _cancel_best_effort(
    backend: NotebookBackend, handle: RunHandle, cancel_timeout: float
) -> BaseException | None:
    """Cancel the remote run, shielded from outer cancellation, within ``cancel_timeout``.
    Returns the error if it failed (None on success)."""
    error: Exception
    try:
        finished, _ = await _shielded(cancel_timeout, backend.cancel_run, handle, record_sends=True)
    except _NotTaken:
        # Thousands of waits cancelled at once queue their cancels for a turn: say that this
        # one never left, rather than that it may have failed.
        error = _CancelNotSent(
            f"the cancel request was still waiting for its turn (the rate limiter, a free "
            f"connection) after {cancel_timeout:g}s; it was never sent"
        )
    except Exception as caught:
        error = caught
    else:
        if not finished:
            return TimeoutError(f"cancel did not complete within {cancel_timeout:g}s")
        logger.info("cancelled %s run %s", handle.backend, handle.run_id)
        return None
    logger.warning("could not cancel %s run %s: %s", handle.backend, handle.run_id, error)
    return error


async def _final_read(
    backend: NotebookBackend, handle: RunHandle, last: Run | None, budget: float
) -> Run | None:
    """One shielded, bounded status read after cancelling, to report the state honestly."""
    try:
        finished, run = await _shielded(budget, backend.get_run, handle)
    except Exception:
        return last
    return run if finished and run is not None else last


def _outcome(run: Run, raise_on_failure: bool) -> Run:
    if raise_on_failure and run.state is RunState.FAILED:
        reason = run.error.message if run.error else "no reason given by the vendor"
        where = ""
        if run.error and (run.error.cell_id or run.error.cell_index is not None):
            where = f" in cell {run.error.cell_id or run.error.cell_index}"
        raise RunFailed(f"{run.handle.backend} run {run.run_id} failed{where}: {reason}", run=run)
    if raise_on_failure and run.state is RunState.CANCELLED:
        raise RunCancelled(f"{run.handle.backend} run {run.run_id} was cancelled", run=run)
    return run


async def _follow(
    backend: NotebookBackend,
    handle: RunHandle,
    *,
    deadline: float,
    timeout: float | None,
    poll: PollPolicy,
    on_timeout: OnTimeout,
    raise_on_failure: bool,
    on_update: UpdateCallback | None,
    on_start: StartCallback | None,
    cancel_on_interrupt: bool,
    cancel_timeout: float,
) -> Run:
    tracker = _Tracker()
    can_cancel = Capability.CANCEL in backend.capabilities
    try:
        if on_start is not None:
            await _invoke(on_start, handle)
        final: Run | None = None
        follow = _stream if _streams(backend) else _poll
        aio = _running_asyncio()
        if aio is None:
            with anyio.CancelScope(deadline=deadline):
                final = await follow(backend, handle, poll, tracker, on_update)
        else:
            # What asyncio.timeout_at does, with a third of the objects alive for as long as
            # the wait (anyio's scope keeps twice as many): a timer with no context of its
            # own that cancels the task, told apart from any other cancellation, as
            # asyncio.timeout tells it, by the task's count of cancel requests. Each full
            # garbage collection walks these objects for every wait in flight. The
            # transport learns the deadline from _deadline.
            task = aio.current_task()
            requests_before = task.cancelling()
            timer = None
            if deadline != math.inf:
                timer = aio.get_running_loop().call_at(
                    deadline, _expire, tracker, task, context=_NO_CONTEXT
                )
            previous = _deadline.push(task, deadline)
            try:
                final = await follow(backend, handle, poll, tracker, on_update)
            except aio.CancelledError:
                if not tracker.expired:
                    raise
                tracker.expired = False
                if task.uncancel() > requests_before:
                    raise  # cancelled by someone else too: that wins
            except _DeadlineMissed:
                pass  # the finally below settles the count
            finally:
                if timer is not None:
                    timer.cancel()
                # The timer fired, but its cancellation never reached the wait: something
                # swallowed it, having taken its request back (as aiohttp's timer does) or
                # not. A request still counted is the timer's: take it back.
                if tracker.expired and task.cancelling() > requests_before:
                    task.uncancel()
                _deadline.pop(task, previous)
        if final is not None:
            return _outcome(final, raise_on_failure)
        # The deadline passed.
        waited = f"{timeout:g}s" if timeout is not None else "the deadline"
        last_error = tracker.last_error
        note = f" (last status read failed: {last_error})" if last_error else ""
        if on_timeout == "cancel" and can_cancel:
            failure = await _cancel_best_effort(backend, handle, cancel_timeout)
            if failure is None:
                last = await _final_read(backend, handle, tracker.last_run, cancel_timeout)
                raise RunTimeout(
                    f"{handle.backend} run {handle.run_id} did not finish within {waited}; "
                    f"it was cancelled{note}",
                    run=last,
                    cancelled=True,
                    handle=handle,
                ) from last_error
            never_sent = isinstance(failure, _CancelNotSent)
            still = "it is still running" if never_sent else "it may still be running"
            reason = f"cancelling it failed ({failure}); {still}"
        elif on_timeout == "cancel":
            reason = f"the {backend.name} backend cannot cancel runs, so it was left running"
        else:
            reason = "detach was requested, so it was left running"
        if tracker.quiet:
            # Changes of the run in progress were not reported to this wait: say where it
            # is now rather than where it was when the wait last woke.
            tracker.last_run = await _final_read(backend, handle, tracker.last_run, cancel_timeout)
        raise RunTimeout(
            f"{handle.backend} run {handle.run_id} did not finish within {waited}; {reason}{note}",
            run=tracker.last_run,
            cancelled=False,
            reason=reason,
            handle=handle,
        ) from last_error
    except anyio.get_cancelled_exc_class():
        if cancel_on_interrupt and can_cancel:
            logger.info(
                "wait for %s run %s was cancelled; cancelling the remote run",
                handle.backend,
                handle.run_id,
            )
            await _cancel_best_effort(backend, handle, cancel_timeout)
        raise
    except NotebookOpsError as error:
        raise error.with_handle(handle) from error.__cause__
    except Exception as error:
        # A bug in a caller's callback: keep the handle reachable all the same.
        error.add_note(f"notebookops: the run is still known as {handle.to_json()}")
        raise


def _validate_wait(
    timeout: float | None, on_timeout: str, cancel_timeout: float, poll: PollPolicy | None
) -> PollPolicy:
    _positive("timeout", timeout, allow_none=True)
    _positive("cancel_timeout", cancel_timeout)
    if on_timeout not in ("cancel", "detach"):
        raise ConfigurationError(f"on_timeout must be 'cancel' or 'detach', got {on_timeout!r}")
    if poll is not None and not isinstance(poll, PollPolicy):
        raise ConfigurationError(f"poll must be a PollPolicy, got {type(poll).__name__}")
    return poll or _default_poll()


async def run_and_wait(
    backend: NotebookBackend,
    notebook: str | RunRequest,
    *,
    inputs: Mapping[str, Any] | None = None,
    blocks: Sequence[str] | None = None,
    options: object | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    poll: PollPolicy | None = None,
    on_timeout: OnTimeout = "cancel",
    raise_on_failure: bool = True,
    on_update: UpdateCallback | None = None,
    on_start: StartCallback | None = None,
    cancel_on_interrupt: bool = True,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
) -> Run:
    """Start a notebook run and wait for it to finish; return the final :class:`Run`.

    ``notebook`` is the backend's notebook id (or a full :class:`RunRequest`). ``timeout`` is
    the overall deadline in seconds (``None``: wait forever, explicitly). ``on_start`` receives
    the handle before the first status read: persist it there (``handle.to_json()``) and a
    restarted worker can ``wait_for_run`` instead of starting the notebook again.

    ``start_timeout`` bounds the start from when its request is sent (see :func:`start_run`);
    the time it waits for its turn before that counts only against ``timeout``, and a start
    still unsent at the deadline is abandoned (RunTimeout with no handle: no run exists).

    Raises :class:`RunFailed` / :class:`RunCancelled` when the run ends so (unless
    ``raise_on_failure=False``), :class:`RunTimeout` at the deadline, and any other error from
    the tree with ``err.handle`` set once the run exists. A SUBMITTED run (the backend cannot
    track it) is returned at once.
    """
    request = _as_request(notebook, inputs, blocks, options)
    poll_policy = _validate_wait(timeout, on_timeout, cancel_timeout, poll)
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    # start_run's steps, without a coroutine of its own (one more per start queued for a
    # connection).
    _positive("start_timeout", start_timeout)
    try:
        outcome = await _shielded(
            start_timeout,
            backend.start_run,
            request,
            unsent_until=deadline,
            gate=getattr(backend, "_connection_gate", None),
        )
    except _NotSent:
        raise RunTimeout(
            f"starting {request.notebook!r} on {backend.name}: its request was still waiting "
            "for its turn (the rate limiter, a free connection, the pause after a 429) when "
            f"the {timeout:g}s deadline passed; the vendor never took it, so no run was started",
            run=None,
            cancelled=False,
            reason="the vendor never took the start: no run was started",
        ) from None
    handle = _started(backend, request, start_timeout, outcome)
    del outcome
    logger.info("started %s run %s for %s", handle.backend, handle.run_id, request.notebook)
    # Not needed while waiting: thousands of waits in flight each keep less alive.
    del request, notebook, inputs, blocks, options
    return await _follow(
        backend,
        handle,
        deadline=deadline,
        timeout=timeout,
        poll=poll_policy,
        on_timeout=on_timeout,
        raise_on_failure=raise_on_failure,
        on_update=on_update,
        on_start=on_start,
        cancel_on_interrupt=cancel_on_interrupt,
        cancel_timeout=cancel_timeout,
    )


async def wait_for_run(
    backend: NotebookBackend,
    handle: RunHandle,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    poll: PollPolicy | None = None,
    on_timeout: OnTimeout = "cancel",
    raise_on_failure: bool = True,
    on_update: UpdateCallback | None = None,
    cancel_on_interrupt: bool = True,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
) -> Run:
    """Wait for an already-started run (e.g. a handle saved by another process).

    Same semantics as :func:`run_and_wait` after the start.
    """
    if not isinstance(handle, RunHandle):
        raise ConfigurationError(f"expected a RunHandle, got {type(handle).__name__}")
    poll_policy = _validate_wait(timeout, on_timeout, cancel_timeout, poll)
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    return await _follow(
        backend,
        handle,
        deadline=deadline,
        timeout=timeout,
        poll=poll_policy,
        on_timeout=on_timeout,
        raise_on_failure=raise_on_failure,
        on_update=on_update,
        on_start=None,
        cancel_on_interrupt=cancel_on_interrupt,
        cancel_timeout=cancel_timeout,
    )


@attrs.frozen
class RunOutcome:
    """What happened to one request of :func:`run_many`: a Run, or the error that ended it."""

    request: RunRequest
    run: Run | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.run is not None and self.run.state is RunState.SUCCEEDED

    @property
    def handle(self) -> RunHandle | None:
        """The started run, whether it ended well or not (None if it never started)."""
        if self.run is not None:
            return self.run.handle
        if isinstance(self.error, NotebookOpsError):
            return self.error.handle
        return None


async def run_many(
    backend: NotebookBackend,
    requests: Iterable[RunRequest | str],
    *,
    concurrency: int = 10,
    **wait_options: Any,
) -> list[RunOutcome]:
    """Run many notebooks with at most ``concurrency`` in flight; one outcome per request, in
    order. One failure never loses the others' results. ``wait_options`` are passed to
    :func:`run_and_wait` (timeout, poll, on_timeout, raise_on_failure, ...)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")
    items = [_as_request(item, None, None, None) for item in requests]
    outcomes: list[RunOutcome | None] = [None] * len(items)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(index: int, request: RunRequest) -> None:
        async with limiter:
            try:
                run = await run_and_wait(backend, request, **wait_options)
            except Exception as error:
                outcomes[index] = RunOutcome(request=request, error=error)
            else:
                outcomes[index] = RunOutcome(request=request, run=run)

    async with anyio.create_task_group() as group:
        for index, request in enumerate(items):
            group.start_soon(one, index, request)
    return [outcome for outcome in outcomes if outcome is not None]
