"""Start runs and follow them to the end, on any backend.

This module knows nothing about vendors or transports: it talks to :class:`NotebookBackend`
and adapts to ``backend.capabilities`` only. The guarantees (see the README's "Guarantees"):

* a run-starting request is never repeated by us; a started run's handle reaches
  ``on_start`` before the first status read, and is attached (``err.handle``) to every error
  raised after;
* polling is capped, jittered and has a floor (:class:`PollPolicy`); transient status-read
  errors are retried until the deadline, and a failed status read never cancels a run;
* at the deadline the run is cancelled (``on_timeout="cancel"``, when the backend can) or left
  running (``"detach"``), and :class:`RunTimeout` says which;
* if the caller is cancelled, the remote run is cancelled best-effort, protected from the
  cancellation and bounded by ``cancel_timeout`` (unless ``cancel_on_interrupt=False``), then
  the cancellation propagates. Cancellation is never swallowed.

How a start survives cancellation: a backend sends the request that may create a run through
its client, which sees it through to its answer even if the caller is cancelled meanwhile
(:func:`~notebookops._protect.protected`), and returns the handle without awaiting anything
unprotected after it (the contract of :meth:`NotebookBackend.start_run`). Before that request
leaves (its turn at the rate limiter, a free connection, the pause after a 429) nothing has
reached the vendor, so a cancellation or the deadline simply abandons the start. Everything
after the handle exists (``on_start``, the remote cancel, the last read) runs protected too.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Literal

import anyio
import attrs

from ._durable import (
    START_TIMEOUT,
    STORE_BOUND,
    OnAmbiguous,
    check_key,
    keyed_start,
    record_finish,
)
from ._protect import WorkTimedOut, protected
from ._validate import count, seconds
from .backend import NotebookBackend, StreamingBackend
from .errors import (
    ConfigurationError,
    NotebookOpsError,
    RateLimited,
    ResponseDecodeError,
    RunCancelled,
    RunFailed,
    RunTimeout,
    ServerError,
    TransportError,
)
from .models import Capability, Run, RunHandle, RunRequest, RunState
from .policies import PollPolicy
from .store import RunStore

__all__ = [
    "DEFAULT_CANCEL_TIMEOUT",
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
#: Bound on the best-effort remote cancel (and the read after it) after a deadline or a
#: caller's cancellation, and on handing a new handle to ``on_start``: a few seconds, so a
#: deadline stays an upper bound (a cancel that takes longer is reported as failed).
DEFAULT_CANCEL_TIMEOUT = 5.0

OnTimeout = Literal["cancel", "detach"]
UpdateCallback = Callable[[Run], Awaitable[None] | None]
StartCallback = Callable[[RunHandle], Awaitable[None] | None]

_DEFAULT_POLL = PollPolicy()


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying a status read for: network trouble, 429, 5xx, garbled bodies.

    Only for reads: a failed start is never "transient" (retrying it could run the notebook
    twice); an ambiguous one is :class:`~notebookops.StartOutcomeUnknown`.
    """
    if isinstance(error, TransportError):
        return error.retryable
    return isinstance(error, RateLimited | ServerError | ResponseDecodeError)


async def _invoke(callback: Callable[[Any], Awaitable[None] | None], value: Any) -> None:
    result = callback(value)
    if inspect.isawaitable(result):
        await result


