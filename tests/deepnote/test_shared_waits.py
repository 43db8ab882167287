"""Shared waits: waits on one notebook sleep until the shared runs list shows their run changed.

The coordinator alone (``SharedRunPolls.wait`` with a scripted list fetcher and short real
schedules: the leader, hand-off, errors), ``run_and_wait`` with a backend that watches for
changes, and whole waits on the loopback fake server.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import pytest

from notebookops import (
    PermissionDenied,
    PollPolicy,
    ResponseDecodeError,
    Run,
    RunHandle,
    RunRequest,
    RunState,
    RunTimeout,
    ServerError,
    run_and_wait,
    wait_for_run,
)
from notebookops._http import HttpResponse
from notebookops.backend import ChangeWatchingBackend, StateTable
from notebookops.backends.deepnote import DEEPNOTE_STATES, DeepnoteBackend, _sharing
from notebookops.backends.deepnote._sharing import (
    NOT_SHARED,
    READ_NOW,
    ListedRun,
    SharedRunPolls,
)
from notebookops.errors import NotebookOpsError
from notebookops.testing import FakeBackend, FakeScript
from notebookops.testing._server import Fault
from notebookops.testing.deepnote import FakeDeepnoteServer, RunScript, fake_deepnote

API = "https://api.deepnote.com"
NOW = "2026-07-30T08:00:00Z"
TICK = 0.01


def handle(run_id: str) -> RunHandle:
    return RunHandle(backend="deepnote", run_id=run_id, notebook_id="nb1")


def row(run_id: str, status: str = "running") -> dict[str, Any]:
    return {"runId": run_id, "notebookId": "nb1", "status": status, "createdAt": NOW}


class ScriptedList:
    """A runs-list fetcher whose rows a test changes as it goes; counts its requests."""

    def __init__(self, *run_ids: str) -> None:
        self.statuses = dict.fromkeys(run_ids, "running")
        self.error: NotebookOpsError | None = None
        self.calls = 0
        self.gate: anyio.Event | None = None

    async def __call__(
        self, notebook_id: str, page_size: int, page_token: str | None
    ) -> HttpResponse:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        body = {
            "runs": [
                row(run_id, status) if status != "garbled" else {"runId": run_id, "status": 7}
                for run_id, status in self.statuses.items()
                if status != "absent"
            ],
            "pagination": {"nextPageToken": None, "hasMore": False},
        }
        return HttpResponse(
            status=200,
            headers={"content-type": "application/json"},
            body=json.dumps(body).encode(),
            method="GET",
            url=f"{API}/v2/notebooks/{notebook_id}/runs?pageSize={page_size}",
            vendor="deepnote",
        )


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for a condition the waits under test bring about on their own."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - a condition, not an event, is what is shared
            await anyio.sleep(TICK)


@pytest.fixture(autouse=True, params=["future", "anyio-event"])
def sleeping_on(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: sleeping waits on a bare asyncio future (asyncio), and on an anyio
    Event (what they use on any other anyio backend; trio is not installed here)."""
    if request.param == "anyio-event":
        monkeypatch.setattr(_sharing, "_running_loop", lambda: None)
    return str(request.param)


def coordinator(lister: ScriptedList, window: float = TICK / 2) -> SharedRunPolls:
    return SharedRunPolls(lister, StateTable("deepnote", DEEPNOTE_STATES), window=window)


class Schedule:
    """A wait's poll schedule: a fixed delay, counting the reads it was asked for."""

    def __init__(self, delay: float = TICK) -> None:
        self.delay = delay
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.delay


def _wait_all(
    shared: SharedRunPolls, schedules: dict[str, Schedule], results: dict[str, object]
) -> Callable[[str], Coroutine[Any, Any, None]]:
    """A wait on each run id it is started with, recording what ``wait`` returned."""

    async def one(run_id: str) -> None:
        results[run_id] = await shared.wait(handle(run_id), "running", schedules[run_id])

    return one


