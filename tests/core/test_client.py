"""ApiClient against real sockets (loopback aiohttp servers) and aioresponses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aioresponses import aioresponses

from notebookops import errors
from notebookops.backend import ApiClient, SSEEvent, VendorProfile
from notebookops.policies import RetryPolicy
from notebookops.ratelimit import RateLimiter
from notebookops.testing import MockTransport, json_response
from notebookops.testing.server import FakeServer, Fault
from notebookops.transport import Request, Response

TOKEN = "tok-SECRET-123"
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002, max_retry_after=0.05)


class EchoServer(FakeServer):
    """Echoes what it received; a few routes misbehave on purpose."""

    def __init__(self) -> None:
        super().__init__(token=TOKEN)
        self.hits = 0
        self.in_flight = self.most_in_flight = 0
        self.other_url = ""
        #: Set at teardown: a slow handler still running would hold the server's shutdown.
        self.release = asyncio.Event()

    def setup_routes(self, app: web.Application) -> None:
        async def echo(request: web.Request) -> web.Response:
            self.hits += 1
            body = await request.json() if request.body_exists else None
            return web.json_response(
                {"method": request.method, "query": dict(request.query), "json": body},
                status=201 if request.method == "POST" else 200,
            )

        async def slow(request: web.Request) -> web.Response:
            self.hits += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 1)
            return web.json_response({})

        async def pause(request: web.Request) -> web.Response:
            self.hits += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                # Long against the tests' connect timeout (0.25 s), so that a busy machine
                # (a worker per core) cannot make a real connect look like a pool wait.
                await asyncio.sleep(0.4)
            finally:
                self.in_flight -= 1
            return web.json_response({})

        async def redirect_same(request: web.Request) -> web.Response:
            raise web.HTTPFound("/echo")

        async def redirect_other(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(self.other_url + "/public")

        async def events(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            last = request.headers.get("Last-Event-ID", "")
            await response.write(f": resumed from {last or 'start'}\n\n".encode())
            await response.write(b"id: 1-0\nevent: step\nda")
            await response.write(b'ta: {"n": 1}\n\n')
            await response.write(b"event: result\r\ndata: done\r\n\r\n")
            if request.query.get("cut"):
                await response.write(b"event: result\ndata: partial")
            await response.write_eof()
            return response

        async def not_events(request: web.Request) -> web.Response:
            return web.json_response({"not": "a stream"})

        app.router.add_route("*", "/echo", echo)
        app.router.add_get("/slow", slow)
        app.router.add_get("/pause", pause)
        app.router.add_get("/redirect-same", redirect_same)
        app.router.add_get("/redirect-other", redirect_other)
        app.router.add_get("/events", events)
        app.router.add_get("/not-events", not_events)


class OtherOrigin(FakeServer):
    public_paths = ("/public",)

    def setup_routes(self, app: web.Application) -> None:
        async def public(request: web.Request) -> web.Response:
            return web.json_response({"auth": request.headers.get("Authorization")})

        app.router.add_get("/public", public)


@pytest.fixture
async def server() -> AsyncIterator[EchoServer]:
    async with EchoServer() as srv, OtherOrigin() as other:
        # "localhost" vs "127.0.0.1": a different origin on the same machine.
        srv.other_url = other.url.replace("127.0.0.1", "localhost")
        yield srv
        srv.release.set()


@pytest.fixture
async def transport(server: EchoServer) -> AsyncIterator[ApiClient]:
    t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, retry=FAST)
    yield t
    await t.aclose()


async def test_sends_auth_and_json(transport: ApiClient, server: EchoServer) -> None:
    data = await transport.request_json(
        "POST", "/echo", json={"a": 1}, params={"flag": True, "n": 2, "skip": None}
    )
    assert data == {"method": "POST", "query": {"flag": "true", "n": "2"}, "json": {"a": 1}}
    sent = server.requests[-1]
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["User-Agent"].startswith("notebookops/")
    assert sent.headers["Accept"] == "application/json"


async def test_get_retries_503_then_succeeds(transport: ApiClient, server: EchoServer) -> None:
    server.faults.status(503, {"message": "busy"}, path="/echo")
    response = await transport.request("GET", "/echo")
    assert response.status == 200
    assert server.hits == 1
    assert len(server.requests) == 2


async def test_get_gives_up_after_max_attempts(transport: ApiClient, server: EchoServer) -> None:
    server.faults.add(Fault("status", status=503, body={"message": "down"}, times=5))
    with pytest.raises(errors.ServerError, match="down") as caught:
        await transport.request("GET", "/echo")
    assert caught.value.status == 503
    assert len(server.requests) == FAST.max_attempts


async def test_post_is_not_retried_on_5xx(transport: ApiClient, server: EchoServer) -> None:
    server.faults.status(503, {"message": "busy"})
    with pytest.raises(errors.ServerError):
        await transport.request("POST", "/echo", json={})
    assert len(server.requests) == 1


async def test_post_is_not_retried_after_connection_lost(
    transport: ApiClient, server: EchoServer
) -> None:
    server.faults.add(Fault("reset_after"))
    with pytest.raises(errors.ConnectionLost) as caught:
        await transport.request("POST", "/echo", json={})
    assert caught.value.request_sent
    assert server.hits == 1  # the handler ran once: a retry would have run it twice


async def test_get_is_retried_after_connection_reset(
    transport: ApiClient, server: EchoServer
) -> None:
    server.faults.add(Fault("reset_before"))
    assert (await transport.request("GET", "/echo")).status == 200


async def test_post_is_retried_on_429(transport: ApiClient, server: EchoServer) -> None:
    server.faults.status(429, {"message": "slow down"}, headers={"Retry-After": "0"})
    response = await transport.request("POST", "/echo", json={})
    assert response.status == 201
    assert server.hits == 1
    assert transport.rate_limiter.rate_limited_count == 1


async def test_retry_after_is_capped(transport: ApiClient, server: EchoServer) -> None:
    server.faults.status(429, None, headers={"Retry-After": "3600"})
    started = anyio.current_time()
    assert (await transport.request("GET", "/echo")).status == 200
    assert anyio.current_time() - started < 1


async def test_retry_that_would_pass_the_deadline_raises_now(server: EchoServer) -> None:
    patient = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_retry_after=60)
    async with anyio.create_task_group():
        t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, retry=patient)
        server.faults.status(429, {"message": "later"}, headers={"Retry-After": "30"})
        try:
            with anyio.fail_after(2):
                with pytest.raises(errors.RateLimited) as caught:
                    await t.request("GET", "/echo")
            assert caught.value.retry_after == 30
        finally:
            await t.aclose()


async def test_request_timeout_is_retried_for_get(server: EchoServer) -> None:
    t = ApiClient(
        # Long enough that every attempt reaches the server on a busy machine; /slow holds
        # each one for a second, until teardown releases it.
        VendorProfile("acme"),
        base_url=server.url,
        token=TOKEN,
        retry=FAST,
        timeout=0.3,
    )
    try:
        with pytest.raises(errors.RequestTimeout):
            await t.request("GET", "/slow")
        assert server.hits == FAST.max_attempts
    finally:
        await t.aclose()


async def test_a_cancellation_in_the_same_moment_as_the_request_timeout_gets_through(
    server: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiohttp's total timeout enters one timer twice and uncancels the task twice when it
    # fires. A Task.cancel() in the same loop iteration (a wait's deadline falling as a
    # status read times out) came out as a RequestTimeout: the cancellation was lost and the
    # wait polled on past its deadline. A coarse loop clock makes the two timers coincide.
    loop = asyncio.get_running_loop()
    quantum = 1 / 16  # exact in binary: timer times compare equal
    real_time = loop.time
    monkeypatch.setattr(loop, "time", lambda: math.floor(real_time() / quantum) * quantum)
    whens: list[float] = []
    real_call_at = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        whens.append(when)
        return real_call_at(when, callback, *args, context=context)

    monkeypatch.setattr(loop, "call_at", call_at)
    limit = 4 * quantum
    t = ApiClient(
        VendorProfile("acme"),
        base_url=server.url,
        token=TOKEN,
        retry=RetryPolicy(max_attempts=1),
        timeout=limit,
    )
    try:
        for _attempt in range(5):
            whens.clear()
            request = asyncio.create_task(t.request("GET", "/slow"))
            moment = loop.time() + limit
            loop.call_at(moment, request.cancel)
            with pytest.raises(asyncio.CancelledError):
                await request
            if whens.count(moment) >= 2:
                break  # the request's own timer was due in the same moment: the case at hand
        else:
            pytest.fail("the cancel and the request timeout never coincided")
    finally:
        await t.aclose()


async def test_requests_beyond_the_pool_wait_their_turn_without_timing_out(
    server: EchoServer,
) -> None:
    """Six requests on two connections: four wait 0.4-0.8 s for one, longer than the connect
    timeout. That wait is not a timeout (aiohttp's own pool would have counted it as one)."""
    t = ApiClient(
        VendorProfile("acme"),
        base_url=server.url,
        token=TOKEN,
        retry=RetryPolicy(max_attempts=1),
        connect_timeout=0.25,
        max_connections=2,
    )
    try:
        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(t.request, "GET", "/pause")
        assert server.hits == 6
        assert server.most_in_flight == 2
    finally:
        await t.aclose()


async def test_a_callers_session_is_gated_by_its_own_pool(server: EchoServer) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=3)) as session:
        t = ApiClient(
            VendorProfile("acme"),
            base_url=server.url,
            token=TOKEN,
            session=session,
            connect_timeout=0.25,
            retry=RetryPolicy(max_attempts=1),
        )
        async with anyio.create_task_group() as group:
            for _ in range(7):
                group.start_soon(t.request, "GET", "/pause")
        await t.aclose()
    assert server.hits == 7
    assert server.most_in_flight == 3


