"""Shared status polls: concurrent waits on runs of one notebook read its runs list together.

Three layers: the coordinator alone with a scripted list fetcher (joining, hand-off on
cancellation, shared errors), the backend with aioresponses (exact requests, fallbacks, the
share window on a fake clock), and whole waits on the loopback fake server (request counts).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from aioresponses import aioresponses
from aioresponses.compat import normalize_url

from notebookops import (
    BackendClosed,
    ConfigurationError,
    PermissionDenied,
    PollPolicy,
    RateLimited,
    RateLimiter,
    ResponseDecodeError,
    RetryPolicy,
    Run,
    RunHandle,
    RunRequest,
    RunState,
    ServerError,
    TransportError,
    run_and_wait,
    wait_for_run,
)
from notebookops._http import HttpResponse
from notebookops.backend import StateTable
from notebookops.backends.deepnote import DEEPNOTE_STATES, DeepnoteBackend, _sharing
from notebookops.backends.deepnote._requests import MAX_PAGE_SIZE
from notebookops.backends.deepnote._sharing import ListedRun, SharedRunPolls, page_size_for
from notebookops.errors import NotebookOpsError
from notebookops.testing._server import Fault
from notebookops.testing.deepnote import FakeDeepnoteServer, RunScript, fake_deepnote

API = "https://api.deepnote.com"
KEY = "dn_live_0123456789abcdef"
NOW = "2026-07-30T08:00:00Z"
LIST = f"{API}/v2/notebooks/nb1/runs?pageSize=20"


def run_url(run_id: str) -> str:
    return f"{API}/v2/runs/{run_id}?snapshotDelivery=blocks"


def handle(run_id: str, *, created_at: datetime | None = None) -> RunHandle:
    return RunHandle(
        backend="deepnote",
        run_id=run_id,
        notebook_id="nb1",
        created_at=created_at,
        extra={"project_id": "p1"},
    )


H1 = handle("r1")
H2 = handle("r2")


def row(run_id: str, status: str = "running", created_at: str = NOW) -> dict[str, Any]:
    return {
        "runId": run_id,
        "notebookId": "nb1",
        "status": status,
        "createdAt": created_at,
        "completedAt": None,
    }


def page(*rows: dict[str, Any], more: bool = False) -> dict[str, Any]:
    return {
        "runs": list(rows),
        "pagination": {"nextPageToken": "t" if more else None, "hasMore": more},
    }


def details(run_id: str, status: str = "running", **extra: Any) -> dict[str, Any]:
    return {"run": {"runId": run_id, "notebookId": "nb1", "status": status, **extra}}


class FakeClock:
    """Stands in for the sharing module's clock: time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_sharing, "_clock", fake)
    return fake


def make(**kwargs: Any) -> DeepnoteBackend:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=1))
    kwargs.setdefault("workspace", "acme")
    return DeepnoteBackend(KEY, **kwargs)


def calls(mocked: aioresponses, url: str) -> list[Any]:
    return list(mocked.requests.get(("GET", normalize_url(url)), []))


def list_calls(mocked: aioresponses) -> int:
    return sum(
        len(found) for (method, url), found in mocked.requests.items() if "/runs?" in str(url)
    )


# --------------------------------------------------------------------------- the coordinator


class Lister:
    """A scripted runs-list fetcher: answers with ``answer`` (or raises it) once ``gate`` opens."""

    def __init__(self, answer: dict[str, Any] | NotebookOpsError) -> None:
        self.answer = answer
        self.gate = anyio.Event()
        self.gate.set()
        self.calls: list[tuple[str, int] | tuple[str, int, str]] = []

    async def __call__(
        self, notebook_id: str, page_size: int, page_token: str | None
    ) -> HttpResponse:
        self.calls.append(
            (notebook_id, page_size) if page_token is None else (notebook_id, page_size, page_token)
        )
        await self.gate.wait()
        if isinstance(self.answer, NotebookOpsError):
            raise self.answer
        return HttpResponse(
            status=200,
            headers={"content-type": "application/json"},
            body=json.dumps(self.answer).encode(),
            method="GET",
            url=f"{API}/v2/notebooks/{notebook_id}/runs?pageSize={page_size}",
            vendor="deepnote",
        )


def polls(lister: Lister | PagedLister, window: float = 0.5) -> SharedRunPolls:
    return SharedRunPolls(lister, StateTable("deepnote", DEEPNOTE_STATES), window=window)


def test_page_size_follows_the_runs_waited_on() -> None:
    assert [page_size_for(n) for n in (2, 10, 11, 50, 90, 91, 500)] == [
        20,
        20,
        21,
        60,
        100,
        100,
        100,
    ]


