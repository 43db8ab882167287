"""Memory and time bounds of the PostHog adapter (issue 30 items 3 and 6): finished runs are
kept by bytes, a kernel run whose stream never stops sending can still be cancelled, and
leaving ``async with PostHogBackend()`` never hangs."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from notebookops import run_and_wait
from notebookops.backends.posthog import KernelRunNotFound
from notebookops.errors import RunTimeout
from notebookops.models import Run, RunRequest, RunState
from notebookops.testing.posthog import PostHogFakeServer, notebook_content, python_cell

from .conftest import FAST_POLL, backend_for


async def test_finished_kernel_runs_keep_outputs_by_size_and_runs_by_count(
    server: PostHogFakeServer,
) -> None:
    server.add_notebook("big", cells=["print('x' * 200_000)"])
    async with backend_for(server, keep_output_bytes=300_000, keep_finished_runs=2) as backend:
        first = await run_and_wait(backend, "big", poll=FAST_POLL, timeout=20)
        assert first.raw["results"]
        second = await run_and_wait(backend, "big", poll=FAST_POLL, timeout=20)
        # Over the bytes: the older run's outputs (and execution records) go, its state stays.
        older = await backend.get_run(first.handle)
        assert (older.state, older.outputs, older.raw["results"]) == (RunState.SUCCEEDED, (), [])
        assert older.raw["outputs_released"] is True
        newer = await backend.get_run(second.handle)
        assert newer.outputs == second.outputs
        assert "outputs_released" not in newer.raw
        # Over the count: the oldest run is forgotten.
        await run_and_wait(backend, "big", poll=FAST_POLL, timeout=20)
        with pytest.raises(KernelRunNotFound, match="latest 2 finished runs"):
            await backend.get_run(first.handle)
        assert (await backend.get_run(second.handle)).state is RunState.SUCCEEDED


async def test_finished_server_runs_are_kept_by_size_then_read_again(
    new_server: PostHogFakeServer,
) -> None:
    new_server.add_notebook("md", cells=["print('x' * 200_000)"], markdown=True)
    async with backend_for(new_server, mode="server", keep_output_bytes=300_000) as backend:
        first = await run_and_wait(backend, "md", poll=FAST_POLL, timeout=20)
        reads = len(new_server.requests_to("GET", r"/runs/"))
        assert await backend.get_run(first.handle) == first  # kept: no request
        assert len(new_server.requests_to("GET", r"/runs/")) == reads
        await run_and_wait(backend, "md", poll=FAST_POLL, timeout=20)
        reads = len(new_server.requests_to("GET", r"/runs/"))
        again = await backend.get_run(first.handle)  # forgotten by size: read from PostHog
        assert len(new_server.requests_to("GET", r"/runs/")) > reads
        assert again.outputs == first.outputs


@asynccontextmanager
async def endless_stream_server(*, stop_hangs: bool = False) -> AsyncIterator[str]:
    """A PostHog whose execute stream sends stdout frames as fast as it can, forever (and
    whose kernel stop never answers, with ``stop_hangs``)."""
    content = notebook_content(python_cell("print('forever')", node_id="c0"))
    released = anyio.Event()
    frames = b"".join(
        b"event: stdout\ndata: " + json.dumps({"text": "x\n"}).encode() + b"\n\n"
        for _ in range(2_000)
    )

    async def notebook(request: web.Request) -> web.Response:
        return web.json_response({"id": "u", "short_id": "nb", "version": 1, "content": content})

    async def kernel_start(request: web.Request) -> web.Response:
        return web.json_response({"id": "k", "status": "running"})

    async def kernel_stop(request: web.Request) -> web.Response:
        if stop_hangs:
            await released.wait()
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
        released.set()
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


async def test_closing_is_bounded_when_the_kernel_stop_never_answers() -> None:
    from notebookops.backends.posthog import PostHogBackend

    seen: list[Run] = []
    async with endless_stream_server(stop_hangs=True) as url:
        began = time.monotonic()
        with anyio.fail_after(20):
            async with (
                anyio.create_task_group() as group,
                PostHogBackend(
                    "phx_k", project_id="1", base_url=url, allow_http=True, cancel_timeout=0.5
                ) as backend,
            ):
                handle = await backend.start_run(RunRequest("nb"))
                printing = anyio.Event()

                async def watch() -> None:
                    async with aclosing(backend.watch_run(handle)) as runs:
                        async for run in runs:
                            seen.append(run)
                            if run.outputs:
                                printing.set()

                group.start_soon(watch)
                await printing.wait()
        # Leaving cancelled the run and gave up on its kernel stop after cancel_timeout.
        assert time.monotonic() - began < 5
    assert seen[-1].state is RunState.CANCELLED
