"""Memory and time bounds of the PostHog adapter (issue 30 items 3 and 6): finished runs are
kept by bytes, a kernel run whose stream never stops sending can still be cancelled, and
leaving ``async with PostHogBackend()`` never hangs."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from notebookops import run_and_wait
from notebookops.backends.posthog import KernelRunNotFound
from notebookops.backends.posthog._retention import FinishedRuns, output_bytes
from notebookops.errors import RunTimeout
from notebookops.models import CellOutput, RunRequest, RunState
from notebookops.testing.posthog import PostHogFakeServer, notebook_content, python_cell

from .conftest import FAST_POLL, backend_for


def test_finished_runs_are_kept_by_bytes_newest_always() -> None:
    kept: FinishedRuns[str] = FinishedRuns(max_bytes=100)
    kept.add("a", "A", 60)
    kept.add("b", "B", 30)
    assert (kept.get("a"), kept.get("b"), kept.total_bytes) == ("A", "B", 90)
    kept.add("c", "C", 50)  # over the budget: the oldest goes
    assert (kept.get("a"), kept.get("b"), kept.get("c")) == (None, "B", "C")
    kept.add("huge", "H", 10_000)  # bigger than the budget: kept alone, for one late read
    assert (len(kept), kept.get("huge"), kept.total_bytes) == (1, "H", 10_000)


def test_output_bytes_counts_text_and_data() -> None:
    small = output_bytes([CellOutput(output_type="stream", text="x")])
    large = output_bytes([CellOutput(output_type="stream", text="x" * 10_000)])
    data = output_bytes([CellOutput(output_type="display_data", data={"a": "y" * 5_000})])
    assert large - small == 9_999
    assert data > 5_000


async def test_finished_kernel_runs_are_forgotten_by_size(server: PostHogFakeServer) -> None:
    server.add_notebook("big", cells=["print('x' * 200_000)"])
    async with backend_for(server, finished_runs_max_bytes=300_000) as backend:
        first = await run_and_wait(backend, "big", poll=FAST_POLL, timeout=20)
        assert (await backend.get_run(first.handle)).state is RunState.SUCCEEDED
        second = await run_and_wait(backend, "big", poll=FAST_POLL, timeout=20)
        assert (await backend.get_run(second.handle)).state is RunState.SUCCEEDED
        with pytest.raises(KernelRunNotFound, match="300000 bytes"):
            await backend.get_run(first.handle)


@asynccontextmanager
async def endless_stream_server() -> AsyncIterator[str]:
    """A PostHog whose execute stream sends stdout frames as fast as it can, forever."""
    content = notebook_content(python_cell("print('forever')", node_id="c0"))
    frames = b"".join(
        b"event: stdout\ndata: " + json.dumps({"text": "x\n"}).encode() + b"\n\n"
        for _ in range(2_000)
    )

    async def notebook(request: web.Request) -> web.Response:
        return web.json_response({"id": "u", "short_id": "nb", "version": 1, "content": content})

    async def kernel_start(request: web.Request) -> web.Response:
        return web.json_response({"id": "k", "status": "running"})

    async def kernel_stop(request: web.Request) -> web.Response:
        return web.json_response({"stopped": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(frames)
        except (ConnectionError, RuntimeError):
            pass
        return response

    app = web.Application()
    one = "/api/projects/1/notebooks/nb/"
    app.router.add_get(one, notebook)
    app.router.add_post(one + "kernel/start/", kernel_start)
    app.router.add_post(one + "kernel/stop/", kernel_stop)
    app.router.add_post(one + "kernel/execute/stream/", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_kernel_run_whose_stream_never_stops_can_be_cancelled() -> None:
    from notebookops.backends.posthog import PostHogBackend

    async with endless_stream_server() as url:
        began = time.monotonic()
        with anyio.fail_after(20):
            async with PostHogBackend(
                "phx_k",
                project_id="1",
                base_url=url,
                allow_http=True,
                cancel_timeout=1.0,
                stream_output_max_bytes=10_000,
            ) as backend:
                with pytest.raises(RunTimeout) as timed_out:
                    await run_and_wait(backend, "nb", poll=FAST_POLL, timeout=1.0)
                assert timed_out.value.cancelled is True
                handle = timed_out.value.handle
                assert handle is not None
                cancelled = await backend.get_run(handle)
                assert cancelled.state is RunState.CANCELLED
                # The endless output is kept up to the cap, then one marker says so.
                texts = [output.text or "" for output in cancelled.outputs]
                assert sum(map(len, texts[:-1])) < 10_000
                assert "passed 10000 bytes; the rest was not kept" in texts[-1]
                # A second run, left running, must not hold the exit.
                await backend.start_run(RunRequest("nb"))
                await anyio.sleep(0.2)
        assert time.monotonic() - began < 8


async def test_the_run_host_gives_up_on_a_task_that_ignores_cancellation() -> None:
    from notebookops._runhost import RunHost
    from notebookops.errors import BackendClosed

    host = RunHost("stubborn runs", closed_message="closed")
    finished = anyio.Event()

    async def stubborn() -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(30)
        finished.set()

    await host.start_soon(stubborn, name="stubborn")
    await anyio.lowlevel.checkpoint()
    began = time.monotonic()
    assert await host.aclose(0.2) is False
    assert time.monotonic() - began < 2
    assert not finished.is_set()
    with pytest.raises(BackendClosed, match="closed"):
        await host.start_soon(stubborn, name="again")