async def test_concurrent_reads_join_the_request_in_flight() -> None:
    lister = Lister(page(row("r1"), row("r2", "pending")))
    shared = polls(lister)
    assert await shared.read(H1) is None  # alone on its notebook: read on its own
    assert lister.calls == []
    lister.gate = anyio.Event()
    results: dict[str, ListedRun | None] = {}

    async def read(h: RunHandle) -> None:
        results[h.run_id] = await shared.read(h)

    async with anyio.create_task_group() as group:
        group.start_soon(read, H2)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(read, H1)
        await anyio.wait_all_tasks_blocked()
        lister.gate.set()
    assert lister.calls == [("nb1", 20)]
    first, second = results["r1"], results["r2"]
    assert first is not None
    assert first.state is RunState.RUNNING
    assert second is not None
    assert second.state is RunState.PENDING
    assert second.raw == row("r2", "pending")


async def test_a_cancelled_caller_hands_the_request_to_those_still_waiting() -> None:
    lister = Lister(page(row("r1"), row("r2")))
    shared = polls(lister)
    await shared.read(H1)
    lister.gate = anyio.Event()
    results: dict[str, ListedRun | None] = {}
    performer = anyio.CancelScope()

    async def perform() -> None:
        with performer:
            await shared.read(H2)

    async def join() -> None:
        results["r1"] = await shared.read(H1)

    async with anyio.create_task_group() as group:
        group.start_soon(perform)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(join)
        await anyio.wait_all_tasks_blocked()
        performer.cancel()
        await anyio.wait_all_tasks_blocked()
        # The joined caller sent the request again rather than inheriting the cancellation.
        assert len(lister.calls) == 2
        lister.gate.set()
    assert performer.cancelled_caught
    listed = results["r1"]
    assert listed is not None
    assert listed.summary.run_id == "r1"


async def test_a_transient_error_reaches_every_caller_as_its_own_instance() -> None:
    error = ServerError(
        "deepnote GET /v2/notebooks/nb1/runs returned 503",
        status=503,
        vendor="deepnote",
        method="GET",
        url=f"{API}/v2/notebooks/nb1/runs?pageSize=20",
    )
    lister = Lister(error)
    shared = polls(lister)
    await shared.read(H1)
    lister.gate = anyio.Event()
    caught: dict[str, BaseException] = {}

    async def read(h: RunHandle) -> None:
        try:
            await shared.read(h)
        except ServerError as exc:
            caught[h.run_id] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(read, H2)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(read, H1)
        await anyio.wait_all_tasks_blocked()
        lister.gate.set()
    assert len(lister.calls) == 1
    performer, joiner = caught["r2"], caught["r1"]
    assert performer is error
    assert isinstance(joiner, ServerError)
    assert joiner is not error
    assert (joiner.status, joiner.message, joiner.url) == (503, error.message, error.url)
    joiner.with_handle(H1)
    assert error.handle is None  # one caller's handle never lands on another's error
    # A failure is not reused: the next read asks again.
    lister.answer = page(row("r1"), row("r2"))
    listed = await shared.read(H1)
    assert listed is not None
    assert len(lister.calls) == 2


async def test_a_refused_list_turns_sharing_off_for_every_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lister = Lister(
        PermissionDenied(
            "forbidden", status=403, vendor="deepnote", method="GET", url=f"{API}/v2/x"
        )
    )
    shared = polls(lister)
    await shared.read(H1)
    lister.gate = anyio.Event()
    results: dict[str, ListedRun | None] = {}

    async def read(h: RunHandle) -> None:
        results[h.run_id] = await shared.read(h)

    with caplog.at_level(logging.WARNING, logger="notebookops.deepnote"):
        async with anyio.create_task_group() as group:
            group.start_soon(read, H2)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(read, H1)
            await anyio.wait_all_tasks_blocked()
            lister.gate.set()
        assert results == {"r1": None, "r2": None}
        assert await shared.read(H2) is None
    assert len(lister.calls) == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert shared.waited_on("nb1") == 0


async def test_a_run_older_than_the_largest_page_stops_using_the_list() -> None:
    old = handle("r1", created_at=datetime(2026, 7, 30, 7, tzinfo=UTC))
    others = [handle(f"n{i}") for i in range(90)]
    lister = Lister(
        page(*(row(h.run_id) for h in others), *(row(f"x{i}") for i in range(10)), more=True)
    )
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sharing, "_clock", clock)
        shared = polls(lister)
        assert await shared.read(old) is None
        for h in others:  # the first list was sent for two runs
            assert await shared.read(h) is not None
        assert lister.calls == [("nb1", 20)]
        # Older than that small page: asked once more with the largest page, absent there too,
        # and where its cursor leads (the same page again: a repeated cursor ends the reading).
        assert await shared.read(old) is None
        assert lister.calls == [("nb1", 20), ("nb1", 100), ("nb1", 100, "t")]
        clock.now += 1
        assert await shared.read(old) is None
        assert len(lister.calls) == 3  # beyond the list for good: read on its own
        assert shared.waited_on("nb1") == 91
        # The others still share the list, and nobody needs its cursor followed any more.
        assert await shared.read(others[0]) is not None
        assert len(lister.calls) == 4


