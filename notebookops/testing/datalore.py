"""A loopback fake of Datalore's Run and Computation APIs, for tests.

::

    async with fake_datalore_server() as server:
        server.add_notebook("team/report", controls=("day",), duration=0.05)
        async with DataloreBackend(token=server.token, base_url=server.url) as backend:
            run = await run_and_wait(backend, "team/report", inputs={"day": "2026-11-22"})

What it models (from https://www.jetbrains.com/help/datalore/run-api.html and the error table
there):

* ``POST /api/run/v1/notebook`` starts a run. It parses strictly, as a server that refuses
  unknown JSON properties does: a field it does not know is a 400 (``run_fields`` lists the
  ones it knows: every documented field by default; leave out ``directFileStorageWrite`` to
  play an installation older than 2026.1), parameter values must be strings (the documented
  type), and ``parameters`` are checked against the notebook's declared controls (400 for an
  unknown name);
* ``GET /api/run/v1/{runId}`` reports a run: while it is queued (``queued`` seconds per
  notebook) with none of ``status``, ``endTime`` and ``success``; while it runs with a
  ``status`` word (configurable per notebook, including words the adapter does not know);
  then with ``endTime``, ``success`` and the run's notebook file in ``artifacts``, which can
  be downloaded from its path. A notebook with a ``finished_status`` word reports its finished
  runs by that word alone, without ``endTime`` (the docs do not say which words exist);
* ``POST /api/computation/v1/notebook`` takes only ``notebookId`` (no run id, empty answer);
* 401 for a bad token, 403 when the token's account may only view the notebook, 404 when the
  notebook is not shared with it; error bodies use ``error`` or ``message`` (``error_key``);
* every fault of :class:`~notebookops.testing.server.FaultPlan` through ``server.faults``.

:func:`datalore_target` plugs it into the conformance suite (that function needs pytest, as
:mod:`notebookops.testing.conformance` does; the fake server itself does not).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
from aiohttp import web

from ..backends.datalore import DataloreBackend
from ..models import RunRequest
from ..policies import RetryPolicy
from .server import FakeServer

if TYPE_CHECKING:
    from .conformance import ConformanceTarget, Outcome

__all__ = [
    "DOCUMENTED_RUN_FIELDS",
    "FAST_RETRY",
    "FakeDataloreNotebook",
    "FakeDataloreRun",
    "FakeDataloreServer",
    "datalore_target",
    "fake_datalore_server",
]

Access = Literal["edit", "view", "none"]

_ID = re.compile(r"^([^/\s]+)/([^/\s]+)$")
#: The fields of a run request that Datalore documents (2026.1 and later).
DOCUMENTED_RUN_FIELDS: Final = frozenset(
    {"notebookId", "updateReport", "directFileStorageWrite", "parameters"}
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@attrs.define
class FakeDataloreNotebook:
    """A notebook on the fake server and how its runs behave.

    ``queued`` is how long a run waits before it starts (its status then has none of
    ``status``, ``endTime``, ``success``); ``duration`` is how long it then takes in seconds
    (``None``: it never finishes); ``in_progress_status`` is the ``status`` reported meanwhile;
    ``succeed`` decides the outcome. With ``finished_status``, a finished run reports that
    ``status`` word alone (no ``endTime``, no ``success``). ``access`` is what the token's
    account may do with it: ``"edit"`` (run it), ``"view"`` (403 on runs) or ``"none"`` (not
    shared: 404).
    """

    owner: str
    id: str
    name: str = "Notebook"
    controls: tuple[str, ...] = ()
    duration: float | None = 0.05
    succeed: bool = True
    in_progress_status: str = "RUNNING"
    access: Access = "edit"
    queued: float = 0.0
    finished_status: str | None = None

    @property
    def notebook_id(self) -> str:
        return f"{self.owner}/{self.id}"


@attrs.define
class FakeDataloreRun:
    """One run on the fake server (inspect it in tests)."""

    run_id: str
    notebook: FakeDataloreNotebook
    """A copy of the notebook's settings when the run started."""
    parameters: dict[str, str]
    update_report: str
    direct_file_storage_write: bool
    started: float
    start_time: datetime
    reads: int = 0

    @property
    def queued(self) -> bool:
        return time.monotonic() - self.started < self.notebook.queued

    @property
    def finished(self) -> bool:
        duration = self.notebook.duration
        elapsed = time.monotonic() - self.started - self.notebook.queued
        return duration is not None and elapsed >= duration

    @property
    def artifact_path(self) -> str:
        nb = self.notebook
        return f"/notebook/{nb.owner}/{nb.id}/artifacts/{self.run_id}/{nb.name}.ipynb"


