"""Kernel mode: this process runs a notebook's cells through PostHog's kernel endpoints.

A kernel-mode run lives in the backend instance that started it: its cells execute one by one
as a run of the shared in-process :class:`~notebookops.backends._runhost.RunHost` (which keeps,
answers, cancels, settles and forgets it), through ``kernel/execute/stream/`` where the server
has it (older servers) and cell by cell through the blocking ``kernel/execute/`` where it does
not (which one is found on first use and remembered). HogQL cells go through
``hogql/execute/``.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs

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
from ...models import CellOutput, Run, RunErrorInfo, RunHandle, RunRequest, RunState
from .._runhost import HostedRun, RunHost
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
from ._wire import ExecutionResult, KernelOutput
from .client import WRITE_ATTEMPTS, PostHogClient

__all__ = ["STREAM_OUTPUT_MAX_BYTES", "KernelRuns"]

logger = logging.getLogger("notebookops.posthog")

#: The default cap on one cell's streamed stdout/stderr kept in a kernel run; past it the
#: rest is dropped and one marker output says so.
STREAM_OUTPUT_MAX_BYTES: Final = 16 * 1024 * 1024
#: The pseudo-cell that assigns ``RunRequest.inputs`` before the notebook's own cells.
_INPUTS_CELL_ID: Final = "notebookops-inputs"


@attrs.define(eq=False)
class _Job:
    """What a kernel run needs beyond its :class:`HostedRun`: held by its body (and, while
    it runs, by ``KernelRuns._jobs``), so it goes when the run ends."""

    cells: list[Cell]
    setup_code: str | None
    options: Any  # PostHogRunOptions (imported by the backend; kept loose to avoid a cycle)
    #: Each Python cell's execution, for ``write_outputs``.
    executions: dict[Cell, dict[str, Any]] = attrs.field(factory=dict)
    kernel_used: bool = False
    #: Why stopping the kernel of a cancelled run failed (``cancel_run`` raises it).
    stop_error: NotebookOpsError | None = None
    #: Streamed output bytes kept of the current cell (see ``stream_output_max_bytes``).
    cell_stream_bytes: int = 0


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
        keep_output_bytes: int,
        keep_finished_runs: int,
        stream_output_max_bytes: int,
    ) -> None:
        self.client = client
        self._stream_output_max_bytes = stream_output_max_bytes
        self._cancel_timeout = cancel_timeout
        self._host = RunHost(
            "posthog",
            keep_output_bytes=keep_output_bytes,
            keep_finished_runs=keep_finished_runs,
        )
        #: The jobs of the runs in progress (for ``cancel`` to report a failed kernel stop).
        self._jobs: dict[str, _Job] = {}
        self._locks: dict[str, anyio.Lock] = {}
        #: Whether the server streams executions (None: not known yet).
        self.streams: bool | None = None

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
        job = _Job(cells=cells, setup_code=setup, options=options)
        await self._host.start(
            handle,
            functools.partial(self._drive, job),
            total=len(cells),
            raw={"mode": "kernel", "kernel_api": None, "results": []},
        )
        logger.info(
            "started posthog kernel run %s of %s (%d cells)", handle.run_id, short_id, len(cells)
        )
        return handle

    def _hosted(self, handle: RunHandle) -> HostedRun:
        run = self._host.get(handle.run_id)
        if run is None:
            raise KernelRunNotFound(
                f"posthog kernel-mode run {handle.run_id} is not known to this backend "
                "instance: kernel-mode runs exist only in the backend that started them and "
                "cannot be resumed elsewhere (use mode='server' for resumable runs); it "
                f"remembers its latest {self._host.keep_finished_runs} finished runs",
                status=404,
                vendor="posthog",
                method="GET",
                url=handle.web_url or "",
            )
        return run

    async def get(self, handle: RunHandle) -> Run:
        run = self._hosted(handle)
        await anyio.lowlevel.checkpoint()
        return self._host.snapshot(run)

    async def cancel(self, handle: RunHandle) -> None:
        """Cancel the current cell, stop the kernel and wait (bounded) for CANCELLED."""
        run = self._hosted(handle)
        job = self._jobs.get(handle.run_id)
        await self._host.cancel(run, "cancel requested")
        # A reader right after the cancel (run_and_wait's final read) sees the run ended.
        await self._host.wait_finished(run, self._cancel_timeout * 2)
        if job is not None and job.stop_error is not None:
            raise job.stop_error

    async def watch(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        async for run in self._host.watch(self._hosted(handle)):
            yield self._host.snapshot(run)

    async def aclose(self) -> None:
        """Cancel every run (each stops its kernel, bounded by ``cancel_timeout``)."""
        # Each run's own cleanup is bounded by cancel_timeout; this bound is the backstop.
        await self._host.aclose("the backend was closed", timeout=self._cancel_timeout * 2 + 1)

    def _lock(self, short_id: str) -> anyio.Lock:
        lock = self._locks.get(short_id)
        if lock is None:
            lock = self._locks[short_id] = anyio.Lock()
        return lock

    # -- one run

    async def _drive(self, job: _Job, run: HostedRun) -> None:
        """The body of one run (see RunHost): its cells, one notebook's runs one at a time.
        Cancelled (by ``cancel`` or the backend closing), it stops the kernel, bounded."""
        short_id = run.handle.notebook_id
        self._jobs[run.handle.run_id] = job
        try:
            async with self._lock(short_id):
                run.update(state=RunState.RUNNING, vendor_state="running", started_at=utc_now())
                await self._run_cells(job, run)
            if job.options.write_outputs and job.executions:
                await self._write_back(job, run)
            if job.options.stop_kernel_at_end and job.kernel_used:
                with anyio.move_on_after(self._cancel_timeout):
                    try:
                        await self.client.kernel_stop(short_id)
                    except NotebookOpsError as error:
                        logger.warning(
                            "could not stop the kernel of posthog notebook %s: %s", short_id, error
                        )
            if run.error is not None:
                run.finish(RunState.FAILED)
            else:
                run.finish(RunState.SUCCEEDED, vendor_state="ok")
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._stop_kernel(job, run)
            run.finish(RunState.CANCELLED, vendor_state="cancelled")
            raise
        finally:
            del self._jobs[run.handle.run_id]

    async def _stop_kernel(self, job: _Job, run: HostedRun) -> None:
        """Stop the kernel of a cancelled run, at most ``cancel_timeout`` seconds."""
        if not job.kernel_used:
            return
        with anyio.move_on_after(self._cancel_timeout) as scope:
            try:
                await self.client.kernel_stop(run.handle.notebook_id)
            except NotebookOpsError as error:
                job.stop_error = error
        if scope.cancelled_caught and job.stop_error is None:
            job.stop_error = RequestTimeout(
                f"stopping the kernel of posthog notebook {run.handle.notebook_id} did not "
                f"finish within {self._cancel_timeout:g}s; it may still be running",
                vendor="posthog",
                method="POST",
            )

    async def _run_cells(self, job: _Job, run: HostedRun) -> None:
        if job.setup_code is not None:
            setup = Cell(index=-1, kind="python", code=job.setup_code, node_id=_INPUTS_CELL_ID)
            if not await self._run_python(job, run, setup, record=False):
                return
        for cell in job.cells:
            run.update(current=cell.label)
            if cell.kind == "python":
                ok = await self._run_python(job, run, cell)
            else:
                ok = await self._run_hogql(run, cell)
            run.update(completed=run.completed + 1)
            if not ok:
                return

    def _cell_failure(self, run: HostedRun, cell: Cell, error: NotebookOpsError) -> None:
        if isinstance(error, PermissionDenied) and run.completed == 0:
            # Nothing of the notebook ran: not a failed run, a refused one.
            run.refusal = error
            error.handle = run.handle
            run.update(vendor_state="refused")
        if isinstance(error, KernelStreamError):
            message = f"cell {cell.label} could not run: PostHog reported {error.error!r}"
            run.update(vendor_state="infrastructure_error")
        else:
            message = f"cell {cell.label} could not run: {error}"
            if run.refusal is None:
                run.update(vendor_state="request_failed")
        run.error = RunErrorInfo(
            message=strip_ansi(message),
            name=type(error).__name__,
            cell_id=cell.node_id,
            cell_index=cell.index if cell.index >= 0 else None,
            platform=_platform(error),
        )

    async def _execute(
        self, run: HostedRun, job: _Job, cell: Cell, body: dict[str, Any], record: bool
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
                            run.raw["kernel_api"] = "stream"
                            return event
                        if record:
                            self._stream_output(run, job, cell, event)
            except NotFound:
                # No stream endpoint (newer servers): nothing ran; use the blocking one.
                logger.info(
                    "this posthog server has no kernel/execute/stream/; executing cell by cell"
                )
                self.streams = False
        run.raw["kernel_api"] = "execute"
        return await self.client.kernel_execute(short_id, cell.code, **body)

    def _stream_output(self, run: HostedRun, job: _Job, cell: Cell, event: KernelOutput) -> None:
        limit = self._stream_output_max_bytes
        if job.cell_stream_bytes >= limit:
            return
        job.cell_stream_bytes += len(event.text)
        if job.cell_stream_bytes >= limit:
            # Say so once, instead of keeping (or silently losing) the rest.
            event = KernelOutput(
                name=event.name,
                text=f"\n[notebookops: this cell's streamed output passed {limit} bytes; "
                "the rest was not kept]\n",
            )
        run.add_outputs(
            [
                CellOutput(
                    output_type="stream",
                    name=event.name,
                    text=event.text,
                    cell_id=cell.node_id,
                    cell_index=cell.index,
                )
            ]
        )

    async def _run_python(
        self, job: _Job, run: HostedRun, cell: Cell, *, record: bool = True
    ) -> bool:
        job.kernel_used = True
        body = {
            "return_variables": job.options.return_variables and record,
            "timeout": job.options.cell_timeout,
        }
        before = len(run.outputs)
        job.cell_stream_bytes = 0
        try:
            result = await self._execute(run, job, cell, body, record)
        except NotebookOpsError as error:
            self._cell_failure(run, cell, error)
            return False
        streamed = {output.name for output in run.outputs[before:] if output.name}
        if record:
            job.executions[cell] = result.raw
            run.add_outputs(execution_outputs(result, cell, streamed=streamed), result=result.raw)
        failure = execution_error(result, cell, timeout=job.options.cell_timeout)
        if failure is not None:
            if cell.index < 0:
                failure = attrs.evolve(
                    failure,
                    message=f"assigning the run's inputs failed: {failure.message}",
                    cell_index=None,
                )
                run.add_outputs(execution_outputs(result, cell, streamed=streamed))
            run.error = failure
            run.update(vendor_state=result.status)
            return False
        return True

    async def _run_hogql(self, run: HostedRun, cell: Cell) -> bool:
        try:
            result = await self.client.hogql_execute(run.handle.notebook_id, cell.code)
        except BadRequest as error:
            words = error.data.get("error") if isinstance(error.data, dict) else None
            reason = words if isinstance(words, str) and words else error.message
            run.add_outputs(
                [
                    CellOutput(
                        output_type="error",
                        cell_id=cell.node_id,
                        cell_index=cell.index,
                        ename="HogQLError",
                        evalue=reason,
                    )
                ]
            )
            run.error = RunErrorInfo(
                message=f"cell {cell.label}: HogQL query failed: {reason}",
                name="HogQLError",
                cell_id=cell.node_id,
                cell_index=cell.index,
            )
            run.update(vendor_state="error")
            return False
        except NotebookOpsError as error:
            self._cell_failure(run, cell, error)
            return False
        run.add_outputs([hogql_output(result, cell)], result=result.raw)
        return True

    async def _write_back(self, job: _Job, run: HostedRun) -> None:
        executions = dict(job.executions)

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
                run.update(vendor_state="write_failed")