class PagedLister:
    """A runs-list fetcher answering each cursor with its own page."""

    def __init__(self, pages: dict[str | None, dict[str, Any]]) -> None:
        self.pages = pages
        self.calls: list[tuple[int, str | None]] = []

    async def __call__(
        self, notebook_id: str, page_size: int, page_token: str | None
    ) -> HttpResponse:
        self.calls.append((page_size, page_token))
        return HttpResponse(
            status=200,
            headers={"content-type": "application/json"},
            body=json.dumps(self.pages[page_token]).encode(),
            method="GET",
            url=f"{API}/v2/notebooks/{notebook_id}/runs?pageSize={page_size}",
            vendor="deepnote",
        )


OLD = datetime(2026, 7, 30, 7, tzinfo=UTC)


def full_page(prefix: str, next_token: str | None, created_at: str = NOW) -> dict[str, Any]:
    """100 rows (a full largest page), continued at ``next_token``."""
    rows = [row(f"{prefix}{i}", created_at=created_at) for i in range(100)]
    return {
        "runs": rows,
        "pagination": {"nextPageToken": next_token, "hasMore": next_token is not None},
    }


async def _register(shared: SharedRunPolls, *handles: RunHandle) -> None:
    """Make the handles waited on (the first read of the first one is always its own)."""
    for h in handles:
        await shared.read(h)


async def test_a_run_on_a_later_page_is_read_through_the_cursor() -> None:
    old = handle("old", created_at=OLD)
    second_page = page(row("a1"), row("old", created_at="2026-07-30T07:00:00Z"))
    lister = PagedLister({None: full_page("n", "p2"), "p2": second_page})
    shared = polls(lister)
    await _register(shared, handle("n0"))
    listed = await shared.read(old)
    # The 20-row page was too small; the largest page and then its continuation found it.
    assert lister.calls == [(20, None), (100, None), (100, "p2")]
    assert listed is not None
    assert listed.raw == row("old", created_at="2026-07-30T07:00:00Z")
    again = await shared.read(handle("n5"))  # the same answer serves the newer runs too
    assert again is not None
    assert len(lister.calls) == 3


async def test_the_cursor_is_not_followed_for_runs_newer_than_the_last_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run newer than the page's last row but absent from it will not be further down."""
    monkeypatch.setattr(_sharing, "MIN_PAGE", MAX_PAGE_SIZE)
    lister = PagedLister({None: full_page("n", "p2", created_at="2026-07-30T07:00:00Z")})
    shared = polls(lister)
    await _register(shared, handle("n0"))
    missing = await shared.read(handle("gone", created_at=datetime(2026, 7, 30, 8, tzinfo=UTC)))
    assert missing is None
    assert lister.calls == [(100, None)]


async def test_a_run_without_a_creation_time_follows_the_cursor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_sharing, "MIN_PAGE", MAX_PAGE_SIZE)
    lister = PagedLister({None: full_page("n", "p2"), "p2": page(row("x"))})
    shared = polls(lister)
    await _register(shared, handle("n0"))
    listed = await shared.read(handle("x"))  # its age is unknown, so it may be further down
    assert listed is not None
    assert listed.raw == row("x")
    assert lister.calls == [(100, None), (100, "p2")]


async def test_the_cursor_stops_at_max_pages_and_the_run_is_beyond_the_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_sharing, "MAX_PAGES", 3)
    endless = {None: full_page("a", "p1"), "p1": full_page("b", "p2"), "p2": full_page("c", "p3")}
    lister = PagedLister(endless)
    shared = polls(lister)
    old = handle("old", created_at=OLD)
    await _register(shared, handle("a0"))
    assert await shared.read(old) is None
    assert lister.calls == [(20, None), (100, None), (100, "p1"), (100, "p2")]
    assert await shared.read(old) is None  # beyond the list now: no request for it
    assert len(lister.calls) == 4


async def test_a_repeated_cursor_ends_the_reading() -> None:
    lister = PagedLister({None: full_page("a", "p1"), "p1": full_page("b", "p1")})
    shared = polls(lister)
    await _register(shared, handle("a0"))
    assert await shared.read(handle("old", created_at=OLD)) is None
    assert lister.calls == [(20, None), (100, None), (100, "p1")]


# --------------------------------------------------------------------------- the backend