async def test_a_request_cancelled_while_waiting_for_a_connection_gives_nothing_back(
    server: EchoServer,
) -> None:
    t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, max_connections=1)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(t.request, "GET", "/pause")
            await anyio.wait_all_tasks_blocked()  # it holds the only connection now
            with anyio.move_on_after(0.05) as waiting:
                await t.request("GET", "/pause")  # the only connection is taken
            assert waiting.cancelled_caught
        await t.request("GET", "/pause")  # both slots accounted for: not deadlocked
        assert server.hits == 2
    finally:
        await t.aclose()


async def test_an_open_event_stream_holds_its_connection(server: EchoServer) -> None:
    t = ApiClient(
        VendorProfile("acme"), base_url=server.url, token=TOKEN, retry=FAST, max_connections=1
    )
    done: list[str] = []

    async def read() -> None:
        await t.request("GET", "/echo")
        done.append("read")

    try:
        async with anyio.create_task_group() as group, t.sse("GET", "/events") as events:
            group.start_soon(read)
            await anyio.sleep(0.1)  # time enough for the read, were a connection free
            assert done == []
            assert len([event async for event in events]) == 2
            # Closed: the read gets the connection now.
        assert done == ["read"]
    finally:
        await t.aclose()


async def test_invalid_json_body(transport: ApiClient, server: EchoServer) -> None:
    server.faults.add(Fault("invalid_json"))
    with pytest.raises(errors.ResponseDecodeError) as caught:
        await transport.request_json("GET", "/echo")
    assert caught.value.body == '{"truncated": '


