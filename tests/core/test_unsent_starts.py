"""A start that has not been sent yet: while its request waits its turn in the client (a
free connection, the rate limiter, the pause after a 429), nothing has reached the vendor and
no run can exist. Such a start is abandoned by a cancellation or the caller's deadline, and
raised as RunTimeout with no handle. Once its request is sent, it is seen through to its
answer (see test_native_cancellation.py). Real client, loopback server, a gate instead of
sleeps where the order of events matters.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from aiohttp import web

from notebookops import (
    ConnectError,
    PollPolicy,
    RateLimited,
    RunHandle,
    RunRequest,
    RunState,
    RunTimeout,
    run_and_wait,
    start_run,
    wait_for_run,
)
from notebookops.backend import ApiClient, VendorProfile, protected
from notebookops.policies import RetryPolicy
from notebookops.testing import FakeBackend, FakeScript
from notebookops.testing.deepnote import RunScript, fake_deepnote
from notebookops.testing.server import FakeServer, Fault

TOKEN = "tok-unsent"
FAST = PollPolicy(initial=0.001, multiplier=1.5, maximum=0.005, jitter=0)
DONE = FakeScript(states=("running", "success"))
LONG = FakeScript(states=("pending", "running"))


class GateServer(FakeServer):
    """Counts POSTs per path; each one waits for ``gate`` (open unless a test closes it)."""

    def __init__(self) -> None:
        super().__init__(token=TOKEN)
        self.gate = asyncio.Event()
        self.gate.set()
        self.posts: dict[str, int] = {"/start": 0, "/cancel": 0}
        #: Set by each POST as it arrives (before the gate).
        self.arrived = asyncio.Event()

    def setup_routes(self, app: web.Application) -> None:
        async def post(request: web.Request) -> web.Response:
            self.posts[request.path] += 1
            self.arrived.set()
            await self.gate.wait()
            return web.json_response({}, status=201)

        app.router.add_post("/start", post)
        app.router.add_post("/cancel", post)


class PostingBackend(FakeBackend):
    """FakeBackend runs, each start and cancel first POSTed through a real ApiClient."""

    def __init__(self, transport: ApiClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transport = transport

    async def start_run(self, request: RunRequest) -> RunHandle:
        await self.transport.request("POST", "/start", json={"notebook": request.notebook})
        # The answer made the run: it is recorded without an unprotected await after it (the
        # NotebookBackend.start_run contract), as a real adapter decodes its handle.
        return await protected(functools.partial(FakeBackend.start_run, self, request), 5)

    async def cancel_run(self, handle: RunHandle) -> None:
        # A cancel is safe to repeat (the NotebookBackend.cancel_run contract).
        await self.transport.request(
            "POST", "/cancel", json={"run": handle.run_id}, idempotent=True
        )
        await super().cancel_run(handle)


@pytest.fixture
async def server() -> AsyncIterator[GateServer]:
    async with GateServer() as srv:
        yield srv
        srv.gate.set()  # a handler still held would hold the server's shutdown


@pytest.fixture
async def one_connection(server: GateServer) -> AsyncIterator[PostingBackend]:
    """Requests beyond the first wait for the client's only connection."""
    client = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, max_connections=1)
    async with client, PostingBackend(client, default_script=DONE) as backend:
        yield backend


async def _hold_the_connection(server: GateServer, backend: PostingBackend) -> asyncio.Task[Any]:
    """Start a run whose POST holds the only connection until the gate opens."""
    server.gate.clear()
    server.arrived.clear()
    first = asyncio.create_task(run_and_wait(backend, "first", poll=FAST))
    await server.arrived.wait()
    return first