async def test_a_single_wait_never_lists(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"), repeat=True)
        async with make() as backend:
            for _ in range(3):
                run = await backend.get_run(H1)
                clock.now += 1
        assert run.state is RunState.RUNNING
        assert len(calls(mocked, run_url("r1"))) == 3
        assert list_calls(mocked) == 0


async def test_two_waits_share_the_notebooks_runs_list(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, payload=page(row("r2", "pending"), row("r1")))
        async with make() as backend:
            first = await backend.get_run(H1)  # alone: its own read
            second = await backend.get_run(H2)  # two waits now: the list
            third = await backend.get_run(H1)  # the same answer, within the window
        [request] = calls(mocked, LIST)
        assert len(calls(mocked, run_url("r1"))) == 1
        assert run_url("r2") not in {str(url) for _, url in mocked.requests}
    assert request.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    assert first.state is RunState.RUNNING
    assert second.state is RunState.PENDING
    assert second.vendor_state == "pending"
    assert second.created_at == datetime(2026, 7, 30, 8, tzinfo=UTC)
    assert second.outputs == ()
    assert second.error is None
    assert second.web_url == "https://deepnote.com/workspace/acme/project/p1/notebook/nb1"
    assert second.raw == row("r2", "pending")
    assert third.state is RunState.RUNNING
    assert third.raw == row("r1")


RUNS = f"{API}/v2/runs"


def started(run_id: str, status: str | None = "pending") -> dict[str, Any]:
    answer: dict[str, Any] = {"runId": run_id, "createdAt": NOW}
    if status is not None:
        answer["status"] = status
    return answer


async def test_a_first_read_within_the_window_is_the_starts_answer(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.post(RUNS, payload=started("r1"), status=201)
        mocked.post(RUNS, payload=started("r2"), status=201)
        mocked.get(run_url("r1"), payload=details("r1"))
        async with make() as backend:
            h1 = await backend.start_run(RunRequest("nb1"))
            h2 = await backend.start_run(RunRequest("nb1"))
            # Just within the window, which counts from the POST's send: its own (real) time
            # on the wire is part of the answer's age.
            clock.now += 0.49
            alone = await backend.get_run(h1)  # the only wait so far: its own read
            first = await backend.get_run(h2)  # two waits: the start's answer serves it
        assert len(calls(mocked, run_url("r1"))) == 1
        assert run_url("r2") not in {str(url) for _, url in mocked.requests}
        assert list_calls(mocked) == 0
    assert alone.raw == details("r1")["run"]
    assert first.state is RunState.PENDING
    assert first.vendor_state == "pending"
    assert first.created_at == datetime(2026, 7, 30, 8, tzinfo=UTC)
    assert first.outputs == ()
    assert first.raw == started("r2")
    assert first.handle == h2


async def test_a_starts_answer_serves_one_read_only(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.post(RUNS, payload=started("r1"), status=201)
        mocked.post(RUNS, payload=started("r2"), status=201)
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, payload=page(row("r2"), row("r1")))
        async with make() as backend:
            h1 = await backend.start_run(RunRequest("nb1"))
            h2 = await backend.start_run(RunRequest("nb1"))
            await backend.get_run(h1)
            await backend.get_run(h2)
            second = await backend.get_run(h2)
        assert list_calls(mocked) == 1
    assert second.state is RunState.RUNNING
    assert second.raw == row("r2")


async def test_a_starts_answer_older_than_the_window_is_not_used(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.post(RUNS, payload=started("r1"), status=201)
        mocked.post(RUNS, payload=started("r2"), status=201)
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, payload=page(row("r2"), row("r1")))
        async with make(share_window=0.5) as backend:
            h1 = await backend.start_run(RunRequest("nb1"))
            h2 = await backend.start_run(RunRequest("nb1"))
            await backend.get_run(h1)
            clock.now += 0.51
            late = await backend.get_run(h2)
        assert list_calls(mocked) == 1
    assert late.state is RunState.RUNNING
    assert late.raw == row("r2")


async def test_a_starts_answer_is_as_old_as_its_send_not_its_wait_for_a_turn(
    clock: FakeClock,
) -> None:
    # The second start waits a (fake) second for the rate limiter before it is sent, as the
    # 10,000th start of a burst waits for one of 100 connections: its answer is fresh all
    # the same. Timed from before that wait, it would be too old to serve the first read.
    class SlowTurn(RateLimiter):
        turns = 0

        async def acquire(self) -> None:
            self.turns += 1
            if self.turns == 2:  # the second POST
                clock.now += 1.0
            await super().acquire()

    with aioresponses() as mocked:
        mocked.post(RUNS, payload=started("r1"), status=201)
        mocked.post(RUNS, payload=started("r2"), status=201)
        mocked.get(run_url("r1"), payload=details("r1"))
        async with make(share_window=0.5, rate_limiter=SlowTurn()) as backend:
            h1 = await backend.start_run(RunRequest("nb1"))
            h2 = await backend.start_run(RunRequest("nb1"))
            await backend.get_run(h1)
            first = await backend.get_run(h2)
        assert list_calls(mocked) == 0
    assert first.raw == started("r2")  # the start's answer, not a read


@pytest.mark.parametrize("status", [None, "success"])
async def test_a_start_answer_without_a_live_status_is_not_kept(
    clock: FakeClock, status: str | None
) -> None:
    with aioresponses() as mocked:
        mocked.post(RUNS, payload=started("r1"), status=201)
        mocked.post(RUNS, payload=started("r2", status), status=201)
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, payload=page(row("r2", "success"), row("r1")))
        mocked.get(run_url("r2"), payload=details("r2", "success"))
        async with make() as backend:
            h1 = await backend.start_run(RunRequest("nb1"))
            h2 = await backend.start_run(RunRequest("nb1"))
            await backend.get_run(h1)
            run = await backend.get_run(h2)
        # Finished (or unknown) at the start: read for real, with its outputs.
        assert len(calls(mocked, run_url("r2"))) == 1
    assert run.state is RunState.SUCCEEDED


async def test_a_reconciled_start_keeps_no_answer(clock: FakeClock) -> None:
    """A start settled through the runs list has no answer of its own to reuse."""
    with aioresponses() as mocked:
        mocked.post(RUNS, payload=started("r1"), status=201)
        mocked.post(RUNS, status=502)
        created = datetime.now(UTC).isoformat()
        mocked.get(LIST, payload=page(row("r2", "pending", created_at=created)))
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, payload=page(row("r2"), row("r1")))
        async with make(reconcile_interval=0.01) as backend:
            h1 = await backend.start_run(RunRequest("nb1"))
            h2 = await backend.start_run(RunRequest("nb1"))
            assert h2.run_id == "r2"
            await backend.get_run(h1)
            run = await backend.get_run(h2)
        assert len(calls(mocked, LIST)) == 2  # the reconciliation's, then the shared read
    assert run.raw == row("r2")