class FakeDataloreServer(FakeServer):
    """The fake Datalore server; see the module docstring.

    ``error_key`` is the key of error bodies (``"error"`` or ``"message"``).
    ``null_fields_while_running`` sends ``endTime``/``success`` as ``null`` while a run is in
    progress instead of leaving them out (the docs do not say which Datalore does).
    ``extra_status_fields`` are merged into every status document (unknown fields).
    ``run_fields`` are the run-request fields the server knows; any other is a 400.
    """

    vendor = "datalore"

    def __init__(
        self,
        *,
        token: str = "test-token",
        error_key: Literal["error", "message"] = "error",
        null_fields_while_running: bool = False,
        run_fields: Collection[str] = DOCUMENTED_RUN_FIELDS,
    ) -> None:
        super().__init__(token=token)
        self.run_fields = frozenset(run_fields)
        self.error_key = error_key
        self.null_fields_while_running = null_fields_while_running
        self.extra_status_fields: dict[str, Any] = {}
        self.notebooks: dict[str, FakeDataloreNotebook] = {}
        self.runs: dict[str, FakeDataloreRun] = {}
        #: Notebook ids run through the Computation API, in order.
        self.computations: list[str] = []
        self._ids = itertools.count(1)

    def add_notebook(self, notebook_id: str, **settings: Any) -> FakeDataloreNotebook:
        """Register ``"owner/id"`` with the given :class:`FakeDataloreNotebook` settings."""
        match = _ID.match(notebook_id)
        if match is None:
            raise ValueError(f"notebook ids look like 'owner/id', got {notebook_id!r}")
        notebook = FakeDataloreNotebook(owner=match[1], id=match[2], **settings)
        self.notebooks[notebook_id] = notebook
        return notebook

    def notebook_url(self, notebook_id: str) -> str:
        """The notebook's page on this server (as a person would copy it from a browser)."""
        return f"{self.url}/notebook/{notebook_id}"

    # -- routes

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/run/v1/notebook", self._start_run)
        app.router.add_get("/api/run/v1/{run_id}", self._run_status)
        app.router.add_post("/api/computation/v1/notebook", self._start_computation)
        app.router.add_get("/notebook/{owner}/{notebook}/artifacts/{run_id}/{file}", self._artifact)

    def unauthorized(self) -> web.Response:
        return self._error(401, "Unauthorized: the API token is missing or invalid")

    def _error(self, status: int, text: str) -> web.Response:
        return web.json_response({self.error_key: text}, status=status)

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "The request body is not valid JSON")
        if not isinstance(body, dict):
            return self._error(400, "The request body must be a JSON object")
        return body

    def _unknown_fields(self, body: dict[str, Any], known: frozenset[str]) -> web.Response | None:
        unknown = sorted(set(body) - known)
        if not unknown:
            return None
        return self._error(
            400, f"Unrecognized field {unknown[0]!r}: not one of {', '.join(sorted(known))}"
        )

    def _notebook(self, body: dict[str, Any]) -> FakeDataloreNotebook | web.Response:
        notebook_id = body.get("notebookId")
        if not isinstance(notebook_id, str) or _ID.match(notebook_id) is None:
            return self._error(400, "notebookId must be a string 'user_id/notebook_id'")
        notebook = self.notebooks.get(notebook_id)
        if notebook is None or notebook.access == "none":
            return self._error(404, "The notebook is not shared with you or does not exist")
        if notebook.access == "view":
            return self._error(403, "You have view-only access to this notebook")
        return notebook

    def _parameters(
        self, raw: object, notebook: FakeDataloreNotebook
    ) -> dict[str, str] | web.Response:
        if raw is None:
            return {}
        if not isinstance(raw, list):
            return self._error(400, "parameters must be a list of {name, value}")
        values: dict[str, str] = {}
        for item in raw:
            if not isinstance(item, dict) or set(item) != {"name", "value"}:
                return self._error(400, "each parameter must be an object {name, value}")
            name, value = item["name"], item["value"]
            if not isinstance(name, str) or not isinstance(value, str):
                return self._error(400, f"invalid parameter {item!r}: name and value are strings")
            if name not in notebook.controls:
                return self._error(
                    400, f"Unknown parameter {name!r}: no interactive control has this variable"
                )
            if name in values:
                return self._error(400, f"Parameter {name!r} is given twice")
            values[name] = value
        return values

    async def _start_run(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        unknown = self._unknown_fields(body, self.run_fields)
        if unknown is not None:
            return unknown
        notebook = self._notebook(body)
        if isinstance(notebook, web.Response):
            return notebook
        update_report = body.get("updateReport", "never")
        if update_report not in ("never", "on success"):
            return self._error(400, "updateReport must be 'never' or 'on success'")
        direct = body.get("directFileStorageWrite", False)
        if not isinstance(direct, bool):
            return self._error(400, "directFileStorageWrite must be a boolean")
        parameters = self._parameters(body.get("parameters"), notebook)
        if isinstance(parameters, web.Response):
            return parameters
        run_id = f"run{next(self._ids):04d}"
        self.runs[run_id] = FakeDataloreRun(
            run_id=run_id,
            notebook=attrs.evolve(notebook),
            parameters=parameters,
            update_report=update_report,
            direct_file_storage_write=direct,
            started=time.monotonic(),
            start_time=datetime.now(UTC),
        )
        return web.json_response({"runId": run_id})

    async def _run_status(self, request: web.Request) -> web.Response:
        run = self.runs.get(request.match_info["run_id"])
        if run is None:
            return self._error(404, "Run not found")
        run.reads += 1
        notebook = run.notebook
        document: dict[str, Any] = {
            "runId": run.run_id,
            "userId": notebook.owner,
            "notebookId": notebook.id,
            "updateReport": run.update_report,
            "directFileStorageWrite": run.direct_file_storage_write,
            "readOnly": notebook.access == "view",
        }
        if run.queued:
            document["artifacts"] = []
            document.update(self.extra_status_fields)
            return web.json_response(document)
        document["startTime"] = _iso(run.start_time + timedelta(seconds=notebook.queued))
        if run.finished and notebook.finished_status is not None:
            document["status"] = notebook.finished_status
            document["artifacts"] = []
        elif run.finished:
            assert notebook.duration is not None
            end = run.start_time + timedelta(seconds=notebook.queued + notebook.duration)
            document["endTime"] = _iso(end)
            document["success"] = notebook.succeed
            document["artifacts"] = [{"name": f"{notebook.name}.ipynb", "path": run.artifact_path}]
        else:
            document["status"] = notebook.in_progress_status
            document["artifacts"] = []
            if self.null_fields_while_running:
                document["endTime"] = None
                document["success"] = None
        document.update(self.extra_status_fields)
        return web.json_response(document)

    async def _start_computation(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        unknown = self._unknown_fields(body, frozenset({"notebookId"}))
        if unknown is not None:
            return unknown
        notebook = self._notebook(body)
        if isinstance(notebook, web.Response):
            return notebook
        self.computations.append(notebook.notebook_id)
        return web.Response(status=200)

    async def _artifact(self, request: web.Request) -> web.Response:
        run = self.runs.get(request.match_info["run_id"])
        if run is None or not run.finished or request.path != run.artifact_path:
            return self._error(404, "Artifact not found")
        cell = {
            "cell_type": "code",
            "source": "",
            "metadata": {},
            "outputs": [{"output_type": "stream", "name": "stdout", "text": repr(run.parameters)}],
            "execution_count": 1,
        }
        return web.json_response(
            {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [cell]}
        )


@asynccontextmanager
async def fake_datalore_server(
    *,
    token: str = "test-token",
    error_key: Literal["error", "message"] = "error",
    null_fields_while_running: bool = False,
    run_fields: Collection[str] = DOCUMENTED_RUN_FIELDS,
) -> AsyncIterator[FakeDataloreServer]:
    """A started :class:`FakeDataloreServer` on 127.0.0.1, closed on exit."""
    server = FakeDataloreServer(
        token=token,
        error_key=error_key,
        null_fields_while_running=null_fields_while_running,
        run_fields=run_fields,
    )
    async with server:
        yield server


#: Fast retries: fakes answer at once, and tests must stay quick.
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


@asynccontextmanager
async def datalore_target() -> AsyncIterator[ConformanceTarget]:
    """The Datalore adapter on a fresh fake server, as a conformance target."""
    # Imported here: the conformance suite needs pytest, and the fake server (shipped for
    # the sandbox) must not.
    from .conformance import ConformanceTarget

    class DataloreTarget(ConformanceTarget):
        """The Datalore adapter on a :class:`FakeDataloreServer`, for the conformance suite."""

        def __init__(self, server: FakeDataloreServer) -> None:
            self.server = server
            self.backends: list[DataloreBackend] = []
            server.add_notebook("suite/ok", controls=("x",), duration=0.05)
            server.add_notebook("suite/bad", controls=("x",), duration=0.05, succeed=False)
            server.add_notebook("suite/long", controls=("x",), duration=None)
            server.add_notebook(
                "suite/odd", controls=("x",), duration=None, in_progress_status="WARMING_UP"
            )

        def make_backend(self) -> DataloreBackend:
            backend = DataloreBackend(
                token=self.server.token, base_url=self.server.url, retry=FAST_RETRY
            )
            self.backends.append(backend)
            return backend

        def request(self, outcome: Outcome) -> RunRequest | None:
            notebook = {"succeed": "ok", "fail": "bad", "long": "long", "unknown_status": "odd"}
            return RunRequest(notebook=f"suite/{notebook[outcome]}", inputs={"x": 1})

    async with fake_datalore_server() as server:
        target = DataloreTarget(server)
        try:
            yield target
        finally:
            for backend in target.backends:
                await backend.aclose()