async def test_unchanged_waits_are_moved_on_without_waking() -> None:
    lister = ScriptedList("r1", "r2", "r3")
    shared = coordinator(lister)
    schedules = {run_id: Schedule() for run_id in ("r1", "r2", "r3")}
    results: dict[str, object] = {}
    one = _wait_all(shared, schedules, results)
    async with anyio.create_task_group() as group:
        for run_id in schedules:
            group.start_soon(one, run_id)
        await until(lambda: lister.calls >= 5)
        assert results == {}  # nobody woken: their runs did not change
        lister.statuses["r2"] = "success"
        lister.statuses["r3"] = "success"
        lister.statuses["r1"] = "success"
    assert results == {"r1": READ_NOW, "r2": READ_NOW, "r3": READ_NOW}
    # Every read of every wait was one shared list request: one per round, not per wait.
    assert all(schedule.reads >= 5 for schedule in schedules.values())
    assert lister.calls <= max(schedule.reads for schedule in schedules.values()) + 1


async def test_a_changed_status_wakes_its_wait_with_the_row() -> None:
    # r3 keeps r1 company once r2 is gone: a wait alone on its notebook is read on its own
    # (READ_NOW) at its next poll, which a stalled machine could reach before the check.
    lister = ScriptedList("r1", "r2", "r3")
    shared = coordinator(lister)
    schedules = {"r1": Schedule(), "r2": Schedule(), "r3": Schedule()}
    results: dict[str, object] = {}
    one = _wait_all(shared, schedules, results)
    async with anyio.create_task_group() as group:
        for run_id in schedules:
            group.start_soon(one, run_id)
        await anyio.sleep(TICK * 3)
        lister.statuses["r2"] = "pending"  # another live status
        await until(lambda: "r2" in results)
        assert "r1" not in results
        lister.statuses["r1"] = "error"  # finished: read on its own, for its outputs
        lister.statuses["r3"] = "success"
    listed = results["r2"]
    assert isinstance(listed, ListedRun)
    assert (listed.summary.run_id, listed.summary.status) == ("r2", "pending")
    assert listed.state is RunState.PENDING
    assert results["r1"] is READ_NOW
    assert results["r3"] is READ_NOW


async def test_the_lead_passes_on_when_the_leaders_run_finishes() -> None:
    lister = ScriptedList("r1", "r2", "r3")
    shared = coordinator(lister)
    schedules = {run_id: Schedule() for run_id in ("r1", "r2", "r3")}
    results: dict[str, object] = {}
    one = _wait_all(shared, schedules, results)
    async with anyio.create_task_group() as group:
        group.start_soon(one, "r1")  # the first wait leads
        await anyio.wait_all_tasks_blocked()
        group.start_soon(one, "r2")
        group.start_soon(one, "r3")
        await anyio.sleep(TICK * 3)
        lister.statuses["r1"] = "success"
        await until(lambda: "r1" in results)
        calls = lister.calls
        await anyio.sleep(TICK * 5)
        assert lister.calls > calls  # somebody else leads now
        assert shared.waited_on("nb1") >= 2
        lister.statuses["r2"] = lister.statuses["r3"] = "success"
    assert results == {"r1": READ_NOW, "r2": READ_NOW, "r3": READ_NOW}


async def test_a_cancelled_leader_hands_the_lead_to_a_sleeping_wait() -> None:
    lister = ScriptedList("r1", "r2", "r3")
    shared = coordinator(lister)
    schedules = {run_id: Schedule() for run_id in ("r1", "r2", "r3")}
    results: dict[str, object] = {}
    leader = anyio.CancelScope()
    one = _wait_all(shared, schedules, results)

    async def lead() -> None:
        with leader:
            await shared.wait(handle("r1"), "running", schedules["r1"])

    async with anyio.create_task_group() as group:
        group.start_soon(lead)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(one, "r2")
        group.start_soon(one, "r3")
        await anyio.sleep(TICK * 3)
        leader.cancel()
        await anyio.sleep(TICK * 3)
        reads, calls = schedules["r2"].reads, lister.calls
        await anyio.sleep(TICK * 5)
        # Still served by the list, led by one of the two left.
        assert schedules["r2"].reads > reads
        assert lister.calls > calls
        assert results == {}
        lister.statuses["r2"] = lister.statuses["r3"] = "success"
    assert leader.cancelled_caught
    assert results == {"r2": READ_NOW, "r3": READ_NOW}


