"""RunHost, the in-process run host under LocalBackend and PostHog's kernel mode: bodies are
plain coroutines here, so every rule (finishing, failures, cancelling, closing, retention,
vendor records, refusals) is checked without kernels or servers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from notebookops import BackendClosed, ConfigurationError, PermissionDenied, RunHandle, RunState
from notebookops.backends._runhost import HostedRun, RunHost, json_size, output_size
from notebookops.models import CellOutput, RunProgress

Body = Callable[[HostedRun], Awaitable[None]]


def handle(run_id: str) -> RunHandle:
    return RunHandle(backend="test", run_id=run_id, notebook_id="nb")


def text(size: int, index: int = 0) -> CellOutput:
    return CellOutput(output_type="stream", name="stdout", text="x" * size, cell_index=index)


async def finished(host: RunHost, run: HostedRun) -> HostedRun:
    assert await host.wait_finished(run, 5)
    return run


async def test_a_body_reports_progress_and_outputs() -> None:
    host = RunHost("test")
    step = anyio.Event()

    async def body(run: HostedRun) -> None:
        run.update(state=RunState.RUNNING, vendor_state="running", current="c0")
        run.add_outputs([text(3)])
        run.update(completed=1, current=None)
        await step.wait()

    run = await host.start(handle("r1"), body, total=2, raw={"kind": "test"})
    assert host.get("r1") is run
    seen: list[tuple[RunState, int]] = []
    async for update in host.watch(run):
        seen.append((update.state, update.completed))
        if update.completed == 1 and not step.is_set():
            snapshot = host.snapshot(update)
            assert snapshot.state is RunState.RUNNING
            assert snapshot.progress == RunProgress(completed=1, total=2, current=None)
            assert [output.text for output in snapshot.outputs] == ["xxx"]
            assert snapshot.raw == {"kind": "test"}
            assert snapshot.error is None
            step.set()
    # Returning without finishing: no error and no cancel mean success.
    assert seen[0] == (RunState.PENDING, 0)
    assert seen[-1] == (RunState.SUCCEEDED, 1)
    final = host.snapshot(run)
    assert (final.state, final.vendor_state) == (RunState.SUCCEEDED, "succeeded")
    assert final.finished_at is not None
    assert run.output_bytes == 3
    await host.aclose("closed")


async def test_a_body_that_breaks_fails_its_run_not_the_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = RunHost("test")

    async def broken(run: HostedRun) -> None:
        raise KeyError("oops")

    async def fine(run: HostedRun) -> None:
        run.finish(RunState.SUCCEEDED, vendor_state="ok")

    bad = await finished(host, await host.start(handle("bad"), broken))
    good = await finished(host, await host.start(handle("good"), fine))
    assert bad.state is RunState.FAILED
    assert bad.error is not None
    assert bad.error.platform is True
    assert bad.error.message == "the run broke down: KeyError: 'oops'"
    assert (good.state, good.vendor_state) == (RunState.SUCCEEDED, "ok")
    assert "test run bad failed unexpectedly" in caplog.text
    await host.aclose("closed")


async def test_cancel_cancels_the_body_by_default() -> None:
    host = RunHost("test")
    cleaned = anyio.Event()

    async def forever(run: HostedRun) -> None:
        try:
            run.update(state=RunState.RUNNING)
            await anyio.sleep_forever()
        finally:
            cleaned.set()

    run = await host.start(handle("r1"), forever)
    async for update in host.watch(run):
        if update.state is RunState.RUNNING:
            break
    await host.cancel(run, "asked")
    await finished(host, run)
    assert cleaned.is_set()
    assert (run.state, run.vendor_state) == (RunState.CANCELLED, "cancelled")
    assert host.snapshot(run).raw == {"cancel_reason": "asked"}
    await host.cancel(run, "again")  # a finished run is left as it is
    assert run.cancel_reason == "asked"
    await host.aclose("closed")


async def test_cancel_before_the_body_begins() -> None:
    host = RunHost("test")
    began: list[str] = []

    async def body(run: HostedRun) -> None:
        began.append(run.handle.run_id)
        await anyio.lowlevel.checkpoint()
        began.append("after")

    run = await host.start(handle("r1"), body)
    await host.cancel(run, "early")  # no await in between: the body has not begun
    await finished(host, run)
    assert run.state is RunState.CANCELLED
    assert "after" not in began
    await host.aclose("closed")


async def test_on_cancel_replaces_cancelling_the_body() -> None:
    host = RunHost("test")
    calls: list[tuple[str, bool]] = []
    stop = anyio.Event()

    async def body(run: HostedRun) -> None:
        with anyio.CancelScope(shield=True):  # as nbclient mid-cell: never cancelled
            await stop.wait()

    async def on_cancel(run: HostedRun, closing: bool) -> None:
        calls.append((run.handle.run_id, closing))
        stop.set()

    run = await host.start(handle("r1"), body, on_cancel=on_cancel)
    other = await host.start(handle("r2"), body, on_cancel=on_cancel)
    await host.cancel(run, "asked")
    await finished(host, run)
    assert calls == [("r1", False)]
    assert run.state is RunState.CANCELLED
    assert other.finished  # the same event ended it
    await host.aclose("closed")
    assert calls == [("r1", False)]  # nothing was left to stop


async def test_closing_stops_and_settles_every_run() -> None:
    host = RunHost("test")
    closing: list[bool] = []

    async def body(run: HostedRun) -> None:
        await anyio.sleep_forever()

    async def on_cancel(run: HostedRun, is_closing: bool) -> None:
        closing.append(is_closing)

    first = await host.start(handle("r1"), body)
    second = await host.start(handle("r2"), body, on_cancel=on_cancel)
    with anyio.fail_after(5):
        await host.aclose("the backend was closed")
    assert closing == [True]
    for run in (first, second):
        assert run.state is RunState.CANCELLED
        assert run.cancel_reason == "the backend was closed"
    assert host.closed
    with pytest.raises(BackendClosed):
        await host.start(handle("r3"), body)
    await host.aclose("again")


async def test_retention_is_bounded_by_the_bytes_of_finished_outputs() -> None:
    host = RunHost("test", keep_output_bytes=250, keep_finished_runs=3)

    def printing(size: int) -> Body:
        async def body(run: HostedRun) -> None:
            run.add_outputs([text(size)])

        return body

    runs = [
        await finished(host, await host.start(handle(f"r{i}"), printing(100))) for i in range(3)
    ]
    # 300 bytes finished: the oldest run's outputs go, its state stays.
    assert [run.outputs_released for run in runs] == [True, False, False]
    oldest = host.snapshot(runs[0])
    assert (oldest.state, oldest.outputs) == (RunState.SUCCEEDED, ())
    assert oldest.raw == {"outputs_released": True}
    assert host.snapshot(runs[1]).outputs == (text(100),)

    # The most recent run keeps its outputs even alone over the bound; older ones make room.
    big = await finished(host, await host.start(handle("big"), printing(1000)))
    assert not big.outputs_released
    assert [run.outputs_released for run in runs] == [True, True, True]
    # At most keep_finished_runs are remembered at all: the oldest is forgotten.
    assert host.get("r0") is None
    assert [run.handle.run_id for run in host.runs()] == ["r1", "r2", "big"]

    # A run in progress is never released, whatever it holds.
    step = anyio.Event()

    async def long(run: HostedRun) -> None:
        run.add_outputs([text(5000)])
        await step.wait()

    going = await host.start(handle("long"), long)
    await finished(host, await host.start(handle("small"), printing(1)))
    assert not going.outputs_released
    assert len(going.outputs) == 1
    step.set()
    await finished(host, going)
    assert going.outputs
    assert host.snapshot(big).outputs == ()
    await host.aclose("closed")


async def test_vendor_records_are_shown_weighed_and_released_with_the_outputs() -> None:
    host = RunHost("test", keep_output_bytes=30)
    record = {"stdout": "x" * 10}

    async def body(run: HostedRun) -> None:
        run.add_outputs([text(10)], result=record)

    first = await finished(host, await host.start(handle("r1"), body, raw={"results": []}))
    assert first.output_bytes == 10 + json_size(record)
    assert host.snapshot(first).raw == {"results": [record]}
    second = await finished(host, await host.start(handle("r2"), body, raw={"results": []}))
    assert (first.outputs, first.results, first.outputs_released) == ([], [], True)
    assert host.snapshot(first).raw == {"results": [], "outputs_released": True}
    assert host.snapshot(second).raw == {"results": [record]}
    await host.aclose("closed")


async def test_a_refused_run_raises_its_refusal_to_readers() -> None:
    host = RunHost("test")
    refusal = PermissionDenied(
        "this key may not run notebooks", status=403, vendor="test", method="POST", url="u"
    )

    async def body(run: HostedRun) -> None:
        run.refusal = refusal

    run = await finished(host, await host.start(handle("r1"), body))
    with pytest.raises(PermissionDenied) as raised:
        host.snapshot(run)
    assert raised.value is refusal
    await host.aclose("closed")


def test_output_size_counts_text_errors_and_data() -> None:
    error = CellOutput(output_type="error", ename="E", evalue="ab", traceback=("123", "45"))
    assert output_size(error) == 1 + 2 + 5
    data = CellOutput(
        output_type="display_data", data={"text/plain": "abc", "application/json": {"a": 1}}
    )
    assert output_size(data) == 3 + len('{"a": 1}')
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    assert output_size(CellOutput(output_type="display_data", data={"x": deep})) == 1024


@pytest.mark.parametrize(
    "kwargs",
    [{"keep_output_bytes": -1}, {"keep_finished_runs": 1.5}, {"keep_output_bytes": True}],
)
def test_bounds_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="integer >= 0"):
        RunHost("test", **kwargs)  # type: ignore[arg-type]


async def test_closing_is_bounded_when_a_cleanup_hangs(caplog: pytest.LogCaptureFixture) -> None:
    host = RunHost("test")
    release = anyio.Event()

    async def stubborn(run: HostedRun) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await release.wait()  # a cleanup that never ends on its own

    run = await host.start(handle("r1"), stubborn)
    await anyio.lowlevel.checkpoint()
    with anyio.fail_after(5):
        await host.aclose("closed", timeout=0.2)
    assert run.state is RunState.CANCELLED
    assert "did not settle within 0.2s" in caplog.text
    release.set()
    for _ in range(10):  # let the body and the host's task end before the loop does
        await anyio.lowlevel.checkpoint()
