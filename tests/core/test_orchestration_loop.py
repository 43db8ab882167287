"""The waiting loop's internals that the per-request cost work touched: the polled path's
handling of callbacks and duplicates, and the event loop clock it binds once per wait."""

from __future__ import annotations

import logging

import pytest

from notebookops import (
    PollPolicy,
    ResponseDecodeError,
    Run,
    RunState,
    RunTimeout,
    run_and_wait,
    wait_for_run,
)
from notebookops.models import RunRequest
from notebookops.testing import FakeBackend, FakeScript

FAST = PollPolicy(initial=0.001, multiplier=1.5, maximum=0.005, jitter=0)


@pytest.mark.parametrize("streaming", [False, True])
async def test_an_on_update_error_that_looks_transient_is_the_callers(
    streaming: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # ResponseDecodeError is retried when a status read raises it; raised by the caller's
    # callback, it must end the wait instead, on the polled path as on the streamed one.
    def broken(run: Run) -> None:
        raise ResponseDecodeError("the callback's own parsing failed")

    async with FakeBackend(streaming=streaming) as backend:
        backend.program("nb", FakeScript(states=("pending", "running", "success")))
        with pytest.raises(ResponseDecodeError, match="callback's own") as caught:
            # A deadline, so that retrying the callback forever fails the test, not hangs it.
            await run_and_wait(backend, "nb", poll=FAST, timeout=5, on_update=broken)
    assert caught.value.handle is not None
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    if not streaming:
        assert backend.status_reads == 1


async def test_polled_updates_are_reported_once_per_change() -> None:
    # The fake's last state sticks (with the same progress): reads go on, updates do not.
    seen: list[str | None] = []
    async with FakeBackend() as backend:
        backend.program("nb", FakeScript(states=("pending", "running")))
        with pytest.raises(RunTimeout):
            await run_and_wait(
                backend,
                "nb",
                poll=FAST,
                timeout=0.3,
                on_timeout="detach",
                on_update=lambda run: seen.append(run.vendor_state),
            )
        assert backend.status_reads > 3
    assert seen == ["pending", "running"]


async def test_transient_read_errors_between_reads_keep_the_last_update_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A failed read in the middle must neither repeat the previous update nor lose one.
    seen: list[str | None] = []
    async with FakeBackend() as backend:
        backend.program("nb", FakeScript(states=("running", "running", "success")))
        handle = await backend.start_run(RunRequest("nb"))
        await backend.get_run(handle)  # the first read: "running"
        backend.faults.status_errors.append(ResponseDecodeError("garbled"))
        with caplog.at_level(logging.WARNING, logger="notebookops.orchestration"):
            run = await wait_for_run(
                backend, handle, poll=FAST, on_update=lambda run: seen.append(run.vendor_state)
            )
    assert run.state is RunState.SUCCEEDED
    assert seen == ["running", "success"]
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 1


async def test_a_read_error_followed_by_good_reads_is_not_blamed_at_the_deadline() -> None:
    async with FakeBackend() as backend:
        backend.program("nb", FakeScript(states=("pending", "running")))
        backend.faults.status_errors.append(ResponseDecodeError("garbled"))
        with pytest.raises(RunTimeout) as caught:
            await run_and_wait(backend, "nb", poll=FAST, timeout=0.3, on_timeout="detach")
        assert backend.status_reads > 1
    assert "last status read failed" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.run is not None