def test_start_answers_are_bounded_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sharing, "_KEEP_STARTS", 3)
    shared = polls(Lister(page()), window=0.5)
    answer = HttpResponse(
        status=201, headers={}, body=b"{}", method="POST", url=RUNS, vendor="deepnote"
    )

    def start(run_id: str, at: float) -> None:
        shared.started(handle(run_id), "pending", answer, at)

    for index in range(5):
        start(f"r{index}", 10.0)
    assert list(shared._starts) == ["r2", "r3", "r4"]  # the oldest beyond the bound went
    start("r5", 10.6)  # the others are now past the window: they can serve nobody
    assert list(shared._starts) == ["r5"]


async def test_a_burst_of_starts_reads_each_run_once_on_its_own(
    server: FakeDeepnoteServer,
) -> None:
    """Without the start answers, the first reads of a burst joined list requests sent before
    their runs existed and each fell back to a read of its own."""
    notebook = server.add_notebook(script=RunScript.succeed(0.3))
    before = len(server.requests)
    # The answers are kept 1 s: a stalled machine can take longer than 0.2 s over the burst,
    # and the first starts' answers would then be too old to serve their first reads.
    runs = await _start_then_wait(server, notebook.id, 20, window=1.0)
    singles, lists = _status_reads(server, before)
    assert len(runs) == 20
    assert all(run.state is RunState.SUCCEEDED and run.outputs for run in runs)
    # One read of its own per finished run (for its outputs), plus the first wait's, alone.
    assert singles <= 21, f"{singles} individual reads for 20 runs ({lists} lists)"
    assert lists > 0


async def test_listed_runs_get_the_project_an_individual_read_named(clock: FakeClock) -> None:
    bare = [RunHandle(backend="deepnote", run_id=r, notebook_id="nb1") for r in ("r1", "r2")]
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1", projectId="p9"))
        mocked.get(LIST, payload=page(row("r2"), row("r1")))
        async with make() as backend:
            alone = await backend.get_run(bare[0])
            listed = await backend.get_run(bare[1])
    url = "https://deepnote.com/workspace/acme/project/p9/notebook/nb1"
    assert alone.web_url == url
    assert listed.raw == row("r2")
    assert listed.web_url == url