async def test_a_start_still_queued_at_the_deadline_is_abandoned_unsent(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    with pytest.raises(RunTimeout, match="never took it") as caught:
        await run_and_wait(one_connection, "second", poll=FAST, timeout=0.1)
    assert caught.value.handle is None
    assert caught.value.run is None
    assert server.posts["/start"] == 1  # only the first
    server.gate.set()
    assert (await first).state is RunState.SUCCEEDED
    assert one_connection.start_count == 1


async def test_a_caller_cancelled_while_its_start_is_queued_leaves_at_once(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    second = asyncio.create_task(run_and_wait(one_connection, "second", poll=FAST))
    await anyio.wait_all_tasks_blocked()
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second  # at once: the gate is still closed
    assert server.posts["/start"] == 1
    server.gate.set()
    await first
    assert server.posts == {"/start": 1, "/cancel": 0}


async def test_a_burst_of_waits_cancelled_while_their_starts_queue_sends_nothing(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    with anyio.move_on_after(0.1) as scope:
        async with anyio.create_task_group() as group:
            for index in range(50):
                group.start_soon(run_and_wait, one_connection, f"nb-{index}")
    assert scope.cancelled_caught
    assert server.posts["/start"] == 1
    server.gate.set()
    await first
    assert one_connection.start_count == 1
    assert server.posts["/cancel"] == 0


async def test_a_queued_public_start_run_is_abandoned_by_a_cancellation(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    with anyio.move_on_after(0.05) as scope:
        await start_run(one_connection, RunRequest("second"))
    assert scope.cancelled_caught
    server.gate.set()
    await first
    assert server.posts["/start"] == 1


async def test_a_start_sent_before_the_cancellation_is_seen_through(
    server: GateServer, one_connection: PostingBackend
) -> None:
    server.gate.clear()
    server.arrived.clear()
    task = asyncio.create_task(run_and_wait(one_connection, "nb", poll=FAST))
    await server.arrived.wait()
    task.cancel()
    await asyncio.sleep(0.02)
    assert not task.done()  # held: the start's answer is awaited
    server.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert one_connection.start_count == 1
    assert server.posts["/cancel"] == 1  # then the run it made was cancelled
    (fake,) = one_connection.runs.values()
    assert fake.cancelled


async def test_a_remote_cancel_waiting_for_its_turn_is_bounded(
    server: GateServer, one_connection: PostingBackend
) -> None:
    handle: RunHandle = await start_run(one_connection, RunRequest("nb"))
    one_connection.runs[handle.run_id].script = LONG
    first = await _hold_the_connection(server, one_connection)
    began = anyio.current_time()
    with pytest.raises(RunTimeout) as caught:
        await wait_for_run(one_connection, handle, poll=FAST, timeout=0.05, cancel_timeout=0.1)
    assert anyio.current_time() - began < 1
    assert not caught.value.cancelled
    assert "may still be running" in caught.value.reason
    server.gate.set()
    await first


async def test_a_start_refused_with_429_until_the_deadline_made_no_run(
    server: GateServer,
) -> None:
    server.faults.add(
        Fault("status", status=429, path="/start", times=1000, headers={"Retry-After": "0.02"})
    )
    client = ApiClient(
        VendorProfile("acme"),
        base_url=server.url,
        token=TOKEN,
        retry=RetryPolicy(initial_backoff=0.01, max_rate_limit_wait=60),
    )
    async with client, PostingBackend(client, default_script=DONE) as backend:
        with pytest.raises((RunTimeout, RateLimited)):
            await run_and_wait(backend, "nb", poll=FAST, timeout=0.3)
        assert backend.start_count == 0


async def test_a_start_whose_connection_is_refused_is_retried_and_made_once() -> None:
    client = ApiClient(
        VendorProfile("acme"),
        base_url="http://127.0.0.1:9",
        token=TOKEN,
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.01),
    )
    async with client, PostingBackend(client, default_script=DONE) as backend:
        with pytest.raises(ConnectError):
            await run_and_wait(backend, "nb", poll=FAST, timeout=5)
        assert backend.start_count == 0


async def test_deepnote_starts_paced_by_the_rate_limit_are_all_sent_and_succeed() -> None:
    # Six starts at 10 requests/s: the last waits ~0.5 s for its turn, longer than a short
    # start_timeout would allow if the wait counted as a start in doubt.
    async with fake_deepnote() as server:
        notebook = server.add_notebook(script=RunScript.succeed(0.0))
        async with server.backend(max_rate=10) as backend:
            runs = await asyncio.gather(
                *(run_and_wait(backend, notebook.id, poll=FAST, timeout=10) for _ in range(6))
            )
        assert [run.state for run in runs] == [RunState.SUCCEEDED] * 6
        assert len(server.runs) == 6
        posts = [r for r in server.requests if r.method == "POST" and r.path == "/v2/runs"]
        assert len(posts) == 6
