"""A start that has not been sent yet: while its request waits its turn in the transport (a
free connection, the rate limiter), nothing has reached the vendor and no run can exist.

So such a start may be abandoned (a cancellation, the caller's deadline) and its time limit
has not begun: thousands of starts queued behind a vendor's rate limit must not come back as
"outcome unknown", which would send their callers reconciling runs nobody asked for. Once
anything is sent, the shield and the time limit hold as before (see
test_native_cancellation.py). Real transport, loopback server, a gate instead of sleeps where
the order of events matters. Starts that must end before the gate opens are given a short
``start_timeout``: on a regression they fail (StartOutcomeUnknown) instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from aiohttp import web

from notebookops import (
    ConfigurationError,
    ConnectError,
    PollPolicy,
    RateLimited,
    RunHandle,
    RunRequest,
    RunState,
    RunTimeout,
    StartOutcomeUnknown,
    _deadline,
    run_and_wait,
    start_run,
)
from notebookops._http import HttpTransport, VendorProfile
from notebookops.policies import RetryPolicy
from notebookops.ratelimit import RateLimiter
from notebookops.testing import FakeBackend, FakeScript
from notebookops.testing._server import FakeServer, Fault
from notebookops.testing.deepnote import RunScript, fake_deepnote

TOKEN = "tok-unsent"
FAST = PollPolicy(initial=0.001, multiplier=1.5, maximum=0.005, jitter=0)
DONE = FakeScript(states=("running", "success"))
#: A start's time limit where it must not run out once sent: a request answered on loopback
#: takes a few ms, but a stalled CI machine has held one past 50 ms. The tests showing that
#: waiting for a turn is not timed wait longer than this.
LIMIT = 0.25
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
    """FakeBackend runs, each start and cancel first POSTed through a real HttpTransport."""

    def __init__(self, transport: HttpTransport, *, gated: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transport = transport
        self.start_deadlines: list[float] = []
        if gated:
            # As the vendor adapters do: a start then waits for a connection in its caller's
            # task, and gets a task of its own only once it has one.
            self._connection_gate = transport.connection_gate

    async def start_run(self, request: RunRequest) -> RunHandle:
        await self.transport.request("POST", "/start", json={"notebook": request.notebook})
        # What the transport's retries would see (asyncio: orchestration's own record).
        self.start_deadlines.append(_deadline.effective_deadline())
        return await super().start_run(request)

    async def cancel_run(self, handle: RunHandle) -> None:
        await self.transport.request("POST", "/cancel", json={"run": handle.run_id})
        await super().cancel_run(handle)


class TwoStepBackend(PostingBackend):
    """A PostingBackend whose start makes two requests: a preparing POST, then the start."""

    async def start_run(self, request: RunRequest) -> RunHandle:
        await self.transport.request("POST", "/cancel", json={"prepare": True})
        return await super().start_run(request)


@pytest.fixture
async def server() -> AsyncIterator[GateServer]:
    async with GateServer() as srv:
        yield srv
        srv.gate.set()  # a handler still held would hold the server's shutdown


#: The transports a test made, closed after it whatever its outcome.
_TRANSPORTS: list[HttpTransport] = []


@pytest.fixture(autouse=True)
async def _close_transports() -> AsyncIterator[None]:
    yield
    while _TRANSPORTS:
        await _TRANSPORTS.pop().aclose()


def _transport(server: GateServer, **settings: Any) -> HttpTransport:
    http = HttpTransport(VendorProfile("acme"), base_url=server.url, token=TOKEN, **settings)
    _TRANSPORTS.append(http)
    return http


def _backend(server: GateServer, *, gated: bool = False, **transport: Any) -> PostingBackend:
    return PostingBackend(_transport(server, **transport), gated=gated, default_script=DONE)


@pytest.fixture(params=[False, True], ids=["queued-in-its-task", "queued-in-its-caller"])
async def one_connection(
    server: GateServer, request: pytest.FixtureRequest
) -> AsyncIterator[PostingBackend]:
    """Requests beyond the first wait for the transport's only connection: a start in its
    task of its own, or (an adapter exposing the transport's gate) in its caller's task."""
    backend = _backend(server, gated=request.param, max_connections=1)
    async with backend:
        yield backend


async def _until(condition: Callable[[], bool], seconds: float = 5) -> None:
    """Wait for something the code under test brings about on its own (checked every ms)."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - a condition, not an event, is what is shared
            await asyncio.sleep(0.001)


async def _hold_the_connection(server: GateServer, backend: PostingBackend) -> asyncio.Task[Any]:
    """Start a run whose POST holds the only connection until the gate opens."""
    server.gate.clear()
    server.arrived.clear()
    first = asyncio.create_task(run_and_wait(backend, "first", poll=FAST, start_timeout=30))
    await server.arrived.wait()
    return first


def _waiting_at_gates() -> int:
    """Requests and starts waiting for a connection at the transports' gates."""
    gates = [http.connection_gate for http in _TRANSPORTS if http.connection_gate is not None]
    return sum(not waiter.done() for gate in gates for waiter in (gate._waiters or ()))


async def _queued(count: int) -> None:
    """Until ``count`` starts wait for their turn in the transport (in their task) or for a
    connection (in their caller's)."""
    for _ in range(10_000):
        queued = sum(section.queued for section in _deadline._STARTS.values())
        if max(queued, _waiting_at_gates()) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"fewer than {count} starts ever waited for their turn")


