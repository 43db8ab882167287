"""Shielding and deadlines under asyncio's own cancellation (``Task.cancel()``).

anyio's shield holds off anyio cancel scopes only. Services on plain asyncio cancel with
``asyncio.timeout``, ``wait_for``, ``TaskGroup`` and ``Task.cancel()``, and a start aborted
by one of those mid-request would orphan a run the vendor may have accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, NoReturn

import anyio
import anyio.lowlevel
import pytest

from notebookops import (
    ConnectionLost,
    PollPolicy,
    Run,
    RunHandle,
    RunRequest,
    RunTimeout,
    run_and_wait,
    start_run,
)
from notebookops.backend import protected
from notebookops.testing import FakeBackend, FakeScript

FAST = PollPolicy(initial=0.001, multiplier=1.5, maximum=0.005, jitter=0)
LONG = FakeScript(states=("pending", "running"))
START_TAKES = 0.05


class SlowStartBackend(FakeBackend):
    """Its start takes a while, as a POST to a vendor does; its cancel can be made slow."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cancel_takes = 0.0

    async def start_run(self, request: RunRequest) -> RunHandle:
        self.faults.start_latency = START_TAKES
        return await super().start_run(request)

    async def cancel_run(self, handle: RunHandle) -> None:
        await asyncio.sleep(self.cancel_takes)
        await super().cancel_run(handle)


@pytest.fixture
async def slow() -> Any:
    async with SlowStartBackend(default_script=LONG) as backend:
        yield backend


def _only_run(backend: FakeBackend) -> Any:
    (fake,) = backend.runs.values()
    return fake


async def test_task_cancel_during_start_finishes_the_start_then_cancels_the_run(
    slow: SlowStartBackend,
) -> None:
    task = asyncio.create_task(run_and_wait(slow, "nb", poll=FAST))
    await asyncio.sleep(START_TAKES / 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.start_count == 1
    assert slow.cancel_calls == 1
    assert _only_run(slow).cancelled


async def test_asyncio_timeout_during_start_still_raises_timeout_error(
    slow: SlowStartBackend,
) -> None:
    # asyncio.timeout tells its own cancellation by the task's count of cancel requests:
    # the shield must leave that count as it found it, or this would be a CancelledError.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(START_TAKES / 5):
            await run_and_wait(slow, "nb", poll=FAST)
    assert slow.start_count == 1
    assert slow.cancel_calls == 1
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_wait_for_during_polling_cancels_the_run(slow: SlowStartBackend) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run_and_wait(slow, "nb", poll=FAST), START_TAKES * 3)
    assert slow.cancel_calls == 1
    assert _only_run(slow).cancelled


async def test_task_group_sibling_failure_during_start_cancels_the_run(
    slow: SlowStartBackend,
) -> None:
    async def fail_soon() -> None:
        await asyncio.sleep(START_TAKES / 5)
        raise LookupError("sibling failed")

    async def both() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(run_and_wait(slow, "nb", poll=FAST))
            group.create_task(fail_soon())

    with pytest.raises(ExceptionGroup) as caught:
        await both()
    assert caught.group_contains(LookupError)
    assert slow.start_count == 1
    assert slow.cancel_calls == 1


async def test_a_second_cancel_does_not_abort_the_remote_cancel(slow: SlowStartBackend) -> None:
    slow.cancel_takes = START_TAKES
    task = asyncio.create_task(run_and_wait(slow, "nb", poll=FAST))
    await asyncio.sleep(START_TAKES * 2)  # started, now polling
    task.cancel()
    await asyncio.sleep(START_TAKES / 5)  # inside the remote cancel
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _only_run(slow).cancelled


async def test_public_start_run_returns_the_handle_then_the_cancellation_lands(
    slow: SlowStartBackend,
) -> None:
    handles: list[RunHandle] = []
    reached_after_sleep = False

    async def caller() -> None:
        nonlocal reached_after_sleep
        handles.append(await start_run(slow, RunRequest(notebook="nb")))
        await asyncio.sleep(1)
        reached_after_sleep = True

    task = asyncio.create_task(caller())
    await asyncio.sleep(START_TAKES / 5)
    task.cancel("shutting down")
    with pytest.raises(asyncio.CancelledError, match="shutting down"):
        await task
    assert len(handles) == 1
    assert handles[0].run_id in slow.runs
    assert not reached_after_sleep


