"""FakeBackend: an in-memory backend with scripted runs and injectable faults.

Use it to test code that calls notebookops without any vendor::

    backend = FakeBackend()
    backend.program("etl", FakeScript(states=("pending", "running", "failed")))
    backend.faults.status_errors.append(ServerError(...))   # next status read fails once
    with pytest.raises(RunFailed):
        await run_and_wait(backend, "etl", poll=PollPolicy(initial=0.01, maximum=0.01))
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs

from .._protect import protected
from ..backend import BaseBackend, StateTable
from ..errors import ConnectionLost, StartOutcomeUnknown
from ..models import (
    Capability,
    CellOutput,
    Run,
    RunErrorInfo,
    RunHandle,
    RunProgress,
    RunRequest,
    RunState,
)

__all__ = ["FAKE_STATES", "FakeBackend", "FakeFaults", "FakeRun", "FakeScript"]

#: The fake vendor's status strings. Anything else a script names is reported as UNKNOWN.
FAKE_STATES: Mapping[str, RunState] = {
    "pending": RunState.PENDING,
    "running": RunState.RUNNING,
    "success": RunState.SUCCEEDED,
    "failed": RunState.FAILED,
    "cancelled": RunState.CANCELLED,
    "submitted": RunState.SUBMITTED,
}

DEFAULT_CAPABILITIES = frozenset(
    {
        Capability.RUN_STATUS,
        Capability.CANCEL,
        Capability.OUTPUTS,
        Capability.INPUTS,
        Capability.BLOCK_SELECTION,
        Capability.RESUMABLE,
    }
)


@attrs.frozen
class FakeScript:
    """How a fake run behaves.

    ``states`` are the statuses reported one after another; the last one sticks. They advance
    by one per status read, or, with ``step_seconds``, by elapsed time. A script whose last
    state is not terminal runs until cancelled.
    """

    states: Sequence[str] = ("pending", "running", "success")
    step_seconds: float | None = None
    outputs: Sequence[CellOutput] = ()
    error: RunErrorInfo | None = None


@attrs.define
class FakeFaults:
    """Faults to inject; each list is consumed front to back, one item per call."""

    #: Raised by start_run before any run is created.
    start_errors: list[Exception] = attrs.field(factory=list)
    #: How many upcoming starts create the run and then "lose" the response.
    lost_start_responses: int = 0
    #: Raised by get_run instead of reading (e.g. RateLimited, ServerError, ConnectionLost).
    status_errors: list[Exception] = attrs.field(factory=list)
    #: Raised by cancel_run.
    cancel_errors: list[Exception] = attrs.field(factory=list)
    #: Seconds each status read takes (to exercise deadlines during a read).
    status_latency: float = 0.0
    #: Seconds the vendor takes to answer a start. Like a vendor client's run-starting
    #: request, the start is seen through to its answer even if the caller is cancelled
    #: meanwhile (the NotebookBackend.start_run contract); the run exists once answered.
    start_latency: float = 0.0


@attrs.define
class FakeRun:
    """Server-side state of one fake run (inspect it in tests)."""

    handle: RunHandle
    request: RunRequest
    script: FakeScript
    started_at: float
    reads: int = 0
    cancelled: bool = False
    cancel_requests: int = 0


class FakeBackend(BaseBackend):
    """In-memory backend. Thread-unsafe, event-loop-agnostic (works under asyncio and trio)."""

    def __init__(
        self,
        *,
        name: str = "fake",
        capabilities: frozenset[Capability] | None = None,
        default_script: FakeScript | None = None,
        streaming: bool = False,
        stream_interval: float = 0.001,
    ) -> None:
        self.name = name
        caps = set(DEFAULT_CAPABILITIES if capabilities is None else capabilities)
        if streaming:
            caps.add(Capability.STREAMING)
        self.capabilities = frozenset(caps)
        self.default_script = default_script or FakeScript()
        self.faults = FakeFaults()
        self.runs: dict[str, FakeRun] = {}
        self.start_count = 0
        self.status_reads = 0
        self.cancel_calls = 0
        self._scripts: dict[str, FakeScript] = {}
        self._ids = itertools.count(1)
        self._states = StateTable(name, FAKE_STATES)
        self._stream_interval = stream_interval

    def program(self, notebook: str, script: FakeScript) -> None:
        """Make runs of ``notebook`` follow ``script``."""
        self._scripts[notebook] = script

    # -- protocol

    async def start_run(self, request: RunRequest) -> RunHandle:
        self._ensure_open()
        await anyio.lowlevel.checkpoint()
        if self.faults.start_errors:
            raise self.faults.start_errors.pop(0)
        if self.faults.start_latency:
            latency = self.faults.start_latency
            await protected(lambda: anyio.sleep(latency), latency + 60)
        self.start_count += 1
        run_id = f"{self.name}-run-{next(self._ids)}"
        handle = RunHandle(
            backend=self.name,
            run_id=run_id,
            notebook_id=request.notebook,
            created_at=datetime.now(UTC),
            web_url=f"https://fake.invalid/runs/{run_id}",
        )
        script = self._scripts.get(request.notebook, self.default_script)
        self.runs[run_id] = FakeRun(handle, request, script, anyio.current_time())
        if self.faults.lost_start_responses > 0:
            self.faults.lost_start_responses -= 1
            if Capability.RECONCILE_START in self.capabilities:
                return handle  # found it again, as a reconciling adapter would
            raise StartOutcomeUnknown(
                f"lost the response to starting {request.notebook!r}",
                notebook=request.notebook,
                evidence="the fake dropped the response after creating the run",
            ) from ConnectionLost("connection lost after the request was sent")
        return handle

    async def get_run(self, handle: RunHandle) -> Run:
        self._check_handle(handle)
        if self.faults.status_latency:
            await anyio.sleep(self.faults.status_latency)
        else:
            await anyio.lowlevel.checkpoint()
        self._ensure_open()
        if self.faults.status_errors:
            raise self.faults.status_errors.pop(0)
        fake = self._fake(handle)
        self.status_reads += 1
        fake.reads += 1
        return self._snapshot(fake)

    async def cancel_run(self, handle: RunHandle) -> None:
        self._check_handle(handle)
        self._require(Capability.CANCEL, "cancel runs")
        await anyio.lowlevel.checkpoint()
        self.cancel_calls += 1
        if self.faults.cancel_errors:
            raise self.faults.cancel_errors.pop(0)
        fake = self._fake(handle)
        fake.cancel_requests += 1
        if self._vendor_state(fake) not in ("success", "failed", "cancelled"):
            fake.cancelled = True

    async def find_runs(
        self, notebook: str, *, since: datetime, until: datetime
    ) -> list[RunHandle]:
        """The runs of ``notebook`` created from ``since`` to ``until`` (only with
        Capability.RECONCILE_START: a vendor's runs list, for settling a keyed start)."""
        self._ensure_open()
        self._require(Capability.RECONCILE_START, "list a notebook's runs")
        await anyio.lowlevel.checkpoint()
        return [
            fake.handle
            for fake in self.runs.values()
            if fake.request.notebook == notebook
            and fake.handle.created_at is not None
            and since <= fake.handle.created_at <= until
        ]

    async def watch_run(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        """Push-style updates (only with ``streaming=True``): one Run per state change."""
        self._check_handle(handle)
        self._require(Capability.STREAMING, "stream run updates")
        fake = self._fake(handle)
        last: str | None = None
        while True:
            self._ensure_open()
            fake.reads += 1  # a stream advances read-driven scripts as well
            run = self._snapshot(fake)
            if run.vendor_state != last:
                last = run.vendor_state
                yield run
            if run.state.is_terminal:
                return
            await anyio.sleep(self._stream_interval)

    # -- helpers

    def _fake(self, handle: RunHandle) -> FakeRun:
        try:
            return self.runs[handle.run_id]
        except KeyError:
            from ..errors import NotFound

            raise NotFound(
                f"{self.name} run {handle.run_id} not found",
                status=404,
                vendor=self.name,
                method="GET",
                url=f"fake://{self.name}/runs/{handle.run_id}",
            ) from None

    def _step(self, fake: FakeRun) -> int:
        states = fake.script.states
        if fake.script.step_seconds is not None:
            elapsed = anyio.current_time() - fake.started_at
            index = int(elapsed / fake.script.step_seconds)
        else:
            index = fake.reads - 1
        return max(0, min(len(states) - 1, index))

    def _vendor_state(self, fake: FakeRun) -> str:
        if fake.cancelled:
            return "cancelled"
        return fake.script.states[self._step(fake)] if fake.script.states else "pending"

    def _snapshot(self, fake: FakeRun) -> Run:
        vendor_state = self._vendor_state(fake)
        state = self._states(vendor_state)
        outputs: tuple[CellOutput, ...] = ()
        error = None
        finished = None
        if state.is_terminal:
            finished = datetime.now(UTC)
            outputs = tuple(fake.script.outputs) or tuple(
                CellOutput(output_type="stream", name="stdout", text=f"{key}={value!r}\n")
                for key, value in fake.request.inputs.items()
            )
            if state is RunState.FAILED:
                error = fake.script.error or RunErrorInfo(
                    message="scripted failure", name="FakeError"
                )
        raw: dict[str, Any] = {"status": vendor_state, "reads": fake.reads}
        return Run(
            handle=fake.handle,
            state=state,
            vendor_state=vendor_state,
            created_at=fake.handle.created_at,
            started_at=fake.handle.created_at,
            finished_at=finished,
            outputs=outputs,
            error=error,
            progress=RunProgress(
                completed=self._step(fake) + 1, total=len(fake.script.states) or None
            ),
            web_url=fake.handle.web_url,
            raw=raw,
        )