async def test_html_error_page(transport: ApiClient, server: EchoServer) -> None:
    server.faults.add(Fault("html", status=500))
    with pytest.raises(errors.ServerError, match="HTML error page"):
        await transport.request("GET", "/echo")


async def test_truncated_body_is_connection_lost(transport: ApiClient, server: EchoServer) -> None:
    server.faults.add(Fault("truncate", times=5))
    with pytest.raises(errors.ConnectionLost):
        await transport.request("GET", "/echo")


async def test_same_origin_redirect_keeps_auth(transport: ApiClient, server: EchoServer) -> None:
    data = await transport.request_json("GET", "/redirect-same")
    assert data["method"] == "GET"
    assert server.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_cross_origin_redirect_drops_auth(transport: ApiClient) -> None:
    data = await transport.request_json("GET", "/redirect-other")
    assert data == {"auth": None}


async def test_absolute_url_on_other_origin_gets_no_token(
    transport: ApiClient, server: EchoServer
) -> None:
    data = await transport.request_json("GET", server.other_url + "/public")
    assert data == {"auth": None}


async def test_refuses_plain_http_to_remote_hosts(transport: ApiClient) -> None:
    with pytest.raises(errors.ConfigurationError, match="https"):
        await transport.request("GET", "http://example.com/x")
    with pytest.raises(errors.ConfigurationError):
        ApiClient(VendorProfile("acme"), base_url="http://example.com", token=TOKEN)