async def test_share_polls_false_never_lists(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"), repeat=True)
        mocked.get(run_url("r2"), payload=details("r2"), repeat=True)
        async with make(share_polls=False) as backend:
            for _ in range(3):
                await backend.get_run(H1)
                await backend.get_run(H2)
                clock.now += 1
        assert len(calls(mocked, run_url("r1"))) == 3
        assert len(calls(mocked, run_url("r2"))) == 3
        assert list_calls(mocked) == 0


async def test_the_window_reuses_an_answer_then_asks_again(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1", "pending"))
        mocked.get(LIST, payload=page(row("r2"), row("r1", "pending")))
        mocked.get(LIST, payload=page(row("r2"), row("r1", "running")))
        async with make(share_window=0.5) as backend:
            await backend.get_run(H1)
            await backend.get_run(H2)
            clock.now += 0.5
            reused = await backend.get_run(H1)
            assert list_calls(mocked) == 1
            clock.now += 0.01
            fresh = await backend.get_run(H1)
        assert list_calls(mocked) == 2
    assert reused.vendor_state == "pending"
    assert fresh.vendor_state == "running"


async def test_a_run_absent_from_the_list_is_read_on_its_own(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"), repeat=True)
        mocked.get(LIST, payload=page(row("r2")))  # r1 not visible yet: not a full page
        mocked.get(LIST, payload=page(row("r2"), row("r1")))
        async with make() as backend:
            await backend.get_run(H1)
            await backend.get_run(H2)
            missing = await backend.get_run(H1)
            clock.now += 1
            listed = await backend.get_run(H1)
        assert len(calls(mocked, run_url("r1"))) == 2
        assert list_calls(mocked) == 2
    assert missing.state is RunState.RUNNING
    assert missing.raw == details("r1")["run"]
    assert listed.raw == row("r1")


async def test_sparse_polls_are_read_one_by_one(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"), repeat=True)
        mocked.get(run_url("r2"), payload=details("r2"), repeat=True)
        mocked.get(LIST, payload=page(row("r2"), row("r1")), repeat=True)
        async with make() as backend:
            await backend.get_run(H1)
            await backend.get_run(H2)  # two fresh waits: assumed to poll about every second
            assert list_calls(mocked) == 1
            for _ in range(3):  # once every 10 s each: a list would serve a single read
                clock.now += 10
                await backend.get_run(H1)
                await backend.get_run(H2)
            assert list_calls(mocked) == 1
            clock.now += 0.1
            listed = await backend.get_run(H1)  # polling fast again: worth sharing
        assert list_calls(mocked) == 2
        assert len(calls(mocked, run_url("r1"))) == 4
        assert len(calls(mocked, run_url("r2"))) == 3
    assert listed.raw == row("r1")


async def test_a_burst_that_outgrew_the_page_asks_once_with_the_largest(
    clock: FakeClock,
) -> None:
    old = handle("r1", created_at=datetime(2026, 7, 30, 7, tzinfo=UTC))
    newer = [row(f"n{i}") for i in range(19)]
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, payload=page(row("r2"), *newer, more=True))
        mocked.get(
            f"{API}/v2/notebooks/nb1/runs?pageSize=100",
            payload=page(row("r2"), *newer, row("r1", created_at="2026-07-30T07:00:00Z")),
        )
        async with make() as backend:
            await backend.get_run(old)
            assert (await backend.get_run(H2)).raw == row("r2")
            listed = await backend.get_run(old)
        assert list_calls(mocked) == 2
        assert len(calls(mocked, run_url("r1"))) == 1
    assert listed.raw == row("r1", created_at="2026-07-30T07:00:00Z")


async def test_a_finished_row_is_read_on_its_own_for_its_outputs(clock: FakeClock) -> None:
    blocks = [
        {
            "id": "b1",
            "type": "code",
            "outputs": [{"output_type": "stream", "name": "stdout", "text": "done\n"}],
        }
    ]
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, payload=page(row("r2", "success"), row("r1")))
        mocked.get(
            run_url("r2"),
            payload=details("r2", "success", snapshotStatus="available", snapshotBlocks=blocks),
        )
        async with make() as backend:
            await backend.get_run(H1)
            run = await backend.get_run(H2)
            assert backend._polls is not None
            assert backend._polls.waited_on("nb1") == 1  # r2 is no longer waited on
        assert len(calls(mocked, run_url("r2"))) == 1
    assert run.state is RunState.SUCCEEDED
    assert [output.text for output in run.outputs] == ["done\n"]


async def test_the_last_finished_run_drops_its_notebook(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1", "success"))
        mocked.get(run_url("r2"), payload=details("r2", "error"))
        async with make() as backend:
            assert backend._polls is not None
            await backend.get_run(H1)
            assert backend._polls.waited_on("nb1") == 0
            await backend.get_run(H2)
            assert backend._polls.waited_on("nb1") == 0
            assert repr(backend._polls).startswith("<SharedRunPolls notebooks=0")


async def test_runs_unread_for_a_while_stop_counting(clock: FakeClock) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(run_url("r2"), payload=details("r2"), repeat=True)
        mocked.get(LIST, payload=page(row("r2"), row("r1")))
        async with make() as backend:
            assert backend._polls is not None
            await backend.get_run(H1)
            await backend.get_run(H2)
            assert backend._polls.waited_on("nb1") == 2
            clock.now += _sharing.IDLE_AFTER + 1
            await backend.get_run(H2)  # r1's wait is gone: r2 is alone again
            assert backend._polls.waited_on("nb1") == 1
        assert list_calls(mocked) == 1
        assert len(calls(mocked, run_url("r2"))) == 1


async def test_a_refused_list_falls_back_and_warns_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"), repeat=True)
        mocked.get(run_url("r2"), payload=details("r2"), repeat=True)
        mocked.get(LIST, status=403, payload={"message": "Forbidden"})
        with caplog.at_level(logging.WARNING, logger="notebookops.deepnote"):
            async with make() as backend:
                await backend.get_run(H1)
                run = await backend.get_run(H2)
                clock.now += 1
                await backend.get_run(H1)
                await backend.get_run(H2)
        assert list_calls(mocked) == 1
        assert len(calls(mocked, run_url("r2"))) == 2
    assert run.raw == details("r2")["run"]
    warnings = [r for r in caplog.records if "runs list" in r.getMessage()]
    assert len(warnings) == 1
    assert "nb1" in warnings[0].getMessage()
    assert "403" in warnings[0].getMessage()
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, ServerError), (429, RateLimited)],
)
async def test_a_transient_list_failure_reaches_get_run(
    clock: FakeClock, status: int, error: type[Exception]
) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, status=status, payload={"message": "try later"})
        mocked.get(LIST, payload=page(row("r2"), row("r1")))
        retry = RetryPolicy(max_attempts=1, max_rate_limit_wait=0, initial_backoff=0.01)
        async with make(retry=retry) as backend:
            await backend.get_run(H1)
            with pytest.raises(error, match="try later"):
                await backend.get_run(H2)
            # Sharing stays on: the next read lists again.
            run = await backend.get_run(H2)
        assert list_calls(mocked) == 2
        assert run_url("r2") not in {str(url) for _, url in mocked.requests}
    assert run.raw == row("r2")


