"""A loopback fake of PostHog's notebooks API, for tests (never for anything else).

It follows PostHog's own views (see ``shared/contracts/posthog-source-check.md``): notebooks
with versions and PostHog's conflict rules (409 on a stale content PATCH, a version sent
without content written to the row, collab 409 with missed steps and 410 when they are gone),
both notebook formats (rich-text ``ph-python`` nodes and markdown-format ``<PythonV2>`` tags),
soft deletion (DELETE is 405), the limit/offset list with absolute ``next`` links, activity,
recording comments, sharing routes that answer 400 as PostHog's do, the collaboration SSE
stream (``cursor`` required on presence), HogQL returning a small table, the kernel per
(notebook, user), and server-side runs (markdown notebooks only, list-shaped ``variables``
that replace the saved ones, null cell statuses before their turn).

Two server versions: ``version="old"`` (kernel streaming, HogQL and dataframes; no ``runs/``)
and ``version="new"`` (``runs/`` and ``sql_v2`` behind ``runs_flag``, 404 when off; no
stream, HogQL or dataframe routes; personal API keys refused on actions that declare no
scope unless ``personal_keys_on_unscoped_actions=True``). Scopes are checked per route for
keys added with ``add_user(token, scopes=...)``.

**The fake kernel really executes the Python it receives** (``exec`` in a per-kernel namespace,
in a worker thread, with stdout/stderr captured), so variables persist between executions
exactly as in a real kernel. That is only acceptable because the server binds to 127.0.0.1 and
requires the test token: never point it at anything but tests.

Use it through :func:`posthog_server` or, for the conformance suite, :func:`posthog_target`::

    async with posthog_server() as server:
        server.add_notebook("abc123", cells=["x = 1", "print(x + 1)"])
        async with PostHogBackend(server.token, project_id=server.project_id,
                                  base_url=server.url) as backend:
            run = await run_and_wait(backend, "abc123")
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import hashlib
import io
import itertools
import json
import linecache
import re
import secrets
import sys
import threading
import traceback
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import CodeType, FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

import attrs
from aiohttp import web

from .._validate import utc_now
from ..backend import NotebookBackend
from ..backends.posthog import (
    ALLOWED_CPU_CORES,
    ALLOWED_IDLE_TIMEOUTS,
    ALLOWED_MEMORY_GB,
    PostHogBackend,
    RunMode,
)
from ..models import RunHandle, RunRequest
from ..policies import PollPolicy, RetryPolicy
from .server import FakeServer, Handler

if TYPE_CHECKING:
    from .conformance import ConformanceTarget, Outcome

__all__ = [
    "SERVER_VERSIONS",
    "FakeCellRun",
    "FakeExecution",
    "FakeKernel",
    "FakeNotebook",
    "FakeServerRun",
    "FakeUser",
    "PostHogFakeServer",
    "hogql_cell",
    "markdown_cells",
    "markdown_content",
    "notebook_content",
    "posthog_server",
    "posthog_target",
    "python_cell",
    "recording_comment",
]

SSE_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
HOGQL_COLUMNS = ["id", "name"]
HOGQL_TYPES = [["id", "Int64"], ["name", "String"]]
HOGQL_ROWS: list[list[Any]] = [[1, "alpha"], [2, "beta"], [3, "gamma"]]
_SCOPED_DETAIL = "This action does not support Personal API Key access"
_SHARING_DETAIL = "Either a dashboard, insight or recording must be specified"

#: The server versions the fake can be: ``"old"`` is PostHog A/B (kernel streaming, HogQL,
#: dataframes; no ``runs/``), ``"new"`` is C (``runs/`` and ``sql_v2`` behind the
#: ``revamped-py-notebooks`` flag; the kernel's stream, HogQL and dataframe routes gone, and
#: personal API keys refused on every action that declares no scope).
SERVER_VERSIONS: tuple[Literal["old", "new"], ...] = ("old", "new")

#: Scopes each route needs (PostHog's ``required_scopes`` or what its action derives);
#: ``None`` marks an action that declares none, refused to scoped personal API keys (and to
#: every personal API key on the "new" server).
_ROUTE_SCOPES: dict[str, tuple[str, ...] | None] = {
    "list": ("notebook:read",),
    "create": ("notebook:write",),
    "retrieve": ("notebook:read",),
    "update": ("notebook:write",),
    "destroy": ("notebook:write",),
    "markdown": ("notebook:read",),
    "notebook_activity": ("activity_log:read",),
    "project_activity": None,
    "recording_comments": None,
    "collab_save": ("notebook:write",),
    "collab_markdown_save": ("notebook:write",),
    "collab_presence": ("notebook:write",),
    "collab_stream": ("notebook:read",),
    "hogql_execute": None,
    "kernel_start": None,
    "kernel_restart": None,
    "kernel_stop": None,
    "kernel_status": ("notebook:read",),
    "kernel_config": ("notebook:write",),
    "kernel_execute": None,
    "kernel_execute_stream": None,
    "kernel_dataframe": None,
    "start_run": ("notebook:write", "query:read"),
    "get_run": ("notebook:read", "query:read"),
    "interrupt_run": ("notebook:write", "query:read"),
    "run_cell": ("notebook:write", "query:read"),
    "get_cell_run": ("notebook:read", "query:read"),
    "sharing": ("sharing_configuration:read",),
}
#: Routes the "old" server does not have, and the ones the "new" server dropped.
_NEW_ONLY = frozenset({"start_run", "get_run", "interrupt_run", "run_cell", "get_cell_run"})
_OLD_ONLY = frozenset({"hogql_execute", "kernel_execute_stream", "kernel_dataframe"})
_CELL_PREFIX = "<posthog-fake-cell-"
_cell_numbers = itertools.count(1)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _error(
    status: int,
    detail: str,
    *,
    code: str,
    type_: str = "validation_error",
    attr: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """PostHog's standard error body."""
    return web.json_response(
        {"type": type_, "code": code, "detail": detail, "attr": attr},
        status=status,
        headers=dict(headers or {}),
    )


def _not_found(detail: str = "Not found.") -> web.Response:
    return _error(404, detail, code="not_found", type_="invalid_request")


def _sse(event: str | None = None, data: Any = None, *, id: str | None = None) -> bytes:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


# --------------------------------------------------------------------------- content helpers


def python_cell(
    code: str, *, node_id: str | None = None, title: str | None = None
) -> dict[str, Any]:
    """A ``ph-python`` node."""
    node_attrs: dict[str, Any] = {"code": code, "nodeId": node_id or uuid.uuid4().hex[:10]}
    if title is not None:
        node_attrs["title"] = title
    return {"type": "ph-python", "attrs": node_attrs}


def hogql_cell(query: str, *, node_id: str | None = None) -> dict[str, Any]:
    """A ``ph-hogql-sql`` node."""
    return {
        "type": "ph-hogql-sql",
        "attrs": {
            "code": query,
            "nodeId": node_id or uuid.uuid4().hex[:10],
            "returnVariable": "hogql_df",
        },
    }


def recording_comment(recording_id: str, seconds: float, text: str) -> dict[str, Any]:
    """A paragraph commenting on a session recording at ``seconds``."""
    return {
        "type": "paragraph",
        "content": [
            {
                "type": "ph-replay-timestamp",
                "attrs": {"sessionRecordingId": recording_id, "playbackTime": seconds * 1000},
            },
            {"type": "text", "text": text},
        ],
    }


def notebook_content(*nodes: Mapping[str, Any], title: str = "Notebook") -> dict[str, Any]:
    """A ProseMirror document: a heading, then ``nodes``."""
    heading = {
        "type": "heading",
        "attrs": {"level": 1},
        "content": [{"type": "text", "text": title}],
    }
    return {"type": "doc", "content": [heading, *(dict(node) for node in nodes)]}


def markdown_content(markdown: str) -> dict[str, Any]:
    """A markdown notebook's document (exactly one ``ph-markdown-notebook`` node)."""
    return {
        "type": "doc",
        "content": [{"type": "ph-markdown-notebook", "attrs": {"markdown": markdown}}],
    }


def markdown_cells(*cells: tuple[str, str], node_ids: Sequence[str] | None = None) -> str:
    """Markdown-notebook text with one ``<PythonV2>`` / ``<SQLV2>`` tag per ``(kind, code)``
    (kind ``"python"`` or ``"sql"``), props written as PostHog writes them (JSON strings)."""
    lines = ["# Notebook", ""]
    for position, (kind, code) in enumerate(cells):
        tag = "PythonV2" if kind == "python" else "SQLV2"
        node_id = node_ids[position] if node_ids else f"c{position}"
        lines.append(f"<{tag} nodeId={json.dumps(node_id)} code={json.dumps(code)} />")
        lines.append("")
    return "\n".join(lines)


_FAKE_TAG = re.compile(r"^<(PythonV2|SQLV2)\s(.*)/>$")
_FAKE_PROP = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*")')


