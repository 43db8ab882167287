"""The transport seam: an ApiClient driven by MockTransport, no server."""

from __future__ import annotations

import anyio
import pytest

from notebookops import ConnectionLost, ServerError
from notebookops.backend import ApiClient, VendorProfile
from notebookops.policies import RetryPolicy
from notebookops.testing import MockTransport, json_response
from notebookops.transport import Request, Response, Transport

TOKEN = "tok-mock-123456"
FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.002)


def client(transport: MockTransport) -> ApiClient:
    return ApiClient(
        VendorProfile("acme"),
        base_url="https://api.acme.test",
        token=TOKEN,
        transport=transport,
        retry=FAST,
    )


def test_mock_transport_is_a_transport() -> None:
    assert isinstance(MockTransport(lambda request: json_response({})), Transport)


async def test_requests_reach_the_handler_with_auth_json_and_timeout() -> None:
    mock = MockTransport(lambda request: json_response({"ok": True}, 201))
    async with client(mock) as api:
        data = await api.request_json("POST", "/runs", json={"a": 1}, params={"q": "x y"})
    assert data == {"ok": True}
    (sent,) = mock.requests
    assert sent.method == "POST"
    assert sent.url == "https://api.acme.test/runs?q=x+y"
    assert sent.json == {"a": 1}
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.timeout == 30.0
    assert TOKEN not in repr(sent)
    assert not mock.closed  # a transport passed in is the caller's to close


async def test_an_async_handler_and_retries_of_a_read() -> None:
    answers = [json_response({"message": "busy"}, 503), json_response({"n": 2})]

    async def handler(request: Request) -> Response:
        await anyio.lowlevel.checkpoint()
        return answers.pop(0)

    mock = MockTransport(handler)
    async with client(mock) as api:
        assert await api.request_json("GET", "/runs/1") == {"n": 2}
    assert len(mock.requests) == 2


async def test_a_start_is_never_retried_after_it_may_have_arrived() -> None:
    def handler(request: Request) -> Response:
        raise ConnectionLost("reset after sending", method=request.method, url=request.url)

    mock = MockTransport(handler)
    async with client(mock) as api:
        with pytest.raises(ConnectionLost) as caught:
            await api.request("POST", "/runs")
    assert caught.value.vendor == "acme"
    assert len(mock.requests) == 1
    mock.handler = lambda request: json_response({"message": "oops"}, 500)
    async with client(mock) as api:
        with pytest.raises(ServerError, match="oops"):
            await api.request("POST", "/runs")
    assert len(mock.requests) == 2


async def test_a_sent_start_is_seen_through_a_cancellation() -> None:
    arrived = anyio.Event()
    answer = anyio.Event()

    async def handler(request: Request) -> Response:
        arrived.set()
        await answer.wait()
        return json_response({"id": "r1"}, 201)

    mock = MockTransport(handler)
    results: list[object] = []
    async with client(mock) as api, anyio.create_task_group() as group:

        async def start() -> None:
            with anyio.CancelScope() as scope:
                results.append((await api.request("POST", "/runs")).json())
                await anyio.sleep(10)
            results.append(scope.cancelled_caught)

        group.start_soon(start)
        await arrived.wait()
        group.cancel_scope.cancel()
        answer.set()
    assert results == [{"id": "r1"}]  # answered, then the cancellation landed


async def test_redirects_to_another_origin_lose_the_token() -> None:
    def handler(request: Request) -> Response:
        if "api.acme.test" in request.url:
            return Response(302, {"location": "https://files.example/x"})
        return json_response({"file": True})

    mock = MockTransport(handler)
    async with client(mock) as api:
        assert await api.request_json("GET", "/export") == {"file": True}
    first, second = mock.requests
    assert "Authorization" in first.headers
    assert "Authorization" not in second.headers


async def test_a_vendor_backend_runs_over_a_mock_transport() -> None:
    from notebookops import RunState, run_and_wait
    from notebookops.backends.deepnote import DeepnoteBackend, DeepnoteOptions
    from notebookops.policies import PollPolicy

    def deepnote(request: Request) -> Response:
        if request.method == "POST" and request.url.endswith("/v2/runs"):
            return json_response(
                {"runId": "r-1", "status": "queued", "createdAt": "2026-12-06T10:00:00Z"}, 201
            )
        assert "/v2/runs/r-1" in request.url
        return json_response(
            {
                "runId": "r-1",
                "notebookId": "nb",
                "status": "success",
                "createdAt": "2026-12-06T10:00:00Z",
                "completedAt": "2026-12-06T10:00:01Z",
                "snapshotStatus": "complete",
                "snapshotBlocks": [],
            }
        )

    mock = MockTransport(deepnote)
    async with DeepnoteBackend(
        TOKEN, transport=mock, options=DeepnoteOptions(share_reads=False)
    ) as backend:
        run = await run_and_wait(
            backend, "nb", poll=PollPolicy(initial=0.001, maximum=0.01, jitter=0)
        )
    assert run.state is RunState.SUCCEEDED
    assert [request.method for request in mock.requests][:2] == ["POST", "GET"]