@pytest.mark.parametrize(
    "body",
    [
        "[]",
        '{"runs": "none", "pagination": {}}',
        '{"runs": []}',
        '{"runs": [{"status": "running"}], "pagination": {}}',
        '{"runs": [7], "pagination": {}}',
        '{"runs": [{"runId": "r2", "status": 5}], "pagination": {}}',
        '{"runs": [{"runId": "r2", "status": "running", "createdAt": "soon"}], "pagination": {}}',
        "<html>oops</html>",
    ],
)
async def test_a_malformed_list_is_a_decode_error(clock: FakeClock, body: str) -> None:
    with aioresponses() as mocked:
        mocked.get(run_url("r1"), payload=details("r1"))
        mocked.get(LIST, body=body, content_type="application/json")
        async with make() as backend:
            await backend.get_run(H1)
            with pytest.raises(ResponseDecodeError) as caught:
                await backend.get_run(H2)
    assert "/v2/notebooks/nb1/runs" in caught.value.url


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"share_polls": "yes"}, "share_polls"),
        ({"share_window": -1}, "share_window"),
        ({"share_window": float("nan")}, "share_window"),
        ({"share_window": "0.5"}, "share_window"),
    ],
)
def test_sharing_settings_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        DeepnoteBackend(KEY, **kwargs)


# --------------------------------------------------------------------------- loopback

FLEET_POLL = PollPolicy(initial=0.04, multiplier=1.0, maximum=0.05, jitter=0.1, proportion=0)
RUN_STATUS = re.compile(r"^/v2/runs/[^/]+$")
RUNS_LIST = re.compile(r"^/v2/notebooks/[^/]+/runs$")


def _status_reads(server: FakeDeepnoteServer, since: int) -> tuple[int, int]:
    """(individual run reads, runs-list reads) logged after request number ``since``."""
    requests = [r for r in server.requests[since:] if r.method == "GET"]
    singles = sum(1 for r in requests if RUN_STATUS.match(r.path))
    lists = [r for r in requests if RUNS_LIST.match(r.path)]
    assert all(20 <= int(r.query["pageSize"]) <= 30 for r in lists)
    return singles, len(lists)


@pytest.fixture
async def server() -> AsyncIterator[FakeDeepnoteServer]:
    async with fake_deepnote() as fake:
        yield fake


async def _fleet(server: FakeDeepnoteServer, notebook_id: str, *, share: bool) -> list[Run]:
    runs: list[Run] = []
    async with server.backend(share_polls=share, share_window=0.05) as backend:

        async def one() -> None:
            runs.append(await run_and_wait(backend, notebook_id, poll=FLEET_POLL, timeout=30))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)
    return runs


async def _start_then_wait(
    server: FakeDeepnoteServer, notebook_id: str, count: int, *, window: float = 0.2
) -> list[Run]:
    """A burst of ``count`` starts of one notebook, then a wait on each, all at once."""
    async with server.backend(share_window=window) as backend:
        handles = [await backend.start_run(RunRequest(notebook_id)) for _ in range(count)]
        runs: list[Run] = []

        async def wait(h: RunHandle) -> None:
            runs.append(await wait_for_run(backend, h, poll=FLEET_POLL, timeout=30))

        async with anyio.create_task_group() as group:
            for h in handles:
                group.start_soon(wait, h)
    return runs


async def test_twenty_waits_on_one_notebook_need_far_fewer_reads(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.4))
    before = len(server.requests)
    alone = await _fleet(server, notebook.id, share=False)
    singles_alone, lists_alone = _status_reads(server, before)
    before = len(server.requests)
    shared = await _fleet(server, notebook.id, share=True)
    singles_shared, lists_shared = _status_reads(server, before)
    for runs in (alone, shared):
        assert len(runs) == 20
        assert all(run.state is RunState.SUCCEEDED and run.outputs for run in runs)
    assert lists_alone == 0
    assert lists_shared > 0
    # Every finished run is still read on its own once, for its outputs.
    assert singles_shared >= 20
    assert singles_shared + lists_shared <= (singles_alone + lists_alone) / 2, (
        f"shared: {singles_shared} + {lists_shared} lists; alone: {singles_alone}"
    )