def _markdown_run_cells(content: Any) -> list[dict[str, Any]]:
    """The cells a server run executes: the tags of a markdown notebook (PostHog's
    ``extract_cells``), none for a rich-text one. Reads the one-line tags it writes."""
    nodes = content.get("content") if isinstance(content, dict) else None
    if (
        not isinstance(nodes, list)
        or len(nodes) != 1
        or nodes[0].get("type") != "ph-markdown-notebook"
    ):
        return []
    cells = []
    for line in str((nodes[0].get("attrs") or {}).get("markdown", "")).split("\n"):
        match = _FAKE_TAG.match(line.strip())
        if match is None:
            continue
        props = {name: json.loads(value) for name, value in _FAKE_PROP.findall(match.group(2))}
        if props.get("nodeId") and isinstance(props.get("code"), str):
            kind = "python" if match.group(1) == "PythonV2" else "hogql"
            cells.append({"node_id": props["nodeId"], "kind": kind, "code": props["code"]})
    return cells


def _text_of(node: Any) -> str:
    if not isinstance(node, Mapping):
        return ""
    parts = [node["text"]] if isinstance(node.get("text"), str) else []
    for child in node.get("content") or []:
        parts.append(_text_of(child))
    return " ".join(part for part in parts if part)


# --------------------------------------------------------------------------- stdout routing

_LOCAL = threading.local()
_ROUTER_LOCK = threading.Lock()
_ROUTER_USERS = 0


class _StreamRouter(io.TextIOBase):
    """Sends writes from a fake-kernel worker thread to that execution, others to ``fallback``.

    ``contextlib.redirect_stdout`` swaps one process-wide ``sys.stdout`` and restores it on
    exit: with executions running concurrently in several threads, their enter/exit pairs
    interleave and one thread's capture swallows (or outlives) another's. A single router
    installed while any execution runs, dispatching on a thread-local sink, has neither
    problem.
    """

    def __init__(self, name: Literal["stdout", "stderr"], fallback: Any) -> None:
        super().__init__()
        self.stream_name = name
        self.fallback = fallback

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        sink = getattr(_LOCAL, "sink", None)
        if sink is not None:
            sink(self.stream_name, text)
            return len(text)
        written: int = self.fallback.write(text)
        return written

    def flush(self) -> None:
        if getattr(_LOCAL, "sink", None) is None:
            with contextlib.suppress(Exception):
                self.fallback.flush()


def _acquire_router() -> None:
    global _ROUTER_USERS
    with _ROUTER_LOCK:
        if _ROUTER_USERS == 0:
            sys.stdout = _StreamRouter("stdout", sys.stdout)
            sys.stderr = _StreamRouter("stderr", sys.stderr)
        _ROUTER_USERS += 1


def _release_router() -> None:
    global _ROUTER_USERS
    with _ROUTER_LOCK:
        _ROUTER_USERS -= 1
        if _ROUTER_USERS == 0:
            # Someone (pytest) may have replaced the streams meanwhile: only undo our own.
            if isinstance(sys.stdout, _StreamRouter):
                sys.stdout = sys.stdout.fallback
            if isinstance(sys.stderr, _StreamRouter):
                sys.stderr = sys.stderr.fallback


def _display_media(mime_type: str, data: Any) -> None:
    """Kernel builtin: attach rich output (``media``) to the running execution."""
    media = getattr(_LOCAL, "media", None)
    if media is not None:
        media.append({"mime_type": mime_type, "data": data})


def _hogql_execute(query: str) -> list[dict[str, Any]]:
    """Kernel builtin: the fake HogQL table as records (a "dataframe" for kernel/dataframe)."""
    return [dict(zip(HOGQL_COLUMNS, row, strict=True)) for row in HOGQL_ROWS]


_KERNEL_BUILTINS = {
    **vars(builtins),
    "display_media": _display_media,
    "hogql_execute": _hogql_execute,
}


def _fresh_namespace() -> dict[str, Any]:
    return {"__name__": "__main__", "__builtins__": _KERNEL_BUILTINS}


def _defined_names(tree: ast.Module) -> list[str]:
    names: list[str] = []

    def targets(node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Tuple | ast.List):
            for element in node.elts:
                targets(element)

    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            for target in statement.targets:
                targets(target)
        elif isinstance(statement, ast.AnnAssign | ast.AugAssign):
            targets(statement.target)
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(statement.name)
        elif isinstance(statement, ast.Import | ast.ImportFrom):
            for alias in statement.names:
                names.append(alias.asname or alias.name.split(".")[0])
        elif isinstance(statement, ast.For):
            targets(statement.target)
    return list(dict.fromkeys(name for name in names if not name.startswith("_")))