async def test_start_errors_propagate_through_the_shield() -> None:
    async with FakeBackend() as backend:
        backend.faults.start_errors.append(LookupError("boom"))
        with pytest.raises(LookupError, match="boom"):
            await run_and_wait(backend, "nb", poll=FAST)


async def test_deadline_passes_cancel_and_report(slow: SlowStartBackend) -> None:
    with pytest.raises(RunTimeout) as caught:
        await run_and_wait(slow, "nb", poll=FAST, timeout=START_TAKES * 2)
    assert caught.value.cancelled
    assert caught.value.handle is not None
    assert _only_run(slow).cancelled


async def test_native_and_anyio_cancellation_together_still_propagate(
    slow: SlowStartBackend,
) -> None:
    async def wait_in_scope() -> None:
        with anyio.move_on_after(START_TAKES / 5):
            await run_and_wait(slow, "nb", poll=FAST)
        await asyncio.sleep(1)  # a native cancel is still owed: must not get here

    task = asyncio.create_task(wait_in_scope())
    await asyncio.sleep(START_TAKES / 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.start_count == 1


class HangingReadBackend(FakeBackend):
    """Status reads never answer; optionally a second cancellation arrives with the first."""

    def __init__(self, *, cancel_again: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cancel_again = cancel_again

    async def get_run(self, handle: RunHandle) -> Run:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if self.cancel_again:
                asyncio.current_task().cancel()  # type: ignore[union-attr]
            raise
        raise AssertionError("unreachable")


async def test_the_deadline_leaves_no_cancellation_behind() -> None:
    async with HangingReadBackend(cancel_again=False, default_script=LONG) as backend:
        with pytest.raises(RunTimeout) as caught:
            await run_and_wait(backend, "nb", poll=FAST, timeout=0.05, cancel_timeout=0.05)
        assert caught.value.cancelled
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        await asyncio.sleep(0)  # and nothing pending


async def test_another_cancellation_at_the_deadline_wins_over_the_timeout() -> None:
    async with HangingReadBackend(cancel_again=True, default_script=LONG) as backend:
        task = asyncio.create_task(
            run_and_wait(backend, "nb", poll=FAST, timeout=0.05, cancel_timeout=0.05)
        )
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.cancel_calls == 1  # still cancelled remotely, as on any interruption


async def test_a_cancel_landing_as_the_section_ends_is_delivered_without_loop_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # protected()'s own test: the caller is cancelled in the same loop iteration as the
    # protected work finishes; the work's result is returned, then the cancellation lands.
    caller: asyncio.Task[Any] | None = None

    async def work() -> str:
        assert caller is not None
        asyncio.get_running_loop().call_soon(caller.cancel)
        return "done"

    results: list[object] = []

    async def section() -> None:
        results.append(await protected(work, 5.0))
        await asyncio.sleep(1)  # the cancellation is owed here

    caller = asyncio.create_task(section())
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    assert results == ["done"]
    assert not [r for r in caplog.records if r.name == "asyncio"]


# --------------------------------------------------------------------------- swallowed deadlines


class SwallowingBackend(FakeBackend):
    """A backend whose request, once, hangs until cancelled and then swallows the
    cancellation: it reports a transport error in its place, and takes the cancel request
    back (aiohttp's timer, when its own timeout fires in the same loop iteration) or not (a
    plain ``except CancelledError``)."""

    def __init__(self, *, takes_back: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.takes_back = takes_back
        self.swallowed = 0

    async def hang_then_swallow(self) -> NoReturn:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.swallowed += 1
            if self.takes_back:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise ConnectionLost("timed out waiting for the response", vendor="fake") from None
        raise AssertionError("unreachable")


class SwallowingReadBackend(SwallowingBackend):
    """Its third status read is the one that swallows the cancellation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads_after = 0

    async def get_run(self, handle: RunHandle) -> Run:
        if self.swallowed:
            self.reads_after += 1
        elif self.status_reads == 2:
            await self.hang_then_swallow()
        return await super().get_run(handle)


class SwallowingStreamBackend(SwallowingBackend):
    """Streams one update, then swallows the cancellation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(streaming=True, **kwargs)

    async def watch_run(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        yield await super().get_run(handle)
        await self.hang_then_swallow()


@pytest.mark.parametrize("takes_back", [True, False], ids=["taken-back", "left-counted"])
@pytest.mark.parametrize("backend_type", [SwallowingReadBackend, SwallowingStreamBackend])
async def test_a_deadline_whose_cancellation_is_swallowed_still_ends_the_wait(
    backend_type: type[SwallowingBackend], takes_back: bool
) -> None:
    # Before the fix the wait polled on past its deadline, for as long as the run lasted.
    slow_poll = PollPolicy(initial=5.0, maximum=5.0, jitter=0)  # a sleep would show
    async with backend_type(takes_back=takes_back, default_script=LONG) as backend:
        began = asyncio.get_running_loop().time()
        async with asyncio.timeout(3):
            with pytest.raises(RunTimeout) as caught:
                await run_and_wait(
                    backend,
                    "nb",
                    poll=FAST if backend_type is SwallowingReadBackend else slow_poll,
                    # Room for the two reads before the swallowing one on a loaded machine
                    # (a fresh clone's CI once stalled past 0.1 s before the third read).
                    timeout=0.3,
                    cancel_timeout=0.05,
                )
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0  # the timer's request taken back exactly once
        assert asyncio.get_running_loop().time() - began < 1.0
        assert backend.swallowed == 1
        assert caught.value.cancelled
        assert backend.cancel_calls == 1
        if isinstance(backend, SwallowingReadBackend):
            assert backend.reads_after == 1  # the final read after the cancel, no more polls
        await asyncio.sleep(0)  # and no cancellation is owed


# --------------------------------------------------------------------------- on_start


class _Saved:
    """An on_start that awaits before it saves, as a database write does."""

    def __init__(self, takes: float) -> None:
        self.takes = takes
        self.handles: list[RunHandle] = []

    async def __call__(self, handle: RunHandle) -> None:
        await asyncio.sleep(self.takes)
        self.handles.append(handle)


async def test_an_async_on_start_saves_the_handle_when_task_cancel_lands_during_the_start(
    slow: SlowStartBackend,
) -> None:
    save = _Saved(START_TAKES)
    task = asyncio.create_task(run_and_wait(slow, "nb", poll=FAST, on_start=save))
    await asyncio.sleep(START_TAKES / 5)  # inside the start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (run,) = slow.runs.values()
    assert [handle.run_id for handle in save.handles] == [run.handle.run_id]
    assert run.cancelled  # and the run it saved was then cancelled, as asked


async def test_an_async_on_start_saves_the_handle_when_an_anyio_scope_is_cancelled(
    slow: SlowStartBackend,
) -> None:
    save = _Saved(START_TAKES)
    with anyio.move_on_after(START_TAKES / 5):
        await run_and_wait(slow, "nb", poll=FAST, on_start=save)
    assert len(save.handles) == 1
    assert save.handles[0].run_id in slow.runs


async def test_an_on_start_that_overruns_is_a_run_timeout_with_the_handle(
    slow: SlowStartBackend,
) -> None:
    save = _Saved(30)
    with pytest.raises(RunTimeout, match="on_start did not finish") as caught:
        await run_and_wait(slow, "nb", poll=FAST, on_start=save, cancel_timeout=0.1)
    assert caught.value.handle is not None
    assert caught.value.handle.run_id in slow.runs
    assert not caught.value.cancelled


async def test_an_on_start_that_raises_keeps_the_handle_on_the_error(
    slow: SlowStartBackend,
) -> None:
    async def broken(handle: RunHandle) -> None:
        await asyncio.sleep(0)
        raise OSError("the database is gone")

    with pytest.raises(OSError, match="database is gone") as caught:
        await run_and_wait(slow, "nb", poll=FAST, on_start=broken)
    (run_id,) = slow.runs
    assert any(run_id in note for note in caught.value.__notes__)