async def test_more_waits_than_one_page_holds_share_the_list_through_its_cursor(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.5))
    before = len(server.requests)
    runs = await _start_then_wait(server, notebook.id, 150)
    reads = [r for r in server.requests[before:] if r.method == "GET"]
    singles = sum(1 for r in reads if RUN_STATUS.match(r.path))
    lists = [r for r in reads if RUNS_LIST.match(r.path)]
    assert len(runs) == 150
    assert all(run.state is RunState.SUCCEEDED and run.outputs for run in runs)
    assert any("pageToken" in r.query for r in lists)  # the oldest 50 are on page 2
    # One read of its own per finished run, plus a few: the oldest runs are not lost to
    # reads of their own for being beyond the first page.
    assert singles <= 150 + 5, f"{singles} individual reads for 150 runs ({len(lists)} lists)"


async def test_a_cancelled_reader_leaves_the_others_waiting(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.3))
    async with server.backend() as backend:
        first = await backend.start_run(RunRequest(notebook.id))
        second = await backend.start_run(RunRequest(notebook.id))
        await backend.get_run(first)
        await backend.get_run(second)  # served by its start's answer: no request
        server.faults.add(Fault("delay", delay=0.2, method="GET", path=RUNS_LIST.pattern))
        reader = anyio.CancelScope()
        seen: list[Run] = []

        async def cancelled_read() -> None:
            with reader:
                await backend.get_run(second)

        async def other_read() -> None:
            seen.append(await backend.get_run(first))

        async with anyio.create_task_group() as group:
            group.start_soon(cancelled_read)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(other_read)
            await anyio.wait_all_tasks_blocked()
            reader.cancel()
        assert reader.cancelled_caught
        [run] = seen
        assert not run.state.is_terminal
        assert isinstance(run.raw, dict)
        assert "snapshotStatus" not in run.raw
        # Both waits still end normally, with their outputs.
        finished = [
            await wait_for_run(backend, h, poll=FLEET_POLL, timeout=10) for h in (first, second)
        ]
    assert all(run.state is RunState.SUCCEEDED and run.outputs for run in finished)


async def test_aclose_during_a_shared_request_leaves_nothing_behind(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    backend = server.backend(retry=RetryPolicy(max_attempts=1))
    first = await backend.start_run(RunRequest(notebook.id))
    second = await backend.start_run(RunRequest(notebook.id))
    await backend.get_run(first)
    await backend.get_run(second)  # served by its start's answer: no request
    server.faults.add(Fault("delay", delay=1, method="GET", path=RUNS_LIST.pattern))
    failures: list[BaseException] = []

    async def read(h: RunHandle) -> None:
        try:
            await backend.get_run(h)
        except NotebookOpsError as error:
            failures.append(error)

    # Both readers (the one sending the list request and the one waiting for it) end as soon
    # as the backend closes, well before the server would answer.
    with anyio.fail_after(0.8):
        async with anyio.create_task_group() as group:
            group.start_soon(read, second)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(read, first)
            await anyio.wait_all_tasks_blocked()
            await backend.aclose()
    assert len(failures) == 2
    assert all(isinstance(error, TransportError) for error in failures)
    with pytest.raises(BackendClosed):
        await backend.get_run(first)


# --------------------------------------------------------------------------- quiet waits


async def test_a_starts_answer_stands_for_a_quiet_waits_first_read_once(clock: FakeClock) -> None:
    # next_change(last=None, quiet=True) uses it instead of get_run: the status only, within
    # the window, and only once, as get_run would.
    with aioresponses() as mocked:
        for run_id in ("r1", "r2", "r3"):
            mocked.post(RUNS, payload=started(run_id), status=201)
        mocked.post(RUNS, payload=started("r4", status=None), status=201)
        async with make(share_window=0.5) as backend:
            h1, h2, h3, h4 = [await backend.start_run(RunRequest("nb1")) for _ in range(4)]
            polls = backend._polls
            assert polls is not None
            assert polls.take_start(h1) == "pending"
            assert polls.take_start(h1) is None  # used up
            clock.now += 0.4
            assert polls.take_start(h2) == "pending"
            clock.now += 0.11
            assert polls.take_start(h3) is None  # older than the window
            assert polls.take_start(h4) is None  # the answer said no status
        assert list_calls(mocked) == 0


async def test_next_change_without_a_last_read_is_only_for_quiet_callers() -> None:
    with aioresponses() as mocked:
        mocked.post(RUNS, payload=started("r1"), status=201)
        async with make() as backend:
            handle = await backend.start_run(RunRequest("nb1"))
            with pytest.raises(ConfigurationError, match="unless quiet"):
                await backend.next_change(handle, None, lambda: 1.0)