async def test_a_wait_cancelled_while_lead_was_passed_to_it_passes_it_on() -> None:
    run_ids = ("r1", "r2", "r3", "r4")
    lister = ScriptedList(*run_ids)
    shared = coordinator(lister)
    schedules = {run_id: Schedule() for run_id in run_ids}
    results: dict[str, object] = {}
    scopes = {run_id: anyio.CancelScope() for run_id in ("r1", "r2")}
    one = _wait_all(shared, schedules, results)

    async def cancellable(run_id: str) -> None:
        with scopes[run_id]:
            await shared.wait(handle(run_id), "running", schedules[run_id])

    async with anyio.create_task_group() as group:
        group.start_soon(cancellable, "r1")
        await anyio.wait_all_tasks_blocked()
        group.start_soon(cancellable, "r2")
        await anyio.wait_all_tasks_blocked()
        group.start_soon(one, "r3")
        group.start_soon(one, "r4")
        await anyio.sleep(TICK * 2)
        # Cancel the leader and the next in line in the same moment: r2 is woken to lead
        # and cancelled before it runs; the lead must reach r3 or r4.
        scopes["r1"].cancel()
        scopes["r2"].cancel()
        await anyio.sleep(TICK * 3)
        reads = schedules["r3"].reads
        await anyio.sleep(TICK * 5)
        assert schedules["r3"].reads > reads
        assert results == {}
        lister.statuses["r3"] = lister.statuses["r4"] = "success"
    assert results == {"r3": READ_NOW, "r4": READ_NOW}


async def test_a_lone_wait_is_read_on_its_own_when_due() -> None:
    lister = ScriptedList("r1")
    shared = coordinator(lister)
    schedule = Schedule(TICK * 3)
    started = anyio.current_time()
    assert await shared.wait(handle("r1"), "running", schedule) is READ_NOW
    assert anyio.current_time() - started >= TICK * 3 * 0.9
    assert lister.calls == 0  # a list request would only replace its one read
    assert schedule.reads == 1


async def test_a_transient_list_failure_reaches_the_due_waits_each_its_own() -> None:
    lister = ScriptedList("r1", "r2")
    error = ServerError(
        "deepnote GET /v2/notebooks/nb1/runs returned 503",
        status=503,
        vendor="deepnote",
        method="GET",
        url=f"{API}/v2/notebooks/nb1/runs?pageSize=20",
    )
    lister.error = error
    # Both waits must be due at the failed read however far apart they start (a full garbage
    # collection between the two starts once took 46 ms): a window of a second makes them so.
    shared = coordinator(lister, window=1.0)
    caught: dict[str, BaseException] = {}

    async def one(run_id: str) -> None:
        try:
            await shared.wait(handle(run_id), "running", Schedule())
        except ServerError as exc:
            caught[run_id] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(one, "r1")
        group.start_soon(one, "r2")
    assert set(caught) == {"r1", "r2"}
    assert caught["r1"] is not caught["r2"]
    assert caught["r1"] is not error
    assert lister.calls == 1


async def test_a_refused_list_sends_every_wait_to_its_own_schedule() -> None:
    lister = ScriptedList("r1", "r2")
    lister.error = PermissionDenied(
        "forbidden", status=403, vendor="deepnote", method="GET", url=f"{API}/v2/x"
    )
    shared = coordinator(lister)
    results: dict[str, object] = {}

    async def one(run_id: str) -> None:
        results[run_id] = await shared.wait(handle(run_id), "running", Schedule())

    async with anyio.create_task_group() as group:
        group.start_soon(one, "r1")
        group.start_soon(one, "r2")
    assert results == {"r1": NOT_SHARED, "r2": NOT_SHARED}
    assert await shared.wait(handle("r1"), "running", Schedule()) is NOT_SHARED
    assert lister.calls == 1


async def test_a_run_missing_from_the_list_is_read_on_its_own_when_due() -> None:
    lister = ScriptedList("r1", "r2")
    lister.statuses["r2"] = "absent"
    shared = coordinator(lister)
    results: dict[str, object] = {}
    schedules = {"r1": Schedule(), "r2": Schedule()}
    one = _wait_all(shared, schedules, results)
    async with anyio.create_task_group() as group:
        group.start_soon(one, "r1")
        group.start_soon(one, "r2")
        await until(lambda: "r2" in results)
        lister.statuses["r1"] = "success"
    assert results == {"r1": READ_NOW, "r2": READ_NOW}


async def test_a_garbled_row_wakes_its_wait_with_a_decode_error() -> None:
    lister = ScriptedList("r1", "r2")
    lister.statuses["r2"] = "garbled"
    shared = coordinator(lister)
    caught: list[BaseException] = []
    results: dict[str, object] = {}

    async def garbled() -> None:
        try:
            await shared.wait(handle("r2"), "running", Schedule())
        except ResponseDecodeError as error:
            caught.append(error)

    async def fine() -> None:
        results["r1"] = await shared.wait(handle("r1"), "running", Schedule())

    async with anyio.create_task_group() as group:
        group.start_soon(fine)
        group.start_soon(garbled)
        await until(lambda: bool(caught))
        lister.statuses["r1"] = "success"
    assert len(caught) == 1
    assert results == {"r1": READ_NOW}


