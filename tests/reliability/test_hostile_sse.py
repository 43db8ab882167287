"""A hostile event-stream server over loopback: an endless line must fail the stream with a
typed error once it passes the parser's cap, not grow the client until it dies (issue 30
item 2, end to end through the public transport)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web

from notebookops._sse import DEFAULT_MAX_EVENT_SIZE, SSEEvent
from notebookops.backend import ApiClient, VendorProfile
from notebookops.errors import ResponseDecodeError
from notebookops.policies import RetryPolicy

CHUNK = 256 * 1024
#: The server gives up after this much, so a client that never stops reading fails the test
#: instead of running for ever.
SERVER_LIMIT = 4 * DEFAULT_MAX_EVENT_SIZE


class EndlessLine:
    """Answers ``GET /stream`` with a valid first event, then one line that never ends."""

    def __init__(self) -> None:
        self.sent = 0
        self.finished_normally = False

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: hello\ndata: first\n\ndata: ")
        chunk = b"x" * CHUNK
        try:
            while self.sent < SERVER_LIMIT:
                await response.write(chunk)
                self.sent += CHUNK
        except (ConnectionResetError, ConnectionError):
            return response  # the client hung up: what the test wants
        self.finished_normally = True
        return response


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, EndlessLine]]:
    hostile = EndlessLine()
    app = web.Application()
    app.router.add_get("/stream", hostile.stream)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", hostile
    finally:
        await runner.cleanup()


async def test_an_endless_line_fails_the_stream_past_the_cap(
    server: tuple[str, EndlessLine],
) -> None:
    url, hostile = server
    transport = ApiClient(
        VendorProfile("hostile"),
        base_url=url,
        token="hostile-test-token",
        retry=RetryPolicy(max_attempts=1),
    )
    events: list[SSEEvent] = []

    async def read_all() -> None:
        async with transport.sse("GET", "/stream", idle_timeout=10.0) as stream:
            async for event in stream:
                events.append(event)

    try:
        # Generous: about a second here. Parsing that rescanned the line at each chunk took
        # minutes (and, with no cap, read on until the server gave up).
        with anyio.fail_after(60), pytest.raises(ResponseDecodeError, match="larger than"):
            await read_all()
    finally:
        await transport.aclose()
    assert [event.data for event in events] == ["first"]
    assert not hostile.finished_normally
    # The client stopped reading at the cap; what was sent beyond it sat in socket buffers.
    assert hostile.sent < DEFAULT_MAX_EVENT_SIZE + 8 * 1024 * 1024