def _as_request(
    notebook: str | RunRequest,
    inputs: Mapping[str, Any] | None = None,
    blocks: Sequence[str] | None = None,
    options: object | None = None,
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
    if not notebook.strip():
        raise ConfigurationError("notebook id must be a non-empty string")
    return RunRequest(notebook=notebook, inputs=inputs or {}, blocks=blocks, options=options)


def _check_backend(backend: object) -> NotebookBackend:
    # Duck-typed: isinstance against the runtime-checkable protocol costs more than the rest
    # of a start's bookkeeping, and any object with these methods is welcome.
    if not all(callable(getattr(backend, name, None)) for name in _PROTOCOL_METHODS):
        raise ConfigurationError(
            f"backend must be a NotebookBackend (e.g. LocalBackend()), got {type(backend).__name__}"
        )
    return backend  # type: ignore[return-value]


_PROTOCOL_METHODS = ("start_run", "get_run", "cancel_run", "aclose")


def _validate_wait(
    timeout: float | None, on_timeout: str, cancel_timeout: float, poll: PollPolicy | None
) -> PollPolicy:
    seconds("timeout", timeout, allow_none=True)
    seconds("cancel_timeout", cancel_timeout)
    if on_timeout not in ("cancel", "detach"):
        raise ConfigurationError(f"on_timeout must be 'cancel' or 'detach', got {on_timeout!r}")
    if poll is not None and not isinstance(poll, PollPolicy):
        raise ConfigurationError(f"poll must be a PollPolicy, got {type(poll).__name__}")
    return poll or _DEFAULT_POLL


# --------------------------------------------------------------------------- starting


async def start_run(
    backend: NotebookBackend,
    request: RunRequest | str,
    *,
    key: str | None = None,
    store: RunStore | None = None,
    on_ambiguous: OnAmbiguous = "raise",
    start_timeout: float | None = None,
    on_start: StartCallback | None = None,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
) -> RunHandle:
    """Start a run without waiting for it: the first half of :func:`run_and_wait`.

    ``request`` is a :class:`RunRequest` or a plain notebook id. ``start_timeout`` (default:
    none, the caller's own deadline) bounds the start; if it passes before the vendor took the
    start, no run exists and :class:`RunTimeout` (with no handle) says so. A start the vendor
    may have taken is seen through to its answer whatever happens to the caller, and
    ``on_start`` (if given) receives the handle, protected and within ``cancel_timeout``,
    before this returns.

    With ``key`` and ``store`` the run is started once per key, across processes and
    restarts: a later call with the same key returns the first call's handle (see
    :func:`run_and_wait`).
    """
    backend = _check_backend(backend)
    request = _as_request(request)
    seconds("start_timeout", start_timeout, allow_none=True)
    seconds("cancel_timeout", cancel_timeout)
    if key is None and store is None:
        return await _start(backend, request, start_timeout, on_start, cancel_timeout)
    key, store = check_key(key, store)
    outcome = await _keyed(
        backend, request, key, store, on_ambiguous, None, start_timeout, on_start, cancel_timeout
    )
    return outcome.handle if isinstance(outcome, Run) else outcome


async def _start(
    backend: NotebookBackend,
    request: RunRequest,
    start_timeout: float | None,
    on_start: StartCallback | None,
    cancel_timeout: float,
    record: Callable[[RunHandle], Awaitable[None]] | None = None,
) -> RunHandle:
    if start_timeout is None:
        handle: RunHandle | None = await backend.start_run(request)
    else:
        handle = None
        with anyio.move_on_after(start_timeout):
            handle = await backend.start_run(request)
    if handle is None:
        raise _never_taken(backend, request, f"start_timeout ({start_timeout:g}s)")
    logger.info("started %s run %s for %s", handle.backend, handle.run_id, request.notebook)
    if record is not None or on_start is not None:
        await _announce(handle, record, on_start, cancel_timeout)
    return handle


async def _keyed(
    backend: NotebookBackend,
    request: RunRequest,
    key: str,
    store: RunStore,
    on_ambiguous: OnAmbiguous,
    timeout: float | None,
    start_timeout: float | None,
    on_start: StartCallback | None,
    cancel_timeout: float,
) -> RunHandle | Run:
    """The run of ``key``: started now, or the handle or final Run an earlier call recorded."""
    # A keyed start ends well within its reservation's lease (see notebookops._durable).
    limit = START_TIMEOUT if start_timeout is None else min(start_timeout, START_TIMEOUT)
    return await keyed_start(
        backend,
        request,
        key,
        store,
        start=lambda record: _start(
            backend, request, limit, on_start, cancel_timeout, record=record
        ),
        timeout=timeout,
        on_ambiguous=on_ambiguous,
    )


def _never_taken(backend: NotebookBackend, request: RunRequest, limit: str) -> RunTimeout:
    return RunTimeout(
        f"starting {request.notebook!r} on {backend.name}: its request was still waiting for "
        f"its turn (the rate limiter, a free connection, the pause after a 429) when {limit} "
        "passed; the vendor never took it, so no run was started",
        run=None,
        cancelled=False,
        reason="the vendor never took the start: no run was started",
    )


def _key_not_reached(request: RunRequest, key: str, limit: str) -> RunTimeout:
    # Not _never_taken: the deadline may have passed while another call was starting the
    # key's run, which then exists.
    return RunTimeout(
        f"idempotency key {key!r} ({request.notebook!r}): {limit} passed before this call "
        "started or found the key's run, and it sent no start itself. Another call may be "
        "starting it: call again with the same key to find it",
        run=None,
        cancelled=False,
        reason="this call started no run",
    )


async def _announce(
    handle: RunHandle,
    record: Callable[[RunHandle], Awaitable[None]] | None,
    on_start: StartCallback | None,
    bound: float,
) -> None:
    """Record the new handle in the store (within STORE_BOUND), then hand it to ``on_start``
    (within ``bound``), each protected: a save to a database that awaits is not cut short by
    a cancellation, which would leave a run nobody knows of."""
    step, limit = "recording it in the store", STORE_BOUND
    try:
        if record is not None:
            await protected(lambda: record(handle), limit)
        step, limit = "on_start", bound
        if on_start is not None:
            await protected(lambda: _invoke(on_start, handle), limit)
    except WorkTimedOut:
        reason = f"{step} did not finish within {limit:g}s"
        raise RunTimeout(
            f"{handle.backend} run {handle.run_id} was started, but {reason}; the run was left "
            "running: its handle is on this error",
            run=None,
            cancelled=False,
            reason=reason,
            handle=handle,
        ) from None
    except NotebookOpsError as error:
        raise error.with_handle(handle) from error.__cause__
    except Exception as error:
        error.add_note(f"notebookops: the run is still known as {handle.to_json()}")
        raise


# --------------------------------------------------------------------------- following


def _change_key(run: Run) -> tuple[object, ...]:
    return (run.state, run.vendor_state, run.progress, len(run.outputs))


def _streams(backend: NotebookBackend) -> bool:
    return Capability.STREAMING in backend.capabilities and isinstance(backend, StreamingBackend)


@attrs.define
class _Seen:
    """What a wait learned on the way: its last read and the last read error."""

    run: Run | None = None
    error: Exception | None = None


async def _observe(
    backend: NotebookBackend, handle: RunHandle, poll: PollPolicy, seen: _Seen
) -> AsyncGenerator[Run, None]:
    """Every Run read for ``handle`` until a terminal one: pushed if the backend streams,
    polled otherwise. Transient read errors are logged and retried forever; the caller's
    deadline bounds the whole thing."""
    streaming = _streams(backend)
    attempt = 0
    began = anyio.current_time()
    while True:
        try:
            if streaming:
                assert isinstance(backend, StreamingBackend)
                async with aclosing(backend.watch_run(handle)) as stream:
                    async for run in stream:
                        seen.run, seen.error = run, None
                        yield run
                        if run.state.is_terminal:
                            return
            # Polling, or the stream ended without a terminal state: read once.
            run = await backend.get_run(handle)
            seen.run, seen.error = run, None
            yield run
            if run.state.is_terminal:
                return
            delay = poll.delay(attempt, elapsed=anyio.current_time() - began)
        except Exception as error:  # never BaseException: cancellation must propagate
            if not is_transient(error):
                raise
            seen.error = error
            delay = poll.delay(attempt, elapsed=anyio.current_time() - began)
            if isinstance(error, RateLimited) and error.retry_after is not None:
                delay = max(delay, error.retry_after)
            logger.warning(
                "status read for %s run %s failed (%s); retrying in %.1fs",
                handle.backend,
                handle.run_id,
                error,
                delay,
            )
        attempt += 1
        await anyio.sleep(delay)


def _outcome(run: Run, raise_on_failure: bool) -> Run:
    if raise_on_failure and run.state is RunState.FAILED:
        reason = run.error.message if run.error else "no reason given by the vendor"
        where = f" in cell {run.error.cell}" if run.error and run.error.cell else ""
        raise RunFailed(f"{run.handle.backend} run {run.run_id} failed{where}: {reason}", run=run)
    if raise_on_failure and run.state is RunState.CANCELLED:
        raise RunCancelled(f"{run.handle.backend} run {run.run_id} was cancelled", run=run)
    return run


async def _cancel_and_read(
    backend: NotebookBackend, handle: RunHandle, bound: float
) -> tuple[Exception | None, Run | None]:
    """Cancel the remote run, then read it once, both protected and within ``bound`` in all.
    Returns the cancel's error (None when it worked) and the read (None if it failed or did
    not fit in the bound)."""
    done: list[Run | None] = []

    async def cancel_then_read() -> None:
        await backend.cancel_run(handle)
        logger.info("cancelled %s run %s", handle.backend, handle.run_id)
        done.append(None)
        try:
            done[0] = await backend.get_run(handle)
        except Exception as error:
            logger.info("could not read %s run %s after cancelling it: %s", *_ids(handle), error)

    error: Exception
    try:
        await protected(cancel_then_read, bound)
    except TimeoutError:
        if done:  # cancelled; only the read after it ran out of time
            return None, None
        error = TimeoutError(f"cancel did not complete within {bound:g}s")
    except Exception as caught:
        error = caught
    else:
        return None, done[0]
    logger.warning("could not cancel %s run %s: %s", *_ids(handle), error)
    return error, None


def _ids(handle: RunHandle) -> tuple[str, str]:
    return handle.backend, handle.run_id


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
    cancel_on_interrupt: bool,
    cancel_timeout: float,
) -> Run:
    can_cancel = Capability.CANCEL in backend.capabilities
    seen = _Seen()
    try:
        last_key: tuple[object, ...] | None = None
        with anyio.CancelScope(deadline=deadline):
            async with aclosing(_observe(backend, handle, poll, seen)) as runs:
                async for run in runs:
                    key = _change_key(run)
                    if on_update is not None and key != last_key:
                        await _invoke(on_update, run)
                    last_key = key
                    if run.state.is_terminal:
                        return _outcome(run, raise_on_failure)
        # The deadline passed.
        waited = f"{timeout:g}s" if timeout is not None else "the deadline"
        note = f" (last status read failed: {seen.error})" if seen.error else ""
        if on_timeout == "cancel" and can_cancel:
            failure, last = await _cancel_and_read(backend, handle, cancel_timeout)
            if failure is None:
                raise RunTimeout(
                    f"{handle.backend} run {handle.run_id} did not finish within {waited}; "
                    f"it was cancelled{note}",
                    run=last or seen.run,
                    cancelled=True,
                    handle=handle,
                ) from seen.error
            reason = f"cancelling it failed ({failure}); it may still be running"
        elif on_timeout == "cancel":
            reason = f"the {backend.name} backend cannot cancel runs, so it was left running"
        else:
            reason = "detach was requested, so it was left running"
        raise RunTimeout(
            f"{handle.backend} run {handle.run_id} did not finish within {waited}; {reason}{note}",
            run=seen.run,
            cancelled=False,
            reason=reason,
            handle=handle,
        ) from seen.error
    except anyio.get_cancelled_exc_class():
        if cancel_on_interrupt and can_cancel:
            logger.info(
                "wait for %s run %s was cancelled; cancelling the remote run",
                handle.backend,
                handle.run_id,
            )
            await _cancel_and_read(backend, handle, cancel_timeout)
        raise
    except NotebookOpsError as error:
        raise error.with_handle(handle) from error.__cause__
    except Exception as error:
        # A bug in a caller's callback: keep the handle reachable all the same.
        error.add_note(f"notebookops: the run is still known as {handle.to_json()}")
        raise


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
    start_timeout: float | None = None,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    key: str | None = None,
    store: RunStore | None = None,
    on_ambiguous: OnAmbiguous = "raise",
) -> Run:
    """Start a notebook run and wait for it to finish; return the final :class:`Run`.

    ``notebook`` is the backend's notebook id (or a full :class:`RunRequest`). ``timeout`` is
    the overall deadline in seconds (``None``: wait forever, explicitly). ``on_start`` receives
    the handle before the first status read: persist it there (``handle.to_json()``) and a
    restarted worker can ``wait_for_run`` instead of starting the notebook again. It runs to
    its end even if the caller is cancelled meanwhile, within ``cancel_timeout``; if it raises
    or overruns (:class:`RunTimeout`), that error is raised with the handle on it
    (``err.handle``, or a note on an exception of your own) and the run is left running.

    A start the vendor has not taken by the deadline (or ``start_timeout``) is abandoned and
    raised as :class:`RunTimeout` with no handle: no run exists. Raises :class:`RunFailed` /
    :class:`RunCancelled` when the run ends so (unless ``raise_on_failure=False``),
    :class:`RunTimeout` at the deadline, and any other error from the tree with ``err.handle``
    set once the run exists. A SUBMITTED run (the backend cannot track it) is returned at once.

    **The deadline is an upper bound**, with one exception that protects "never twice".
    What follows the deadline is bounded: the remote cancel and one last read by
    ``cancel_timeout`` (default 5 s), so a run started before the deadline returns within
    ``timeout + cancel_timeout``. A start whose request was already sent when the deadline
    passed is seen through to its answer, for at most the backend's request ``timeout``
    (30 s by default): given up earlier, the vendor could still make the run after a retry
    had found none. If no answer comes, :class:`~notebookops.StartOutcomeUnknown` says a run
    may exist (Deepnote first looks for it in its runs list, for at most 5 s more). A late
    answer's run then gets ``on_start`` and its cancel, ``cancel_timeout`` each. Lower the
    backend's ``timeout`` to tighten the bound.

    **Runs that survive restarts.** With ``key`` (your idempotency key, up to 255 characters)
    and ``store`` (a :class:`~notebookops.store.RunStore`), the key is reserved in the store
    before any request is sent, the handle recorded before the first status read and the
    final run when it ends. A later call with the same key, in this process or another one
    after a crash, never starts another run: it waits on the recorded one, or returns (or
    raises, per ``raise_on_failure``) its recorded end at once. The same key with a different
    request raises :class:`~notebookops.IdempotencyConflict`. A reservation left by a process
    that died mid-start is settled with the vendor where it can be asked (Deepnote's runs
    list), else raises :class:`~notebookops.StartOutcomeUnknown` unless
    ``on_ambiguous="start_new"``. A restart never cancels the remote run.
    """
    backend = _check_backend(backend)
    request = _as_request(notebook, inputs, blocks, options)
    poll_policy = _validate_wait(timeout, on_timeout, cancel_timeout, poll)
    seconds("start_timeout", start_timeout, allow_none=True)
    keyed = key is not None or store is not None
    if keyed:
        key, store = check_key(key, store)
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    outcome: RunHandle | Run | None = None
    with anyio.CancelScope(deadline=deadline):
        if key is not None and store is not None:
            outcome = await _keyed(
                backend,
                request,
                key,
                store,
                on_ambiguous,
                timeout,
                start_timeout,
                on_start,
                cancel_timeout,
            )
        else:
            outcome = await _start(backend, request, start_timeout, on_start, cancel_timeout)
    if outcome is None:
        if key is not None:
            raise _key_not_reached(request, key, f"the {timeout:g}s deadline")
        raise _never_taken(backend, request, f"the {timeout:g}s deadline")
    if isinstance(outcome, Run):
        return _outcome(outcome, raise_on_failure)  # the key's run had ended already
    run = await _follow(
        backend,
        outcome,
        deadline=deadline,
        timeout=timeout,
        poll=poll_policy,
        on_timeout=on_timeout,
        raise_on_failure=raise_on_failure and not keyed,
        on_update=on_update,
        cancel_on_interrupt=cancel_on_interrupt,
        cancel_timeout=cancel_timeout,
    )
    if key is not None and store is not None:
        await record_finish(store, key, run)
        return _outcome(run, raise_on_failure)
    return run


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
    backend = _check_backend(backend)
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
        cancel_on_interrupt=cancel_on_interrupt,
        cancel_timeout=cancel_timeout,
    )