async def test_a_second_wait_on_the_same_run_polls_on_its_own() -> None:
    lister = ScriptedList("r1", "r2")
    shared = coordinator(lister)
    results: dict[str, object] = {}
    async with anyio.create_task_group() as group:

        async def first() -> None:
            results["first"] = await shared.wait(handle("r1"), "running", Schedule())

        group.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        assert await shared.wait(handle("r1"), "running", Schedule()) is NOT_SHARED
        lister.statuses["r1"] = "success"
    assert results == {"first": READ_NOW}


async def test_one_list_read_serves_waits_due_a_little_later() -> None:
    # Jitter spreads the waits' due times: a read counts for every wait due within a
    # quarter of its interval, so the waits do not each pull their own list request.
    lister = ScriptedList(*(f"r{i}" for i in range(8)))
    shared = coordinator(lister, window=0.0)
    schedules = {f"r{i}": Schedule(TICK * 4 * (1 + i / 40)) for i in range(8)}
    results: dict[str, object] = {}
    one = _wait_all(shared, schedules, results)
    async with anyio.create_task_group() as group:
        for run_id in schedules:
            group.start_soon(one, run_id)
        await anyio.sleep(TICK * 40)
        for run_id in lister.statuses:
            lister.statuses[run_id] = "success"
    reads = sum(schedule.reads for schedule in schedules.values())
    assert lister.calls * 4 <= reads, f"{lister.calls} list requests for {reads} reads"


def test_a_read_is_due_within_the_window_or_a_quarter_of_its_interval() -> None:
    shared = coordinator(ScriptedList(), window=0.5)
    waiter = _sharing._Waiter("r1", None, "running", Schedule(), due=110.0, interval=20.0)
    assert shared._is_due(waiter, 105.0)  # 5 s early: a quarter of 20 s
    assert not shared._is_due(waiter, 104.0)
    waiter.interval = 1.0
    assert shared._is_due(waiter, 109.5)  # the window
    assert not shared._is_due(waiter, 109.4)


# --------------------------------------------------------------------------- orchestration