async def test_relative_path_must_start_with_slash(transport: ApiClient) -> None:
    with pytest.raises(errors.ConfigurationError):
        await transport.request("GET", "echo")


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_bad_timeouts_are_refused(bad: float) -> None:
    with pytest.raises(errors.ConfigurationError):
        ApiClient(VendorProfile("acme"), base_url="https://h", token="t", timeout=bad)


async def test_owned_session_closed_and_use_after_close(server: EchoServer) -> None:
    t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN)
    await t.request("GET", "/echo")
    await t.aclose()
    await t.aclose()
    assert t.closed
    with pytest.raises(errors.BackendClosed):
        await t.request("GET", "/echo")


async def test_caller_session_is_never_closed(server: EchoServer) -> None:
    async with aiohttp.ClientSession() as session:
        t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, session=session)
        await t.request("GET", "/echo")
        await t.aclose()
        assert not session.closed


async def test_token_never_in_repr_errors_or_logs(
    transport: ApiClient, server: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="notebookops")
    assert TOKEN not in repr(transport)
    server.faults.status(401, {"message": "bad"})
    server.faults.status(503, None)
    with pytest.raises(errors.AuthenticationError) as caught:
        await transport.request("GET", "/echo")
    await transport.request("GET", "/echo")
    texts = [str(caught.value), repr(caught.value), caught.value.body, caught.value.url]
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records
    assert not [text for text in texts if TOKEN in text]


async def test_connect_errors_are_retried_even_for_post() -> None:
    t = ApiClient(VendorProfile("acme"), base_url="https://api.acme.test", token=TOKEN, retry=FAST)
    refused = aiohttp.ClientConnectorError.__new__(aiohttp.ClientConnectorError)
    OSError.__init__(refused, 111, "refused")
    try:
        with aioresponses() as mocked:
            mocked.post("https://api.acme.test/runs", exception=refused)
            mocked.post("https://api.acme.test/runs", status=202, payload={"runId": "r1"})
            assert await t.request_json("POST", "/runs", json={}) == {"runId": "r1"}
    finally:
        await t.aclose()


async def test_sse_stream_events_and_resume_header(
    transport: ApiClient, server: EchoServer
) -> None:
    async with transport.sse("GET", "/events", last_event_id="0-0") as events:
        received = [event async for event in events]
    assert [(e.event, e.data, e.id) for e in received] == [
        ("step", '{"n": 1}', "1-0"),
        ("result", "done", "1-0"),
    ]
    assert server.requests[-1].headers["Last-Event-ID"] == "0-0"
    assert server.requests[-1].headers["Accept"] == "text/event-stream"


async def test_sse_cut_mid_event(transport: ApiClient) -> None:
    received: list[SSEEvent] = []

    async def read_all() -> None:
        async with transport.sse("GET", "/events", params={"cut": 1}) as events:
            async for event in events:
                received.append(event)  # one by one: keep the events seen before the cut

    with pytest.raises(errors.ConnectionLost) as caught:
        await read_all()
    assert caught.value.partial_event
    assert len(received) == 2


async def test_sse_error_status_before_stream(transport: ApiClient, server: EchoServer) -> None:
    server.faults.status(404, {"detail": "Not found."})
    with pytest.raises(errors.NotFound, match="Not found"):
        async with transport.sse("GET", "/events"):
            pass


async def test_sse_wrong_content_type(transport: ApiClient) -> None:
    with pytest.raises(errors.ResponseDecodeError, match="stream events"):
        async with transport.sse("GET", "/not-events"):
            pass


async def test_sse_retries_503_with_retry_after(transport: ApiClient, server: EchoServer) -> None:
    server.faults.status(503, None, headers={"Retry-After": "0"})
    async with transport.sse("GET", "/events") as events:
        assert len([event async for event in events]) == 2


async def test_rate_limiter_cooldown_is_shared() -> None:
    limiter = RateLimiter()
    limiter.on_rate_limited(0.05)
    started = anyio.current_time()
    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(limiter.acquire)
    assert anyio.current_time() - started >= 0.04
    assert limiter.rate_limited_count == 1