async def watch(
    backend: NotebookBackend, handle: RunHandle, *, poll: PollPolicy | None = None
) -> AsyncGenerator[Run, None]:
    """Yield the run each time its state (or progress, or output count) changes, ending after
    a terminal state. Uses the backend's native stream when it has one, else polls.

    There is no deadline here: wrap it in ``anyio.fail_after`` or use :func:`wait_for_run`.
    Transient status-read errors are retried (logged); others are raised with ``err.handle``.
    """
    backend = _check_backend(backend)
    last_key: tuple[object, ...] | None = None
    try:
        async with aclosing(_observe(backend, handle, poll or _DEFAULT_POLL, _Seen())) as runs:
            async for run in runs:
                key = _change_key(run)
                if key != last_key:
                    last_key = key
                    yield run
    except NotebookOpsError as error:
        raise error.with_handle(handle) from error.__cause__


# --------------------------------------------------------------------------- many runs


@attrs.frozen
class RunOutcome:
    """What happened to one request of :func:`run_many`: its Run, or the error that ended it.

    ``run`` is set whenever the run was read at its end, also when it failed or was cancelled
    (``error`` then says so); ``handle`` whenever the run was started.
    """

    request: RunRequest
    run: Run | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.run is not None and self.run.state.is_success

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
    timeout: float | None = DEFAULT_TIMEOUT,
    poll: PollPolicy | None = None,
    on_timeout: OnTimeout = "cancel",
    raise_on_failure: bool = True,
    on_update: UpdateCallback | None = None,
    on_start: StartCallback | None = None,
    cancel_on_interrupt: bool = True,
    start_timeout: float | None = None,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
) -> list[RunOutcome]:
    """Run many notebooks with at most ``concurrency`` in flight; one outcome per request, in
    order. One failure never loses the others' results. The other options are those of
    :func:`run_and_wait`, applied to each run."""
    backend = _check_backend(backend)
    if isinstance(requests, str | bytes):
        raise ConfigurationError(
            "requests must be a list of notebook ids or RunRequests, not a single string"
        )
    count("concurrency", concurrency, minimum=1)
    items = [_as_request(item) for item in requests]
    _validate_wait(timeout, on_timeout, cancel_timeout, poll)
    seconds("start_timeout", start_timeout, allow_none=True)
    outcomes: list[RunOutcome | None] = [None] * len(items)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(index: int, request: RunRequest) -> None:
        async with limiter:
            try:
                run = await run_and_wait(
                    backend,
                    request,
                    timeout=timeout,
                    poll=poll,
                    on_timeout=on_timeout,
                    raise_on_failure=raise_on_failure,
                    on_update=on_update,
                    on_start=on_start,
                    cancel_on_interrupt=cancel_on_interrupt,
                    start_timeout=start_timeout,
                    cancel_timeout=cancel_timeout,
                )
            except Exception as error:
                run_seen = error.run if isinstance(error, RunFailed | RunCancelled) else None
                outcomes[index] = RunOutcome(request=request, run=run_seen, error=error)
            else:
                outcomes[index] = RunOutcome(request=request, run=run)

    async with anyio.create_task_group() as group:
        for index, request in enumerate(items):
            group.start_soon(one, index, request)
    return [outcome for outcome in outcomes if outcome is not None]
