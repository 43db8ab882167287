"""A response body that never ends is refused at the cap, not read into memory (issue 30)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web

from notebookops import ResponseDecodeError
from notebookops.backend import ApiClient, VendorProfile
from notebookops.transport import AiohttpTransport

CAP = 256 * 1024


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b"[" + b"0," * 32_768
    try:
        for _ in range(10_000):  # bounded: about 640 MB at most, far past any cap here
            await response.write(chunk)
    except (ConnectionResetError, RuntimeError):
        pass  # the client hung up, as it should
    return response


async def _declared(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * (CAP + 1), content_type="application/json")


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/endless", _endless)
    app.router.add_get("/declared", _declared)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("path", ["/endless", "/declared"])
async def test_a_body_over_the_cap_is_a_decode_error(server_url: str, path: str) -> None:
    transport = AiohttpTransport(max_body=CAP)
    client = ApiClient(
        VendorProfile("hostile"), base_url=server_url, token="tok-hostile-1234", transport=transport
    )
    try:
        with anyio.fail_after(30), pytest.raises(ResponseDecodeError, match="max_body"):
            await client.request("GET", path)
    finally:
        await client.aclose()
        await transport.aclose()  # passed in: the caller's to close