# --------------------------------------------------------------------------- the time limit


async def test_a_start_queued_longer_than_its_time_limit_is_still_sent(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    second = asyncio.create_task(
        run_and_wait(one_connection, "second", poll=FAST, start_timeout=LIMIT)
    )
    await _queued(1)
    await asyncio.sleep(2 * LIMIT)  # twice its limit, waiting for the connection
    server.gate.set()
    assert (await second).state is RunState.SUCCEEDED  # before: StartOutcomeUnknown
    assert (await first).state is RunState.SUCCEEDED
    assert server.posts["/start"] == 2
    assert one_connection.start_count == 2


async def test_the_time_limit_counts_from_the_send_for_the_transport_too(
    server: GateServer, one_connection: PostingBackend
) -> None:
    loop = asyncio.get_running_loop()
    first = await _hold_the_connection(server, one_connection)
    queued_at = loop.time()
    second = asyncio.create_task(run_and_wait(one_connection, "second", poll=FAST, start_timeout=5))
    await _queued(1)
    await asyncio.sleep(0.1)
    sent_after = loop.time()
    server.gate.set()
    await first
    await second
    # The second start's retries would be bounded by its send + 5 s, not its queueing + 5 s.
    assert one_connection.start_deadlines[1] >= sent_after + 5
    assert one_connection.start_deadlines[1] > queued_at + 5 + 0.09
    assert not _deadline._STARTS
    assert not _deadline._BY_TASK


async def test_a_start_queued_past_its_time_limit_is_timed_from_its_send(
    server: GateServer, one_connection: PostingBackend
) -> None:
    # Its section's first timer came while it was still queued (and was put off to the
    # deadline): the send must bring the time limit forward again, or a start sent late and
    # never answered would hang on to the deadline, or succeed long after its limit.
    server.gate.clear()
    holder = asyncio.create_task(one_connection.transport.request("POST", "/cancel", json={}))
    await server.arrived.wait()
    server.faults.add(Fault("delay", delay=1.5, path="/start", times=1))
    loop = asyncio.get_running_loop()
    second = asyncio.create_task(
        run_and_wait(one_connection, "second", poll=FAST, timeout=30, start_timeout=LIMIT)
    )
    await _queued(1)
    await asyncio.sleep(2 * LIMIT)  # past its limit, waiting for the connection
    server.gate.set()
    opened = loop.time()
    with pytest.raises(StartOutcomeUnknown):
        await second
    assert loop.time() - opened < 1.5  # its limit after the send, not the late answer
    await holder


async def test_a_start_sent_and_unanswered_past_its_time_limit_is_still_unknown(
    server: GateServer, one_connection: PostingBackend
) -> None:
    server.gate.clear()
    with pytest.raises(StartOutcomeUnknown):
        await run_and_wait(one_connection, "nb", poll=FAST, start_timeout=0.05)
    # It was sent: the server has it, or gets it (a stalled machine can run the 50 ms out
    # before the server's handler has run).
    await asyncio.wait_for(server.arrived.wait(), 5)
    assert server.posts["/start"] == 1
    assert one_connection.start_count == 0


async def test_the_time_limit_is_not_pushed_later_by_a_send_for_work_without_a_queue(
    server: GateServer,
) -> None:
    # Sent at once: one timer, due at the limit, as before.
    async with _backend(server) as backend:
        server.gate.clear()
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(StartOutcomeUnknown):
            await run_and_wait(backend, "nb", poll=FAST, start_timeout=0.05)
        assert loop.time() - began < 1


# --------------------------------------------------------------------------- the deadline


async def test_a_start_still_queued_at_the_deadline_is_abandoned_unsent(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    with pytest.raises(RunTimeout) as caught:
        await run_and_wait(one_connection, "second", poll=FAST, timeout=0.1, start_timeout=2)
    error = caught.value
    assert error.handle is None
    assert error.run is None
    assert not error.cancelled
    assert "no run was started" in str(error)
    assert "no run was started" in error.reason
    server.gate.set()
    assert (await first).state is RunState.SUCCEEDED
    assert server.posts["/start"] == 1  # the abandoned start never reached the server
    assert one_connection.start_count == 1
    assert not _deadline._STARTS


@pytest.mark.parametrize("queue", [False, True], ids=["sent-at-once", "queued"])
async def test_a_start_reaching_the_transport_past_the_deadline_is_abandoned_there(
    server: GateServer, queue: bool
) -> None:
    # Its own work ran past the deadline before its request (nothing sent meanwhile): a run
    # started now would only be cancelled at once. Abandoned where it would be sent, or where
    # it would wait for the connection.
    class LateBackend(PostingBackend):
        async def start_run(self, request: RunRequest) -> RunHandle:
            if request.notebook == "late":
                await asyncio.sleep(0.08)
            return await super().start_run(request)

    http = _transport(server, max_connections=1)
    async with LateBackend(http, default_script=DONE) as backend:
        first = await _hold_the_connection(server, backend) if queue else None
        with pytest.raises(RunTimeout) as caught:
            await run_and_wait(backend, "late", poll=FAST, timeout=0.04, start_timeout=2)
        assert caught.value.handle is None
        server.gate.set()
        if first is not None:
            await first
        assert server.posts["/start"] == (1 if queue else 0)


async def test_no_deadline_lets_a_queued_start_wait_for_its_turn(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    second = asyncio.create_task(
        run_and_wait(one_connection, "second", poll=FAST, timeout=None, start_timeout=LIMIT)
    )
    await _queued(1)
    await asyncio.sleep(2 * LIMIT)
    server.gate.set()
    assert (await second).state is RunState.SUCCEEDED
    await first


# --------------------------------------------------------------------------- the connection gate


async def test_a_start_waits_for_a_connection_in_its_callers_task(server: GateServer) -> None:
    # An adapter exposing its transport's gate: a start queued behind a taken connection has
    # no task and no shield of its own yet (each start queued behind thousands would keep
    # them all alive), and gets them with the connection, which its request uses.
    backend = _backend(server, gated=True, max_connections=1)
    async with backend:
        first = await _hold_the_connection(server, backend)
        tasks_before = len(asyncio.all_tasks())
        second = asyncio.create_task(run_and_wait(backend, "second", poll=FAST, start_timeout=2))
        await _queued(1)
        assert len(asyncio.all_tasks()) == tasks_before + 1  # the wait, and nothing else
        assert _deadline._STARTS[second].queued  # its section, kept by the wait's own task
        server.gate.set()
        assert (await second).state is RunState.SUCCEEDED
        assert (await first).state is RunState.SUCCEEDED
        assert server.posts["/start"] == 2
        gate = backend.transport.connection_gate
        assert gate is not None
        assert gate._value == 1  # the place the caller took went back once, with the request
        assert not _deadline._STARTS


async def test_a_connection_taken_for_a_start_is_given_back_if_it_sends_nothing(
    server: GateServer,
) -> None:
    class RefusingBackend(PostingBackend):
        async def start_run(self, request: RunRequest) -> RunHandle:
            if request.notebook == "bad":
                raise ConfigurationError("no such notebook")
            return await super().start_run(request)

    http = _transport(server, max_connections=1)
    async with RefusingBackend(http, gated=True, default_script=DONE) as backend:
        with pytest.raises(ConfigurationError):
            await run_and_wait(backend, "bad", poll=FAST)
        assert http.connection_gate is not None
        assert http.connection_gate._value == 1
        run = await run_and_wait(backend, "good", poll=FAST, timeout=5)  # not stuck behind it
        assert run.state is RunState.SUCCEEDED


async def test_a_start_paced_by_the_rate_limiter_does_not_hold_its_connection(
    server: GateServer,
) -> None:
    # Its caller took the only connection for it; while the limiter makes it wait, another
    # request can use that connection (starts do not keep reads from their turn).
    limiter = RateLimiter(max_rate=2)  # one request now, the next in half a second
    http = _transport(server, max_connections=1, rate_limiter=limiter)
    async with PostingBackend(http, gated=True, default_script=DONE) as backend:
        await http.request("POST", "/cancel", json={})  # the limiter's one request for now
        start = asyncio.create_task(run_and_wait(backend, "nb", poll=FAST, timeout=10))
        await _queued(1)  # waiting for the limiter, in its task
        gate = http.connection_gate
        assert gate is not None
        assert not gate.locked()  # the connection is free meanwhile
        assert (await start).state is RunState.SUCCEEDED
        assert gate._value == 1


async def test_a_start_making_two_requests_uses_the_connection_taken_for_it_once(
    server: GateServer,
) -> None:
    # The first request has the place its caller took; the second waits for one as any
    # request does. On one connection, a second use of the place would be a second
    # request on the wire at once, and the place given back twice.
    http = _transport(server, max_connections=1)
    async with TwoStepBackend(http, gated=True, default_script=DONE) as backend:
        runs = await asyncio.gather(
            *(run_and_wait(backend, f"nb{i}", poll=FAST, timeout=10) for i in range(3))
        )
        assert all(run.state is RunState.SUCCEEDED for run in runs)
        assert server.posts["/start"] == 3
        assert http.connection_gate is not None
        assert http.connection_gate._value == 1


# --------------------------------------------------------------------------- cancellation


async def test_a_caller_cancelled_while_its_start_is_queued_leaves_at_once(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    second = asyncio.create_task(run_and_wait(one_connection, "second", poll=FAST, start_timeout=2))
    await _queued(1)
    second.cancel("shutting down")
    with pytest.raises(asyncio.CancelledError, match="shutting down"):
        await second  # the gate is still closed: nothing held it
    server.gate.set()
    await first
    third = await run_and_wait(one_connection, "third", poll=FAST)  # the queue still works
    assert third.state is RunState.SUCCEEDED
    assert server.posts["/start"] == 2
    assert {run.request.notebook for run in one_connection.runs.values()} == {"first", "third"}
    assert one_connection.cancel_calls == 0  # no run of the second: nothing to cancel


@pytest.mark.parametrize("queue", [False, True], ids=["sent-at-once", "queued"])
async def test_a_caller_cancelled_before_its_start_reached_the_transport_sends_nothing(
    server: GateServer, queue: bool
) -> None:
    # Cancelled while its work is elsewhere (here: before its request): abandoned where it
    # would then wait its turn, or where it would send.
    reached = asyncio.Event()
    go_on = asyncio.Event()

    class PreparingBackend(PostingBackend):
        async def start_run(self, request: RunRequest) -> RunHandle:
            if request.notebook == "second":
                reached.set()
                await go_on.wait()
            return await super().start_run(request)

    http = _transport(server, max_connections=1)
    async with PreparingBackend(http, default_script=DONE) as backend:
        first = await _hold_the_connection(server, backend) if queue else None
        second = asyncio.create_task(run_and_wait(backend, "second", poll=FAST, start_timeout=2))
        await reached.wait()
        second.cancel()
        await asyncio.sleep(0.01)
        assert not second.done()  # its work is not in the transport: it is let finish there
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await second
        server.gate.set()
        if first is not None:
            await first
        assert server.posts["/start"] == (1 if queue else 0)
        assert {run.request.notebook for run in backend.runs.values()} <= {"first"}


async def test_a_burst_of_waits_cancelled_while_their_starts_queue_sends_nothing(
    server: GateServer, one_connection: PostingBackend
) -> None:
    # A service shutting down right after launching its waits, all but one start waiting for
    # the connection: none of them may start a run only for it to be cancelled.
    first = await _hold_the_connection(server, one_connection)
    waits = [
        asyncio.create_task(run_and_wait(one_connection, f"nb{i}", poll=FAST, start_timeout=2))
        for i in range(50)
    ]
    await _queued(50)
    for wait in waits:
        wait.cancel()
    results = await asyncio.gather(*waits, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    server.gate.set()
    await first
    assert server.posts["/start"] == 1
    assert one_connection.start_count == 1
    assert not _deadline._STARTS


@pytest.mark.parametrize("scope", ["asyncio.timeout", "anyio.move_on_after"])
async def test_a_time_limit_around_a_queued_start_ends_it_at_once(
    server: GateServer, one_connection: PostingBackend, scope: str
) -> None:
    # asyncio.timeout tells its own cancellation by the task's count of cancel requests, an
    # anyio scope by its message: both must see theirs come back, and nothing left pending.
    first = await _hold_the_connection(server, one_connection)
    second = run_and_wait(one_connection, "second", poll=FAST, start_timeout=2)
    if scope == "asyncio.timeout":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await second
    else:
        with anyio.move_on_after(0.05) as caught:
            await second
        assert caught.cancelled_caught
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)
    assert server.posts["/start"] == 1
    server.gate.set()
    await first


async def test_a_queued_public_start_run_is_abandoned_by_a_cancellation(
    server: GateServer, one_connection: PostingBackend
) -> None:
    first = await _hold_the_connection(server, one_connection)
    second = asyncio.create_task(
        start_run(one_connection, RunRequest(notebook="second"), start_timeout=2)
    )
    await _queued(1)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    server.gate.set()
    await first
    assert server.posts["/start"] == 1


@pytest.mark.parametrize("gated", [False, True], ids=["in-its-task", "connection-taken-first"])
async def test_a_start_waiting_for_the_rate_limiter_is_abandoned_too(
    server: GateServer, gated: bool
) -> None:
    # With the gate, each start took its connection before it got its task, and waits for
    # the limiter holding it: abandoned, it gives it back.
    limiter = RateLimiter(max_rate=2)  # one request now, the next in half a second
    backend = _backend(server, gated=gated, rate_limiter=limiter)
    async with backend:
        await run_and_wait(backend, "first", poll=FAST)
        waits = [asyncio.create_task(run_and_wait(backend, f"nb{i}", poll=FAST)) for i in range(3)]
        await _queued(1)
        for wait in waits:
            wait.cancel()
        results = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(result, asyncio.CancelledError) for result in results)
        assert server.posts["/start"] == 1
        assert backend.start_count == 1
        gate = backend.transport.connection_gate
        assert gate is not None
        assert gate._value == 100  # every place given back


async def test_a_start_sent_before_the_cancellation_is_still_shielded(
    server: GateServer, one_connection: PostingBackend
) -> None:
    # The first start's POST is at the server: the run may exist, so it is waited for, and
    # then cancelled, as test_native_cancellation.py checks for starts with no queue.
    first = await _hold_the_connection(server, one_connection)
    first.cancel()
    await asyncio.sleep(0.02)
    assert not first.done()
    server.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert one_connection.start_count == 1
    assert one_connection.cancel_calls == 1


async def test_a_remote_cancel_waiting_for_its_turn_is_never_abandoned(
    server: GateServer, one_connection: PostingBackend
) -> None:
    # Only starts may be abandoned unsent: a cancel left unsent would leave a run running.
    one_connection.default_script = LONG
    task = asyncio.create_task(run_and_wait(one_connection, "nb", poll=FAST))
    await _until(lambda: bool(one_connection.runs))
    blocker = await _hold_the_connection(server, one_connection)  # the connection is taken
    task.cancel()
    await _queued_cancel(server)
    task.cancel()  # again, while the remote cancel waits for the connection
    server.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.posts["/cancel"] >= 1
    assert one_connection.cancel_calls >= 1
    blocker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocker


@pytest.mark.parametrize("sent", [False, True], ids=["queued", "sent"])
async def test_a_remote_cancel_out_of_time_says_whether_it_was_ever_sent(
    server: GateServer, one_connection: PostingBackend, sent: bool
) -> None:
    # At the deadline the run is cancelled; its cancel gets cancel_timeout. Still waiting for
    # the connection then, it was never sent, and the run is certainly still running.
    one_connection.default_script = LONG
    wait = asyncio.create_task(
        run_and_wait(one_connection, "nb", poll=FAST, timeout=0.3, cancel_timeout=0.1)
    )
    await _until(lambda: bool(one_connection.runs))
    if sent:
        server.gate.clear()  # the cancel reaches the server, which holds it
        blocker = None
    else:
        blocker = await _hold_the_connection(server, one_connection)
    with pytest.raises(RunTimeout) as caught:
        await wait
    reason = caught.value.reason
    assert not caught.value.cancelled
    if sent:
        # Sent, so the server has it or gets it (the 0.1 s can run out on a stalled machine
        # before the server's handler has run).
        await _until(lambda: server.posts["/cancel"] > 0)
        assert server.posts["/cancel"] == 1
        assert "may still be running" in reason
        assert "never sent" not in reason
    else:
        assert server.posts["/cancel"] == 0
        assert "never sent" in reason
        assert reason.endswith("it is still running")
    server.gate.set()
    if blocker is not None:  # its run never ends either
        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker


async def _queued_cancel(server: GateServer) -> None:
    # The remote cancel's POST waits behind the held one; give it a few loop turns to get
    # there (it is not a start: nothing records it as queued).
    for _ in range(20):
        await asyncio.sleep(0)
    assert server.posts["/cancel"] == 0


# --------------------------------------------------------------------------- 429s

#: Pauses of 30-60 ms between 429s (Retry-After is whole seconds, too long for a test).
PATIENT = RetryPolicy(initial_backoff=0.06, max_backoff=0.06)
#: Pauses of 100-200 ms: three of them outlast LIMIT.
SLOW = RetryPolicy(initial_backoff=0.2, max_backoff=0.2)


def _refusing(server: GateServer, times: int, retry: RetryPolicy = PATIENT) -> PostingBackend:
    """A backend whose next ``times`` starts the server answers with 429."""
    server.faults.status(429, {"message": "slow down"}, path="/start", times=times)
    return _backend(server, retry=retry)


async def test_a_start_refused_with_429_is_not_timed_while_it_waits_to_retry(
    server: GateServer,
) -> None:
    # Each 429 says the vendor did nothing with the request: the pauses before the retries
    # are waiting for a turn, not a start taking too long.
    backend = _refusing(server, 3, retry=SLOW)
    async with backend:
        run = await run_and_wait(backend, "nb", poll=FAST, start_timeout=LIMIT)
        assert run.state is RunState.SUCCEEDED
        assert server.posts["/start"] == 1  # the three 429s were answered before the handler
        assert len([r for r in server.requests if r.path == "/start"]) == 4


async def test_a_caller_cancelled_while_its_start_waits_to_retry_a_429_leaves_at_once(
    server: GateServer,
) -> None:
    backend = _refusing(server, 1000)
    async with backend:
        task = asyncio.create_task(run_and_wait(backend, "nb", poll=FAST, start_timeout=2))
        await _queued(1)  # refused once, now waiting to retry
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.start_count == 0


async def test_a_start_refused_with_429_until_the_deadline_made_no_run(
    server: GateServer,
) -> None:
    # Retried while the caller's deadline allows (not only start_timeout's). Then either
    # the vendor's own answer is raised (a retry the deadline declines) or, when the deadline
    # comes during the limiter's shared cool-down, the never-sent RunTimeout: no run either way.
    backend = _refusing(server, 1000)
    loop = asyncio.get_running_loop()
    async with backend:
        began = loop.time()
        with pytest.raises((RateLimited, RunTimeout)) as caught:
            await run_and_wait(backend, "nb", poll=FAST, timeout=0.6, start_timeout=LIMIT)
        assert loop.time() - began >= 0.4
        assert caught.value.handle is None
        assert backend.start_count == 0
        assert len([r for r in server.requests if r.path == "/start"]) >= 4


async def test_a_request_in_doubt_keeps_the_start_shielded_after_a_later_429(
    server: GateServer,
) -> None:
    # A start that sent one request that may have taken effect, then got a 429 for another:
    # the first still may have made a run, so the start is not abandoned meanwhile.
    server.faults.status(429, {"message": "slow down"}, path="/start", times=2)
    http = _transport(server, retry=PATIENT)
    async with TwoStepBackend(http, default_script=DONE) as backend:
        task = asyncio.create_task(run_and_wait(backend, "nb", poll=FAST, start_timeout=2))
        await _until(lambda: any(r.path == "/start" for r in server.requests))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.start_count == 1  # the start finished, then the run was cancelled
        assert backend.cancel_calls == 1


async def test_a_start_whose_connection_is_refused_is_not_timed_while_it_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A refused connection never left this machine: retried as the policy says, untimed by
    # start_timeout, and ended with that definite error rather than an unknown outcome.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    http = HttpTransport(
        VendorProfile("acme"),
        base_url=f"http://127.0.0.1:{port}",
        token=TOKEN,
        retry=RetryPolicy(max_attempts=4, initial_backoff=0.2, max_backoff=0.2),
    )
    _TRANSPORTS.append(http)
    async with PostingBackend(http, default_script=DONE) as backend:
        with (
            caplog.at_level(logging.WARNING, logger="notebookops.http"),
            pytest.raises(ConnectError),
        ):
            await run_and_wait(backend, "nb", poll=FAST, start_timeout=LIMIT)
        assert backend.start_count == 0
        # Every attempt the policy allows, though together they outlast start_timeout.
        retries = [r for r in caplog.records if "retry" in r.getMessage()]
        assert len(retries) == 3


# --------------------------------------------------------------------------- Deepnote


async def test_deepnote_starts_paced_by_the_rate_limit_are_all_sent_and_succeed() -> None:
    # Six starts at 10 requests/s: the last waits ~0.5 s for its turn, twice its limit.
    # Before, every start but the first came back as StartOutcomeUnknown.
    async with fake_deepnote() as server:
        notebook = server.add_notebook(script=RunScript.succeed(0.0))
        async with server.backend(max_rate=10, share_reads=False) as backend:
            runs = await asyncio.gather(
                *(
                    run_and_wait(backend, notebook.id, poll=FAST, timeout=10, start_timeout=LIMIT)
                    for _ in range(6)
                )
            )
        assert [run.state for run in runs] == [RunState.SUCCEEDED] * 6
        assert len(server.runs) == 6
        posts = [r for r in server.requests if r.method == "POST" and r.path == "/v2/runs"]
        assert len(posts) == 6


def test_a_section_record_is_its_own_timer_and_keeps_no_context() -> None:
    # Each start in flight keeps its section and one timer; the timer is the section itself
    # (no argument tuple) and runs in the shared empty context.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        section = _deadline.StartSection(task, loop, 5.0, math.inf)
        timer = section.timer
        assert timer is not None
        assert timer._callback is section
        assert timer._args == ()
        assert timer._context is _deadline.NO_CONTEXT
        assert timer.when() == pytest.approx(section.began + 5.0)
        timer.cancel()

    asyncio.run(main())