class ChangeWatchingFake(FakeBackend):
    """A FakeBackend that waits for changes itself, like the Deepnote backend does."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.change_calls = 0
        self.delays: list[float] = []
        self.fail_next: list[Exception] = []
        self.watching = True
        #: ``quiet`` and ``last`` as each next_change call was given them.
        self.quiet: list[bool] = []
        self.lasts: list[Run | None] = []

    def watches_changes(self, handle: RunHandle) -> bool:
        return self.watching

    async def next_change(
        self,
        handle: RunHandle,
        last: Run | None,
        next_delay: Callable[[], float],
        *,
        quiet: bool = False,
    ) -> Run:
        self.change_calls += 1
        self.quiet.append(quiet)
        self.lasts.append(last)
        if self.fail_next:
            raise self.fail_next.pop(0)
        while True:
            delay = next_delay()
            self.delays.append(delay)
            await anyio.sleep(delay)
            run = await self.get_run(handle)
            if run.state.is_terminal or (
                not quiet and last is not None and run.vendor_state != last.vendor_state
            ):
                return run


#: No proportional term: the delays then depend on the read count alone, not on how long the
#: machine took to get there (0.2 of the time waited beat the exponential under load).
FAST = PollPolicy(initial=0.001, multiplier=1.5, maximum=0.005, jitter=0, proportion=0)


async def test_run_and_wait_hands_its_schedule_to_a_change_watching_backend() -> None:
    script = FakeScript(states=("pending", "running", "running", "running", "success"))
    async with ChangeWatchingFake(default_script=script) as backend:
        assert isinstance(backend, ChangeWatchingBackend)
        seen: list[str | None] = []
        run = await run_and_wait(
            backend, "nb", poll=FAST, on_update=lambda r: seen.append(r.vendor_state)
        )
    assert run.state is RunState.SUCCEEDED
    assert seen == ["pending", "running", "success"]
    assert backend.change_calls == 2  # pending -> running, running -> success
    assert backend.quiet == [False, False]  # on_update listens for every change
    # The PollPolicy's schedule, one delay per read.
    assert backend.delays == pytest.approx([0.001, 0.0015, 0.00225, 0.003375])


async def test_without_on_update_run_and_wait_asks_only_for_the_terminal_read() -> None:
    script = FakeScript(states=("pending", "running", "running", "running", "success"))
    async with ChangeWatchingFake(default_script=script) as backend:
        run = await run_and_wait(backend, "nb", poll=FAST)
    assert run.state is RunState.SUCCEEDED
    assert backend.quiet == [True]
    # Handed the wait before any read (the first read is the backend's), and asked once:
    # this fake reads on its own schedule, through the whole script, to the terminal read.
    assert backend.lasts == [None]
    assert backend.change_calls == 1
    assert backend.delays == pytest.approx([0.001, 0.0015, 0.00225, 0.003375, 0.005])


async def test_a_backend_not_watching_a_run_is_polled_by_run_and_wait_itself() -> None:
    script = FakeScript(states=("pending", "running", "running", "success"))
    async with ChangeWatchingFake(default_script=script) as backend:
        backend.watching = False
        run = await run_and_wait(backend, "nb", poll=FAST)
    assert run.state is RunState.SUCCEEDED
    assert backend.change_calls == 0
    assert backend.delays == []


async def test_a_transient_error_from_next_change_is_retried_with_a_plain_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = FakeScript(states=("pending", "running", "success"))
    async with ChangeWatchingFake(default_script=script) as backend:
        backend.fail_next.append(
            ServerError("HTTP 503", status=503, vendor="fake", method="GET", url="fake://")
        )
        run = await run_and_wait(backend, "nb", poll=FAST)
    assert run.state is RunState.SUCCEEDED
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 1


async def test_a_fatal_error_from_next_change_carries_the_handle() -> None:
    async with ChangeWatchingFake(default_script=FakeScript(states=("running",))) as backend:
        backend.fail_next.append(
            PermissionDenied("HTTP 403", status=403, vendor="fake", method="GET", url="fake://")
        )
        with pytest.raises(PermissionDenied) as caught:
            await run_and_wait(backend, "nb", poll=FAST)
    assert caught.value.handle is not None


# --------------------------------------------------------------------------- loopback


@pytest.fixture
async def server() -> AsyncIterator[FakeDeepnoteServer]:
    async with fake_deepnote() as fake:
        yield fake


FLEET_POLL = PollPolicy(initial=0.02, multiplier=1.5, maximum=0.05, jitter=0.1)
#: The share window of the tests that count requests for a burst of twenty waits. A start's
#: answer serves its run's first read only within the window; past it, the first reads of a
#: burst go to the run itself until enough runs are waited on for a list read to pay. With
#: 50 ms, a machine busy enough to take that long between a POST and its first read (seen
#: under parallel test load) made 5-9 more reads of single runs than the test allows.
_BURST_WINDOW = 0.5


def _requests(server: FakeDeepnoteServer, since: int) -> tuple[int, int]:
    gets = [r for r in server.requests[since:] if r.method == "GET"]
    lists = sum(1 for r in gets if r.path.endswith("/runs"))
    return len(gets) - lists, lists


@pytest.mark.parametrize("listening", [True, False])
async def test_twenty_waits_wake_only_when_they_must(
    server: FakeDeepnoteServer, monkeypatch: pytest.MonkeyPatch, listening: bool
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.4))
    woken: list[object] = []
    real_wait = SharedRunPolls.wait

    async def counting_wait(self: SharedRunPolls, *args: Any, **kwargs: Any) -> object:
        # Without on_update nobody listens to the changes in progress: run_and_wait says so.
        assert kwargs == {"quiet": not listening}
        outcome = await real_wait(self, *args, **kwargs)
        woken.append(outcome)
        return outcome

    monkeypatch.setattr(SharedRunPolls, "wait", counting_wait)
    before = len(server.requests)
    updates: list[str | None] = []

    def on_update(run: Run) -> None:
        updates.append(run.vendor_state)

    async with server.backend(share_window=_BURST_WINDOW) as backend:
        runs: list[Run] = []

        async def collect() -> None:
            run = await run_and_wait(
                backend,
                notebook.id,
                poll=FLEET_POLL,
                timeout=30,
                on_update=on_update if listening else None,
            )
            runs.append(run)

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(collect)
    singles, lists = _requests(server, before)
    assert len(runs) == 20
    assert all(run.state is RunState.SUCCEEDED and run.outputs for run in runs)
    assert singles <= 20 + 2  # one read per finished run, for its outputs
    assert lists > 0
    if listening:
        # A wait is woken for each change of its run and to be read finished, never for a
        # read that found it unchanged: a handful of wake-ups per wait, whatever the polls.
        assert len(woken) <= 20 * 3, woken
        assert updates.count("success") == 20
    else:
        # Each run went from pending through running to success, and the list showed it
        # running to every wait: none was woken for that (a ListedRun), only to be read on
        # its own.
        assert not [outcome for outcome in woken if isinstance(outcome, ListedRun)], woken
        assert woken.count(READ_NOW) >= 20


@pytest.mark.parametrize("listening", [False, True])
async def test_a_wait_alone_on_its_notebook_reads_and_returns_as_it_is_asked(
    server: FakeDeepnoteServer, monkeypatch: pytest.MonkeyPatch, listening: bool
) -> None:
    # Alone on its notebook, the wait reads its run on its own at every poll (READ_NOW).
    # Listened to, it reads the run first (get_run, which finds it pending) and next_change
    # returns the change to "running"; quiet, it is handed over with no read at all (the
    # start's answer stands for it) and goes on polling through that change.
    # Nothing here depends on the machine's speed: listened to, the run stays pending until
    # the wait has seen it pending, and running until it has seen it running (a stalled
    # machine could otherwise read past a timed phase); the start's answer is kept for 30 s
    # rather than 0.5 s (a longer stall between the POST and the wait would send a quiet
    # wait's first read to the run).
    script = (
        RunScript(outcome="running", pending=math.inf, running=math.inf)
        if listening
        else RunScript.succeed(0.15)
    )
    notebook = server.add_notebook(script=script)
    returned: list[str | None] = []
    reads: list[str] = []
    real_next_change, real_get_run = DeepnoteBackend.next_change, DeepnoteBackend.get_run

    def move_on_once_seen(run: Run) -> None:
        fake = server.runs[run.handle.run_id]
        if run.vendor_state == "pending":
            fake.script = RunScript.long()  # running from now on
        elif run.vendor_state == "running":
            server.finish_run(run.run_id)

    async def counting_next_change(self: DeepnoteBackend, *args: Any, **kwargs: Any) -> Run:
        run = await real_next_change(self, *args, **kwargs)
        returned.append(run.vendor_state)
        return run

    async def counting_get_run(self: DeepnoteBackend, handle: RunHandle) -> Run:
        reads.append(handle.run_id)
        return await real_get_run(self, handle)

    def listen(run: Run) -> None:
        updates.append(run.vendor_state)
        move_on_once_seen(run)

    monkeypatch.setattr(DeepnoteBackend, "next_change", counting_next_change)
    monkeypatch.setattr(DeepnoteBackend, "get_run", counting_get_run)
    updates: list[str | None] = []
    async with server.backend(share_window=30.0) as backend:
        run = await run_and_wait(
            backend,
            notebook.id,
            poll=FLEET_POLL,
            timeout=30,
            on_update=listen if listening else None,
        )
    assert run.state is RunState.SUCCEEDED
    assert run.outputs
    if listening:
        assert len(reads) == 1
        assert returned == ["running", "success"]
        assert updates == ["pending", "running", "success"]
    else:
        assert reads == []
        assert returned == ["success"]


async def test_a_quiet_wait_for_a_run_started_elsewhere_reads_it_first(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.15))
    async with server.backend(share_window=_BURST_WINDOW) as starter:
        handle = await starter.start_run(RunRequest(notebook.id))
    before = len(server.requests)
    async with server.backend(share_window=_BURST_WINDOW) as backend:
        # No start's answer here: the first read goes to the run itself, then polls go on.
        run = await wait_for_run(backend, handle, poll=FLEET_POLL, timeout=30)
    assert run.state is RunState.SUCCEEDED
    assert run.outputs
    first = server.requests[before]
    assert first.method == "GET"
    assert first.path == f"/v2/runs/{handle.run_id}"


async def test_a_quiet_wait_past_its_deadline_reports_the_run_as_it_is_then(
    server: FakeDeepnoteServer,
) -> None:
    slow = server.add_notebook(script=RunScript.long())
    async with server.backend(share_window=0.05) as backend:
        handles = [await backend.start_run(RunRequest(slow.id)) for _ in range(2)]
        assert {h.extra.get("mode") for h in handles} == {None}
        ended: list[RunTimeout] = []

        async def wait(h: RunHandle) -> None:
            with pytest.raises(RunTimeout) as caught:
                await wait_for_run(backend, h, poll=FLEET_POLL, timeout=0.3, on_timeout="detach")
            ended.append(caught.value)

        async with anyio.create_task_group() as group:
            for handle in handles:
                group.start_soon(wait, handle)
    assert len(ended) == 2
    for error in ended:
        # The waits were never woken while the run was in progress (nobody listened): the
        # deadline read the run once more rather than report the start's "pending".
        assert error.run is not None
        assert error.run.state is RunState.RUNNING, error.run
        assert error.cancelled is False


async def test_a_deadline_ends_one_wait_and_not_the_others(server: FakeDeepnoteServer) -> None:
    slow = server.add_notebook(script=RunScript.long())
    async with server.backend(share_window=0.05) as backend:
        handles = [await backend.start_run(RunRequest(slow.id)) for _ in range(3)]
        ended: list[RunTimeout] = []

        async def wait(h: RunHandle, timeout: float) -> None:
            with pytest.raises(RunTimeout) as caught:
                await wait_for_run(
                    backend, h, poll=FLEET_POLL, timeout=timeout, on_timeout="detach"
                )
            ended.append(caught.value)

        # Far apart in time, so that a stalled machine does not bring them together.
        async with anyio.create_task_group() as group:
            group.start_soon(wait, handles[0], 0.1)
            group.start_soon(wait, handles[1], 1.2)
            group.start_soon(wait, handles[2], 1.2)
            await anyio.sleep(0.5)
            assert [error.handle for error in ended] == [handles[0]]
            assert backend._polls is not None
            # The other two are still served by the list, led by one of them now.
            lists = sum(1 for r in server.requests if r.path.endswith("/runs"))
            await anyio.sleep(0.3)
            assert sum(1 for r in server.requests if r.path.endswith("/runs")) > lists
    assert len(ended) == 3
    assert all(not error.cancelled for error in ended)


async def test_a_list_failure_mid_wait_is_retried(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.3))
    async with server.backend(share_window=0.05) as backend:
        server.faults.add(Fault("status", status=503, method="GET", path=r"/v2/notebooks/.*/runs"))
        runs: list[Run] = []

        async def one() -> None:
            runs.append(await run_and_wait(backend, notebook.id, poll=FLEET_POLL, timeout=30))

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(one)
    assert len(runs) == 5
    assert all(run.state is RunState.SUCCEEDED for run in runs)


async def test_share_polls_false_waits_on_its_own_schedule(
    server: FakeDeepnoteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each run ends once it has been read three times, however slow the machine.
    notebook = server.add_notebook(script=RunScript.long())
    before = len(server.requests)

    async def end_each_run_after_three_reads() -> None:
        while True:
            for run_id in server.runs:
                path = f"/v2/runs/{run_id}"
                if len([r for r in server.requests if r.path == path]) >= 3:
                    server.finish_run(run_id)
            await anyio.sleep(0.005)

    async with server.backend(share_polls=False) as backend, anyio.create_task_group() as group:
        assert not backend.watches_changes(handle("r1"))

        async def unexpected(*args: object) -> Run:
            raise AssertionError("next_change is only for shared reads")

        # run_and_wait's own sleep-and-read loop keeps less alive per sleeping wait.
        monkeypatch.setattr(backend, "next_change", unexpected)
        group.start_soon(end_each_run_after_three_reads)
        runs = [
            await run_and_wait(backend, notebook.id, poll=FLEET_POLL, timeout=30) for _ in range(2)
        ]
        group.cancel_scope.cancel()
    singles, lists = _requests(server, before)
    assert all(run.state is RunState.SUCCEEDED for run in runs)
    assert lists == 0
    assert singles >= 2 * 4  # each run read on its own schedule: three reads, then its end


async def test_shared_polls_watch_v2_runs_but_not_v1_submissions(
    server: FakeDeepnoteServer,
) -> None:
    async with server.backend() as backend:
        assert backend.watches_changes(handle("r1"))
        v1 = RunHandle(
            backend="deepnote", run_id="r1", notebook_id="nb1", extra={"mode": "v1-submitted"}
        )
        assert not backend.watches_changes(v1)