async def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(max_rate=200)
    started = anyio.current_time()
    for _ in range(5):
        await limiter.acquire()
    assert anyio.current_time() - started >= 4 / 200 - 0.001


def test_rate_limiter_validates() -> None:
    with pytest.raises(errors.ConfigurationError):
        RateLimiter(max_rate=0)


# --------------------------------------------------------------------------- 429 budget


async def test_429s_do_not_use_up_max_attempts(server: EchoServer) -> None:
    # Two attempts would not survive four 429s if they counted as failures: a fleet of run
    # starts under a rate-limiting vendor must queue, not fail.
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_retry_after=0.01)
    t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, retry=policy)
    try:
        server.faults.status(429, None, headers={"Retry-After": "0.001"}, times=4)
        response = await t.request("POST", "/echo", json={})
        assert response.status == 201
        assert server.hits == 1
        assert t.rate_limiter.rate_limited_count == 4
    finally:
        await t.aclose()


async def test_the_limiter_hears_every_answer_but_429s(server: EchoServer) -> None:
    """What the adaptive limiter learns from: answers that got through (errors included: the
    vendor counted them), and 429s on their own, for requests and event streams alike."""

    class CountingLimiter(RateLimiter):
        answers = 0

        def record_answer(self) -> None:
            self.answers += 1
            super().record_answer()

    limiter = CountingLimiter()
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_retry_after=0.01)
    t = ApiClient(
        VendorProfile("acme"),
        base_url=server.url,
        token=TOKEN,
        retry=policy,
        rate_limiter=limiter,
    )
    try:
        server.faults.status(429, None, headers={"Retry-After": "0.001"}, times=2)
        await t.request("POST", "/echo", json={})
        server.faults.status(404, {"message": "nope"})
        with pytest.raises(errors.NotFound):
            await t.request("GET", "/echo")
        server.faults.status(429, None, headers={"Retry-After": "0.001"})
        async with t.sse("GET", "/events") as events:
            assert len([event async for event in events]) == 2
        assert t.rate_limiter.rate_limited_count == 3
        assert limiter.answers == 3  # the POST, the 404, the stream
    finally:
        await t.aclose()


async def test_requests_pace_through_the_limiter_reads_by_their_own_turn(
    server: EchoServer,
) -> None:
    """Each attempt takes its turn from the limiter: a read through ``acquire_read`` (reads go
    before queued starts), anything else through ``acquire``."""
    paced = ApiClient(
        VendorProfile("acme"),
        base_url=server.url,
        token=TOKEN,
        retry=FAST,
        rate_limiter=RateLimiter(max_rate=100),
    )

    class Counting(RateLimiter):
        reads = 0
        others = 0

        async def acquire(self) -> None:
            Counting.others += 1
            await super().acquire()

        async def acquire_read(self) -> None:
            Counting.reads += 1
            await super().acquire_read()

    counted = ApiClient(
        VendorProfile("acme"), base_url=server.url, token=TOKEN, retry=FAST, rate_limiter=Counting()
    )
    try:
        started = anyio.current_time()
        for _ in range(3):
            await paced.request("GET", "/echo")
        assert anyio.current_time() - started >= 2 / 100 - 0.001
        server.faults.status(503, {"message": "busy"}, path="/echo")
        await counted.request("GET", "/echo")
        assert (Counting.reads, Counting.others) == (2, 0)  # the 503 and its retry
        await counted.request("POST", "/echo")
        assert (Counting.reads, Counting.others) == (2, 1)
    finally:
        await paced.aclose()
        await counted.aclose()


async def test_429s_stop_being_retried_when_the_wait_budget_is_spent(
    server: EchoServer,
) -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_rate_limit_wait=0.05)
    t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, retry=policy)
    try:
        server.faults.status(429, {"message": "busy"}, headers={"Retry-After": "0.02"}, times=10)
        with pytest.raises(errors.RateLimited):
            await t.request("GET", "/echo")
        # 0.02 s twice fits the 0.05 s budget, a third would not: three 429s seen.
        assert t.rate_limiter.rate_limited_count == 3
    finally:
        await t.aclose()


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(max_attempts=1),
        RetryPolicy(max_attempts=5, initial_backoff=0.001, max_rate_limit_wait=0),
    ],
    ids=["max_attempts=1", "max_rate_limit_wait=0"],
)
async def test_429_is_not_retried_when_retries_are_off(
    server: EchoServer, policy: RetryPolicy
) -> None:
    t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, retry=policy)
    try:
        server.faults.status(429, None, headers={"Retry-After": "0"}, times=2)
        with pytest.raises(errors.RateLimited):
            await t.request("POST", "/echo", json={})
        assert t.rate_limiter.rate_limited_count == 1
    finally:
        await t.aclose()


