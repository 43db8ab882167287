"""run_and_wait / wait_for_run / watch / run_many semantics, on FakeBackend."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

from notebookops import (
    AuthenticationError,
    BadRequest,
    Capability,
    ConfigurationError,
    ConnectionLost,
    NotFound,
    PollPolicy,
    RateLimited,
    ResponseDecodeError,
    Run,
    RunCancelled,
    RunFailed,
    RunHandle,
    RunRequest,
    RunState,
    RunTimeout,
    ServerError,
    StartOutcomeUnknown,
    run_and_wait,
    run_many,
    wait_for_run,
    watch,
)
from notebookops.testing import FakeBackend, FakeScript
from notebookops.testing.fake import DEFAULT_CAPABILITIES

FAST = PollPolicy(initial=0.001, multiplier=1.5, maximum=0.005, jitter=0)
LONG = FakeScript(states=("pending", "running"))


def api_error(cls: type[Any], status: int, **extra: Any) -> Any:
    return cls(f"HTTP {status}", status=status, vendor="fake", method="GET", url="fake://", **extra)


@pytest.fixture
async def backend() -> Any:
    async with FakeBackend() as fake:
        yield fake


async def test_success_with_callbacks(backend: FakeBackend) -> None:
    events: list[str] = []

    async def on_update(run: Run) -> None:
        events.append(f"update:{run.vendor_state}")

    run = await run_and_wait(
        backend,
        "nb",
        inputs={"day": "mon"},
        poll=FAST,
        on_start=lambda handle: events.append(f"start:{handle.run_id}"),
        on_update=on_update,
    )
    assert run.state is RunState.SUCCEEDED
    assert events[0] == f"start:{run.run_id}"
    assert events[-1] == "update:success"
    assert run.outputs[0].text == "day='mon'\n"
    assert backend.start_count == 1


async def test_failure_raises_with_run_and_reason(backend: FakeBackend) -> None:
    backend.program("nb", FakeScript(states=("running", "failed")))
    with pytest.raises(RunFailed, match="scripted failure") as caught:
        await run_and_wait(backend, "nb", poll=FAST)
    assert caught.value.run is not None
    assert caught.value.run.state is RunState.FAILED
    assert caught.value.handle == caught.value.run.handle
    run = await run_and_wait(backend, "nb", poll=FAST, raise_on_failure=False)
    assert run.state is RunState.FAILED


async def test_cancelled_elsewhere_raises_run_cancelled(backend: FakeBackend) -> None:
    backend.program("nb", FakeScript(states=("running", "cancelled")))
    with pytest.raises(RunCancelled):
        await run_and_wait(backend, "nb", poll=FAST)


async def test_submitted_returns_at_once(backend: FakeBackend) -> None:
    backend.program("nb", FakeScript(states=("submitted",)))
    run = await run_and_wait(backend, "nb", poll=PollPolicy(initial=60, maximum=60))
    assert run.state is RunState.SUBMITTED
    assert backend.status_reads == 1


async def test_deadline_cancels_when_backend_can(backend: FakeBackend) -> None:
    backend.program("nb", LONG)
    with pytest.raises(RunTimeout, match="was cancelled") as caught:
        await run_and_wait(backend, "nb", poll=FAST, timeout=0.05)
    assert caught.value.cancelled is True
    assert backend.cancel_calls == 1
    assert caught.value.run is not None
    assert caught.value.run.state is RunState.CANCELLED
    assert caught.value.handle is not None


async def test_deadline_without_cancel_capability_detaches() -> None:
    caps = DEFAULT_CAPABILITIES - {Capability.CANCEL}
    async with FakeBackend(capabilities=caps, default_script=LONG) as backend:
        with pytest.raises(RunTimeout, match="cannot cancel") as caught:
            await run_and_wait(backend, "nb", poll=FAST, timeout=0.05)
    assert caught.value.cancelled is False
    assert "left running" in caught.value.reason
    assert backend.cancel_calls == 0


async def test_deadline_with_detach_leaves_run(backend: FakeBackend) -> None:
    backend.program("nb", LONG)
    with pytest.raises(RunTimeout, match="detach was requested") as caught:
        await run_and_wait(backend, "nb", poll=FAST, timeout=0.05, on_timeout="detach")
    assert caught.value.cancelled is False
    assert backend.cancel_calls == 0
    assert caught.value.run is not None
    assert caught.value.run.state is RunState.RUNNING


async def test_deadline_cancel_failure_is_reported(backend: FakeBackend) -> None:
    backend.program("nb", LONG)
    backend.faults.cancel_errors.append(api_error(ServerError, 500))
    with pytest.raises(RunTimeout, match="cancelling it failed") as caught:
        await run_and_wait(backend, "nb", poll=FAST, timeout=0.05)
    assert caught.value.cancelled is False


async def test_deadline_cancel_that_hangs_is_bounded(backend: FakeBackend) -> None:
    backend.program("nb", LONG)

    async def slow_cancel(handle: RunHandle) -> None:
        await anyio.sleep(10)

    backend.cancel_run = slow_cancel  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(RunTimeout, match="may still be running"):
        await run_and_wait(backend, "nb", poll=FAST, timeout=0.05, cancel_timeout=0.05)
    assert time.monotonic() - started < 2


async def _cancel_caller_after_first_update(backend: FakeBackend, **kwargs: Any) -> RunHandle:
    handles: list[RunHandle] = []
    updated = anyio.Event()
    async with anyio.create_task_group() as group:

        async def waiter() -> None:
            await run_and_wait(
                backend,
                "nb",
                poll=FAST,
                on_start=handles.append,
                on_update=lambda run: updated.set(),
                **kwargs,
            )

        group.start_soon(waiter)
        await updated.wait()
        group.cancel_scope.cancel()
    return handles[0]


async def test_caller_cancellation_cancels_remote_run(backend: FakeBackend) -> None:
    backend.program("nb", LONG)
    handle = await _cancel_caller_after_first_update(backend)
    assert backend.cancel_calls == 1
    assert backend.runs[handle.run_id].cancelled


async def test_caller_cancellation_can_detach(backend: FakeBackend) -> None:
    backend.program("nb", LONG)
    handle = await _cancel_caller_after_first_update(backend, cancel_on_interrupt=False)
    assert backend.cancel_calls == 0
    assert not backend.runs[handle.run_id].cancelled


async def test_cancellation_propagates_even_if_remote_cancel_fails(backend: FakeBackend) -> None:
    backend.program("nb", LONG)
    backend.faults.cancel_errors.append(ConnectionLost("gone"))
    with anyio.move_on_after(0.05) as scope:
        await run_and_wait(backend, "nb", poll=FAST, timeout=None)
    assert scope.cancelled_caught
    assert backend.cancel_calls == 1


class QueuedStartBackend(FakeBackend):
    """Its starts wait 0.1 s for their turn before anything is sent (a rate limiter)."""

    async def start_run(self, request: RunRequest) -> RunHandle:
        await anyio.sleep(0.1)
        return await super().start_run(request)


async def test_caller_cancelled_during_start_still_cancels_started_run() -> None:
    async with FakeBackend(default_script=LONG) as backend:
        backend.faults.start_latency = 0.1
        with anyio.move_on_after(0.02):
            await run_and_wait(backend, "nb", poll=FAST)
        # The start completed despite the cancellation, then the run was cancelled.
        assert backend.start_count == 1
        assert backend.cancel_calls == 1
        (fake,) = backend.runs.values()
        assert fake.cancelled


async def test_caller_cancelled_while_the_start_waits_its_turn_starts_nothing() -> None:
    async with QueuedStartBackend(default_script=LONG) as backend:
        with anyio.move_on_after(0.02) as scope:
            await run_and_wait(backend, "nb", poll=FAST)
        assert scope.cancelled_caught
        assert backend.start_count == 0
        assert backend.cancel_calls == 0


async def test_start_timeout_abandons_a_start_still_waiting_its_turn() -> None:
    async with QueuedStartBackend() as backend:
        with pytest.raises(RunTimeout, match="never took it") as caught:
            await run_and_wait(backend, "nb", poll=FAST, start_timeout=0.01)
        assert caught.value.handle is None
        assert backend.start_count == 0


async def test_start_timeout_never_abandons_a_start_the_vendor_took() -> None:
    async with FakeBackend() as backend:
        backend.faults.start_latency = 0.05
        run = await run_and_wait(backend, "nb", poll=FAST, start_timeout=0.01)
        assert run.state is RunState.SUCCEEDED
        assert backend.start_count == 1


async def test_transient_status_errors_are_retried(
    backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.faults.status_errors.extend(
        [
            api_error(ServerError, 503),
            ConnectionLost("reset"),
            api_error(RateLimited, 429, retry_after=0.001),
            ResponseDecodeError("garbage"),
        ]
    )
    run = await run_and_wait(backend, "nb", poll=FAST)
    assert run.state is RunState.SUCCEEDED
    assert backend.cancel_calls == 0
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 4


async def test_429_storm_on_status_reads_never_cancels(backend: FakeBackend) -> None:
    backend.faults.status_errors.extend(
        api_error(RateLimited, 429, retry_after=0.0005) for _ in range(50)
    )
    run = await run_and_wait(backend, "nb", poll=FAST)
    assert run.state is RunState.SUCCEEDED
    assert backend.cancel_calls == 0
    assert not backend.faults.status_errors


async def test_rate_limit_widens_the_poll_interval(backend: FakeBackend) -> None:
    backend.faults.status_errors.append(api_error(RateLimited, 429, retry_after=0.2))
    started = anyio.current_time()
    await run_and_wait(backend, "nb", poll=FAST)
    assert anyio.current_time() - started >= 0.19


@pytest.mark.parametrize(
    "error",
    [
        api_error(NotFound, 404),
        api_error(AuthenticationError, 401),
        api_error(BadRequest, 400),
    ],
)
async def test_permanent_status_errors_raise_with_handle_and_never_cancel(
    backend: FakeBackend, error: Exception
) -> None:
    backend.faults.status_errors.append(error)
    with pytest.raises(type(error)) as caught:
        await run_and_wait(backend, "nb", poll=FAST)
    assert caught.value.handle is not None  # type: ignore[attr-defined]
    assert backend.cancel_calls == 0
    assert caught.value.handle.run_id in str(caught.value)  # type: ignore[attr-defined]


async def test_status_reads_failing_until_deadline(backend: FakeBackend) -> None:
    backend.program("nb", LONG)
    backend.faults.status_errors.extend(api_error(ServerError, 502) for _ in range(10_000))
    with pytest.raises(RunTimeout, match="last status read failed") as caught:
        await run_and_wait(backend, "nb", poll=FAST, timeout=0.05, on_timeout="detach")
    assert isinstance(caught.value.__cause__, ServerError)
    assert caught.value.run is None
    assert caught.value.handle is not None


async def test_unknown_status_is_not_terminal_and_logged_once(
    backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.program("nb", FakeScript(states=("pending", "warming_up", "warming_up", "success")))
    seen: list[Run] = []
    run = await run_and_wait(backend, "nb", poll=FAST, on_update=seen.append)
    assert run.state is RunState.SUCCEEDED
    unknown = [r for r in seen if r.state is RunState.UNKNOWN]
    assert unknown
    assert unknown[0].vendor_state == "warming_up"
    assert sum("warming_up" in r.getMessage() for r in caplog.records) == 1


async def test_start_errors_propagate_without_handle(backend: FakeBackend) -> None:
    backend.faults.start_errors.append(api_error(BadRequest, 400))
    with pytest.raises(BadRequest) as caught:
        await run_and_wait(backend, "nb", poll=FAST)
    assert caught.value.handle is None
    assert backend.start_count == 0


async def test_lost_start_response_is_reported_not_retried(backend: FakeBackend) -> None:
    backend.faults.lost_start_responses = 1
    with pytest.raises(StartOutcomeUnknown):
        await run_and_wait(backend, "nb", poll=FAST)
    assert backend.start_count == 1


async def test_reconciling_backend_recovers_a_lost_start() -> None:
    caps = DEFAULT_CAPABILITIES | {Capability.RECONCILE_START}
    async with FakeBackend(capabilities=caps) as backend:
        backend.faults.lost_start_responses = 1
        run = await run_and_wait(backend, "nb", poll=FAST)
    assert run.state is RunState.SUCCEEDED
    assert backend.start_count == 1


async def test_wait_for_run_resumes_a_saved_handle(backend: FakeBackend) -> None:
    backend.program("nb", FakeScript(states=("pending", "running", "running", "success")))
    handle = await backend.start_run(RunRequest("nb"))
    saved = handle.to_json()
    async with FakeBackend() as other:
        other.runs = backend.runs  # same "server"
        run = await wait_for_run(other, RunHandle.from_json(saved), poll=FAST)
    assert run.state is RunState.SUCCEEDED
    assert backend.start_count == 1


async def test_wait_for_run_validates_its_handle(backend: FakeBackend) -> None:
    with pytest.raises(ConfigurationError):
        await wait_for_run(backend, "not a handle")  # type: ignore[arg-type]


async def test_watch_yields_changes_until_terminal(backend: FakeBackend) -> None:
    backend.program("nb", FakeScript(states=("pending", "pending", "running", "success")))
    handle = await backend.start_run(RunRequest("nb"))
    states = [run.vendor_state async for run in watch(backend, handle, poll=FAST)]
    assert states[0] == "pending"
    assert states[-1] == "success"
    assert states.count("running") == 1


async def test_watch_attaches_handle_to_errors(backend: FakeBackend) -> None:
    handle = await backend.start_run(RunRequest("nb"))
    backend.faults.status_errors.append(api_error(NotFound, 404))
    with pytest.raises(NotFound) as caught:
        async for _ in watch(backend, handle, poll=FAST):
            pass
    assert caught.value.handle == handle


async def test_streaming_backend_needs_no_polling() -> None:
    async with FakeBackend(streaming=True) as backend:
        seen: list[Run] = []
        run = await run_and_wait(
            backend, "nb", poll=PollPolicy(initial=60, maximum=60), on_update=seen.append
        )
    assert run.state is RunState.SUCCEEDED
    assert backend.status_reads == 0
    assert [r.vendor_state for r in seen] == ["pending", "running", "success"]


async def test_callback_errors_keep_the_handle_reachable(backend: FakeBackend) -> None:
    def broken(run: Run) -> None:
        raise ValueError("bug in caller")

    with pytest.raises(ValueError, match="bug in caller") as caught:
        await run_and_wait(backend, "nb", poll=FAST, on_update=broken)
    notes = getattr(caught.value, "__notes__", [])
    assert any("fake-run-1" in note for note in notes)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": float("nan")},
        {"on_timeout": "explode"},
        {"cancel_timeout": 0},
        {"start_timeout": 0},
        {"poll": 1.0},
    ],
)
async def test_invalid_settings_are_refused_before_starting(
    backend: FakeBackend, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        await run_and_wait(backend, "nb", **kwargs)
    assert backend.start_count == 0


async def test_request_and_loose_arguments_do_not_mix(backend: FakeBackend) -> None:
    with pytest.raises(ConfigurationError):
        await run_and_wait(backend, RunRequest("nb"), inputs={"a": 1})
    with pytest.raises(ConfigurationError):
        await run_and_wait(backend, 42)  # type: ignore[arg-type]


async def test_no_timeout_waits_until_done(backend: FakeBackend) -> None:
    run = await run_and_wait(backend, "nb", poll=FAST, timeout=None)
    assert run.state is RunState.SUCCEEDED


class CountingBackend(FakeBackend):
    """Tracks how many runs are in flight (started, not yet seen terminal)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.active: set[str] = set()
        self.peak = 0

    async def start_run(self, request: RunRequest) -> RunHandle:
        handle = await super().start_run(request)
        self.active.add(handle.run_id)
        self.peak = max(self.peak, len(self.active))
        return handle

    async def get_run(self, handle: RunHandle) -> Run:
        run = await super().get_run(handle)
        if run.state.is_terminal:
            self.active.discard(handle.run_id)
        return run


