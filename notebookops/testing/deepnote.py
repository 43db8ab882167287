"""A loopback fake of Deepnote's Public API v2 (and v1 execute), for tests.

It behaves like the real service where notebookops depends on it (see the contract notes):

* runs have real lifecycles in wall-clock time (``pending`` -> ``running`` -> an outcome), set
  per notebook with a :class:`RunScript` (success, error, internal_error, stopped, a run that
  never ends, or a status string no client knows);
* run inputs are validated against the notebook's input variables, block selections against
  its blocks (and refused on detached runs);
* snapshots come as ``blocks``, inline YAML or a download URL (served by this server or by a
  second origin, :class:`FakeSnapshotHost`), and stay ``pending`` a little after the end if
  the script says so;
* notebook runs and projects are cursor-paginated (optionally with a server that repeats its
  page token);
* notebooks, blocks reordering, schedules (set and removed), projects, ``/me`` and v1 execute
  (202, starting a run that shows up in the runs list) work;
* the bearer token is checked, every request is logged and faults can be injected
  (``server.faults``, from :class:`~notebookops.testing.server.FakeServer`).

Use :func:`fake_deepnote` as an async context manager, :meth:`FakeDeepnoteServer.backend` for
a DeepnoteBackend pointed at it, and :func:`deepnote_target` for the conformance suite.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import anyio
import attrs
import yaml
from aiohttp import web

from .._validate import utc_now
from ..backends.deepnote import DeepnoteBackend, DeepnoteOptions
from ..models import RunRequest
from ..policies import RetryPolicy
from .server import FakeServer

if TYPE_CHECKING:
    from .conformance import ConformanceTarget, Outcome

__all__ = [
    "FakeBlock",
    "FakeDeepnoteServer",
    "FakeInput",
    "FakeNotebook",
    "FakeProject",
    "FakeRun",
    "FakeSnapshotHost",
    "RunScript",
    "deepnote_target",
    "dump_yaml",
    "fake_deepnote",
]

TERMINAL = frozenset({"success", "error", "internal_error", "stopped"})
_DELIVERIES = ("inline", "downloadUrl", "blocks")
_CRON_FIELD = re.compile(r"[0-9*/,\-A-Za-z]+\Z")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _hex_id() -> str:
    return uuid.uuid4().hex


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


# --------------------------------------------------------------------------- scripts and state


@attrs.frozen
class RunScript:
    """How runs of a notebook behave.

    ``outcome`` is the final status: ``success``, ``error``, ``internal_error``, ``stopped``;
    ``running`` for a run that never ends; any other string is reported after ``pending`` and
    forever (a status clients do not know). ``error`` is the run's ``error`` field (Deepnote
    usually leaves it null, even for failures). ``snapshot_delay`` keeps the snapshot
    ``pending`` that long after the end; ``snapshot=False`` makes it ``unavailable``.
    """

    outcome: str = "success"
    pending: float = 0.01
    running: float = 0.03
    error: str | None = None
    fail_block: str | None = None
    ename: str = "ValueError"
    evalue: str = "boom"
    snapshot_delay: float = 0.0
    snapshot: bool = True

    @classmethod
    def succeed(cls, duration: float = 0.03, **kwargs: Any) -> RunScript:
        return cls(outcome="success", running=duration, **kwargs)

    @classmethod
    def fail(cls, duration: float = 0.03, **kwargs: Any) -> RunScript:
        return cls(outcome="error", running=duration, **kwargs)

    @classmethod
    def long(cls) -> RunScript:
        return cls(outcome="running", running=math.inf)

    @classmethod
    def unknown(cls, status: str = "warming_up") -> RunScript:
        return cls(outcome=status)

    @property
    def ends(self) -> bool:
        return self.outcome in TERMINAL and math.isfinite(self.running)


@attrs.define
class FakeBlock:
    id: str = attrs.field(factory=_hex_id)
    type: str = "code"
    content: str = "print('hello')"
    #: Jupyter outputs this block produces when it runs (None: a generated stdout line).
    outputs: list[dict[str, Any]] | None = None


@attrs.define
class FakeInput:
    """An input variable. ``type`` is Deepnote's (``input-text``, ``input-checkbox``...)."""

    name: str
    type: str = "input-text"
    value: Any = ""
    block_id: str | None = None
    options: list[str] | None = None
    multiple: bool | None = None

    def accepts(self, value: object) -> bool:
        if self.type == "input-checkbox":
            return isinstance(value, bool)
        if self.type == "input-select" and self.multiple:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        if self.type == "input-date-range":
            return isinstance(value, str) or (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, str) for v in value)
            )
        return isinstance(value, str)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "type": self.type, "value": self.value}
        if self.block_id:
            data["blockId"] = self.block_id
        if self.options is not None:
            data["options"] = self.options
        if self.multiple is not None:
            data["multiple"] = self.multiple
        return data


