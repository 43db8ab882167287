"""Kernel mode: this process runs a notebook's cells through PostHog's kernel endpoints.

A kernel-mode run lives in the backend instance that started it: its cells execute one by one
on a task group the strategy owns, through ``kernel/execute/stream/`` where the server has it
(older servers) and cell by cell through the blocking ``kernel/execute/`` where it does not
(which one is found on first use and remembered). HogQL cells go through ``hogql/execute/``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs

from ..._runhost import RunHost
from ..._validate import utc_now
from ...errors import (
    BadRequest,
    NotebookOpsError,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ResponseDecodeError,
    ServerError,
    TransportError,
)
from ...models import CellOutput, Run, RunErrorInfo, RunHandle, RunProgress, RunRequest, RunState
from ._cells import (
    Cell,
    apply_executions,
    execution_error,
    execution_outputs,
    hogql_output,
    inputs_code,
    strip_ansi,
)
from ._errors import KernelRunNotFound, KernelStreamError, ModeUnavailable, answer_of
from ._retention import FinishedRuns, output_bytes
from ._wire import ExecutionResult, KernelOutput
from .client import WRITE_ATTEMPTS, PostHogClient

__all__ = ["KernelRuns"]

logger = logging.getLogger("notebookops.posthog")

#: The pseudo-cell that assigns ``RunRequest.inputs`` before the notebook's own cells.
_INPUTS_CELL_ID: Final = "notebookops-inputs"


@attrs.define(eq=False)
class _KernelRun:
    """In-memory state of one kernel-mode run (the only record of it anywhere)."""

    handle: RunHandle
    cells: list[Cell]
    setup_code: str | None
    options: Any  # PostHogRunOptions (imported by the backend; kept loose to avoid a cycle)
    changed: anyio.Event
    done: anyio.Event
    state: RunState = RunState.PENDING
    vendor_state: str = "queued"
    outputs: list[CellOutput] = attrs.field(factory=list)
    error: RunErrorInfo | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    completed: int = 0
    current: str | None = None
    results: list[dict[str, Any]] = attrs.field(factory=list)
    executions: dict[Cell, dict[str, Any]] = attrs.field(factory=dict)
    cancel_requested: bool = False
    scope: anyio.CancelScope | None = None
    kernel_used: bool = False
    kernel_api: str | None = None
    stop_error: NotebookOpsError | None = None
    #: PostHog refused the run's requests before any of its code ran: raised to readers.
    refused: PermissionDenied | None = None
    #: Streamed output bytes kept of the current cell (see ``stream_output_max_bytes``).
    cell_stream_bytes: int = 0

    def notify(self) -> None:
        """Wake every watcher; later changes use a fresh event."""
        self.changed.set()
        self.changed = anyio.Event()


def _platform(error: BaseException) -> bool:
    return isinstance(error, TransportError | ServerError | RateLimited | ResponseDecodeError)


class KernelRuns:
    """Kernel-mode runs, driven by this process (see the module docstring)."""

    mode = "kernel"

    def __init__(
        self,
        client: PostHogClient,
        *,
        cancel_timeout: float,
        max_bytes: int,
        stream_output_max_bytes: int,
    ) -> None:
        self.client = client
        self._stream_output_max_bytes = stream_output_max_bytes
        self._cancel_timeout = cancel_timeout
        self._active: dict[str, _KernelRun] = {}
        self._finished: FinishedRuns[_KernelRun] = FinishedRuns(max_bytes)
        self._locks: dict[str, anyio.Lock] = {}
        #: Whether the server streams executions (None: not known yet).
        self.streams: bool | None = None
        self._host = RunHost(
            "notebookops posthog runs",
            closed_message="the posthog backend is closed; create a new one",
        )

    # -- protocol

    async def start(
        self, request: RunRequest, short_id: str, cells: list[Cell], options: Any
    ) -> RunHandle:
        """Start the kernel (which also checks that this key may use it), then run ``cells``
        in the background."""
        setup = inputs_code(request.inputs)
        if setup is not None or any(cell.kind == "python" for cell in cells):
            try:
                await self.client.kernel_start(short_id)
            except NotFound as error:
                raise ModeUnavailable(
                    f"mode='kernel' needs PostHog's kernel endpoints, but POST kernel/start/ of "
                    f"notebook {short_id!r} answered {answer_of(error)!r}",
                    mode="kernel",
                    answer=answer_of(error),
                ) from error
        handle = RunHandle(
            backend="posthog",
            run_id=f"kernel-{uuid.uuid4().hex}",
            notebook_id=short_id,
            created_at=utc_now(),
            web_url=self.client.web_url(short_id),
            extra={"mode": "kernel", "project_id": self.client.project_id},
        )
        run = _KernelRun(
            handle=handle,
            cells=cells,
            setup_code=setup,
            options=options,
            changed=anyio.Event(),
            done=anyio.Event(),
        )
        self._active[handle.run_id] = run
        try:
            await self._host.start_soon(self._drive, run, name=f"posthog run {handle.run_id}")
        except BaseException:
            del self._active[handle.run_id]
            raise
        logger.info(
            "started posthog kernel run %s of %s (%d cells)", handle.run_id, short_id, len(cells)
        )
        return handle

    def _run(self, handle: RunHandle) -> _KernelRun:
        run = self._active.get(handle.run_id) or self._finished.get(handle.run_id)
        if run is None:
            raise KernelRunNotFound(
                f"posthog kernel-mode run {handle.run_id} is not known to this backend "
                "instance: kernel-mode runs exist only in the backend that started them and "
                "cannot be resumed elsewhere (use mode='server' for resumable runs); finished "
                f"runs are remembered up to {self._finished.max_bytes} bytes of outputs",
                status=404,
                vendor="posthog",
                method="GET",
                url=handle.web_url or "",
            )
        if run.refused is not None:
            raise run.refused
        return run

    async def get(self, handle: RunHandle) -> Run:
        run = self._run(handle)
        await anyio.lowlevel.checkpoint()
        return self._snapshot(run)

    async def cancel(self, handle: RunHandle) -> None:
        """Cancel the current cell, stop the kernel and wait (bounded) for CANCELLED."""
        run = self._run(handle)
        if run.done.is_set():
            return
        run.cancel_requested = True
        if run.scope is not None:
            run.scope.cancel()
        with anyio.move_on_after(self._cancel_timeout * 2):
            await run.done.wait()
        if run.stop_error is not None:
            raise run.stop_error

    async def watch(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        run = self._run(handle)
        while True:
            changed = run.changed
            if run.refused is not None:
                raise run.refused
            snapshot = self._snapshot(run)
            yield snapshot
            if snapshot.state.is_terminal:
                return
            await changed.wait()

    async def aclose(self) -> None:
        """Cancel every run (each stops its kernel, bounded by ``cancel_timeout``)."""
        for run in self._active.values():
            run.cancel_requested = True
        # Each run's own cleanup is bounded by cancel_timeout; this bound is the backstop.
        await self._host.aclose(self._cancel_timeout * 2 + 1)

    def _lock(self, short_id: str) -> anyio.Lock:
        lock = self._locks.get(short_id)
        if lock is None:
            lock = self._locks[short_id] = anyio.Lock()
        return lock

    # -- one run

    def _snapshot(self, run: _KernelRun) -> Run:
        return Run(
            handle=run.handle,
            state=run.state,
            vendor_state=run.vendor_state,
            created_at=run.handle.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            outputs=tuple(run.outputs),
            error=run.error if run.state.is_terminal else None,
            progress=RunProgress(
                completed=run.completed, total=len(run.cells), current=run.current
            ),
            web_url=run.handle.web_url,
            raw={"mode": "kernel", "kernel_api": run.kernel_api, "results": list(run.results)},
        )

    async def _drive(self, run: _KernelRun) -> None:
        """Run the cells of ``run`` (the body of its background task). Never raises: every
        failure ends the run, so one run can never take the task group down."""
        short_id = run.handle.notebook_id
        try:
            with anyio.CancelScope() as scope:
                run.scope = scope
                if run.cancel_requested:
                    scope.cancel()
                async with self._lock(short_id):
                    run.started_at = utc_now()
                    run.state = RunState.RUNNING
                    run.vendor_state = "running"
                    run.notify()
                    await self._run_cells(run)
            run.scope = None
            if run.cancel_requested:
                await self._finish_cancelled(run)
                return
            if run.options.write_outputs and run.executions:
                await self._write_back(run)
            if run.options.stop_kernel_at_end and run.kernel_used:
                with anyio.move_on_after(self._cancel_timeout):
                    try:
                        await self.client.kernel_stop(short_id)
                    except NotebookOpsError as error:
                        logger.warning(
                            "could not stop the kernel of posthog notebook %s: %s", short_id, error
                        )
            self._finish(run)
        except anyio.get_cancelled_exc_class():
            # The backend is closing: settle the run and stop its kernel (bounded), then go.
            with anyio.CancelScope(shield=True):
                await self._finish_cancelled(run)
            raise
        except Exception as error:
            logger.exception("posthog run %s failed unexpectedly", run.handle.run_id)
            run.error = RunErrorInfo(
                message=f"the run broke down: {type(error).__name__}: {error}",
                name=type(error).__name__,
                platform=True,
            )
            self._finish(run)
        finally:
            run.done.set()
            run.notify()
            self._active.pop(run.handle.run_id, None)
            self._finished.add(run.handle.run_id, run, output_bytes(run.outputs, run.results))

    def _finish(self, run: _KernelRun) -> None:
        run.state = RunState.FAILED if run.error is not None else RunState.SUCCEEDED
        if run.error is None:
            run.vendor_state = "ok"
        run.current = None
        run.finished_at = utc_now()
        run.notify()

    async def _finish_cancelled(self, run: _KernelRun) -> None:
        if run.kernel_used:
            with anyio.move_on_after(self._cancel_timeout) as scope:
                try:
                    await self.client.kernel_stop(run.handle.notebook_id)
                except NotebookOpsError as error:
                    run.stop_error = error
            if scope.cancelled_caught and run.stop_error is None:
                run.stop_error = RequestTimeout(
                    f"stopping the kernel of posthog notebook {run.handle.notebook_id} did not "
                    f"finish within {self._cancel_timeout:g}s; it may still be running",
                    vendor="posthog",
                    method="POST",
                )
        run.state = RunState.CANCELLED
        run.vendor_state = "cancelled"
        run.current = None
        run.finished_at = utc_now()
        run.notify()

    async def _run_cells(self, run: _KernelRun) -> None:
        if run.setup_code is not None:
            setup = Cell(index=-1, kind="python", code=run.setup_code, node_id=_INPUTS_CELL_ID)
            if not await self._run_python(run, setup, record=False):
                return
        for cell in run.cells:
            run.current = cell.label
            run.notify()
            if cell.kind == "python":
                ok = await self._run_python(run, cell)
            else:
                ok = await self._run_hogql(run, cell)
            run.completed += 1
            run.notify()
            if not ok:
                return

    def _cell_failure(self, run: _KernelRun, cell: Cell, error: NotebookOpsError) -> None:
        if isinstance(error, PermissionDenied) and run.completed == 0:
            # Nothing of the notebook ran: not a failed run, a refused one.
            run.refused = error
            error.handle = run.handle
            run.vendor_state = "refused"
        if isinstance(error, KernelStreamError):
            message = f"cell {cell.label} could not run: PostHog reported {error.error!r}"
            run.vendor_state = "infrastructure_error"
        else:
            message = f"cell {cell.label} could not run: {error}"
            if run.refused is None:
                run.vendor_state = "request_failed"
        run.error = RunErrorInfo(
            message=strip_ansi(message),
            name=type(error).__name__,
            cell_id=cell.node_id,
            cell_index=cell.index if cell.index >= 0 else None,
            platform=_platform(error),
        )

    async def _execute(
        self, run: _KernelRun, cell: Cell, body: dict[str, Any], record: bool
    ) -> ExecutionResult:
        """One execution: streamed where the server streams, else the blocking call."""
        short_id = run.handle.notebook_id
        if self.streams is not False:
            try:
                async with aclosing(
                    self.client.kernel_execute_stream(short_id, cell.code, **body)
                ) as events:
                    async for event in events:
                        if isinstance(event, ExecutionResult):
                            self.streams = True
                            run.kernel_api = "stream"
                            return event
                        if record:
                            self._stream_output(run, cell, event)
            except NotFound:
                # No stream endpoint (newer servers): nothing ran; use the blocking one.
                logger.info(
                    "this posthog server has no kernel/execute/stream/; executing cell by cell"
                )
                self.streams = False
        run.kernel_api = "execute"
        return await self.client.kernel_execute(short_id, cell.code, **body)

    def _stream_output(self, run: _KernelRun, cell: Cell, event: KernelOutput) -> None:
        limit = self._stream_output_max_bytes
        if run.cell_stream_bytes >= limit:
            return
        run.cell_stream_bytes += len(event.text)
        if run.cell_stream_bytes >= limit:
            # Say so once, instead of keeping (or silently losing) the rest.
            event = KernelOutput(
                name=event.name,
                text=f"\n[notebookops: this cell's streamed output passed {limit} bytes; "
                "the rest was not kept]\n",
            )
        run.outputs.append(
            CellOutput(
                output_type="stream",
                name=event.name,
                text=event.text,
                cell_id=cell.node_id,
                cell_index=cell.index,
            )
        )
        run.notify()

    async def _run_python(self, run: _KernelRun, cell: Cell, *, record: bool = True) -> bool:
        run.kernel_used = True
        body = {
            "return_variables": run.options.return_variables and record,
            "timeout": run.options.cell_timeout,
        }
        before = len(run.outputs)
        run.cell_stream_bytes = 0
        try:
            result = await self._execute(run, cell, body, record)
        except NotebookOpsError as error:
            self._cell_failure(run, cell, error)
            return False
        streamed = {output.name for output in run.outputs[before:] if output.name}
        if record:
            run.results.append(result.raw)
            run.executions[cell] = result.raw
            run.outputs.extend(execution_outputs(result, cell, streamed=streamed))
        failure = execution_error(result, cell, timeout=run.options.cell_timeout)
        if failure is not None:
            if cell.index < 0:
                failure = attrs.evolve(
                    failure,
                    message=f"assigning the run's inputs failed: {failure.message}",
                    cell_index=None,
                )
                run.outputs.extend(execution_outputs(result, cell, streamed=streamed))
            run.error = failure
            run.vendor_state = result.status
            return False
        return True

    async def _run_hogql(self, run: _KernelRun, cell: Cell) -> bool:
        try:
            result = await self.client.hogql_execute(run.handle.notebook_id, cell.code)
        except BadRequest as error:
            words = error.data.get("error") if isinstance(error.data, dict) else None
            reason = words if isinstance(words, str) and words else error.message
            run.outputs.append(
                CellOutput(
                    output_type="error",
                    cell_id=cell.node_id,
                    cell_index=cell.index,
                    ename="HogQLError",
                    evalue=reason,
                )
            )
            run.error = RunErrorInfo(
                message=f"cell {cell.label}: HogQL query failed: {reason}",
                name="HogQLError",
                cell_id=cell.node_id,
                cell_index=cell.index,
            )
            run.vendor_state = "error"
            return False
        except NotebookOpsError as error:
            self._cell_failure(run, cell, error)
            return False
        run.results.append(result.raw)
        run.outputs.append(hogql_output(result, cell))
        return True

    async def _write_back(self, run: _KernelRun) -> None:
        executions = dict(run.executions)

        def transform(content: dict[str, Any] | None) -> dict[str, Any] | None:
            return apply_executions(content, executions)

        try:
            await self.client.update_notebook_content(
                run.handle.notebook_id, transform, max_attempts=WRITE_ATTEMPTS
            )
        except NotebookOpsError as error:
            logger.warning(
                "could not write outputs of posthog run %s: %s", run.handle.run_id, error
            )
            if run.error is None:
                run.error = RunErrorInfo(
                    message=f"every cell ran, but writing the outputs back failed: {error}",
                    name=type(error).__name__,
                    platform=True,
                )
                run.vendor_state = "write_failed"