async def test_run_many_keeps_every_outcome_in_order() -> None:
    async with CountingBackend() as backend:
        backend.program("bad", FakeScript(states=("running", "failed")))
        backend.faults.start_errors.append(api_error(BadRequest, 400))
        requests: list[RunRequest | str] = ["first", "ok", "bad", RunRequest("ok2"), "ok3", "ok4"]
        outcomes = await run_many(backend, requests, concurrency=2, poll=FAST)
    assert [o.request.notebook for o in outcomes] == ["first", "ok", "bad", "ok2", "ok3", "ok4"]
    assert isinstance(outcomes[0].error, BadRequest)
    assert outcomes[0].handle is None
    assert isinstance(outcomes[2].error, RunFailed)
    assert outcomes[2].handle is not None
    assert [o.ok for o in outcomes] == [False, True, False, True, True, True]
    assert backend.peak <= 2


async def test_run_many_validates_concurrency(backend: FakeBackend) -> None:
    with pytest.raises(ConfigurationError):
        await run_many(backend, ["a"], concurrency=0)


async def test_thousand_concurrent_waits_finish_quickly() -> None:
    async with FakeBackend(
        default_script=FakeScript(states=("pending", "running", "success"), step_seconds=0.02)
    ) as backend:
        started = time.perf_counter()
        outcomes = await run_many(
            backend, [f"nb-{i}" for i in range(1000)], concurrency=1000, poll=FAST
        )
        elapsed = time.perf_counter() - started
    assert all(outcome.ok for outcome in outcomes)
    assert backend.start_count == 1000
    assert elapsed < 10, elapsed


async def test_start_is_logged_with_run_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="notebookops")
    async with FakeBackend() as backend:
        await run_and_wait(backend, "nb", poll=FAST)
    assert any("started fake run" in r.getMessage() for r in caplog.records)