@attrs.define
class FakeNotebook:
    id: str
    project_id: str
    name: str
    blocks: list[FakeBlock] = attrs.field(factory=list)
    inputs: list[FakeInput] = attrs.field(factory=list)
    script: RunScript = attrs.field(factory=RunScript)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "projectId": self.project_id,
            "name": self.name,
            "blocks": [{"id": b.id, "type": b.type, "content": b.content} for b in self.blocks],
            "inputs": [i.to_json() for i in self.inputs],
        }


@attrs.define
class FakeProject:
    id: str
    name: str
    created_at: datetime
    project_type: str = "standard"
    folder_id: str | None = None
    suspended: bool = False
    notebook_ids: list[str] = attrs.field(factory=list)


@attrs.define
class FakeRun:
    """Server-side state of one run."""

    id: str
    notebook_id: str
    project_id: str
    created_at: datetime
    started: float  # time.monotonic() when it starts (later than now for a delayed v1 run)
    script: RunScript
    inputs: dict[str, Any] = attrs.field(factory=dict)
    block_ids: list[str] | None = None
    run_dependent_blocks: bool = False
    detached: bool = True
    source: str = "api"
    stopped_at: float | None = None

    def visible(self, now: float) -> bool:
        return now >= self.started

    def ended_at(self) -> float | None:
        if self.stopped_at is not None:
            return self.stopped_at
        if not self.script.ends:
            return None
        return self.started + self.script.pending + self.script.running

    def status(self, now: float) -> str:
        if self.stopped_at is not None and now >= self.stopped_at:
            return "stopped"
        elapsed = now - self.started
        script = self.script
        if elapsed < script.pending:
            return "pending"
        if script.outcome not in TERMINAL:
            return script.outcome
        end = self.ended_at()
        if end is None or now < end:
            return "running"
        return script.outcome


# --------------------------------------------------------------------------- YAML


def dump_yaml(value: object) -> str:
    """Block-style YAML for JSON-like data, as a ``.deepnote`` snapshot is written."""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)


# --------------------------------------------------------------------------- servers


class FakeSnapshotHost(FakeServer):
    """A second origin (think S3) serving presigned snapshot downloads, no token needed."""

    vendor = "snapshot-host"
    public_paths = (r".*",)

    def __init__(self) -> None:
        super().__init__(token=secrets.token_hex(8))
        self.files: dict[str, tuple[str, bytes]] = {}

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/{tail:.*}", self._serve)

    def put(self, path: str, body: bytes) -> str:
        """Store ``body`` and return its presigned-looking absolute URL."""
        signature = secrets.token_hex(8)
        self.files[path] = (signature, body)
        return f"{self.url}{path}?X-Amz-Signature={signature}"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        entry = self.files.get(request.path)
        if entry is None or request.query.get("X-Amz-Signature") != entry[0]:
            return web.Response(status=403, text="<Error>AccessDenied</Error>")
        return web.Response(body=entry[1], content_type="application/x-yaml")


def _v2(handler: Callable[[FakeDeepnoteServer, web.Request], Awaitable[web.StreamResponse]]) -> Any:
    async def wrapper(self: FakeDeepnoteServer, request: web.Request) -> web.StreamResponse:
        if not self.v2_enabled:
            return _error(403, "The Public API v2 is not enabled for this workspace")
        return await handler(self, request)

    return wrapper