async def test_failures_after_429s_still_count_against_max_attempts(server: EchoServer) -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.002)
    t = ApiClient(VendorProfile("acme"), base_url=server.url, token=TOKEN, retry=policy)
    try:
        server.faults.status(429, None, headers={"Retry-After": "0"}, times=3)
        server.faults.status(503, None, times=2)
        with pytest.raises(errors.ServerError):
            await t.request("GET", "/echo")
        assert server.hits == 0
    finally:
        await t.aclose()


def test_max_rate_limit_wait_is_validated() -> None:
    with pytest.raises(errors.ConfigurationError, match="max_rate_limit_wait"):
        RetryPolicy(max_rate_limit_wait=-1)


# --------------------------------------------------------------------------- where the token goes


def _recording_client(**kwargs: Any) -> tuple[ApiClient, MockTransport]:
    mock = MockTransport(lambda request: json_response({}))
    client = ApiClient(
        VendorProfile("acme"),
        base_url="https://api.example.com",
        token=TOKEN,
        transport=mock,
        **kwargs,
    )
    return client, mock


async def test_token_never_goes_to_a_host_that_merely_starts_like_the_base_url() -> None:
    client, mock = _recording_client(allow_http=True)
    lookalikes = (
        "https://api.example.com.evil.net/v2/runs",
        "https://api.example.com:8443/v2/runs",
        "https://api.example.comx/v2",
        "http://api.example.com/v2/runs",
    )
    async with client:
        await client.request("GET", "https://api.example.com/v2/runs")
        for url in lookalikes:
            await client.request("GET", url)
    authorized = {request.url: "Authorization" in request.headers for request in mock.requests}
    assert authorized == {"https://api.example.com/v2/runs": True} | dict.fromkeys(
        lookalikes, False
    )


async def test_plain_http_is_refused_even_under_a_trusted_looking_prefix() -> None:
    client, mock = _recording_client()
    async with client:
        await client.request("GET", "https://api.example.com/v2/runs")
        with pytest.raises(errors.ConfigurationError, match="only https"):
            await client.request("GET", "http://api.example.com.evil.net/v2/runs")
    assert [request.url for request in mock.requests] == ["https://api.example.com/v2/runs"]


async def test_a_redirect_loop_ends_as_connection_lost_naming_the_request() -> None:
    def loop(request: Request) -> Response:
        return Response(status=302, headers={"Location": request.url})

    client = ApiClient(
        VendorProfile("acme"),
        base_url="https://api.example.com",
        token="tok-redirects-1234",
        transport=MockTransport(loop),
    )
    async with client:
        with pytest.raises(errors.ConnectionLost, match=r"acme GET .*/runs: too many redirects"):
            await client.request("GET", "/runs")


async def test_a_sent_start_that_a_transport_never_answers_ends_at_the_backstop() -> None:
    """A transport of one's own may ignore ``request.timeout``: a request that may start a run
    is still given up, at twice its timeout and a second, and said to have maybe arrived."""
    gave_up = anyio.Event()

    async def never_answers(request: Request) -> Response:
        try:
            await anyio.sleep_forever()
        finally:
            gave_up.set()
        raise AssertionError("unreachable")

    client = ApiClient(
        VendorProfile("acme"),
        base_url="https://api.example.com",
        token="tok-backstop-1234",
        timeout=0.05,
        transport=MockTransport(never_answers),
    )
    async with client:
        began = anyio.current_time()
        with pytest.raises(
            errors.RequestTimeout,
            match=r"acme POST .*/runs: no answer within 1.1s; it may have reached the server",
        ) as caught:
            await client.request("POST", "/runs", json={"notebook": "n"})
    assert caught.value.request_sent
    assert gave_up.is_set()
    assert anyio.current_time() - began < 5
