"""The fake vendor servers of the durable tests, served by the test process (so their state
survives a driver killed with SIGKILL), with a way to hold start answers in flight."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
from aiohttp import web

from notebookops.backend import NotebookBackend
from notebookops.models import RunRequest
from notebookops.testing.datalore import FakeDataloreServer
from notebookops.testing.deepnote import FakeDeepnoteServer, FakeInput, RunScript
from notebookops.testing.posthog import PostHogFakeServer
from notebookops.testing.server import FakeServer, Handler

from ._driver import make_backend, make_request

Vendor = Literal["deepnote", "datalore", "posthog"]
VENDORS: tuple[Vendor, ...] = ("deepnote", "datalore", "posthog")

#: The path of each vendor's run-starting request.
_START_PATHS = {
    "deepnote": "/v2/runs",
    "datalore": "/api/run/v1/notebook",
    "posthog": "/runs/",
}


class VendorFake:
    """One fake vendor server with one notebook (input ``x``) whose runs take ``duration``."""

    def __init__(self, vendor: Vendor, server: FakeServer, config: dict[str, Any]) -> None:
        self.vendor = vendor
        self.server = server
        #: What the driver needs to reach the notebook (add ``store`` and ``key``).
        self.config = config
        self.holding = False
        #: Set when a start answer is being held (the run exists at the fake).
        self.held = anyio.Event()
        self._release = anyio.Event()
        #: (Unix time, path) of every GET the fake answered.
        self.reads: list[tuple[float, str]] = []

    def backend(self) -> NotebookBackend:
        return make_backend(self.config)

    def request(self, **inputs: str) -> RunRequest:
        return make_request({**self.config, "inputs": inputs or self.config["inputs"]})

    def runs(self) -> list[str]:
        """The ids of every run the fake made."""
        server = self.server
        if isinstance(server, FakeDeepnoteServer):
            return list(server.runs)
        if isinstance(server, FakeDataloreServer):
            return list(server.runs)
        assert isinstance(server, PostHogFakeServer)
        return list(server.server_runs)

    def cancels(self) -> int:
        """Requests that would stop a run (none of these vendors' fakes may see one)."""
        return len(self.server.requests_to("POST", r"interrupt|stop|cancel"))

    def first_read_of(self, run_id: str, *, after: float) -> float | None:
        """When the fake first answered a GET about ``run_id`` after ``after`` (Unix time)."""
        return next((at for at, path in self.reads if at >= after and run_id in path), None)

    def hold_starts(self) -> None:
        """From now on, answer run-starting requests only after :meth:`release` (the run is
        made at once, as the vendor does; only its answer waits)."""
        self.holding = True

    def release(self) -> None:
        self._release.set()

    @web.middleware
    async def _hold(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "GET":
            self.reads.append((time.time(), request.path))
        response = await handler(request)
        is_start = request.method == "POST" and request.path.endswith(_START_PATHS[self.vendor])
        if self.holding and is_start:
            self.held.set()
            await self._release.wait()
        return response


@asynccontextmanager
async def vendor_fake(vendor: Vendor, *, duration: float = 0.3) -> AsyncIterator[VendorFake]:
    """A started fake of ``vendor`` with one notebook whose runs succeed after ``duration``."""
    config: dict[str, Any] = {"vendor": vendor, "inputs": {"x": "1"}}
    server: FakeServer
    if vendor == "deepnote":
        deepnote = FakeDeepnoteServer()
        notebook = deepnote.add_notebook(
            inputs=[FakeInput(name="x", type="input-text", value="0")],
            script=RunScript(outcome="success", pending=0.01, running=duration),
        )
        config.update(notebook=notebook.id, workspace=deepnote.workspace_segment)
        server = deepnote
    elif vendor == "datalore":
        datalore = FakeDataloreServer()
        datalore.add_notebook("team/report", controls=("x",), duration=duration)
        config.update(notebook="team/report")
        server = datalore
    else:
        posthog = PostHogFakeServer(version="new")  # server runs exist on newer servers
        posthog.add_notebook(
            "nb1", cells=[f"import time\ntime.sleep({duration})", "print(x)"], markdown=True
        )
        config.update(notebook="nb1", project_id=posthog.project_id)
        server = posthog
    fake = VendorFake(vendor, server, config)
    server.app.middlewares.append(fake._hold)
    async with server:
        config.update(url=server.url, token=server.token)
        try:
            yield fake
        finally:
            fake.release()