def _format_error(exc: BaseException, filename: str) -> list[str]:
    """IPython-like traceback lines, coloured with ANSI escapes like the real kernel's."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    name = type(exc).__name__
    last = lines[-1].rstrip("\n")
    if last.startswith(name):
        lines[-1] = f"\x1b[0;31m{name}\x1b[0m{last[len(name) :]}"
    return [line.rstrip("\n") for line in lines]


@attrs.define(eq=False)
class FakeExecution:
    """One execution on a fake kernel (inspect ``server.executions`` in tests)."""

    short_id: str
    user_id: int
    code: str
    interrupt: threading.Event = attrs.field(factory=threading.Event)
    started: bool = False
    finished: bool = False
    status: str | None = None
    #: True when it was stopped by kernel/stop, an interrupt or a disconnected client.
    interrupted: bool = False
    client_gone: Callable[[], bool] = lambda: False

    @property
    def running(self) -> bool:
        return self.started and not self.finished


@attrs.frozen
class _Compiled:
    """A cell compiled on the event-loop thread (see :func:`_compile_cell`)."""

    filename: str
    body: CodeType | None = None
    last: CodeType | None = None
    names: tuple[str, ...] = ()
    error: BaseException | None = None


def _compile_cell(code: str) -> _Compiled:
    """Parse and compile a cell, IPython-style (a final expression is the result).

    This must not run in a worker thread: CPython 3.11 keeps the AST converters' recursion
    counter per interpreter, so ``ast.parse``/``compile(tree)`` in two threads at once can fail
    with "AST constructor recursion depth mismatch". Worker threads only run code objects.
    """
    filename = f"{_CELL_PREFIX}{next(_cell_numbers)}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        tree = ast.parse(code, filename, "exec")
        names = tuple(_defined_names(tree))
        last: CodeType | None = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr):
            tree.body.pop()
            last = compile(ast.Expression(final.value), filename, "eval")
        return _Compiled(filename, compile(tree, filename, "exec"), last, names)
    except (SyntaxError, ValueError) as exc:
        return _Compiled(filename, error=exc)


def _execute_in_thread(
    execution: FakeExecution,
    compiled: _Compiled,
    namespace: dict[str, Any],
    emit: Callable[[str, str], None],
    return_variables: bool,
) -> dict[str, Any]:
    """The body of a worker thread: run a compiled cell in ``namespace``.

    The exception, if any, is returned as is (``"exception"``) and formatted by the caller on
    the event-loop thread (traceback formatting parses source lines: see _compile_cell).
    """
    captured: dict[str, list[str]] = {"stdout": [], "stderr": []}
    pending = {"stdout": "", "stderr": ""}
    media: list[dict[str, Any]] = []

    def sink(name: str, text: str) -> None:
        captured[name].append(text)
        pending[name] += text
        if "\n" in pending[name]:
            head, _, tail = pending[name].rpartition("\n")
            pending[name] = tail
            emit(name, head + "\n")

    def local_trace(frame: FrameType, event: str, arg: Any) -> Any:
        if execution.interrupt.is_set():
            raise KeyboardInterrupt
        return local_trace

    def global_trace(frame: FrameType, event: str, arg: Any) -> Any:
        return local_trace if frame.f_code.co_filename == compiled.filename else None

    result: dict[str, Any] = {"status": "ok", "result": None, "error_name": None, "traceback": []}
    _acquire_router()
    _LOCAL.sink = sink
    _LOCAL.media = media
    sys.settrace(global_trace)
    try:
        if compiled.error is not None:
            raise compiled.error
        assert compiled.body is not None
        exec(compiled.body, namespace)
        if compiled.last is not None:
            value = eval(compiled.last, namespace)
            if value is not None:
                result["result"] = {"text/plain": repr(value)}
    except BaseException as exc:  # the cell's own exceptions, KeyboardInterrupt included
        result.update(status="error", error_name=type(exc).__name__, exception=exc)
    finally:
        sys.settrace(None)
        _LOCAL.sink = None
        _LOCAL.media = None
        _release_router()
    for name, rest in pending.items():
        if rest:
            emit(name, rest)
    result["stdout"] = "".join(captured["stdout"])
    result["stderr"] = "".join(captured["stderr"])
    result["media"] = media
    variables = {
        name: {"status": "ok", "type": type(namespace[name]).__name__}
        for name in compiled.names
        if name in namespace
    }
    result["variables"] = variables if (return_variables and variables) else None
    return result


class FakeKernel:
    """A kernel for one (notebook, user): a namespace that persists between executions."""

    def __init__(self, server: PostHogFakeServer, short_id: str, user_id: int) -> None:
        self.server = server
        self.short_id = short_id
        self.user_id = user_id
        self.namespace: dict[str, Any] = _fresh_namespace()
        self.status = "stopped"
        self.runtime_id: str | None = None
        self.execution_count = 0
        self.last_used_at: datetime | None = None
        self.generation = 0
        self.current: FakeExecution | None = None
        self.lock = asyncio.Lock()
        self.config: dict[str, Any] = {
            "cpu_cores": None,
            "memory_gb": None,
            "idle_timeout_seconds": None,
        }

    def runtime(self) -> dict[str, Any]:
        return {
            "id": self.runtime_id,
            "status": self.status,
            "last_used_at": _iso(self.last_used_at),
            "sandbox_id": f"sb-{self.runtime_id[:8]}" if self.runtime_id else None,
        }

    def start(self) -> None:
        if self.status != "running":
            self.status = "running"
            self.runtime_id = str(uuid.uuid4())
            self.namespace = _fresh_namespace()
            self.execution_count = 0

    def stop(self) -> bool:
        """Stop (interrupting any execution); False when nothing was running."""
        was_running = self.status == "running"
        self.generation += 1
        if self.current is not None and not self.current.finished:
            self.current.interrupted = True
            self.current.interrupt.set()
        self.status = "stopped"
        self.runtime_id = None
        self.namespace = _fresh_namespace()
        return was_running

    async def execute(
        self,
        code: str,
        *,
        timeout: float,
        return_variables: bool = True,
        on_output: Callable[[str, str], None] | None = None,
        client_gone: Callable[[], bool] = lambda: False,
    ) -> dict[str, Any]:
        """Run ``code`` (one at a time per kernel) and return PostHog's result body."""
        generation = self.generation
        execution = FakeExecution(self.short_id, self.user_id, code, client_gone=client_gone)
        self.server.executions.append(execution)
        async with self.lock:
            started_at = utc_now()
            if generation != self.generation or client_gone():
                # Stopped (or abandoned) while queued: the code never reaches the kernel.
                execution.interrupted = True
                execution.finished = True
                execution.status = "error"
                return self._body(
                    {
                        "status": "error",
                        "error_name": "KernelStopped",
                        "traceback": ["KernelStopped: the kernel was stopped before this ran"],
                    },
                    started_at,
                )
            self.start()
            self.execution_count += 1
            count = self.execution_count
            self.current = execution
            loop = asyncio.get_running_loop()
            future: asyncio.Future[dict[str, Any]] = loop.create_future()

            def emit(name: str, text: str) -> None:
                if on_output is not None:
                    with contextlib.suppress(RuntimeError):  # the loop may be gone
                        loop.call_soon_threadsafe(on_output, name, text)

            compiled = _compile_cell(code)
            namespace = self.namespace

            def work() -> None:
                outcome = _execute_in_thread(execution, compiled, namespace, emit, return_variables)

                def deliver() -> None:
                    if not future.done():
                        future.set_result(outcome)

                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(deliver)

            execution.started = True
            thread = threading.Thread(target=work, name="posthog-fake-kernel", daemon=True)
            thread.start()
            self.server.pending.add(future)
            try:
                outcome = await self._wait(future, execution, timeout)
            except asyncio.CancelledError:
                execution.interrupted = True
                execution.interrupt.set()
                raise
            finally:
                self.server.pending.discard(future)
                execution.finished = True
                if self.current is execution:
                    self.current = None
            self.last_used_at = utc_now()
            exception = outcome.pop("exception", None)
            if exception is not None:
                outcome["traceback"] = _format_error(exception, compiled.filename)
            outcome["execution_count"] = count
            execution.status = outcome["status"]
            return self._body(outcome, started_at)

    async def _wait(
        self, future: asyncio.Future[dict[str, Any]], execution: FakeExecution, timeout: float
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                execution.interrupt.set()
                outcome = await asyncio.wait_for(asyncio.shield(future), 5)
                outcome.pop("exception", None)
                outcome.update(status="timeout", error_name=None, traceback=[])
                return outcome
            try:
                return await asyncio.wait_for(asyncio.shield(future), min(remaining, 0.05))
            except TimeoutError:
                if execution.client_gone() and not execution.interrupt.is_set():
                    execution.interrupted = True
                    execution.interrupt.set()

    def _body(self, outcome: Mapping[str, Any], started_at: datetime) -> dict[str, Any]:
        return {
            "status": outcome.get("status", "error"),
            "stdout": outcome.get("stdout", ""),
            "stderr": outcome.get("stderr", ""),
            "result": outcome.get("result"),
            "media": outcome.get("media", []),
            "execution_count": outcome.get("execution_count"),
            "error_name": outcome.get("error_name"),
            "traceback": outcome.get("traceback", []),
            "variables": outcome.get("variables"),
            "started_at": _iso(started_at),
            "completed_at": _iso(utc_now()),
            "kernel_runtime": self.runtime(),
        }


# --------------------------------------------------------------------------- server model


@attrs.define
class FakeUser:
    """Who a personal API key belongs to. ``scopes`` None is a legacy key without scopes
    (allowed everything its version allows); otherwise the key's scopes (``"*"``: all)."""

    id: int
    email: str
    first_name: str = "Test"
    scopes: frozenset[str] | None = None

    def missing(self, needed: tuple[str, ...]) -> str | None:
        """The first scope of ``needed`` this key lacks (``:write`` covers ``:read``)."""
        if self.scopes is None or "*" in self.scopes:
            return None
        for scope in needed:
            write = scope.replace(":read", ":write")
            if scope not in self.scopes and write not in self.scopes:
                return scope
        return None

    def basic(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uuid": str(uuid.UUID(int=self.id)),
            "distinct_id": f"user-{self.id}",
            "first_name": self.first_name,
            "last_name": "",
            "email": self.email,
            "is_email_verified": True,
            "hedgehog_config": None,
            "role_at_organization": None,
        }


_USER_KEY: web.RequestKey[FakeUser] = web.RequestKey("posthog_user", FakeUser)


@attrs.define(eq=False)
class FakeNotebook:
    """A stored notebook. ``run_status`` (if set) is what ``GET runs/{id}/`` reports instead
    of ``running`` while a server-side run of it is in progress."""

    short_id: str
    id: str
    title: str | None
    content: dict[str, Any] | None
    text_content: str | None
    created_by: FakeUser
    version: int = 0
    deleted: bool = False
    created_at: datetime = attrs.field(factory=utc_now)
    last_modified_at: datetime = attrs.field(factory=utc_now)
    last_modified_by: FakeUser | None = None
    run_status: str | None = None
    #: Collab stream entries: (version, sequence, event, data).
    stream: list[tuple[int, int, str, dict[str, Any]]] = attrs.field(factory=list)
    #: Versions up to this one were trimmed from the stream (a client behind them gets 410).
    trimmed_through: int = 0
    presence: list[tuple[float, dict[str, Any]]] = attrs.field(factory=list)
    markdown_updates: list[dict[str, Any]] = attrs.field(factory=list)
    subscribers: set[asyncio.Queue[tuple[str | None, str, dict[str, Any]] | None]] = attrs.field(
        factory=set
    )
    #: The notebook's saved variables (a server run's ``variables`` replace them, on "new").
    variables: list[dict[str, Any]] = attrs.field(factory=list)

    def minimal(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "short_id": self.short_id,
            "title": self.title,
            "deleted": self.deleted,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by.basic(),
            "last_modified_at": _iso(self.last_modified_at),
            "last_modified_by": (self.last_modified_by or self.created_by).basic(),
            "user_access_level": "editor",
        }

    def full(self) -> dict[str, Any]:
        return {
            **self.minimal(),
            "content": self.content,
            "text_content": self.text_content,
            "version": self.version,
            "parent_resource": None,
        }

    def publish(self, event: str, data: dict[str, Any], *, id: str | None) -> None:
        for queue in list(self.subscribers):
            queue.put_nowait((id, event, data))


@attrs.define(eq=False)
class FakeCellRun:
    """A server-side cell run (``sql_v2/runs/{id}/``)."""

    run_id: str
    node_id: str | None
    kind: str
    status: str = "running"
    envelope: dict[str, Any] | None = None
    error: str | None = None


@attrs.define(eq=False)
class FakeServerRun:
    """A server-side whole-notebook run (``runs/{id}/``)."""

    run_id: str
    short_id: str
    variables: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    kernel: FakeKernel
    status: str = "running"
    current_index: int | None = None
    current_node_id: str | None = None
    failed_node_id: str | None = None
    error: str | None = None
    created_at: datetime = attrs.field(factory=utc_now)
    finished_at: datetime | None = None
    task: asyncio.Task[None] | None = None


class PostHogFakeServer(FakeServer):
    """The fake PostHog (see the module docstring). Knobs for tests:

    * ``version`` ("old" / "new"), ``runs_flag``, ``personal_keys_on_unscoped_actions``:
      which PostHog this is (see the module docstring);
    * ``faults``: scripted HTTP faults (from :class:`FakeServer`);
    * ``add_user(token, scopes=("notebook:read",))``: another caller with a scoped key
      (``scoped=True``: the ``*`` scope);
    * ``kernel_stream_errors``: the next N execute streams send an ``event: error`` frame;
    * ``collab_stream_errors``: the next N collab streams send ``event: error`` and close;
    * ``collab_stream_lifetime`` / ``collab_keepalive``: seconds before a collab stream is
      closed by the server / between keepalive comments;
    * ``page_size``: the list's default page size (PostHog: 100).
    """

    vendor = "posthog"

    def __init__(
        self,
        *,
        token: str = "test-token",
        project_id: str = "1",
        version: Literal["old", "new"] = "old",
        runs_flag: bool = True,
        personal_keys_on_unscoped_actions: bool | None = None,
    ) -> None:
        if version not in SERVER_VERSIONS:
            raise ValueError(f"version must be one of {SERVER_VERSIONS}, got {version!r}")
        self.project_id = project_id
        #: Which PostHog this is (see SERVER_VERSIONS).
        self.version = version
        #: The ``revamped-py-notebooks`` flag ("new" only): off, ``runs/`` and ``sql_v2`` 404.
        self.runs_flag = runs_flag
        #: Whether a personal API key without scopes may use actions that declare none (the
        #: kernel, HogQL...): yes on "old", no on "new" (``True`` there emulates a caller the
        #: newer permission check lets through, e.g. a session).
        self.personal_keys_on_unscoped_actions = (
            version == "old"
            if personal_keys_on_unscoped_actions is None
            else personal_keys_on_unscoped_actions
        )
        self.users: dict[str, FakeUser] = {token: FakeUser(1, "ann@example.com", "Ann")}
        self.notebooks: dict[str, FakeNotebook] = {}
        self.kernels: dict[tuple[str, int | str], FakeKernel] = {}
        self.executions: list[FakeExecution] = []
        self.pending: set[asyncio.Future[dict[str, Any]]] = set()
        self.server_runs: dict[str, FakeServerRun] = {}
        self.cell_runs: dict[str, FakeCellRun] = {}
        self.activity: list[dict[str, Any]] = []
        self.kernel_stream_errors = 0
        self.collab_stream_errors = 0
        self.collab_stream_lifetime = 1.0
        self.collab_keepalive = 0.25
        self.page_size = 100
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        super().__init__(token=token)

    # -- setup

    def add_user(
        self,
        token: str,
        *,
        user_id: int | None = None,
        scoped: bool = False,
        scopes: Sequence[str] | None = None,
    ) -> FakeUser:
        """Accept ``token`` as another user: ``scopes`` are its personal API key's scopes
        (``scoped=True`` is ``scopes=("*",)``; neither: a legacy key without scopes)."""
        ident = user_id if user_id is not None else len(self.users) + 1
        chosen = frozenset(scopes) if scopes is not None else frozenset({"*"}) if scoped else None
        user = FakeUser(ident, f"user{ident}@example.com", f"User{ident}", scopes=chosen)
        self.users[token] = user
        return user

    def add_notebook(
        self,
        short_id: str | None = None,
        *,
        title: str | None = "Notebook",
        cells: Sequence[str] = (),
        content: Mapping[str, Any] | None = None,
        text_content: str | None = None,
        run_status: str | None = None,
        markdown: bool = False,
    ) -> FakeNotebook:
        """Store a notebook: ``cells`` are Python sources (node ids ``c0``, ``c1``...), as
        ``ph-python`` nodes or (``markdown=True``, the newer format) ``<PythonV2>`` tags in a
        markdown notebook; or pass a whole ``content`` document."""
        sid = short_id or secrets.token_hex(4)
        if content is None and markdown:
            content = markdown_content(markdown_cells(*(("python", code) for code in cells)))
        if content is None:
            content = notebook_content(
                *(python_cell(code, node_id=f"c{i}") for i, code in enumerate(cells)),
                title=title or "Notebook",
            )
        owner = next(iter(self.users.values()))
        notebook = FakeNotebook(
            short_id=sid,
            id=str(uuid.uuid4()),
            title=title,
            content=dict(content),
            text_content=text_content if text_content is not None else _text_of(content),
            created_by=owner,
            run_status=run_status,
        )
        self.notebooks[sid] = notebook
        return notebook

    def kernel(self, short_id: str, user_id: int = 1) -> FakeKernel:
        """The kernel of (notebook, user), created stopped on first use."""
        key = (short_id, user_id)
        if key not in self.kernels:
            self.kernels[key] = FakeKernel(self, short_id, user_id)
        return self.kernels[key]

    def trim_collab(self, short_id: str) -> None:
        """Forget the collab history (as PostHog's trimming does): behind clients get 410."""
        notebook = self.notebooks[short_id]
        notebook.stream.clear()
        notebook.trimmed_through = notebook.version

    def unauthorized(self) -> web.Response:
        return web.json_response(
            {
                "type": "authentication_error",
                "code": "not_authenticated",
                "detail": "Authentication credentials were not provided.",
                "attr": None,
            },
            status=401,
            headers={
                "WWW-Authenticate": 'Bearer resource_metadata="http://127.0.0.1/.well-known/'
                'oauth-protected-resource"'
            },
        )

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        user = self.users.get(token) if token else None
        if user is None:
            return self.unauthorized()
        request[_USER_KEY] = user
        refused = self._refuse(request, user)
        if refused is not None:
            return refused
        return await handler(request)

    def _refuse(self, request: web.Request, user: FakeUser) -> web.Response | None:
        """What PostHog answers before the view runs: a route this version lacks (404), a
        flag that is off (404), or the key's scopes (403)."""
        route_name = request.match_info.route.name
        name = route_name.partition(".")[0] if route_name else ""
        if name not in _ROUTE_SCOPES:
            return None
        if (name in _NEW_ONLY and (self.version == "old" or not self.runs_flag)) or (
            name in _OLD_ONLY and self.version == "new"
        ):
            return _not_found()
        needed = _ROUTE_SCOPES[name]
        if needed is None:
            if user.scopes is not None or not self.personal_keys_on_unscoped_actions:
                return _error(
                    403, _SCOPED_DETAIL, code="permission_denied", type_="authentication_error"
                )
            return None
        missing = user.missing(needed)
        if missing is not None:
            return _error(
                403,
                f"API key missing required scope '{missing}'",
                code="permission_denied",
                type_="authentication_error",
            )
        return None

    async def close(self) -> None:
        """Stop every kernel execution, run and stream, then the server."""
        self._closing = True
        for notebook in self.notebooks.values():
            for queue in list(notebook.subscribers):
                queue.put_nowait(None)
        for kernel in self.kernels.values():
            kernel.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=5)
        await super().close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- routes

    def setup_routes(self, app: web.Application) -> None:
        base = "/api/projects/{project_id}/notebooks/"
        one = base + "{short_id}/"
        routes: list[tuple[str, str, str, Callable[[web.Request], Any]]] = [
            ("GET", base, "list", self.list_notebooks),
            ("POST", base, "create", self.create_notebook),
            ("GET", base + "activity/", "project_activity", self.project_activity),
            ("GET", base + "recording_comments/", "recording_comments", self.recording_comments),
            ("GET", one, "retrieve", self.retrieve),
            ("PATCH", one, "update", self.update),
            ("PUT", one, "update", self.update),
            ("DELETE", one, "destroy", self.destroy),
            ("GET", one + "activity/", "notebook_activity", self.notebook_activity),
            ("GET", one + "markdown/", "markdown", self.markdown),
            ("POST", one + "collab/save/", "collab_save", self.collab_save),
            (
                "POST",
                one + "collab/markdown_save/",
                "collab_markdown_save",
                self.collab_markdown_save,
            ),
            ("POST", one + "collab/presence/", "collab_presence", self.collab_presence),
            ("GET", one + "collab/stream/", "collab_stream", self.collab_stream),
            ("POST", one + "hogql/execute/", "hogql_execute", self.hogql_execute),
            ("POST", one + "kernel/start/", "kernel_start", self.kernel_start),
            ("POST", one + "kernel/restart/", "kernel_restart", self.kernel_restart),
            ("POST", one + "kernel/stop/", "kernel_stop", self.kernel_stop),
            ("GET", one + "kernel/status/", "kernel_status", self.kernel_status),
            ("POST", one + "kernel/config/", "kernel_config", self.kernel_config),
            ("POST", one + "kernel/execute/", "kernel_execute", self.kernel_execute),
            (
                "POST",
                one + "kernel/execute/stream/",
                "kernel_execute_stream",
                self.kernel_execute_stream,
            ),
            ("GET", one + "kernel/dataframe/", "kernel_dataframe", self.kernel_dataframe),
            ("POST", one + "runs/", "start_run", self.start_run),
            ("GET", one + "runs/{run_id}/", "get_run", self.get_run),
            ("POST", one + "runs/{run_id}/interrupt/", "interrupt_run", self.interrupt_run),
            ("POST", one + "sql_v2/run/", "run_cell", self.run_cell),
            ("GET", one + "sql_v2/runs/{run_id}/", "get_cell_run", self.get_cell_run),
            ("GET", one + "sharing/", "sharing", self.sharing),
            ("PATCH", one + "sharing/", "sharing", self.sharing),
            ("POST", one + "sharing/passwords/", "sharing", self.sharing),
            ("DELETE", one + "sharing/passwords/{password_id}/", "sharing", self.sharing),
            ("POST", one + "sharing/refresh/", "sharing", self.sharing),
        ]
        for position, (method, path, name, handler) in enumerate(routes):
            # Route names are unique: the action's name, then a number.
            app.router.add_route(method, path, handler, name=f"{name}.r{position}")

    # -- request helpers

    def _user(self, request: web.Request) -> FakeUser:
        return request[_USER_KEY]

    def _project_ok(self, request: web.Request) -> bool:
        return request.match_info["project_id"] == self.project_id

    def _notebook(
        self, request: web.Request, *, allow_deleted: bool = False
    ) -> FakeNotebook | None:
        if not self._project_ok(request):
            return None
        notebook = self.notebooks.get(request.match_info["short_id"])
        if notebook is None or (notebook.deleted and not allow_deleted):
            return None
        return notebook

    def _kernel_target(self, request: web.Request) -> tuple[FakeKernel | None, web.Response | None]:
        """The caller's kernel for this notebook, or the error PostHog would answer."""
        user = self._user(request)
        short_id = request.match_info["short_id"]
        if short_id != "scratchpad" and self._notebook(request) is None:
            return None, _not_found()
        return self.kernel(short_id, user.id), None

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any] | None:
        # The request log already read the body; read() returns the cached bytes.
        raw = await request.read() if request.body_exists else b""
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _log(
        self,
        notebook: FakeNotebook,
        user: FakeUser,
        activity: str,
        changes: list[dict[str, Any]] | None = None,
    ) -> None:
        self.activity.insert(
            0,
            {
                "id": str(uuid.uuid4()),
                "user": {"first_name": user.first_name, "email": user.email},
                "activity": activity,
                "scope": "Notebook",
                "item_id": notebook.id,
                "detail": {
                    "changes": changes or [],
                    "name": notebook.title,
                    "short_id": notebook.short_id,
                },
                "created_at": _iso(utc_now()),
            },
        )

    @staticmethod
    def _page(request: web.Request, entries: list[dict[str, Any]]) -> web.Response:
        try:
            limit = int(request.query.get("limit", "10"))
            page = int(request.query.get("page", "1"))
        except ValueError:
            return _error(400, "A valid integer is required.", code="invalid_input", attr="limit")
        limit = max(1, limit)
        page = max(1, page)
        start = (page - 1) * limit
        chunk = entries[start : start + limit]
        more = start + limit < len(entries)
        next_url = (
            str(request.url.update_query({"limit": limit, "page": page + 1})) if more else None
        )
        previous = (
            str(request.url.update_query({"limit": limit, "page": page - 1})) if page > 1 else None
        )
        return web.json_response(
            {"results": chunk, "next": next_url, "previous": previous, "total_count": len(entries)}
        )

    # -- notebooks

    async def list_notebooks(self, request: web.Request) -> web.Response:
        if not self._project_ok(request):
            return _not_found()
        query = request.query
        user = self._user(request)
        items = [nb for nb in self.notebooks.values() if not nb.deleted]
        if "user" in query:
            items = [nb for nb in items if nb.created_by.id == user.id]
        if "created_by" in query:
            items = [nb for nb in items if nb.created_by.basic()["uuid"] == query["created_by"]]
        if "search" in query:
            needle = query["search"].lower()
            items = [
                nb
                for nb in items
                if needle in (nb.title or "").lower() or needle in (nb.text_content or "").lower()
            ]
        bounds: tuple[tuple[str, Callable[[datetime, datetime], bool]], ...] = (
            ("date_from", lambda a, b: a > b),
            ("date_to", lambda a, b: a < b),
        )
        for key, keep in bounds:
            if key in query:
                try:
                    bound = datetime.fromisoformat(query[key].replace("Z", "+00:00"))
                except ValueError:
                    return _error(400, f"Invalid {key}.", code="invalid_input", attr=key)
                if bound.tzinfo is None:
                    bound = bound.replace(tzinfo=UTC)
                items = [nb for nb in items if keep(nb.last_modified_at, bound)]
        if "contains" in query:
            for pair in query["contains"].replace(",", " ").split():
                target, _, match = pair.partition(":")
                node_type = "ph-" + (target[:-1] if target.endswith("s") else target)

                def has(nb: FakeNotebook, node_type: str = node_type, match: str = match) -> bool:
                    nodes = [
                        node
                        for node in (nb.content or {}).get("content", [])
                        if isinstance(node, dict) and node.get("type") == node_type
                    ]
                    if match in ("", "true"):
                        return bool(nodes)
                    if match == "false":
                        return not nodes
                    return any((node.get("attrs") or {}).get("id") == match for node in nodes)

                items = [nb for nb in items if has(nb)]
        items.sort(key=lambda nb: nb.last_modified_at, reverse=True)
        try:
            limit = int(query.get("limit", str(self.page_size)))
            offset = int(query.get("offset", "0"))
        except ValueError:
            return _error(400, "A valid integer is required.", code="invalid_input", attr="limit")
        chunk = items[offset : offset + limit]
        next_url = (
            str(request.url.update_query({"limit": limit, "offset": offset + limit}))
            if offset + limit < len(items)
            else None
        )
        previous = (
            str(request.url.update_query({"limit": limit, "offset": max(0, offset - limit)}))
            if offset > 0
            else None
        )
        return web.json_response(
            {
                "count": len(items),
                "next": next_url,
                "previous": previous,
                "results": [nb.minimal() for nb in chunk],
            }
        )

    async def create_notebook(self, request: web.Request) -> web.Response:
        if not self._project_ok(request):
            return _not_found()
        body = await self._body(request)
        if body is None:
            return _error(400, "JSON parse error.", code="parse_error", type_="invalid_request")
        short_id = body.get("short_id")
        if short_id is not None:
            if not isinstance(short_id, str) or not short_id.isalnum() or len(short_id) > 12:
                return _error(400, "Invalid short_id.", code="invalid_input", attr="short_id")
            if short_id in self.notebooks:
                return _error(
                    400,
                    "A notebook with this short_id already exists.",
                    code="unique",
                    attr="short_id",
                )
        content = body.get("content")
        if content is not None and not isinstance(content, dict):
            return _error(400, "Invalid content.", code="invalid_input", attr="content")
        user = self._user(request)
        notebook = self.add_notebook(
            short_id,
            title=body.get("title"),
            content=content or {"type": "doc", "content": []},
            text_content=body.get("text_content"),
        )
        notebook.created_by = user
        notebook.last_modified_by = user
        if isinstance(body.get("version"), int):
            notebook.version = body["version"]
        self._log(notebook, user, "created")
        return web.json_response(notebook.full(), status=201)

    async def retrieve(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        if request.headers.get("If-None-Match") == str(notebook.version):
            return web.Response(status=304)
        return web.json_response(notebook.full())

    async def update(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request, allow_deleted=True)
        if notebook is None:
            return _not_found()
        body = await self._body(request)
        if body is None:
            return _error(400, "JSON parse error.", code="parse_error", type_="invalid_request")
        user = self._user(request)
        if "content" in body and body.get("version") != notebook.version:
            return _error(
                409, "Someone else edited the Notebook", code="conflict", type_="server_error"
            )
        changes = []
        activity = "updated"
        if "deleted" in body and bool(body["deleted"]) != notebook.deleted:
            notebook.deleted = bool(body["deleted"])
            activity = "deleted" if notebook.deleted else "restored"
        for field in ("title", "text_content"):
            if field in body:
                changes.append(
                    {
                        "type": "Notebook",
                        "action": "changed",
                        "field": field,
                        "before": getattr(notebook, field),
                        "after": body[field],
                    }
                )
                setattr(notebook, field, body[field])
        if "content" not in body and isinstance(body.get("version"), int):
            # PostHog writes a version sent without content straight to the row.
            notebook.version = body["version"]
        if "content" in body:
            notebook.content = body["content"]
            notebook.version += 1
            changes.append({"type": "Notebook", "action": "changed", "field": "content"})
            notebook.stream.append(
                (notebook.version, 1, "update", {"type": "update", "version": notebook.version})
            )
            notebook.publish(
                "update",
                {"type": "update", "version": notebook.version},
                id=f"{notebook.version}-1",
            )
        if body:
            notebook.last_modified_at = utc_now()
            notebook.last_modified_by = user
            self._log(notebook, user, activity, changes)
        return web.json_response(notebook.full())

    async def destroy(self, request: web.Request) -> web.Response:
        return web.Response(status=405)

    async def markdown(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        nodes = (notebook.content or {}).get("content") or []
        text: str | None
        if len(nodes) == 1 and nodes[0].get("type") == "ph-markdown-notebook":
            text = nodes[0].get("attrs", {}).get("markdown", "")
        elif self.version == "new":
            text = None  # newer servers: no markdown for a rich-text notebook
        else:
            text = f"# {notebook.title or ''}\n\n{notebook.text_content or ''}"
        return web.json_response({"markdown": text})

    async def notebook_activity(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        entries = [entry for entry in self.activity if entry["item_id"] == notebook.id]
        return self._page(request, entries)

    async def project_activity(self, request: web.Request) -> web.Response:
        if not self._project_ok(request):
            return _not_found()
        return self._page(request, list(self.activity))

    async def recording_comments(self, request: web.Request) -> web.Response:
        if not self._project_ok(request):
            return _not_found()
        recording_id = request.query.get("recording_id")
        if not recording_id:
            return web.json_response({"detail": "recording_id is required"}, status=400)
        results = []
        for notebook in self.notebooks.values():
            if notebook.deleted:
                continue
            for node in (notebook.content or {}).get("content") or []:
                children = node.get("content") if isinstance(node, dict) else None
                if (
                    node.get("type") != "paragraph"
                    or not isinstance(children, list)
                    or len(children) != 2
                ):
                    continue
                stamp, text = children
                stamp_attrs = stamp.get("attrs") or {}
                if (
                    stamp.get("type") != "ph-replay-timestamp"
                    or stamp_attrs.get("sessionRecordingId") != recording_id
                ):
                    continue
                comment = text.get("text", "")
                ident = f"{notebook.short_id}:{stamp_attrs.get('playbackTime')}:{comment}"
                results.append(
                    {
                        "timeInRecording": stamp_attrs.get("playbackTime"),
                        "comment": comment,
                        "notebookShortId": notebook.short_id,
                        "notebookTitle": notebook.title,
                        "id": hashlib.sha256(ident.encode()).hexdigest(),
                    }
                )
        return web.json_response({"results": results})

    # -- sharing

    async def sharing(self, request: web.Request) -> web.Response:
        """Every ``sharing/`` route: PostHog routes them for notebooks, but its sharing view
        only knows dashboards, insights and recordings, so each call is a 400."""
        if self._notebook(request) is None:
            return _not_found()
        return _error(400, _SHARING_DETAIL, code="invalid_input")

    # -- collaboration

    async def collab_save(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        body = await self._body(request)
        if body is None:
            return _error(400, "JSON parse error.", code="parse_error", type_="invalid_request")
        for field in ("client_id", "version", "steps", "content"):
            if field not in body:
                return _error(400, "This field is required.", code="required", attr=field)
        version, steps, client_id = body["version"], body["steps"], body["client_id"]
        if not isinstance(version, int) or not isinstance(steps, list):
            return _error(400, "Invalid input.", code="invalid_input", attr="version")
        user = self._user(request)
        head = notebook.version
        if version != head:
            missed = [
                entry for entry in notebook.stream if entry[2] == "step" and entry[0] > version
            ]
            if (
                version > head
                or version < notebook.trimmed_through
                or len(missed) != head - version
            ):
                self._log(notebook, user, "save_rejected_stale")
                return web.json_response({"code": "conflict_stale"}, status=410)
            self._log(notebook, user, "save_rejected_conflict")
            return web.json_response(
                {
                    "code": "conflict",
                    "steps": [entry[3]["step"] for entry in missed],
                    "client_ids": [entry[3]["client_id"] for entry in missed],
                    "version": head,
                },
                status=409,
            )
        for offset, step in enumerate(steps, start=1):
            data: dict[str, Any] = {
                "step": step,
                "client_id": client_id,
                "user_id": user.id,
                "user_name": user.first_name,
            }
            if body.get("cursor_head") is not None:
                data["cursor_head"] = body["cursor_head"]
            notebook.stream.append((head + offset, 0, "step", data))
            notebook.publish("step", data, id=f"{head + offset}-0")
        notebook.version = head + len(steps)
        notebook.content = body["content"]
        notebook.text_content = body.get("text_content", "")
        if "title" in body:
            notebook.title = body["title"]
        notebook.last_modified_at = utc_now()
        notebook.last_modified_by = user
        self._log(notebook, user, "updated")
        return web.json_response(notebook.full())

    async def collab_markdown_save(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        body = await self._body(request)
        if body is None:
            return _error(400, "JSON parse error.", code="parse_error", type_="invalid_request")
        for field in ("client_id", "version", "content"):
            if field not in body:
                return _error(400, "This field is required.", code="required", attr=field)
        content = body["content"]
        nodes = content.get("content") if isinstance(content, dict) else None
        if (
            not isinstance(nodes, list)
            or len(nodes) != 1
            or nodes[0].get("type") != "ph-markdown-notebook"
        ):
            return _error(
                400, "Content must be a markdown notebook.", code="invalid_input", attr="content"
            )
        version = body["version"]
        head = notebook.version
        if version != head:
            missed = [u for u in notebook.markdown_updates if u["version"] > version]
            if version > head or len(missed) != head - version:
                return web.json_response({"code": "conflict_stale"}, status=410)
            return web.json_response(
                {"code": "conflict", "updates": missed, "version": head}, status=409
            )
        old = (
            ((notebook.content or {}).get("content") or [{}])[0]
            .get("attrs", {})
            .get("markdown", "")
        )
        new = nodes[0].get("attrs", {}).get("markdown", "")
        base_crc = zlib.crc32(old.encode("utf-16-le"))
        diff = [{"start": 0, "end": len(old.encode("utf-16-le")) // 2, "text": new}]
        notebook.version = head + 1
        update = {
            "version": notebook.version,
            "diff": diff,
            "base_crc": base_crc,
            "client_id": body["client_id"],
        }
        notebook.markdown_updates.append(update)
        notebook.content = content
        notebook.text_content = body.get("text_content", "")
        if "title" in body:
            notebook.title = body["title"]
        data = {
            "type": "update",
            "client_id": body["client_id"],
            "diff": diff,
            "base_crc": base_crc,
        }
        notebook.stream.append((notebook.version, 0, "update", data))
        notebook.publish("update", data, id=f"{notebook.version}-0")
        return web.json_response(notebook.full())

    async def collab_presence(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        body = await self._body(request) or {}
        for field in ("client_id", "version", "cursor"):
            if field not in body:
                return _error(400, "This field is required.", code="required", attr=field)
        if not isinstance(body["client_id"], str) or not isinstance(body["version"], int):
            return _error(400, "Invalid input.", code="invalid_input", attr="client_id")
        if not isinstance(body["cursor"], dict):
            return _error(400, "Invalid input.", code="invalid_input", attr="cursor")
        user = self._user(request)
        data = {
            "type": "presence",
            "client_id": body["client_id"],
            "user_id": user.id,
            "user_name": user.first_name,
            "version": body["version"],
            "cursor": body["cursor"],
        }
        notebook.presence.append((asyncio.get_running_loop().time(), data))
        notebook.publish("presence", data, id=None)
        return web.Response(status=204)

    async def collab_stream(self, request: web.Request) -> web.StreamResponse:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        queue: asyncio.Queue[tuple[str | None, str, dict[str, Any]] | None] = asyncio.Queue()
        notebook.subscribers.add(queue)
        response = web.StreamResponse(status=200, headers=dict(SSE_HEADERS))
        try:
            await response.prepare(request)
            last = self._stream_position(request.headers.get("Last-Event-ID"), notebook)
            for entry_version, entry_seq, entry_event, entry_data in notebook.stream:
                if (entry_version, entry_seq) > last:
                    await response.write(
                        _sse(entry_event, entry_data, id=f"{entry_version}-{entry_seq}")
                    )
                    last = (entry_version, entry_seq)
            now = asyncio.get_running_loop().time()
            for when, presence in notebook.presence:
                if now - when <= 10:
                    await response.write(_sse("presence", presence))
            if self.collab_stream_errors > 0:
                self.collab_stream_errors -= 1
                await response.write(_sse("error", {"error": "stream error"}))
                return response
            deadline = now + self.collab_stream_lifetime
            while not self._closing:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(
                        queue.get(), min(remaining, self.collab_keepalive)
                    )
                except TimeoutError:
                    if deadline - asyncio.get_running_loop().time() > 0:
                        await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                ident, event, data = item
                if ident is not None:
                    head, _, tail = ident.partition("-")
                    position = (int(head), int(tail))
                    if position <= last:
                        continue
                    last = position
                await response.write(_sse(event, data, id=ident))
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            notebook.subscribers.discard(queue)
        return response

    @staticmethod
    def _stream_position(header: str | None, notebook: FakeNotebook) -> tuple[int, int]:
        if header:
            version, _, seq = header.partition("-")
            try:
                return int(version), int(seq or "0")
            except ValueError:
                pass
        # No (valid) Last-Event-ID: start at the newest entry.
        if notebook.stream:
            return notebook.stream[-1][0], notebook.stream[-1][1]
        return notebook.version, 9

    # -- HogQL

    async def hogql_execute(self, request: web.Request) -> web.Response:
        if request.match_info["short_id"] != "scratchpad" and self._notebook(request) is None:
            return _not_found()
        body = await self._body(request)
        query = body.get("query") if body else None
        if not isinstance(query, str):
            return _error(400, "This field is required.", code="required", attr="query")
        if not query.strip():
            return web.json_response(
                {"results": [], "columns": [], "types": [], "hasMore": False, "query": query}
            )
        if "select" not in query.lower():
            return web.json_response(
                {
                    "error": "Syntax error at line 1, column 0: no viable alternative at "
                    f"input '{query[:20]}'"
                },
                status=400,
            )
        return web.json_response(
            {
                "results": HOGQL_ROWS,
                "columns": HOGQL_COLUMNS,
                "types": HOGQL_TYPES,
                "hasMore": False,
                "limit": 100,
                "offset": 0,
                "query": query,
            }
        )

    # -- kernel

    async def kernel_start(self, request: web.Request) -> web.Response:
        kernel, error = self._kernel_target(request)
        if kernel is None:
            assert error is not None
            return error
        kernel.start()
        return web.json_response({"id": kernel.runtime_id, "status": kernel.status})

    async def kernel_restart(self, request: web.Request) -> web.Response:
        kernel, error = self._kernel_target(request)
        if kernel is None:
            assert error is not None
            return error
        kernel.stop()
        kernel.start()
        return web.json_response({"id": kernel.runtime_id, "status": kernel.status})

    async def kernel_stop(self, request: web.Request) -> web.Response:
        kernel, error = self._kernel_target(request)
        if kernel is None:
            assert error is not None
            return error
        return web.json_response({"stopped": kernel.stop()})

    async def kernel_status(self, request: web.Request) -> web.Response:
        kernel, error = self._kernel_target(request)
        if kernel is None:
            assert error is not None
            return error
        config = kernel.config
        return web.json_response(
            {
                "backend": "docker",
                "status": kernel.status,
                "last_used_at": kernel.last_used_at.isoformat() if kernel.last_used_at else None,
                "last_error": None,
                "runtime_id": kernel.runtime_id,
                "kernel_id": kernel.runtime_id and f"k-{kernel.runtime_id[:8]}",
                "kernel_pid": 4242 if kernel.status == "running" else None,
                "sandbox_id": kernel.runtime()["sandbox_id"],
                "cpu_cores": config["cpu_cores"] or 1,
                "memory_gb": config["memory_gb"] or 2,
                "disk_size_gb": 10,
                "idle_timeout_seconds": config["idle_timeout_seconds"] or 600,
                "frames": [],
            }
        )

    async def kernel_config(self, request: web.Request) -> web.Response:
        kernel, error = self._kernel_target(request)
        if kernel is None:
            assert error is not None
            return error
        body = await self._body(request) or {}
        allowed = {
            "cpu_cores": ALLOWED_CPU_CORES,
            "memory_gb": ALLOWED_MEMORY_GB,
            "idle_timeout_seconds": ALLOWED_IDLE_TIMEOUTS,
        }
        given = {key: body[key] for key in allowed if body.get(key) is not None}
        if not given:
            return _error(
                400,
                "Provide at least one of cpu_cores, memory_gb, idle_timeout_seconds.",
                code="invalid_input",
            )
        for key, value in given.items():
            if value not in allowed[key]:
                return _error(
                    400, f'"{value}" is not a valid choice.', code="invalid_choice", attr=key
                )
        kernel.config.update(given)
        return web.json_response({**kernel.config, "restart_required": kernel.status == "running"})

    def _execute_args(
        self, body: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        if body is None:
            return None, _error(
                400, "JSON parse error.", code="parse_error", type_="invalid_request"
            )
        code = body.get("code")
        if not isinstance(code, str):
            return None, _error(400, "This field is required.", code="required", attr="code")
        timeout = body.get("timeout", 30)
        if not isinstance(timeout, int | float) or not 0.1 <= timeout <= 120:
            return None, _error(
                400,
                "Ensure this value is between 0.1 and 120.",
                code="invalid_input",
                attr="timeout",
            )
        return {
            "code": code,
            # PostHog truncates with int(): 0.5 becomes 0, an immediate timeout.
            "timeout": float(int(timeout)),
            "return_variables": bool(body.get("return_variables", True)),
        }, None

    async def kernel_execute(self, request: web.Request) -> web.Response:
        kernel, error = self._kernel_target(request)
        if kernel is None:
            assert error is not None
            return error
        args, error = self._execute_args(await self._body(request))
        if args is None:
            assert error is not None
            return error
        result = await kernel.execute(
            args["code"], timeout=args["timeout"], return_variables=args["return_variables"]
        )
        return web.json_response(result)

    async def kernel_execute_stream(self, request: web.Request) -> web.StreamResponse:
        kernel, error = self._kernel_target(request)
        if kernel is None:
            assert error is not None
            return error
        accept = request.headers.get("Accept", "*/*")
        if "text/event-stream" not in accept and "*/*" not in accept:
            return _error(
                406,
                "Could not satisfy the request Accept header.",
                code="not_acceptable",
                type_="invalid_request",
            )
        args, error = self._execute_args(await self._body(request))
        if args is None:
            assert error is not None
            return error
        response = web.StreamResponse(status=200, headers=dict(SSE_HEADERS))
        await response.prepare(request)
        if self.kernel_stream_errors > 0:
            self.kernel_stream_errors -= 1
            await response.write(_sse("error", {"error": "Failed to execute notebook code."}))
            return response
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()

        def client_gone() -> bool:
            transport = request.transport
            return transport is None or transport.is_closing()

        task = asyncio.ensure_future(
            kernel.execute(
                args["code"],
                timeout=args["timeout"],
                return_variables=args["return_variables"],
                on_output=lambda name, text: queue.put_nowait((name, text)),
                client_gone=client_gone,
            )
        )
        task.add_done_callback(lambda _: queue.put_nowait(None))
        connected = True
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if connected:
                    try:
                        await response.write(_sse(item[0], {"text": item[1]}))
                    except (ConnectionError, RuntimeError):
                        connected = False
            result = await task
            if connected:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await response.write(_sse("result", result))
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return response

    async def kernel_dataframe(self, request: web.Request) -> web.Response:
        kernel, error = self._kernel_target(request)
        if kernel is None:
            assert error is not None
            return error
        name = request.query.get("variable_name", "")
        if not name.isidentifier():
            return _error(
                400, "Enter a valid identifier.", code="invalid_input", attr="variable_name"
            )
        try:
            offset = int(request.query.get("offset", "0"))
            limit = int(request.query.get("limit", "10"))
        except ValueError:
            return _error(400, "A valid integer is required.", code="invalid_input", attr="limit")
        if offset < 0 or not 1 <= limit <= 500:
            return _error(
                400, "Ensure limit is between 1 and 500.", code="invalid_input", attr="limit"
            )
        if kernel.status != "running" or name not in kernel.namespace:
            return web.json_response({"detail": "Failed to fetch dataframe data."}, status=503)
        value = kernel.namespace[name]
        for method in ("to_df", "to_pandas"):
            if hasattr(value, method):
                value = getattr(value, method)()
        if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
            return web.json_response({"detail": "Invalid dataframe request."}, status=400)
        columns = list(dict.fromkeys(key for row in value for key in row))
        return web.json_response(
            {"columns": columns, "rows": value[offset : offset + limit], "row_count": len(value)}
        )

    # -- server-side runs

    async def start_run(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        body = await self._body(request)
        if body is None:
            return _error(400, "JSON parse error.", code="parse_error", type_="invalid_request")
        variables = body.get("variables", [])
        refused = _check_run_variables(variables)
        if refused is not None:
            return refused
        cells = [cell for cell in _markdown_run_cells(notebook.content) if cell["code"].strip()]
        if not cells:
            return _error(400, "This notebook has no cells to run.", code="invalid_input")
        if any(
            run.short_id == notebook.short_id and run.status == "running"
            for run in self.server_runs.values()
        ):
            return _error(
                409,
                "A run is already in progress for this notebook.",
                code="conflict",
                type_="server_error",
            )
        if "variables" in body:
            notebook.variables = list(variables)  # newer servers replace the saved ones
        run_id = str(uuid.uuid4())
        run = FakeServerRun(
            run_id=run_id,
            short_id=notebook.short_id,
            variables=list(variables),
            cells=[
                {
                    "node_id": cell["node_id"],
                    "cell_type": cell["kind"],
                    "code": cell["code"],
                    "dataframe_name": None,
                    "run_id": None,
                    "status": None,  # null until the cell's turn
                    "error": None,
                }
                for cell in cells
            ],
            kernel=FakeKernel(self, notebook.short_id, -1),
        )
        self.server_runs[run_id] = run
        run.task = self._spawn(self._drive_run(run))
        return web.json_response(
            {
                "run_id": run_id,
                "cell_count": len(cells),
                "starts_sandbox": True,
                "sandbox_hourly_price": "0.10",
            }
        )

    async def _drive_run(self, run: FakeServerRun) -> None:
        try:
            run.kernel.start()
            run.kernel.namespace.update(
                {item["name"]: item["value"] for item in run.variables or []}
            )
            for index, cell in enumerate(run.cells):
                run.current_index = index
                run.current_node_id = cell["node_id"]
                cell["status"] = "running"
                cell_run = FakeCellRun(
                    run_id=str(uuid.uuid4()), node_id=cell["node_id"], kind=cell["cell_type"]
                )
                self.cell_runs[cell_run.run_id] = cell_run
                cell["run_id"] = cell_run.run_id
                await self._execute_cell_run(cell_run, run.kernel, cell["code"])
                cell["status"] = cell_run.status
                if cell_run.status != "done":
                    cell["error"] = cell_run.error
                    run.status = "failed"
                    run.failed_node_id = cell["node_id"]
                    run.error = cell_run.error
                    return
            run.status = "done"
        except asyncio.CancelledError:
            run.status = "interrupted"
            raise
        finally:
            run.finished_at = utc_now()
            run.current_node_id = None
            run.kernel.stop()

    async def _execute_cell_run(self, cell_run: FakeCellRun, kernel: FakeKernel, code: str) -> None:
        if cell_run.kind == "hogql":
            if "select" not in code.lower():
                # A failed cell run has no result envelope: its reason is in ``error``.
                cell_run.status, cell_run.error = "failed", "HogQL syntax error"
                return
            cell_run.status = "done"
            cell_run.envelope = {
                "status": "ok",
                "columns": HOGQL_COLUMNS,
                "types": HOGQL_TYPES,
                "row_count": len(HOGQL_ROWS),
                "has_more": False,
                "first_page": HOGQL_ROWS,
                "result_id": cell_run.run_id,
                "error": None,
            }
            return
        result = await kernel.execute(code, timeout=120)
        if result["status"] != "ok":
            cell_run.status = "failed"
            cell_run.error = "\n".join(result["traceback"]) or result["status"]
            return
        cell_run.status = "done"
        cell_run.envelope = {
            "status": "ok",
            "stdout": result["stdout"],
            "stderr": result["stderr"],
            "media": result["media"],
            "columns": None,
            "error": None,
        }

    def _server_run(self, request: web.Request) -> FakeServerRun | None:
        notebook = self._notebook(request)
        run = self.server_runs.get(request.match_info["run_id"])
        if notebook is None or run is None or run.short_id != notebook.short_id:
            return None
        return run

    async def get_run(self, request: web.Request) -> web.Response:
        run = self._server_run(request)
        if run is None:
            return _not_found()
        notebook = self.notebooks[run.short_id]
        status = run.status
        if status == "running" and notebook.run_status:
            status = notebook.run_status
        return web.json_response(
            {
                "run_id": run.run_id,
                "status": status,
                "trigger": "mcp",
                "variables": run.variables,
                "cell_count": len(run.cells),
                "current_index": run.current_index,
                "current_node_id": run.current_node_id,
                "failed_node_id": run.failed_node_id,
                "error": run.error,
                "cells": [{k: v for k, v in cell.items() if k != "code"} for cell in run.cells],
                "created_at": _iso(run.created_at),
                "finished_at": _iso(run.finished_at),
            }
        )

    async def interrupt_run(self, request: web.Request) -> web.Response:
        run = self._server_run(request)
        if run is None:
            return _not_found()
        if run.status != "running" or run.task is None:
            return web.json_response({"interrupted": False, "status": run.status})
        run.kernel.stop()
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run.task
        return web.json_response({"interrupted": True, "status": run.status})

    async def run_cell(self, request: web.Request) -> web.Response:
        notebook = self._notebook(request)
        if notebook is None:
            return _not_found()
        body = await self._body(request) or {}
        for field in ("node_id", "node_type", "code"):
            if not isinstance(body.get(field), str) or not body[field].strip():
                return _error(400, "This field is required.", code="required", attr=field)
        if body["node_type"] not in ("hogql", "python"):
            return _error(
                400,
                f'"{body["node_type"]}" is not a valid choice.',
                code="invalid_choice",
                attr="node_type",
            )
        cell_run = FakeCellRun(
            run_id=str(uuid.uuid4()), node_id=body["node_id"], kind=body["node_type"]
        )
        self.cell_runs[cell_run.run_id] = cell_run
        kernel = self.kernel(f"{notebook.short_id}:v2", self._user(request).id)
        self._spawn(self._execute_cell_run(cell_run, kernel, body["code"]))
        return web.json_response({"run_id": cell_run.run_id})

    async def get_cell_run(self, request: web.Request) -> web.Response:
        if self._notebook(request) is None:
            return _not_found()
        cell_run = self.cell_runs.get(request.match_info["run_id"])
        if cell_run is None:
            return _not_found()
        return web.json_response(
            {"status": cell_run.status, "result": cell_run.envelope, "error": cell_run.error}
        )

    # -- conformance helpers

    def remote_cancelled(self, handle: RunHandle) -> bool:
        """Whether the run behind ``handle`` is no longer executing on this server."""
        if handle.extra.get("mode") == "server":
            run = self.server_runs.get(handle.run_id)
            return run is not None and run.status == "interrupted"
        return not any(
            execution.short_id == handle.notebook_id
            and execution.running
            and not execution.interrupt.is_set()
            and not execution.client_gone()
            for execution in self.executions
        )


def _check_run_variables(variables: Any) -> web.Response | None:
    """``NotebookRunRequestSerializer``'s checks on ``variables`` (PostHog's words)."""
    if not isinstance(variables, list):
        return _error(
            400,
            f'Expected a list of items but got type "{type(variables).__name__}".',
            code="not_a_list",
            attr="variables",
        )
    if len(variables) > 10:
        return _error(
            400,
            "Ensure this field has no more than 10 elements.",
            code="max_length",
            attr="variables",
        )
    for item in variables:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name.isidentifier():
            return _error(
                400, "Enter a valid variable name.", code="invalid_input", attr="variables"
            )
        value = item.get("value")
        if value is not None and not isinstance(value, str | int | float | bool):
            return _error(
                400, "Variable values must be scalars.", code="invalid_input", attr="variables"
            )
    return None


@asynccontextmanager
async def posthog_server(
    *,
    token: str = "test-token",
    project_id: str = "1",
    version: Literal["old", "new"] = "old",
    runs_flag: bool = True,
    personal_keys_on_unscoped_actions: bool | None = None,
) -> AsyncIterator[PostHogFakeServer]:
    """A started :class:`PostHogFakeServer`, closed on exit (see its knobs)."""
    server = PostHogFakeServer(
        token=token,
        project_id=project_id,
        version=version,
        runs_flag=runs_flag,
        personal_keys_on_unscoped_actions=personal_keys_on_unscoped_actions,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()


#: The conformance "long" cell: runs for up to two minutes in short sleeps, so an interrupt
#: (kernel/stop) lands within one of them.
LONG_CELL = "import time\nfor _ in range(2400):\n    time.sleep(0.05)\n"


@asynccontextmanager
async def posthog_target(
    version: Literal["old", "new"] = "old",
    mode: RunMode = "auto",
    *,
    runs_flag: bool = True,
    personal_keys_on_unscoped_actions: bool | None = None,
) -> AsyncIterator[ConformanceTarget]:
    """The conformance target: a fresh fake server of ``version`` with the suite's notebooks
    (rich-text on "old", markdown-format on "new"), and backends in ``mode``."""
    # Imported here: the conformance suite needs pytest, and the fake server (shipped for
    # the sandbox) must not.
    from .conformance import FAST_POLL, ConformanceTarget

    class PostHogTarget(ConformanceTarget):
        """PostHogBackend against a :class:`PostHogFakeServer` (see :func:`posthog_target`)."""

        poll: PollPolicy = FAST_POLL

        def __init__(self, server: PostHogFakeServer) -> None:
            self.server = server
            markdown = version == "new"
            server.add_notebook(
                "ok",
                cells=["total = sum(range(5))\nprint(greeting, total)", "total * 2"],
                markdown=markdown,
            )
            server.add_notebook("bad", cells=["x = 1", "x / 0"], markdown=markdown)
            server.add_notebook("long", cells=[LONG_CELL], markdown=markdown)
            server.add_notebook("odd", cells=[LONG_CELL], run_status="warming_up", markdown=True)
            self.server_runs = version == "new" and runs_flag and mode != "kernel"

        def make_backend(self) -> NotebookBackend:
            return PostHogBackend(
                self.server.token,
                project_id=self.server.project_id,
                base_url=self.server.url,
                mode=mode,
                poll=FAST_POLL,
                retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.05),
                cancel_timeout=5.0,
            )

        def request(self, outcome: Outcome) -> RunRequest | None:
            if outcome == "succeed":
                return RunRequest(notebook="ok", inputs={"greeting": "hello"})
            if outcome == "fail":
                return RunRequest(notebook="bad")
            if outcome == "long":
                return RunRequest(notebook="long")
            return RunRequest(notebook="odd") if self.server_runs else None

        def remote_cancelled(self, handle: RunHandle) -> bool | None:
            return self.server.remote_cancelled(handle)

    async with posthog_server(
        version=version,
        runs_flag=runs_flag,
        personal_keys_on_unscoped_actions=personal_keys_on_unscoped_actions,
    ) as server:
        yield PostHogTarget(server)
