"""RunHost: runs that execute in this process, kept and answered like a vendor's runs.

A backend whose runs are coroutines in this process (the local backend's kernels; an adapter
that drives a remote kernel cell by cell) has the same needs: start a run as a background
task and return its handle at once, keep the run's state and outputs as it reports them,
answer ``get_run`` with a snapshot, push changes to ``watch_run``, cancel a run, settle every
run when the backend closes, and forget old runs so memory stays bounded. :class:`RunHost` is
that, once::

    host = RunHost("local")

    async def body(run: HostedRun) -> None:       # one coroutine per run
        run.update(state=RunState.RUNNING, vendor_state="running", started_at=utc_now())
        run.add_outputs([...])                     # as each cell finishes
        run.update(completed=1, current=None)
        run.finish(RunState.SUCCEEDED, vendor_state="succeeded")

    hosted = await host.start(handle, body, total=3)
    run = host.snapshot(handle)                    # a notebookops Run, no I/O
    await host.cancel(hosted, "cancel requested")

**The body** reports through its :class:`HostedRun` (``update``, ``add_outputs``, ``finish``)
and may end the run itself with ``finish``. If it returns without finishing, the run ends
CANCELLED when a cancel was requested, FAILED when it set an ``error``, else SUCCEEDED; an
exception escaping it ends the run FAILED with a platform error (and is logged), never the
host.

**Vendor records**: a body may keep each step's answer as its vendor sent it beside the
outputs (``add_outputs(..., result=...)``); a snapshot shows them as ``raw["results"]``, and
retention weighs and releases them with the outputs (they usually repeat them). A body whose
vendor refused the run before any of it ran sets ``refusal``: readers then get that error
instead of a run (:meth:`RunHost.snapshot` raises it).

**Cancelling**: by default :meth:`RunHost.cancel` cancels the body's cancel scope (anyio
cancellation at its next await). A body that must not be cancelled at an arbitrary await
(nbclient mid-cell) passes ``on_cancel``, its own way of stopping, which is awaited instead
as ``on_cancel(run, closing)`` (``closing`` is True when the host is closing); the body then
ends on its own.
:meth:`RunHost.wait_finished` lets a caller wait, bounded, for the run to settle.

**Retention**: finished runs are remembered for late readers, within two bounds. Their
outputs are kept while the outputs of all finished runs together stay within
``keep_output_bytes`` (default 64 MiB, counted as the characters of the outputs' text, data
and tracebacks and of the vendor records kept with them); beyond that the oldest finished
runs' outputs and records are released (their state, error, progress and artifacts stay, and
their snapshot's ``raw`` says ``"outputs_released": True``), except the most recently
finished run's. At most ``keep_finished_runs`` finished runs (default 1,000) are remembered
at all; older ones are forgotten (``get`` returns None). Runs in progress are never released
or forgotten.

**Event loop**: anyio has no way to start a task that outlives its caller, and a backend's
``start_run`` and ``aclose`` are called from arbitrary tasks (a task group must be left by the
task that entered it). So the host keeps its runs' task group in one task of its own, created
on first use with asyncio (the only step that names an event loop: every in-process run
drives an asyncio library), and stays bound to that loop. Everything else is plain anyio.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from .._validate import count, seconds, utc_now
from ..errors import BackendClosed, ConfigurationError
from ..models import Artifact, CellOutput, Run, RunErrorInfo, RunHandle, RunProgress, RunState

__all__ = [
    "DEFAULT_KEEP_FINISHED_RUNS",
    "DEFAULT_KEEP_OUTPUT_BYTES",
    "HostedRun",
    "RunHost",
    "json_size",
    "output_size",
]

logger = logging.getLogger("notebookops.runhost")

#: Default bound on the outputs kept for finished runs (see the module docstring).
DEFAULT_KEEP_OUTPUT_BYTES: Final = 64 * 1024 * 1024
#: Default number of finished runs remembered at all.
DEFAULT_KEEP_FINISHED_RUNS: Final = 1000
#: What a data value that cannot be measured (nested past JSON's limits) is counted as.
_UNMEASURED: Final = 1024


class _Same:
    """The "leave as it is" default of :meth:`HostedRun.update` (None is a value there)."""


_SAME: Final = _Same()


def output_size(output: CellOutput) -> int:
    """How much an output weighs for retention: the characters of its text, error and data."""
    size = len(output.text or "") + len(output.ename or "") + len(output.evalue or "")
    size += sum(len(line) for line in output.traceback)
    return size + sum(json_size(value) for value in output.data.values())


def json_size(value: Any) -> int:
    """How much a JSON-like value weighs for retention: the characters of its JSON text."""
    if isinstance(value, str):
        return len(value)
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        return _UNMEASURED


@attrs.define(eq=False)
class HostedRun:
    """One hosted run: everything known about it, updated by its body as it goes.

    Readers take :meth:`RunHost.snapshot`; ``version`` grows with every change.
    """

    handle: RunHandle
    state: RunState = RunState.PENDING
    vendor_state: str | None = "queued"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    completed: int = 0
    total: int | None = None
    current: str | None = None
    outputs: list[CellOutput] = attrs.field(factory=list)
    #: The vendor's record of each step, kept beside ``outputs`` (see the module docstring).
    results: list[Any] = attrs.field(factory=list)
    #: What ``outputs`` and ``results`` weigh together (:func:`output_size`, :func:`json_size`).
    output_bytes: int = 0
    outputs_released: bool = False
    error: RunErrorInfo | None = None
    #: An error readers get instead of the run (see the module docstring).
    refusal: Exception | None = None
    artifacts: tuple[Artifact, ...] = ()
    #: Whether the run was asked to stop, and why (for logs and snapshots).
    cancel_requested: bool = False
    cancel_reason: str = ""
    #: How to stop this run instead of cancelling its body (see the module docstring).
    on_cancel: Callable[[HostedRun, bool], Awaitable[None]] | None = None
    #: Backend-specific facts for the snapshot's ``raw`` (kept as given).
    raw: dict[str, Any] = attrs.field(factory=dict)
    finished: bool = False
    version: int = 0
    _changed: anyio.Event = attrs.field(factory=anyio.Event, init=False)
    _done: anyio.Event = attrs.field(factory=anyio.Event, init=False)
    _scope: anyio.CancelScope | None = attrs.field(default=None, init=False)

    def stop_requested(self) -> bool:
        """Whether the run was asked to stop (a method, so type checkers re-read it after
        every await)."""
        return self.cancel_requested

    def update(
        self,
        *,
        state: RunState | None = None,
        vendor_state: str | _Same | None = _SAME,
        started_at: datetime | None = None,
        completed: int | None = None,
        total: int | None = None,
        current: str | _Same | None = _SAME,
    ) -> None:
        """Change what is given and wake every watcher. Ignored once the run has finished."""
        if self.finished:
            return
        if state is not None:
            self.state = state
        if not isinstance(vendor_state, _Same):
            self.vendor_state = vendor_state
        if started_at is not None:
            self.started_at = started_at
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if not isinstance(current, _Same):
            self.current = current
        self._touch()

    def add_outputs(self, outputs: Iterable[CellOutput], *, result: Any = None) -> None:
        """Append outputs (in order) and, if given, the vendor's ``result`` of the step that
        made them (JSON-like, shown in ``raw["results"]``); wake every watcher."""
        for output in outputs:
            self.outputs.append(output)
            self.output_bytes += output_size(output)
        if result is not None:
            self.results.append(result)
            self.output_bytes += json_size(result)
        self._touch()

    def finish(
        self,
        state: RunState,
        *,
        vendor_state: str | _Same | None = _SAME,
        error: RunErrorInfo | None = None,
        artifacts: tuple[Artifact, ...] | None = None,
    ) -> None:
        """End the run in a terminal ``state``; later calls change nothing."""
        if self.finished:
            return
        if not state.is_terminal:
            raise ValueError(f"a run finishes in a terminal state, not {state}")
        self.state = state
        if not isinstance(vendor_state, _Same):
            self.vendor_state = vendor_state
        if error is not None:
            self.error = error
        if artifacts is not None:
            self.artifacts = artifacts
        self.current = None
        self.finished_at = utc_now()
        self.finished = True
        self.on_cancel = None
        self._touch()
        self._done.set()

    def _touch(self) -> None:
        self.version += 1
        previous, self._changed = self._changed, anyio.Event()
        previous.set()


class RunHost:
    """Starts, keeps, answers, cancels and forgets the in-process runs of one backend.

    ``name`` is the backend's name (for messages and task names). See the module docstring
    for the retention bounds ``keep_output_bytes`` and ``keep_finished_runs``.
    """

    def __init__(
        self,
        name: str,
        *,
        keep_output_bytes: int = DEFAULT_KEEP_OUTPUT_BYTES,
        keep_finished_runs: int = DEFAULT_KEEP_FINISHED_RUNS,
    ) -> None:
        self.name = name
        self.keep_output_bytes = count("keep_output_bytes", keep_output_bytes)
        self.keep_finished_runs = count("keep_finished_runs", keep_finished_runs)
        self._runs: dict[str, HostedRun] = {}
        #: Finished runs in the order they finished, and their outputs' weight together.
        self._finished: collections.deque[HostedRun] = collections.deque()
        self._finished_bytes = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._ready: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    # -- runs

    def get(self, run_id: str) -> HostedRun | None:
        """The run with this id, or None if it is unknown (or was forgotten)."""
        return self._runs.get(run_id)

    def runs(self) -> list[HostedRun]:
        """Every run remembered, oldest first."""
        return list(self._runs.values())

    async def start(
        self,
        handle: RunHandle,
        body: Callable[[HostedRun], Awaitable[None]],
        *,
        total: int | None = None,
        raw: dict[str, Any] | None = None,
        on_cancel: Callable[[HostedRun, bool], Awaitable[None]] | None = None,
    ) -> HostedRun:
        """Register a run and start ``body(run)`` in the background; return without waiting
        for it to begin. ``total`` is the number of steps (cells), ``raw`` backend facts,
        ``on_cancel`` the run's own way of stopping (see the module docstring)."""
        group = await self._task_group()
        run = HostedRun(handle=handle, total=total, raw=dict(raw or {}), on_cancel=on_cancel)
        self._runs[handle.run_id] = run
        group.start_soon(
            self._drive, run, body, name=f"notebookops {self.name} run {handle.run_id}"
        )
        return run

    def spawn(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str) -> None:
        """Run a helper of a run (e.g. a kill after a grace period) in the host's task group,
        so it outlives the caller; it is cancelled when the host closes."""
        if self._group is not None:
            self._group.start_soon(func, *args, name=name)

    async def cancel(self, run: HostedRun, reason: str) -> None:
        """Ask ``run`` to stop: its ``on_cancel``, else cancellation of its body. Returns once
        asked (see :meth:`wait_finished`); a finished or already stopping run is left as is."""
        if run.finished or run.cancel_requested:
            return
        run.cancel_requested = True
        run.cancel_reason = reason
        run.update()
        await self._stop_run(run, closing=False)

    async def wait_finished(self, run: HostedRun, timeout: float | None) -> bool:
        """Wait until ``run`` has finished, at most ``timeout`` seconds; whether it has."""
        with anyio.move_on_after(seconds("timeout", timeout, allow_zero=True, allow_none=True)):
            await run._done.wait()
        return run.finished

    async def watch(self, run: HostedRun) -> AsyncGenerator[HostedRun, None]:
        """Yield ``run`` now and after every change, ending after it has finished."""
        seen = -1
        while True:
            changed = run._changed
            if run.version != seen:
                seen = run.version
                yield run
                if run.finished:
                    return
            await changed.wait()

    def snapshot(self, run: HostedRun, *, web_url: str | None = None) -> Run:
        """``run`` as a :class:`~notebookops.Run` (what ``get_run`` answers), or its
        ``refusal`` raised."""
        if run.refusal is not None:
            raise run.refusal
        raw = dict(run.raw)
        if run.results:
            raw["results"] = list(run.results)
        if run.cancel_reason:
            raw["cancel_reason"] = run.cancel_reason
        if run.outputs_released:
            raw["outputs_released"] = True
        return Run(
            handle=run.handle,
            state=run.state,
            vendor_state=run.vendor_state,
            created_at=run.handle.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            outputs=tuple(run.outputs),
            artifacts=run.artifacts,
            error=run.error if run.state.is_terminal else None,
            progress=RunProgress(completed=run.completed, total=run.total, current=run.current),
            web_url=web_url or run.handle.web_url,
            raw=raw,
        )

    # -- lifecycle

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self, reason: str, *, timeout: float = 30.0) -> None:
        """Stop every run still going (``reason`` is recorded), wait until each has settled and
        end the host's task. Idempotent; shielded from the caller's cancellation, but for at
        most ``timeout`` seconds: a run whose cleanup takes longer is logged, reported
        CANCELLED and left to finish in the background."""
        timeout = seconds("timeout", timeout) or 0.0
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + timeout) as scope:
            active = [run for run in self._runs.values() if not run.finished]
            for run in active:
                run.cancel_requested = True
                run.cancel_reason = run.cancel_reason or reason
                await self._stop_run(run, closing=True)
            if self._stop is not None and self._stopped is not None:
                if self._loop is _current_loop():
                    # A first start may still be waiting for the group to exist.
                    assert self._ready is not None
                    await self._ready.wait()
                    self._stop.set()
                    await self._stopped.wait()
                else:
                    logger.warning(
                        "the %s backend was closed from another event loop; its runs were "
                        "told to stop but not waited for",
                        self.name,
                    )
        if scope.cancelled_caught:
            logger.warning(
                "the %s backend's runs did not settle within %gs of closing; left to finish "
                "in the background",
                self.name,
                timeout,
            )
        for run in active:
            run.finish(RunState.CANCELLED, vendor_state="cancelled")

    async def _stop_run(self, run: HostedRun, *, closing: bool) -> None:
        if run.on_cancel is not None:
            try:
                await run.on_cancel(run, closing)
            except Exception:
                logger.exception("stopping %s run %s failed", self.name, run.handle.run_id)
        elif run._scope is not None:
            run._scope.cancel()
        # Otherwise the body has not begun: it is cancelled as it begins (see _drive).

    async def _task_group(self) -> anyio.abc.TaskGroup:
        if self._closed:
            raise BackendClosed(f"the {self.name} backend is closed; create a new one")
        loop = _current_loop()
        if loop is None:
            raise ConfigurationError(
                f"the {self.name} backend runs its runs in asyncio tasks (the libraries they "
                "drive are asyncio libraries); run it under asyncio, e.g. "
                "anyio.run(main, backend='asyncio')"
            )
        if self._loop is not None and self._loop is not loop:
            raise ConfigurationError(
                f"this {self.name} backend belongs to another event loop; create one per event loop"
            )
        if self._ready is None:
            self._loop = loop
            self._ready, self._stop, self._stopped = anyio.Event(), anyio.Event(), anyio.Event()
            # The one asyncio-specific step (see the module docstring).
            loop.create_task(self._serve(), name=f"notebookops {self.name} runs")
        await self._ready.wait()
        if self._group is None or self._closed:
            raise BackendClosed(f"the {self.name} backend is closed; create a new one")
        return self._group

    async def _serve(self) -> None:
        assert self._ready is not None
        assert self._stop is not None
        assert self._stopped is not None
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                self._ready.set()
                await self._stop.wait()
                group.cancel_scope.cancel()
        except Exception:
            logger.exception("the %s backend's run host failed", self.name)
        finally:
            self._group = None
            self._ready.set()
            self._stopped.set()

    async def _drive(self, run: HostedRun, body: Callable[[HostedRun], Awaitable[None]]) -> None:
        """The task of one run: ``body``, then whatever finishing it left undone. Never
        raises except to let the host's own cancellation through."""
        try:
            with anyio.CancelScope() as scope:
                run._scope = scope
                if run.cancel_requested and run.on_cancel is None:
                    scope.cancel()
                await body(run)
        except anyio.get_cancelled_exc_class():
            run.finish(RunState.CANCELLED, vendor_state="cancelled")
            raise
        except Exception as error:
            logger.exception("%s run %s failed unexpectedly", self.name, run.handle.run_id)
            run.finish(
                RunState.FAILED,
                vendor_state="failed",
                error=RunErrorInfo(
                    f"the run broke down: {type(error).__name__}: {error}",
                    type(error).__name__,
                    platform=True,
                ),
            )
        finally:
            run._scope = None
            if run.cancel_requested:
                run.finish(RunState.CANCELLED, vendor_state="cancelled")
            elif run.error is not None:
                run.finish(RunState.FAILED, vendor_state="failed")
            else:
                run.finish(RunState.SUCCEEDED, vendor_state="succeeded")
            self._retain(run)

    def _retain(self, finished: HostedRun) -> None:
        """Apply the retention bounds (see the module docstring), oldest finished first."""
        self._finished.append(finished)
        self._finished_bytes += finished.output_bytes
        while len(self._finished) > self.keep_finished_runs:
            old = self._finished.popleft()
            self._finished_bytes -= old.output_bytes
            self._runs.pop(old.handle.run_id, None)
        if self._finished_bytes <= self.keep_output_bytes:
            return
        for run in itertools.islice(self._finished, len(self._finished) - 1):
            if run.output_bytes:
                self._finished_bytes -= run.output_bytes
                run.outputs = []
                run.results = []
                run.output_bytes = 0
                run.outputs_released = True
                if self._finished_bytes <= self.keep_output_bytes:
                    return


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