class FakeDeepnoteServer(FakeServer):
    """Deepnote's API on 127.0.0.1. Settings (plain attributes, change them any time):

    * ``v2_enabled``: False answers every /v2 call with 403 (v1 keeps working);
    * ``blocks_delivery``: False refuses ``snapshotDelivery=blocks`` like an older server;
    * ``repeat_page_token``: hand out the same page token forever (a broken server);
    * ``completion_field``: ``"completedAt"`` (real) or ``"finishedAt"`` (the seed's name);
    * ``clock_offset``: seconds added to the timestamps the server reports (clock skew);
    * ``v1_start_delay``: seconds before a v1-triggered run appears;
    * ``scheduling_enabled``: False answers setting a schedule with a bare 403;
    * ``send_nulls``: run answers carry ``null`` in optional nested fields, as Deepnote may
      (a block's ``metadata``, an output's ``traceback`` and ``execution_count``), and each
      block with outputs gets one more output whose ``output_type`` is ``null``;
    * ``snapshot_text``: when set, the snapshot document served (inline or downloaded) in place
      of the one the run made (a malformed one, say);
    * ``hold_runs_list``: an event; while it is not set, runs-list answers wait for it (a test
      can hold a list request in flight without sleeping).
    """

    vendor = "deepnote"
    public_paths = (r"^/snapshots/",)

    def __init__(
        self, *, token: str = "test-token", snapshot_host: FakeSnapshotHost | None = None
    ) -> None:
        super().__init__(token=token)
        self.snapshot_host = snapshot_host
        self.projects: dict[str, FakeProject] = {}
        self.notebooks: dict[str, FakeNotebook] = {}
        self.runs: dict[str, FakeRun] = {}
        self.schedules: dict[str, dict[str, Any]] = {}
        self.folders: set[str] = set()
        self.snapshot_files: dict[str, tuple[str, bytes]] = {}
        self.workspace = {"id": str(uuid.uuid4()), "slug": "acme-analytics", "name": "Acme"}
        self.v2_enabled = True
        self.blocks_delivery = True
        self.repeat_page_token = False
        self.completion_field: Literal["completedAt", "finishedAt"] = "completedAt"
        self.clock_offset = 0.0
        self.v1_start_delay = 0.0
        self.scheduling_enabled = True
        self.send_nulls = False
        self.snapshot_text: str | None = None
        self.hold_runs_list: anyio.Event | None = None
        #: Every run created, whatever started it (API, v1, "UI").
        self.runs_started = 0
        self.v1_triggers = 0
        self._page_tokens: dict[str, tuple[str, str, int]] = {}

    # -- setup

    def setup_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v2/runs", self._create_run)
        r.add_get("/v2/runs/{run_id}", self._get_run)
        r.add_post("/v2/notebooks", self._create_notebook)
        r.add_get("/v2/notebooks/{notebook_id}", self._get_notebook)
        r.add_delete("/v2/notebooks/{notebook_id}", self._delete_notebook)
        r.add_post("/v2/notebooks/{notebook_id}/reorder-blocks", self._reorder_blocks)
        r.add_get("/v2/notebooks/{notebook_id}/runs", self._list_runs)
        r.add_post("/v2/notebooks/{notebook_id}/schedule", self._schedule)
        r.add_delete("/v2/notebooks/{notebook_id}/schedule", self._delete_schedule)
        r.add_get("/v2/projects", self._list_projects)
        r.add_post("/v2/projects", self._create_project)
        r.add_get("/v2/projects/{project_id}", self._get_project)
        r.add_delete("/v2/projects/{project_id}", self._delete_project)
        r.add_get("/v2/me", self._me)
        r.add_post("/v1/projects/{project_id}/notebooks/{notebook_id}/execute", self._execute_v1)
        r.add_get("/snapshots/{name}", self._download)

    def now(self) -> datetime:
        """The server's clock (``clock_offset`` applied)."""
        return utc_now() + timedelta(seconds=self.clock_offset)

    # -- seeding and driving (for tests)

    def add_project(
        self,
        name: str = "Project",
        *,
        project_type: str = "standard",
        suspended: bool = False,
        with_notebook: bool = False,
    ) -> FakeProject:
        project = FakeProject(
            id=str(uuid.uuid4()),
            name=name,
            created_at=self.now(),
            project_type=project_type,
            suspended=suspended,
        )
        self.projects[project.id] = project
        if with_notebook:
            self.add_notebook(project, name="Notebook 1", blocks=[])
        return project

    def add_notebook(
        self,
        project: FakeProject | str | None = None,
        *,
        name: str | None = None,
        blocks: Sequence[FakeBlock] | None = None,
        inputs: Sequence[FakeInput] = (),
        script: RunScript | None = None,
    ) -> FakeNotebook:
        """Add a notebook (to a new project when none is given). Default blocks: two code
        blocks; each input gets an input block of its own."""
        if project is None:
            project = self.add_project()
        owner = self.projects[project if isinstance(project, str) else project.id]
        all_blocks = (
            list(blocks)
            if blocks is not None
            else [FakeBlock(content="print('a')"), FakeBlock(content="print('b')")]
        )
        input_list = list(inputs)
        for variable in input_list:
            if variable.block_id is None:
                block = FakeBlock(type=variable.type, content="")
                variable.block_id = block.id
                all_blocks.insert(0, block)
        notebook = FakeNotebook(
            id=_hex_id(),
            project_id=owner.id,
            name=name or f"Notebook {len(owner.notebook_ids) + 1}",
            blocks=all_blocks,
            inputs=input_list,
            script=script or RunScript(),
        )
        self.notebooks[notebook.id] = notebook
        owner.notebook_ids.append(notebook.id)
        return notebook

    def start_run_directly(
        self, notebook_id: str, *, source: str = "ui", delay: float = 0.0
    ) -> FakeRun:
        """Start a run as the UI or a schedule would (it shows up in the runs list)."""
        notebook = self.notebooks[notebook_id]
        return self._new_run(notebook, inputs={}, block_ids=None, source=source, delay=delay)

    def stop_run(self, run_id: str) -> None:
        """Stop a run as a person in the Deepnote app would (status ``stopped``)."""
        run = self.runs[run_id]
        if run.status(time.monotonic()) not in TERMINAL:
            run.stopped_at = time.monotonic()

    def finish_run(self, run_id: str, outcome: str = "success") -> None:
        """End a run now with ``outcome`` (``success``, ``error`` or ``internal_error``),
        whatever its script said: for a test that moves a run on once it has seen what it
        checks, rather than racing a timed phase. A run already over is left as it is.
        (``stop_run`` stops one as a person would.)"""
        if outcome not in TERMINAL - {"stopped"}:
            raise ValueError(f"not an outcome a run finishes with: {outcome!r}")
        run = self.runs[run_id]
        now = time.monotonic()
        if run.status(now) in TERMINAL:
            return
        # Its phases rewritten to end now: pending until now at most, running the rest.
        elapsed = max(0.0, now - run.started)
        pending = min(run.script.pending, elapsed)
        run.script = attrs.evolve(
            run.script, outcome=outcome, pending=pending, running=elapsed - pending
        )

    def runs_of(self, notebook_id: str) -> list[FakeRun]:
        return [run for run in self.runs.values() if run.notebook_id == notebook_id]

    @property
    def workspace_segment(self) -> str:
        """The workspace part of this server's notebook links: ``{slug}-{id}``."""
        return f"{self.workspace['slug']}-{self.workspace['id']}"

    def backend(self, **overrides: Any) -> DeepnoteBackend:
        """A DeepnoteBackend pointed at this server, with test-friendly short intervals.
        ``overrides`` are DeepnoteBackend arguments or DeepnoteOptions fields."""
        options: dict[str, Any] = {
            "workspace": self.workspace_segment,
            "snapshot_wait": 2.0,
            "snapshot_interval": 0.02,
            "v1_discovery_timeout": 1.0,
            "v1_discovery_interval": 0.02,
            "reconcile_interval": 0.02,
        }
        settings: dict[str, Any] = {
            "base_url": self.url,
            "timeout": 5.0,
            "retry": RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05),
        }
        fields = attrs.fields_dict(DeepnoteOptions)
        for name, value in overrides.items():
            (options if name in fields else settings)[name] = value
        token = settings.pop("token", self.token)
        return DeepnoteBackend(token, options=DeepnoteOptions(**options), **settings)

    # -- internals

    def _new_run(
        self,
        notebook: FakeNotebook,
        *,
        inputs: dict[str, Any],
        block_ids: list[str] | None,
        source: str,
        run_dependent_blocks: bool = False,
        detached: bool = True,
        delay: float = 0.0,
    ) -> FakeRun:
        run = FakeRun(
            id=str(uuid.uuid4()),
            notebook_id=notebook.id,
            project_id=notebook.project_id,
            created_at=self.now() + timedelta(seconds=delay),
            started=time.monotonic() + delay,
            script=notebook.script,
            inputs=inputs,
            block_ids=block_ids,
            run_dependent_blocks=run_dependent_blocks,
            detached=detached,
            source=source,
        )
        self.runs[run.id] = run
        self.runs_started += 1
        return run

    def _completed_at(self, run: FakeRun) -> str | None:
        end = run.ended_at()
        if end is None or time.monotonic() < end:
            return None
        return _iso(run.created_at + timedelta(seconds=end - run.started))

    def _summary(self, run: FakeRun, now: float) -> dict[str, Any]:
        return {
            "runId": run.id,
            "notebookId": run.notebook_id,
            "status": run.status(now),
            "createdAt": _iso(run.created_at),
            self.completion_field: self._completed_at(run),
        }

    def _executed(self, run: FakeRun, status: str) -> list[tuple[FakeBlock, list[dict[str, Any]]]]:
        """(block, outputs) for every block of the notebook, as the run left them."""
        notebook = self.notebooks.get(run.notebook_id)
        if notebook is None:
            return []
        order = [block.id for block in notebook.blocks]
        if run.block_ids is not None:
            selected = list(run.block_ids)
            if run.run_dependent_blocks:
                last = max(order.index(block_id) for block_id in selected)
                selected += [b for b in order[last + 1 :] if b not in selected]
        else:
            selected = order
        code = [b for b in selected if self._block(notebook, b).type in ("code", "sql")]
        failing: str | None = None
        if status == "error" and code:
            failing = run.script.fail_block if run.script.fail_block in code else code[-1]
        effective = {variable.name: variable.value for variable in notebook.inputs}
        effective.update(run.inputs)
        outputs: dict[str, list[dict[str, Any]]] = {}
        if status in ("success", "error"):
            for block_id in code:
                block = self._block(notebook, block_id)
                if block_id == failing:
                    outputs[block_id] = [
                        {
                            "output_type": "error",
                            "ename": run.script.ename,
                            "evalue": run.script.evalue,
                            "traceback": [
                                "Traceback (most recent call last):",
                                f"{run.script.ename}: {run.script.evalue}",
                            ],
                        }
                    ]
                    break
                outputs[block_id] = (
                    list(block.outputs)
                    if block.outputs is not None
                    else [
                        {
                            "output_type": "stream",
                            "name": "stdout",
                            "text": f"{block_id}: inputs={json.dumps(effective, sort_keys=True)}\n",
                        }
                    ]
                )
        return [(block, outputs.get(block.id, [])) for block in notebook.blocks]

    @staticmethod
    def _block(notebook: FakeNotebook, block_id: str) -> FakeBlock:
        return next(block for block in notebook.blocks if block.id == block_id)

    def _snapshot_document(self, run: FakeRun, status: str) -> dict[str, Any]:
        project = self.projects.get(run.project_id)
        executed = self._executed(run, status)
        notebooks: list[dict[str, Any]] = []
        for notebook_id in project.notebook_ids if project else [run.notebook_id]:
            notebook = self.notebooks.get(notebook_id)
            if notebook is None:
                continue
            blocks = []
            for index, block in enumerate(notebook.blocks):
                entry: dict[str, Any] = {
                    "id": block.id,
                    "blockGroup": block.id,
                    "type": block.type,
                    "content": block.content,
                    "sortingKey": f"a{index}",
                    "metadata": {},
                }
                if notebook.id == run.notebook_id:
                    entry["outputs"] = next(o for b, o in executed if b.id == block.id)
                blocks.append(entry)
            notebooks.append({"id": notebook.id, "name": notebook.name, "blocks": blocks})
        execution: dict[str, Any] = {
            "startedAt": _iso(run.created_at),
            "finishedAt": self._completed_at(run),
            "triggeredBy": "api" if run.source == "api" else run.source,
            "inputs": dict(run.inputs),
        }
        if status == "error":
            execution["error"] = {
                "name": run.script.ename,
                "message": run.script.evalue,
                "traceback": [f"{run.script.ename}: {run.script.evalue}"],
            }
        return {
            "version": "1.0.0",
            "metadata": {"createdAt": _iso(self.now()), "snapshotHash": "sha256:" + "0" * 16},
            "project": {
                "id": run.project_id,
                "name": project.name if project else "Project",
                "notebooks": notebooks,
            },
            "environment": {"python": {"version": "3.11"}},
            "execution": execution,
        }

    def _download_url(self, run: FakeRun, body: bytes) -> str:
        path = f"/snapshots/{run.id}.snapshot.deepnote"
        if self.snapshot_host is not None:
            return self.snapshot_host.put(path, body)
        signature = secrets.token_hex(8)
        self.snapshot_files[path] = (signature, body)
        return f"{self.url}{path}?X-Amz-Signature={signature}"

    def _page(
        self, kind: str, key: str, request: web.Request, default_size: int
    ) -> tuple[int, int] | web.Response:
        try:
            size = int(request.query.get("pageSize", default_size))
        except ValueError:
            return _error(400, "Validation error: pageSize must be an integer")
        if not 1 <= size <= 100:
            return _error(400, "Validation error: pageSize must be between 1 and 100")
        token = request.query.get("pageToken")
        if token is None:
            return size, 0
        entry = self._page_tokens.get(token)
        if entry is None or entry[:2] != (kind, key):
            return _error(400, "Validation error: invalid pageToken")
        return size, entry[2]

    def _next_token(self, kind: str, key: str, offset: int) -> str:
        if self.repeat_page_token:
            token = f"repeat-{kind}"
            self._page_tokens.setdefault(token, (kind, key, offset))
            return token
        token = secrets.token_urlsafe(12)
        self._page_tokens[token] = (kind, key, offset)
        return token

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Validation error: the body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "Validation error: the body must be a JSON object")
        return body

    def _notebook_json_for_project(self, notebook: FakeNotebook) -> dict[str, Any]:
        scheduled = any(s["notebookId"] == notebook.id for s in self.schedules.values())
        runs = self.runs_of(notebook.id)
        return {
            "id": notebook.id,
            "name": notebook.name,
            "isInit": False,
            "isScheduled": scheduled,
            "lastRunAt": _iso(runs[-1].created_at) if runs else None,
        }

    def _project_json(self, project: FakeProject, *, files: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": project.id,
            "name": project.name,
            "createdAt": _iso(project.created_at),
            "updatedAt": _iso(project.created_at),
            "projectType": project.project_type,
            "folder": None,
            "notebooks": [
                self._notebook_json_for_project(self.notebooks[n])
                for n in project.notebook_ids
                if n in self.notebooks
            ],
        }
        if files:
            data["files"] = [
                {"path": "requirements.txt", "size": 12, "updatedAt": data["updatedAt"]}
            ]
        return data

    # -- runs

    @_v2
    async def _create_run(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        notebook_id = body.get("notebookId")
        if not isinstance(notebook_id, str) or not notebook_id:
            return _error(400, "Validation error: notebookId is required")
        notebook = self.notebooks.get(notebook_id)
        if notebook is None:
            return _error(404, "Notebook not found")
        if self.projects[notebook.project_id].suspended:
            return _error(409, "Project is suspended")
        detached = body.get("detached", True)
        if not isinstance(detached, bool):
            return _error(400, "Validation error: detached must be a boolean")
        block_ids = body.get("blockIds")
        if block_ids is not None:
            if (
                not isinstance(block_ids, list)
                or not block_ids
                or not all(isinstance(b, str) for b in block_ids)
            ):
                return _error(400, "Validation error: blockIds must be a non-empty list of ids")
            if len(set(block_ids)) != len(block_ids):
                return _error(400, "Validation error: blockIds must be unique")
            if detached:
                return _error(400, "blockIds is not supported for detached runs")
            known = {block.id for block in notebook.blocks}
            unknown = [b for b in block_ids if b not in known]
            if unknown:
                return _error(400, f"Validation error: unknown blockId {unknown[0]}")
        mode = body.get("detachedRunStorageMode")
        if mode is not None and mode not in ("read_write", "readonly"):
            return _error(400, "Validation error: invalid detachedRunStorageMode")
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            return _error(400, "Validation error: inputs must be an object")
        variables = {variable.name: variable for variable in notebook.inputs}
        for name, value in inputs.items():
            variable = variables.get(name)
            if variable is None:
                return _error(400, f"Validation error: unknown input '{name}'")
            if not variable.accepts(value):
                return _error(
                    400, f"Validation error: input '{name}' has the wrong type for {variable.type}"
                )
        run = self._new_run(
            notebook,
            inputs=dict(inputs),
            block_ids=list(block_ids) if block_ids is not None else None,
            run_dependent_blocks=bool(body.get("runDependentBlocks")),
            detached=detached,
            source="api",
        )
        return web.json_response(
            {"runId": run.id, "status": "pending", "createdAt": _iso(run.created_at)}, status=202
        )

    @_v2
    async def _get_run(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        run = self.runs.get(request.match_info["run_id"])
        if run is None or not run.visible(now):
            return _error(404, "Run not found")
        delivery = request.query.get("snapshotDelivery", "downloadUrl")
        allowed = _DELIVERIES if self.blocks_delivery else _DELIVERIES[:2]
        if delivery not in allowed:
            return _error(
                400, f"Validation error: snapshotDelivery must be one of {', '.join(allowed)}"
            )
        status = run.status(now)
        end = run.ended_at()
        if status not in TERMINAL or end is None or now < end + run.script.snapshot_delay:
            snapshot_status = "pending"
        elif not run.script.snapshot or status == "internal_error":
            snapshot_status = "unavailable"
        else:
            snapshot_status = "available"
        data = self._summary(run, now)
        data.update(
            {
                "projectId": run.project_id,
                "error": run.script.error if status in ("error", "internal_error") else None,
                "snapshotStatus": snapshot_status,
                "snapshotContent": None,
                "snapshotDownloadUrl": None,
            }
        )
        if snapshot_status == "available":
            if delivery == "blocks":
                data["snapshotBlocks"] = [
                    {
                        "id": block.id,
                        "type": block.type,
                        "outputs": self._with_nulls(outputs) if self.send_nulls else outputs,
                        "metadata": None if self.send_nulls else {},
                    }
                    for block, outputs in self._executed(run, status)
                ]
            else:
                text = self.snapshot_text
                if text is None:
                    text = dump_yaml(self._snapshot_document(run, status))
                if delivery == "inline":
                    data["snapshotContent"] = text
                else:
                    data["snapshotDownloadUrl"] = self._download_url(run, text.encode())
        return web.json_response({"run": data})

    @staticmethod
    def _with_nulls(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``outputs`` with ``null`` in the optional fields, and one without a type."""
        if not outputs:
            return outputs
        nulled = [
            {
                **output,
                "execution_count": None,
                "traceback": output.get("traceback") if output["output_type"] == "error" else None,
            }
            for output in outputs
        ]
        return [*nulled, {"output_type": None, "data": {"text/plain": "?"}, "metadata": None}]

    async def _download(self, request: web.Request) -> web.StreamResponse:
        entry = self.snapshot_files.get(request.path)
        if entry is None or request.query.get("X-Amz-Signature") != entry[0]:
            return web.Response(status=403, text="<Error>AccessDenied</Error>")
        return web.Response(body=entry[1], content_type="application/x-yaml")

    @_v2
    async def _list_runs(self, request: web.Request) -> web.StreamResponse:
        notebook_id = request.match_info["notebook_id"]
        if notebook_id not in self.notebooks:
            return _error(404, "Notebook not found")
        page = self._page("runs", notebook_id, request, 20)
        if isinstance(page, web.Response):
            return page
        if self.hold_runs_list is not None:
            await self.hold_runs_list.wait()
        size, offset = page
        now = time.monotonic()
        runs = [run for run in self.runs_of(notebook_id) if run.visible(now)]
        # Newest first; on equal timestamps the later-created run is the newer one.
        ranked = sorted(enumerate(runs), key=lambda pair: (pair[1].created_at, pair[0]))
        runs = [run for _, run in reversed(ranked)]
        chunk = runs[offset : offset + size]
        more = offset + size < len(runs)
        token = self._next_token("runs", notebook_id, offset + size) if more else None
        return web.json_response(
            {
                "runs": [self._summary(run, now) for run in chunk],
                "pagination": {"nextPageToken": token, "hasMore": more},
            }
        )

    # -- notebooks

    @_v2
    async def _create_notebook(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        project_id = body.get("projectId")
        if not isinstance(project_id, str) or not project_id:
            return _error(400, "Validation error: projectId is required")
        project = self.projects.get(project_id)
        if project is None:
            return _error(404, "Project not found")
        if project.suspended:
            return _error(409, "Project is suspended")
        if project.project_type in ("notebook", "agent") and project.notebook_ids:
            return _error(
                409, f"Projects of type '{project.project_type}' cannot have more notebooks"
            )
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            return _error(400, "Validation error: name must be a non-empty string")
        existing = {self.notebooks[n].name for n in project.notebook_ids if n in self.notebooks}
        if name in existing:
            return _error(409, f"A notebook named '{name}' already exists in this project")
        notebook = self.add_notebook(project, name=name, blocks=[])
        return web.json_response({"notebook": notebook.to_json()}, status=201)

    def _notebook_or_error(self, request: web.Request) -> FakeNotebook | web.Response:
        notebook = self.notebooks.get(request.match_info["notebook_id"])
        if notebook is None:
            return _error(404, "Notebook not found")
        return notebook

    @_v2
    async def _get_notebook(self, request: web.Request) -> web.StreamResponse:
        notebook = self._notebook_or_error(request)
        if isinstance(notebook, web.Response):
            return notebook
        if self.projects[notebook.project_id].suspended:
            return _error(400, "Project is suspended")
        return web.json_response({"notebook": notebook.to_json()})

    @_v2
    async def _delete_notebook(self, request: web.Request) -> web.StreamResponse:
        notebook = self._notebook_or_error(request)
        if isinstance(notebook, web.Response):
            return notebook
        project = self.projects[notebook.project_id]
        if project.suspended:
            return _error(409, "Project is suspended")
        del self.notebooks[notebook.id]
        project.notebook_ids.remove(notebook.id)
        return web.Response(status=204)

    @_v2
    async def _reorder_blocks(self, request: web.Request) -> web.StreamResponse:
        notebook = self._notebook_or_error(request)
        if isinstance(notebook, web.Response):
            return notebook
        if self.projects[notebook.project_id].suspended:
            return _error(409, "Project is suspended")
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        moved = body.get("blockIds")
        if (
            not isinstance(moved, list)
            or not moved
            or not all(isinstance(b, str) for b in moved)
            or len(set(moved)) != len(moved)
        ):
            return _error(400, "Validation error: blockIds must be a non-empty list of unique ids")
        order = [block.id for block in notebook.blocks]
        unknown = [b for b in moved if b not in order]
        if unknown:
            return _error(400, f"Validation error: unknown blockId {unknown[0]}")
        placement = body.get("placement")
        kind = placement.get("type") if isinstance(placement, dict) else None
        rest = [b for b in order if b not in moved]
        if kind == "start":
            final = moved + rest
        elif kind == "end":
            final = rest + moved
        elif kind == "after" and isinstance(placement, dict):
            anchor = placement.get("blockId")
            if anchor not in rest:
                return _error(400, "Validation error: invalid placement anchor")
            at = rest.index(anchor) + 1
            final = rest[:at] + moved + rest[at:]
        else:
            return _error(400, "Validation error: invalid placement")
        by_id = {block.id: block for block in notebook.blocks}
        notebook.blocks = [by_id[b] for b in final]
        return web.json_response({"blockIds": final})

    @_v2
    async def _schedule(self, request: web.Request) -> web.StreamResponse:
        if not self.scheduling_enabled:
            return web.Response(status=403)
        notebook = self._notebook_or_error(request)
        if isinstance(notebook, web.Response):
            return notebook
        if self.projects[notebook.project_id].suspended:
            return _error(409, "Project is suspended")
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        cron = body.get("cron")
        fields = cron.split() if isinstance(cron, str) else []
        if len(fields) != 5 or not all(_CRON_FIELD.match(field) for field in fields):
            return _error(400, "Invalid cron expression")
        timezone = body.get("timezone", "UTC")
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            return _error(400, "Validation error: invalid timezone")
        now = _iso(self.now())
        previous = self.schedules.get(notebook.project_id)
        schedule = {
            "notebookId": notebook.id,
            "cron": cron,
            "timezone": timezone,
            "nextRunAt": _iso(self.now() + timedelta(hours=1)),
            "createdAt": previous["createdAt"] if previous else now,
            "updatedAt": now,
        }
        self.schedules[notebook.project_id] = schedule
        return web.json_response({"schedule": schedule})

    @_v2
    async def _delete_schedule(self, request: web.Request) -> web.StreamResponse:
        # As Deepnote's own client sees it: 204 when removed, 404 when the notebook has no
        # schedule; not plan-gated (no bare 403 here).
        notebook = self._notebook_or_error(request)
        if isinstance(notebook, web.Response):
            return notebook
        if self.projects[notebook.project_id].suspended:
            return _error(409, "Project is suspended")
        schedule = self.schedules.get(notebook.project_id)
        if schedule is None or schedule["notebookId"] != notebook.id:
            return _error(404, "Notebook has no schedule")
        del self.schedules[notebook.project_id]
        return web.Response(status=204)

    # -- projects

    @_v2
    async def _list_projects(self, request: web.Request) -> web.StreamResponse:
        name_filter = request.query.get("nameContains", "")
        page = self._page("projects", name_filter, request, 50)
        if isinstance(page, web.Response):
            return page
        size, offset = page
        projects = [
            project
            for project in self.projects.values()
            if name_filter.lower() in project.name.lower()
        ]
        chunk = projects[offset : offset + size]
        more = offset + size < len(projects)
        token = self._next_token("projects", name_filter, offset + size) if more else None
        return web.json_response(
            {
                "projects": [self._project_json(project) for project in chunk],
                "pagination": {"pageSize": size, "nextPageToken": token, "hasMore": more},
            }
        )

    @_v2
    async def _create_project(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return _error(400, "Validation error: name is required")
        folder_id = body.get("folderId")
        if folder_id is not None and folder_id not in self.folders:
            return _error(404, "Folder not found")
        project_type = body.get("projectType", "standard")
        if project_type not in ("standard", "notebook", "agent"):
            return _error(400, "Validation error: invalid projectType")
        project = self.add_project(name, project_type=project_type, with_notebook=True)
        project.folder_id = folder_id
        return web.json_response({"project": self._project_json(project)}, status=201)

    def _project_or_error(self, request: web.Request) -> FakeProject | web.Response:
        project = self.projects.get(request.match_info["project_id"])
        if project is None:
            return _error(404, "Project not found")
        return project

    @_v2
    async def _get_project(self, request: web.Request) -> web.StreamResponse:
        project = self._project_or_error(request)
        if isinstance(project, web.Response):
            return project
        return web.json_response({"project": self._project_json(project, files=True)})

    @_v2
    async def _delete_project(self, request: web.Request) -> web.StreamResponse:
        project = self._project_or_error(request)
        if isinstance(project, web.Response):
            return project
        for notebook_id in project.notebook_ids:
            self.notebooks.pop(notebook_id, None)
        del self.projects[project.id]
        return web.Response(status=204)

    @_v2
    async def _me(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "apiKey": {"id": "key-1", "name": "notebookops tests"},
                "user": {"id": "user-1", "email": "tests@example.com"},
                "workspace": dict(self.workspace),
                "accessLevel": "admin",
            }
        )

    # -- v1

    async def _execute_v1(self, request: web.Request) -> web.StreamResponse:
        project = self.projects.get(request.match_info["project_id"])
        notebook = self.notebooks.get(request.match_info["notebook_id"])
        if project is None or notebook is None or notebook.project_id != project.id:
            return _error(404, "Notebook not found")
        self.v1_triggers += 1
        now = time.monotonic()
        if any(run.status(now) not in TERMINAL for run in self.runs_of(notebook.id)):
            # Documented: "If the notebook is already running, [it] has no effect."
            return web.Response(status=202)
        self._new_run(notebook, inputs={}, block_ids=None, source="v1", delay=self.v1_start_delay)
        return web.Response(status=202)


# --------------------------------------------------------------------------- entry points


@asynccontextmanager
async def fake_deepnote(
    *, token: str = "test-token", second_origin: bool = False
) -> AsyncIterator[FakeDeepnoteServer]:
    """Run a fake Deepnote on 127.0.0.1 for the duration of the block. With
    ``second_origin=True`` snapshot download URLs point at a separate server (another port,
    hence another origin), as S3 presigned URLs do."""
    host = FakeSnapshotHost() if second_origin else None
    server = FakeDeepnoteServer(token=token, snapshot_host=host)
    if host is not None:
        await host.start()
    try:
        async with server:
            yield server
    finally:
        if host is not None:
            await host.close()


@asynccontextmanager
async def deepnote_target() -> AsyncIterator[ConformanceTarget]:
    """DeepnoteBackend on a fresh fake server, as a conformance target."""
    # Imported here: the conformance suite needs pytest, and the fake server (shipped for
    # the sandbox) must not.
    from .conformance import ConformanceTarget

    class DeepnoteTarget(ConformanceTarget):
        """The conformance suite's view of DeepnoteBackend on the fake server."""

        def __init__(self, server: FakeDeepnoteServer) -> None:
            self.server = server
            project = server.add_project("Conformance")
            greeting = [FakeInput(name="greeting", type="input-text", value="hi")]
            scripts: dict[Outcome, RunScript] = {
                "succeed": RunScript.succeed(0.03, snapshot_delay=0.03),
                "fail": RunScript.fail(0.03),
                "long": RunScript.long(),
                "unknown_status": RunScript.unknown("warming_up"),
            }
            self.notebooks = {
                outcome: server.add_notebook(project, name=outcome, inputs=greeting, script=script)
                for outcome, script in scripts.items()
            }

        def make_backend(self) -> DeepnoteBackend:
            return self.server.backend()

        def request(self, outcome: Outcome) -> RunRequest | None:
            return RunRequest(notebook=self.notebooks[outcome].id, inputs={"greeting": "hello"})

    async with fake_deepnote(second_origin=True) as server:
        yield DeepnoteTarget(server)
