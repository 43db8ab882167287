"""The PostHog notebooks adapter: every documented endpoint, and runs through the kernel.

PostHog notebooks have no server-side "run" in the documented API: the server stores the
document and offers a sandboxed Python kernel (one per notebook and user). So in its default
``kernel`` mode this backend runs a notebook itself: it reads the document, takes the cells in
document order and executes them one by one through ``kernel/execute/stream/``, on a task group
the backend owns. Such a run lives in this backend instance only: its handle cannot be resumed
from another process (no RESUMABLE capability), and closing the backend cancels it.

The newer server-side runs (``POST runs/``, behind PostHog's ``revamped-py-notebooks`` flag)
are the ``server`` mode: resumable anywhere, cancellable on the server, polled for status.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import aiohttp
import anyio
import anyio.abc
import attrs

from ..._client import ApiClient
from ..._redact import redact_url
from ..._urls import path_segment
from ...backend import BaseBackend
from ...errors import (
    BackendClosed,
    BadRequest,
    ConfigurationError,
    ConnectionLost,
    NotebookOpsError,
    NotFound,
    RateLimited,
    RequestTimeout,
    ResponseDecodeError,
    ServerError,
    StartOutcomeUnknown,
    TransportError,
    UnsupportedOperation,
)
from ...models import (
    Capability,
    CellOutput,
    Run,
    RunErrorInfo,
    RunHandle,
    RunProgress,
    RunRequest,
    RunState,
)
from ...policies import PollPolicy, RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Response
from ._errors import KernelRunNotFound, KernelStreamError, VersionConflict
from ._requests import (
    CELL_KINDS,
    PROFILE,
    SERVER_RUN_STATES,
    UNSET,
    Cell,
    _Unset,
    activity_params,
    apply_executions,
    collab_save_body,
    decode_collab_event,
    decode_kernel_event,
    envelope_outputs,
    execute_body,
    execution_error,
    execution_outputs,
    extract_cells,
    hogql_output,
    inputs_code,
    kernel_config_body,
    list_params,
    markdown_save_body,
    next_path,
    notebook_path,
    notebooks_path,
    presence_body,
    select_cells,
    server_run_error,
    server_run_progress,
    sharing_path,
    strip_ansi,
    update_body,
    validate_cell_timeout,
    web_url,
)
from ._wire import (
    ActivityEntry,
    ActivityPage,
    CellRunStarted,
    CellRunStatus,
    CollabEvent,
    DataFramePage,
    ExecutionResult,
    HogQLResult,
    KernelConfig,
    KernelOutput,
    KernelRuntime,
    KernelStatus,
    KernelStreamEvent,
    Notebook,
    NotebookPage,
    NotebookRunStarted,
    NotebookRunStatus,
    NotebookSummary,
    RecordingComment,
    RunInterruptResult,
    SharePasswordCreated,
    SharingConfiguration,
    decode,
)

__all__ = ["DEFAULT_HOST", "PostHogBackend", "PostHogRunOptions", "RunMode"]

logger = logging.getLogger("notebookops.posthog")

T = TypeVar("T")

RunMode = Literal["kernel", "server"]

DEFAULT_HOST: Final = "https://us.posthog.com"
ENV_KEY: Final = "POSTHOG_PERSONAL_API_KEY"
ENV_PROJECT: Final = "POSTHOG_PROJECT_ID"
ENV_HOST: Final = "POSTHOG_HOST"

_KERNEL_CAPABILITIES: Final = frozenset(
    {
        Capability.RUN_STATUS,
        Capability.CANCEL,
        Capability.OUTPUTS,
        Capability.INPUTS,
        Capability.BLOCK_SELECTION,
        Capability.STREAMING,
    }
)
_SERVER_CAPABILITIES: Final = frozenset(
    {
        Capability.RUN_STATUS,
        Capability.CANCEL,
        Capability.OUTPUTS,
        Capability.INPUTS,
        Capability.RESUMABLE,
    }
)
#: Content updates retried this many times on 409 before giving up.
_WRITE_ATTEMPTS: Final = 5
#: Finished kernel-mode runs remembered for get_run (the oldest are forgotten beyond this).
_KEEP_FINISHED: Final = 1000
#: The pseudo-cell that assigns ``RunRequest.inputs`` before the notebook's own cells.
_INPUTS_CELL_ID: Final = "notebookops-inputs"
#: Extra seconds a blocking execute may take beyond the cell timeout (kernel provisioning).
_EXECUTE_MARGIN: Final = 90.0


def _mode(value: object) -> None:
    if value not in ("kernel", "server"):
        raise ConfigurationError(f"mode must be 'kernel' or 'server', got {value!r}")


def _optional_mode(instance: object, attribute: object, value: object) -> None:
    if value is not None:
        _mode(value)


def _timeout_option(instance: object, attribute: object, value: object) -> None:
    validate_cell_timeout(value, "cell_timeout")  # type: ignore[arg-type]


def _cell_types(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence | frozenset | set):
        raise ConfigurationError(
            f"cell_types must be a sequence such as ('python', 'hogql'), got {value!r}"
        )
    kinds = tuple(value)
    unknown = [kind for kind in kinds if kind not in CELL_KINDS]
    if not kinds or unknown:
        raise ConfigurationError(
            f"cell_types must be a non-empty selection of {sorted(CELL_KINDS)}, got {value!r}"
        )
    return kinds


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{attribute.name} must be True or False, got {value!r}")


@attrs.frozen
class PostHogRunOptions:
    """PostHog-specific run options (``RunRequest.options``).

    * ``mode``: ``None`` runs in the backend's own mode. A kernel-mode backend may run one
      request in ``"server"`` mode; a server-mode backend refuses ``"kernel"`` (its handles
      are declared RESUMABLE, and kernel runs are not).
    * ``cell_timeout``: seconds (0.1-120, PostHog's limits) a cell may go without kernel
      output before it fails with status ``timeout``.
    * ``cell_types``: which cells run, in document order: ``"python"`` (``ph-python``,
      through the kernel) and/or ``"hogql"`` (``ph-hogql-sql``, through HogQL execute).
    * ``write_outputs``: store each Python cell's output in the notebook (``pythonExecution``,
      as the UI does) with a versioned PATCH, re-reading and retrying on 409. If that fails,
      the run is FAILED (``platform=True``) although its cells ran.
    * ``stop_kernel_at_end``: stop the kernel once the run is over (it bills while idle).
    * ``return_variables``: ask the kernel to describe the variables each cell defines.

    All but ``mode`` are kernel-mode settings; server-side runs refuse non-default values.
    """

    mode: RunMode | None = attrs.field(default=None, validator=_optional_mode)
    cell_timeout: float = attrs.field(default=30.0, validator=_timeout_option)
    cell_types: tuple[str, ...] = attrs.field(default=("python",), converter=_cell_types)
    write_outputs: bool = attrs.field(default=False, validator=_flag)
    stop_kernel_at_end: bool = attrs.field(default=True, validator=_flag)
    return_variables: bool = attrs.field(default=True, validator=_flag)


_KERNEL_ONLY_OPTIONS: Final = (
    "cell_timeout",
    "cell_types",
    "write_outputs",
    "stop_kernel_at_end",
    "return_variables",
)


@attrs.define(eq=False)
class _KernelRun:
    """In-memory state of one kernel-mode run (the only record of it anywhere)."""

    handle: RunHandle
    project_id: str
    cells: list[Cell]
    setup_code: str | None
    options: PostHogRunOptions
    changed: anyio.Event
    done: anyio.Event
    state: RunState = RunState.PENDING
    vendor_state: str = "queued"
    outputs: list[CellOutput] = attrs.field(factory=list)
    error: RunErrorInfo | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    completed: int = 0
    current: str | None = None
    results: list[dict[str, Any]] = attrs.field(factory=list)
    executions: dict[Cell, dict[str, Any]] = attrs.field(factory=dict)
    cancel_requested: bool = False
    scope: anyio.CancelScope | None = None
    kernel_used: bool = False
    stop_error: NotebookOpsError | None = None

    def notify(self) -> None:
        """Wake every watcher; later changes use a fresh event."""
        self.changed.set()
        self.changed = anyio.Event()


def _now() -> datetime:
    return datetime.now(UTC)


def _platform(error: BaseException) -> bool:
    return isinstance(error, TransportError | ServerError | RateLimited | ResponseDecodeError)


class PostHogBackend(BaseBackend):
    """PostHog notebooks: the REST, collaboration and kernel endpoints as typed async methods,
    and a :class:`~notebookops.NotebookBackend` that runs a notebook's cells.

    ``personal_api_key``, ``project_id`` and ``host`` fall back to ``POSTHOG_PERSONAL_API_KEY``,
    ``POSTHOG_PROJECT_ID`` and ``POSTHOG_HOST`` (default ``https://us.posthog.com``; EU cloud
    is ``https://eu.posthog.com``, self-hosted instances work the same way).

    ``mode`` chooses how runs execute, and so the declared capabilities:

    * ``"kernel"`` (default): this backend runs the cells through the notebook's kernel and
      streams their output (STREAMING, BLOCK_SELECTION by ``nodeId``, INPUTS assigned as
      variables in a first code cell). Runs live in this instance: not RESUMABLE elsewhere, and
      ``aclose()`` cancels them (stopping the kernel).
    * ``"server"``: PostHog's server-side runs (``POST runs/``, behind the
      ``revamped-py-notebooks`` flag): RESUMABLE from any process; INPUTS are sent as
      ``variables``; outputs are read from each cell run when the run ends.

    Kernel, HogQL-execute, recording-comments and project-wide activity endpoints refuse
    scoped personal API keys (:class:`ScopedKeyNotAllowed`): use a key created without scopes.
    """

    name = "posthog"

    def __init__(
        self,
        personal_api_key: str | None = None,
        *,
        project_id: str | int | None = None,
        host: str | None = None,
        mode: RunMode = "kernel",
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        max_rate: float | None = None,
        allow_http: bool = False,
        poll: PollPolicy | None = None,
        cancel_timeout: float = 10.0,
        stream_idle_timeout: float = 60.0,
        collab_reconnect_delay: float = 1.0,
    ) -> None:
        _mode(mode)
        key = personal_api_key if personal_api_key is not None else os.environ.get(ENV_KEY)
        if not key or not key.strip():
            raise ConfigurationError(
                f"no PostHog personal API key: pass personal_api_key= or set {ENV_KEY}"
            )
        key = key.strip()
        if key.startswith("phc_"):
            raise ConfigurationError(
                "that is a PostHog project API key (phc_...), which only sends events; the "
                "notebooks API needs a personal API key (phx_...)"
            )
        project = project_id if project_id is not None else os.environ.get(ENV_PROJECT)
        if isinstance(project, int) and not isinstance(project, bool):
            project = str(project)
        if not isinstance(project, str) or not project.strip():
            raise ConfigurationError(
                f"no PostHog project id: pass project_id= or set {ENV_PROJECT}"
            )
        self.project_id = project.strip()
        path_segment(self.project_id, what="project id")
        base = host if host is not None else (os.environ.get(ENV_HOST) or DEFAULT_HOST)
        for what, value in (
            ("cancel_timeout", cancel_timeout),
            ("stream_idle_timeout", stream_idle_timeout),
            ("collab_reconnect_delay", collab_reconnect_delay),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"{what} must be a number of seconds > 0, got {value!r}")
        self.mode: RunMode = mode
        self.capabilities = _KERNEL_CAPABILITIES if mode == "kernel" else _SERVER_CAPABILITIES
        self._transport = ApiClient(
            PROFILE,
            base_url=base,
            token=key,
            session=session,
            timeout=timeout,
            retry=retry,
            rate_limiter=rate_limiter or RateLimiter(max_rate),
            allow_http=allow_http,
        )
        self.host = self._transport.base_url
        self._timeout = float(timeout)
        self._poll = poll or PollPolicy()
        self._cancel_timeout = float(cancel_timeout)
        self._stream_idle_timeout = float(stream_idle_timeout)
        self._collab_reconnect_delay = float(collab_reconnect_delay)
        self._runs: dict[str, _KernelRun] = {}
        self._locks: dict[tuple[str, str], anyio.Lock] = {}
        self._finished_server_runs: OrderedDict[str, Run] = OrderedDict()
        self._host_task: asyncio.Task[None] | None = None
        self._host_ready: anyio.Event | None = None
        self._host_stop: anyio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<PostHogBackend {self.host} project {self.project_id} mode={self.mode} ({state})>"

    # ------------------------------------------------------------------ plumbing

    def _project(self, project_id: str | None) -> str:
        return self.project_id if project_id is None else project_id

    async def _json(
        self,
        method: str,
        path: str,
        cls: type[T],
        *,
        what: str,
        params: Mapping[str, str | int | float | bool] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> T:
        response = await self._transport.request(
            method,
            path,
            params=params,
            json=json_body,
            headers=headers,
            idempotent=idempotent,
            timeout=timeout,
        )
        return self._decode(response, cls, what=what)

    @staticmethod
    def _decode(response: Response, cls: type[T], *, what: str) -> T:
        data = response.json() if response.body.strip() else None
        return decode(data, cls, what=what, url=response.url, status=response.status)

    # ------------------------------------------------------------------ notebooks (REST)

    async def list_notebooks_page(
        self,
        *,
        contains: str | Mapping[str, str | bool] | None = None,
        created_by: str | None = None,
        last_modified_by: str | None = None,
        date_from: str | datetime | None = None,
        date_to: str | datetime | None = None,
        user: bool = False,
        search: str | None = None,
        order: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> NotebookPage:
        """One page of ``GET notebooks/`` (see :func:`list_params` for the filters)."""
        self._ensure_open()
        params = list_params(
            contains=contains,
            created_by=created_by,
            last_modified_by=last_modified_by,
            date_from=date_from,
            date_to=date_to,
            user=user,
            search=search,
            order=order,
            limit=limit,
            offset=offset,
        )
        return await self._json(
            "GET",
            notebooks_path(self.project_id),
            NotebookPage,
            what="a notebook list",
            params=params,
        )

    async def list_notebooks(
        self,
        *,
        contains: str | Mapping[str, str | bool] | None = None,
        created_by: str | None = None,
        last_modified_by: str | None = None,
        date_from: str | datetime | None = None,
        date_to: str | datetime | None = None,
        user: bool = False,
        search: str | None = None,
        order: str | None = None,
        page_size: int | None = None,
    ) -> AsyncGenerator[NotebookSummary, None]:
        """Every (non-deleted) notebook matching the filters, following ``next`` links.

        ``date_from``/``date_to`` filter on last modification (ISO dates or ``-7d``);
        ``contains`` takes ``"python:true"``-style pairs or a mapping. Use with
        ``contextlib.aclosing`` when you may stop early.
        """
        page = await self.list_notebooks_page(
            contains=contains,
            created_by=created_by,
            last_modified_by=last_modified_by,
            date_from=date_from,
            date_to=date_to,
            user=user,
            search=search,
            order=order,
            limit=page_size,
        )
        seen: set[str] = set()
        while True:
            for item in page.results:
                yield item
            if not page.next:
                return
            path = next_path(page.next, self.host)
            if path in seen:
                logger.warning("posthog notebook list repeated a page link; stopping there")
                return
            seen.add(path)
            self._ensure_open()
            page = await self._json("GET", path, NotebookPage, what="a notebook list")

    async def create_notebook(
        self,
        *,
        title: str | None = None,
        content: Mapping[str, Any] | None = None,
        text_content: str | None = None,
        short_id: str | None = None,
        create_in_folder: str | None = None,
    ) -> Notebook:
        """Create a notebook (201). ``short_id`` (alphanumeric, at most 12 characters) is
        optional; PostHog picks one otherwise."""
        self._ensure_open()
        body: dict[str, Any] = {}
        if title is not None:
            body["title"] = title
        if content is not None:
            body["content"] = dict(content)
        if text_content is not None:
            body["text_content"] = text_content
        if short_id is not None:
            if not short_id.isalnum() or not short_id.isascii() or len(short_id) > 12:
                raise ConfigurationError(
                    f"short_id must be alphanumeric and at most 12 characters, got {short_id!r}"
                )
            body["short_id"] = short_id
        if create_in_folder is not None:
            body["_create_in_folder"] = create_in_folder
        # Not retried on ambiguous failures: a repeat would create a second notebook.
        return await self._json(
            "POST", notebooks_path(self.project_id), Notebook, what="a notebook", json_body=body
        )

    async def get_notebook(self, short_id: str) -> Notebook:
        """A notebook with its content and version (404 for a soft-deleted one)."""
        self._ensure_open()
        return await self._json(
            "GET", notebook_path(self.project_id, short_id), Notebook, what="a notebook"
        )

    async def get_notebook_if_changed(self, short_id: str, version: int) -> Notebook | None:
        """The notebook, or None when its version is still ``version`` (a 304).

        PostHog compares ``If-None-Match`` with the bare version number, without quotes.
        """
        self._ensure_open()
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigurationError(f"version must be an int, got {version!r}")
        response = await self._transport.request(
            "GET",
            notebook_path(self.project_id, short_id),
            headers={"If-None-Match": str(version)},
        )
        if response.status == 304:
            return None
        return self._decode(response, Notebook, what="a notebook")

    async def update_notebook(
        self,
        short_id: str,
        *,
        title: str | _Unset | None = UNSET,
        content: dict[str, Any] | _Unset | None = UNSET,
        text_content: str | _Unset | None = UNSET,
        version: int | None = None,
        deleted: bool | None = None,
    ) -> Notebook:
        """PATCH a notebook. A ``content`` update must carry the ``version`` it was based on;
        if someone saved in between, PostHog answers 409 (:class:`VersionConflict`): read
        again and re-apply, or use :meth:`update_notebook_content`."""
        self._ensure_open()
        body = update_body(
            title=title,
            content=content,
            text_content=text_content,
            version=version,
            deleted=deleted,
        )
        return await self._patch(self.project_id, short_id, body)

    async def _patch(self, project_id: str, short_id: str, body: dict[str, Any]) -> Notebook:
        # A PATCH with a version is safe to repeat (a stale repeat gets 409); without content
        # it sets fields to fixed values. Either way a retry cannot do harm.
        return await self._json(
            "PATCH",
            notebook_path(project_id, short_id),
            Notebook,
            what="a notebook",
            json_body=body,
            idempotent=True,
        )

    async def update_notebook_content(
        self,
        short_id: str,
        transform: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        *,
        max_attempts: int = _WRITE_ATTEMPTS,
    ) -> Notebook:
        """Read the notebook, apply ``transform`` to (a copy of) its content and PATCH the
        result with the version read; on 409 read again and re-apply, up to ``max_attempts``
        times. ``transform`` returning None means "no change" (the notebook is returned)."""
        self._ensure_open()
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        return await self._update_content(self.project_id, short_id, transform, max_attempts)

    async def _update_content(
        self,
        project_id: str,
        short_id: str,
        transform: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        max_attempts: int,
    ) -> Notebook:
        conflict: VersionConflict | None = None
        for attempt in range(max_attempts):
            notebook = await self._json(
                "GET", notebook_path(project_id, short_id), Notebook, what="a notebook"
            )
            content = transform(copy.deepcopy(notebook.content))
            if content is None:
                return notebook
            try:
                return await self._patch(
                    project_id, short_id, update_body(content=content, version=notebook.version)
                )
            except VersionConflict as error:
                conflict = error
                logger.info(
                    "posthog notebook %s changed while updating it (attempt %d); re-reading",
                    short_id,
                    attempt + 1,
                )
        assert conflict is not None
        raise conflict

    async def delete_notebook(self, short_id: str) -> Notebook:
        """Soft-delete (PATCH ``deleted=true``): PostHog refuses DELETE with 405."""
        return await self.update_notebook(short_id, deleted=True)

    async def restore_notebook(self, short_id: str) -> Notebook:
        """Undo :meth:`delete_notebook` (PATCH ``deleted=false``)."""
        return await self.update_notebook(short_id, deleted=False)

    async def get_markdown(self, short_id: str) -> str:
        """``markdown/``: the notebook rendered as markdown."""
        self._ensure_open()
        data = await self._transport.request_json(
            "GET", notebook_path(self.project_id, short_id, "markdown")
        )
        if not isinstance(data, dict) or not isinstance(data.get("markdown"), str):
            raise ResponseDecodeError(
                "posthog sent a markdown response without a 'markdown' string",
                vendor="posthog",
                body=str(data)[:1000],
            )
        markdown: str = data["markdown"]
        return markdown

    async def notebook_activity(
        self, short_id: str, *, limit: int | None = None, page: int | None = None
    ) -> ActivityPage:
        """One page of a notebook's activity log (needs the ``activity_log:read`` scope)."""
        self._ensure_open()
        return await self._json(
            "GET",
            notebook_path(self.project_id, short_id, "activity"),
            ActivityPage,
            what="an activity page",
            params=activity_params(limit=limit, page=page),
        )

    async def project_activity(
        self, *, limit: int | None = None, page: int | None = None
    ) -> ActivityPage:
        """One page of the activity of every notebook in the project (unscoped keys only)."""
        self._ensure_open()
        return await self._json(
            "GET",
            notebooks_path(self.project_id, "activity"),
            ActivityPage,
            what="an activity page",
            params=activity_params(limit=limit, page=page),
        )

    async def iter_activity(
        self, short_id: str | None = None, *, limit: int | None = None
    ) -> AsyncGenerator[ActivityEntry, None]:
        """Every activity entry (of one notebook, or of the project), following ``next``."""
        first = (
            await self.notebook_activity(short_id, limit=limit)
            if short_id is not None
            else await self.project_activity(limit=limit)
        )
        page = first
        seen: set[str] = set()
        while True:
            for entry in page.results:
                yield entry
            if not page.next:
                return
            path = next_path(page.next, self.host)
            if path in seen:
                return
            seen.add(path)
            self._ensure_open()
            page = await self._json("GET", path, ActivityPage, what="an activity page")

    async def recording_comments(self, recording_id: str) -> list[RecordingComment]:
        """Comments on a session recording made in notebooks (unscoped keys only)."""
        self._ensure_open()
        if not isinstance(recording_id, str) or not recording_id:
            raise ConfigurationError("recording_id must be a non-empty string")
        data = await self._transport.request_json(
            "GET",
            notebooks_path(self.project_id, "recording_comments"),
            params={"recording_id": recording_id},
        )
        results = data.get("results") if isinstance(data, dict) else None
        return decode(results, list[RecordingComment], what="recording comments")

    # ------------------------------------------------------------------ sharing

    async def get_sharing(self, notebook_id: str) -> SharingConfiguration:
        """The notebook's sharing configuration (``sharing_configuration:read``)."""
        self._ensure_open()
        return await self._json(
            "GET",
            sharing_path(self.project_id, notebook_id),
            SharingConfiguration,
            what="a sharing configuration",
        )

    async def update_sharing(
        self,
        notebook_id: str,
        *,
        enabled: bool | None = None,
        settings: Mapping[str, Any] | None = None,
        password_required: bool | None = None,
    ) -> SharingConfiguration:
        """Turn sharing on or off, or change its settings (PATCH ``sharing/``)."""
        self._ensure_open()
        body: dict[str, Any] = {}
        if enabled is not None:
            body["enabled"] = bool(enabled)
        if settings is not None:
            body["settings"] = dict(settings)
        if password_required is not None:
            body["password_required"] = bool(password_required)
        if not body:
            raise ConfigurationError(
                "nothing to update: pass enabled, settings or password_required"
            )
        return await self._json(
            "PATCH",
            sharing_path(self.project_id, notebook_id),
            SharingConfiguration,
            what="a sharing configuration",
            json_body=body,
            idempotent=True,
        )

    async def create_sharing_password(
        self, notebook_id: str, *, raw_password: str | None = None, note: str | None = None
    ) -> SharePasswordCreated:
        """Add a password to a password-protected share. The password (generated when not
        given; at least 8 characters otherwise) is returned once."""
        self._ensure_open()
        body: dict[str, Any] = {}
        if raw_password is not None:
            if len(raw_password) < 8:
                raise ConfigurationError("share passwords must be at least 8 characters long")
            body["raw_password"] = raw_password
        if note is not None:
            if len(note) > 100:
                raise ConfigurationError("a share password note is at most 100 characters")
            body["note"] = note
        return await self._json(
            "POST",
            sharing_path(self.project_id, notebook_id, "passwords"),
            SharePasswordCreated,
            what="a share password",
            json_body=body,
        )

    async def delete_sharing_password(self, notebook_id: str, password_id: str) -> None:
        """Deactivate a share password (204)."""
        self._ensure_open()
        await self._transport.request(
            "DELETE",
            sharing_path(
                self.project_id,
                notebook_id,
                "passwords",
                path_segment(password_id, what="password id"),
            ),
        )

    async def refresh_sharing(self, notebook_id: str) -> SharingConfiguration:
        """Rotate the share link's access token (the old link stops working)."""
        self._ensure_open()
        return await self._json(
            "POST",
            sharing_path(self.project_id, notebook_id, "refresh"),
            SharingConfiguration,
            what="a sharing configuration",
        )

    # ------------------------------------------------------------------ collaboration

    async def collab_save(
        self,
        short_id: str,
        *,
        client_id: str,
        version: int,
        steps: Sequence[Mapping[str, Any]],
        content: Mapping[str, Any],
        text_content: str = "",
        title: str | _Unset | None = UNSET,
        cursor_head: int | None = None,
    ) -> Notebook:
        """Save ProseMirror ``steps`` made from collab ``version`` (rich notebooks).

        Raises :class:`CollabConflict` (409, with the missed ``steps``/``client_ids`` and the
        server ``version``: rebase and save again) or :class:`CollabStale` (410: read the
        notebook again). Note that leaving ``text_content`` out clears it, as in PostHog.
        """
        self._ensure_open()
        body = collab_save_body(
            client_id=client_id,
            version=version,
            steps=steps,
            content=content,
            text_content=text_content,
            title=title,
            cursor_head=cursor_head,
        )
        return await self._json(
            "POST",
            notebook_path(self.project_id, short_id, "collab", "save"),
            Notebook,
            what="a notebook",
            json_body=body,
            # A repeat of the same save is refused by the version check (409), never applied
            # twice, so retrying after a lost response is safe.
            idempotent=True,
        )

    async def collab_markdown_save(
        self,
        short_id: str,
        *,
        client_id: str,
        version: int,
        content: Mapping[str, Any],
        text_content: str = "",
        title: str | _Unset | None = UNSET,
        cursor: Mapping[str, int] | None = None,
    ) -> Notebook:
        """Save a markdown notebook (``collab/markdown_save/``); errors as :meth:`collab_save`
        (a 409 carries ``updates`` instead of ``steps``)."""
        self._ensure_open()
        body = markdown_save_body(
            client_id=client_id,
            version=version,
            content=content,
            text_content=text_content,
            title=title,
            cursor=cursor,
        )
        return await self._json(
            "POST",
            notebook_path(self.project_id, short_id, "collab", "markdown_save"),
            Notebook,
            what="a notebook",
            json_body=body,
            idempotent=True,
        )

    async def collab_presence(
        self,
        short_id: str,
        *,
        client_id: str,
        version: int,
        cursor: Mapping[str, int] | None = None,
    ) -> None:
        """Announce this client's cursor to the others (204)."""
        self._ensure_open()
        await self._transport.request(
            "POST",
            notebook_path(self.project_id, short_id, "collab", "presence"),
            json=presence_body(client_id=client_id, version=version, cursor=cursor),
            idempotent=True,
        )

    async def collab_stream(
        self,
        short_id: str,
        *,
        last_event_id: str | None = None,
        reconnect: bool = True,
        max_failures: int = 5,
    ) -> AsyncGenerator[CollabEvent, None]:
        """The notebook's collaboration events, as typed objects, until the caller stops.

        PostHog closes the stream after a few minutes, and on an ``error`` event; it is then
        reopened with ``Last-Event-ID`` so no step is missed (``reconnect=False``: end
        instead). Without ``last_event_id`` it starts at the newest entry. Keepalive comments
        are absorbed. ``max_failures`` consecutive broken connections raise the last error.
        Use with ``contextlib.aclosing``.
        """
        self._ensure_open()
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
            raise ConfigurationError(f"max_failures must be an int >= 0, got {max_failures!r}")
        path = notebook_path(self.project_id, short_id, "collab", "stream")
        resume = last_event_id
        failures = 0
        while True:
            delay = self._collab_reconnect_delay
            try:
                async with self._transport.sse(
                    "GET", path, last_event_id=resume, idle_timeout=self._stream_idle_timeout
                ) as events:
                    async for event in events:
                        failures = 0
                        if event.retry is not None:
                            delay = event.retry / 1000
                        if event.id is not None:
                            resume = event.id
                        yield decode_collab_event(event)
            except (ConnectionLost, RequestTimeout) as error:
                failures += 1
                if not reconnect or failures > max_failures:
                    raise
                logger.info("posthog collab stream broke (%s); reconnecting", error)
            if not reconnect:
                return
            self._ensure_open()
            await anyio.sleep(delay)

    # ------------------------------------------------------------------ HogQL and kernel

    async def hogql_execute(self, short_id: str, query: str) -> HogQLResult:
        """Run a HogQL query as the caller (``"scratchpad"`` works as short_id). A failing
        query is a :class:`BadRequest` with PostHog's message."""
        self._ensure_open()
        return await self._hogql(self.project_id, short_id, query)

    async def _hogql(self, project_id: str, short_id: str, query: str) -> HogQLResult:
        if not isinstance(query, str):
            raise ConfigurationError(f"query must be a string, got {type(query).__name__}")
        return await self._json(
            "POST",
            notebook_path(project_id, short_id, "hogql", "execute"),
            HogQLResult,
            what="a HogQL result",
            json_body={"query": query},
            # HogQL is read-only, so a repeated query cannot change anything.
            idempotent=True,
        )

    async def kernel_start(self, short_id: str) -> KernelRuntime:
        """Start the notebook's kernel (optional: every execute starts it)."""
        self._ensure_open()
        return await self._json(
            "POST",
            notebook_path(self.project_id, short_id, "kernel", "start"),
            KernelRuntime,
            what="a kernel runtime",
            idempotent=True,
        )

    async def kernel_restart(self, short_id: str) -> KernelRuntime:
        """Restart the kernel: every variable is lost."""
        self._ensure_open()
        return await self._json(
            "POST",
            notebook_path(self.project_id, short_id, "kernel", "restart"),
            KernelRuntime,
            what="a kernel runtime",
        )

    async def kernel_stop(self, short_id: str) -> bool:
        """Stop the kernel. False when no kernel was running."""
        self._ensure_open()
        return await self._stop_kernel(self.project_id, short_id)

    async def _stop_kernel(self, project_id: str, short_id: str) -> bool:
        data = await self._transport.request_json(
            "POST", notebook_path(project_id, short_id, "kernel", "stop"), idempotent=True
        )
        stopped = data.get("stopped") if isinstance(data, dict) else None
        if not isinstance(stopped, bool):
            raise ResponseDecodeError(
                "posthog answered kernel/stop without a 'stopped' flag",
                vendor="posthog",
                body=str(data)[:1000],
            )
        return stopped

    async def kernel_status(self, short_id: str) -> KernelStatus:
        """The kernel's live status (``stopped`` when there is none) and its resources."""
        self._ensure_open()
        return await self._json(
            "GET",
            notebook_path(self.project_id, short_id, "kernel", "status"),
            KernelStatus,
            what="a kernel status",
        )

    async def kernel_config(
        self,
        short_id: str,
        *,
        cpu_cores: float | None = None,
        memory_gb: float | None = None,
        idle_timeout_seconds: int | None = None,
    ) -> KernelConfig:
        """Set the kernel's resources; the allowed values are checked before any request
        (see ``ALLOWED_CPU_CORES``, ``ALLOWED_MEMORY_GB``, ``ALLOWED_IDLE_TIMEOUTS``)."""
        self._ensure_open()
        body = kernel_config_body(
            cpu_cores=cpu_cores, memory_gb=memory_gb, idle_timeout_seconds=idle_timeout_seconds
        )
        return await self._json(
            "POST",
            notebook_path(self.project_id, short_id, "kernel", "config"),
            KernelConfig,
            what="a kernel config",
            json_body=body,
            idempotent=True,
        )

    async def kernel_execute(
        self,
        short_id: str,
        code: str,
        *,
        return_variables: bool = True,
        timeout: float | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in the kernel and wait for it. A Python exception is NOT raised: the
        result has ``status="error"``, ``error_name`` and an ANSI-coloured ``traceback``.
        ``timeout`` (0.1-120 s) bounds the wait for kernel output."""
        self._ensure_open()
        body = execute_body(code, return_variables=return_variables, timeout=timeout)
        # Never retried: the code may have side effects.
        return await self._json(
            "POST",
            notebook_path(self.project_id, short_id, "kernel", "execute"),
            ExecutionResult,
            what="a kernel result",
            json_body=body,
            timeout=max(self._timeout, (timeout or 30.0) + _EXECUTE_MARGIN),
        )

    async def kernel_execute_stream(
        self,
        short_id: str,
        code: str,
        *,
        return_variables: bool = True,
        timeout: float | None = None,
    ) -> AsyncGenerator[KernelStreamEvent, None]:
        """Run ``code`` and yield its stdout/stderr chunks as they come
        (:class:`KernelOutput`), then exactly one :class:`ExecutionResult`.

        An infrastructure failure inside the 200 stream raises :class:`KernelStreamError`;
        a stream that ends without a result raises ConnectionLost.
        """
        self._ensure_open()
        body = execute_body(code, return_variables=return_variables, timeout=timeout)
        async with aclosing(self._kernel_frames(self.project_id, short_id, body)) as frames:
            async for event, _raw in frames:
                yield event

    async def _kernel_frames(
        self, project_id: str, short_id: str, body: dict[str, Any]
    ) -> AsyncGenerator[tuple[KernelStreamEvent, Any], None]:
        path = notebook_path(project_id, short_id, "kernel", "execute", "stream")
        url = redact_url(self._transport.url_for(path))
        # The stream has no keepalives: a quiet cell is silent for up to its timeout.
        idle = max(self._stream_idle_timeout, float(body.get("timeout") or 30.0) + _EXECUTE_MARGIN)
        async with self._transport.sse("POST", path, json=body, idle_timeout=idle) as events:
            async for event in events:
                decoded = decode_kernel_event(event, url=url)
                if decoded is None:
                    continue
                if isinstance(decoded, ExecutionResult):
                    yield decoded, json.loads(event.data)
                    return
                yield decoded, None
        raise ConnectionLost(
            f"posthog POST {url} ended its event stream without a result",
            vendor="posthog",
            method="POST",
            url=url,
        )

    async def kernel_dataframe(
        self,
        short_id: str,
        variable_name: str,
        *,
        offset: int = 0,
        limit: int = 10,
        timeout: float | None = None,
    ) -> DataFramePage:
        """A page of a dataframe variable's rows (``limit`` 1-500)."""
        self._ensure_open()
        if not isinstance(variable_name, str) or not variable_name.isidentifier():
            raise ConfigurationError(f"variable_name must be an identifier, got {variable_name!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigurationError(f"offset must be an int >= 0, got {offset!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
            raise ConfigurationError(f"limit must be an int between 1 and 500, got {limit!r}")
        params: dict[str, str | int | float] = {
            "variable_name": variable_name,
            "offset": offset,
            "limit": limit,
        }
        checked = validate_cell_timeout(timeout)
        if checked is not None:
            params["timeout"] = checked
        return await self._json(
            "GET",
            notebook_path(self.project_id, short_id, "kernel", "dataframe"),
            DataFramePage,
            what="a dataframe page",
            params=params,
        )

    async def iter_dataframe_rows(
        self, short_id: str, variable_name: str, *, page_size: int = 500
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every row of a dataframe variable, page by page."""
        offset = 0
        while True:
            page = await self.kernel_dataframe(
                short_id, variable_name, offset=offset, limit=page_size
            )
            for row in page.rows:
                yield row
            offset += len(page.rows)
            if not page.rows or (page.row_count is not None and offset >= page.row_count):
                return

    # ------------------------------------------------------------------ server-side runs

    async def start_notebook_run(
        self, short_id: str, *, variables: Mapping[str, Any] | None = None
    ) -> NotebookRunStarted:
        """``POST runs/``: run the whole notebook on the server (400 when there is nothing to
        run, 409 while another run of it is going)."""
        self._ensure_open()
        return await self._start_server(self.project_id, short_id, variables)

    async def _start_server(
        self, project_id: str, short_id: str, variables: Mapping[str, Any] | None
    ) -> NotebookRunStarted:
        body: dict[str, Any] = {}
        if variables:
            try:
                json.dumps(variables, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"run variables must be JSON-serialisable: {exc}"
                ) from None
            body["variables"] = dict(variables)
        return await self._json(
            "POST",
            notebook_path(project_id, short_id, "runs"),
            NotebookRunStarted,
            what="a started run",
            json_body=body,
        )

    async def get_notebook_run(self, short_id: str, run_id: str) -> NotebookRunStatus:
        """``GET runs/{run_id}/``: a server-side run's status and cells (no results)."""
        self._ensure_open()
        return await self._server_status(self.project_id, short_id, run_id)

    async def _server_status(
        self, project_id: str, short_id: str, run_id: str
    ) -> NotebookRunStatus:
        return await self._json(
            "GET",
            notebook_path(project_id, short_id, "runs", path_segment(run_id, what="run id")),
            NotebookRunStatus,
            what="a run status",
        )

    async def interrupt_notebook_run(self, short_id: str, run_id: str) -> RunInterruptResult:
        """``POST runs/{run_id}/interrupt/``."""
        self._ensure_open()
        return await self._interrupt(self.project_id, short_id, run_id)

    async def _interrupt(self, project_id: str, short_id: str, run_id: str) -> RunInterruptResult:
        return await self._json(
            "POST",
            notebook_path(
                project_id, short_id, "runs", path_segment(run_id, what="run id"), "interrupt"
            ),
            RunInterruptResult,
            what="an interrupt result",
            idempotent=True,
        )

    async def run_cell(
        self,
        short_id: str,
        *,
        node_id: str,
        node_type: Literal["hogql", "python"],
        code: str,
        output_name: str | None = None,
        refs: Mapping[str, Mapping[str, str]] | None = None,
        connection_id: str | None = None,
        send_raw_query: bool | None = None,
    ) -> CellRunStarted:
        """``POST sql_v2/run/``: run one cell on the server; poll :meth:`get_cell_run`."""
        self._ensure_open()
        if node_type not in ("hogql", "python"):
            raise ConfigurationError(f"node_type must be 'hogql' or 'python', got {node_type!r}")
        if not isinstance(code, str) or not code.strip():
            raise ConfigurationError("code must be a non-blank string")
        body: dict[str, Any] = {"node_id": node_id, "node_type": node_type, "code": code}
        if output_name is not None:
            body["output_name"] = output_name
        if refs is not None:
            body["refs"] = {name: dict(ref) for name, ref in refs.items()}
        if connection_id is not None:
            body["connection_id"] = connection_id
        if send_raw_query is not None:
            body["send_raw_query"] = bool(send_raw_query)
        return await self._json(
            "POST",
            notebook_path(self.project_id, short_id, "sql_v2", "run"),
            CellRunStarted,
            what="a started cell run",
            json_body=body,
        )

    async def get_cell_run(self, short_id: str, run_id: str) -> CellRunStatus:
        """``GET sql_v2/runs/{run_id}/``: one cell run's status and result envelope."""
        self._ensure_open()
        return await self._cell_run(self.project_id, short_id, run_id)

    async def _cell_run(self, project_id: str, short_id: str, run_id: str) -> CellRunStatus:
        return await self._json(
            "GET",
            notebook_path(
                project_id, short_id, "sql_v2", "runs", path_segment(run_id, what="cell run id")
            ),
            CellRunStatus,
            what="a cell run",
        )

    # ------------------------------------------------------------------ NotebookBackend

    async def start_run(self, request: RunRequest) -> RunHandle:
        """Start a run of ``request.notebook`` (a short_id) in the chosen mode.

        Kernel mode reads the notebook first (so a missing notebook or a bad block id fails
        here) and then runs its cells in the background; server mode sends ``POST runs/``.
        """
        self._ensure_open()
        options = self._options(request, PostHogRunOptions)
        mode = options.mode or self.mode
        if mode == "kernel" and self.mode == "server":
            raise ConfigurationError(
                "this backend was created with mode='server' and declares resumable runs; "
                "kernel-mode runs are not resumable: use a PostHogBackend(mode='kernel')"
            )
        if mode == "server":
            return await self._start_server_run(request, options)
        return await self._start_kernel_run(request, options)

    async def get_run(self, handle: RunHandle) -> Run:
        """The run's current state: from memory (kernel mode) or ``GET runs/{id}/``."""
        self._check_handle(handle)
        if self._handle_mode(handle) == "server":
            return await self._server_run(handle)
        run = self._kernel_run(handle)
        await anyio.lowlevel.checkpoint()
        return self._snapshot(run)

    async def cancel_run(self, handle: RunHandle) -> None:
        """Stop the run: kernel mode cancels the current cell, stops the kernel and waits for
        the run to settle as CANCELLED; server mode sends ``interrupt``."""
        self._check_handle(handle)
        self._require(Capability.CANCEL, "cancel runs")
        if self._handle_mode(handle) == "server":
            project_id, short_id = self._handle_target(handle)
            await self._interrupt(project_id, short_id, handle.run_id)
            return
        run = self._kernel_run(handle)
        if run.done.is_set():
            return
        run.cancel_requested = True
        if run.scope is not None:
            run.scope.cancel()
        await run.done.wait()
        if run.stop_error is not None:
            raise run.stop_error

    async def watch_run(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        """Yield the run whenever it changes (a cell starts or ends, output arrives), ending
        after a terminal state. Server-mode handles are polled with the backend's ``poll``."""
        self._check_handle(handle)
        if self._handle_mode(handle) == "server":
            async with aclosing(self._watch_server(handle)) as runs:
                async for snapshot in runs:
                    yield snapshot
            return
        run = self._kernel_run(handle)
        while True:
            changed = run.changed
            snapshot = self._snapshot(run)
            yield snapshot
            if snapshot.state.is_terminal:
                return
            await changed.wait()

    # -- handles

    def _handle_mode(self, handle: RunHandle) -> RunMode:
        mode = handle.extra.get("mode", "kernel")
        if mode not in ("kernel", "server"):
            raise ConfigurationError(f"this PostHog handle has an unknown run mode {mode!r}")
        return "server" if mode == "server" else "kernel"

    def _handle_target(self, handle: RunHandle) -> tuple[str, str]:
        return handle.extra.get("project_id", self.project_id), handle.notebook_id

    def _make_handle(self, run_id: str, short_id: str, mode: RunMode) -> RunHandle:
        return RunHandle(
            backend=self.name,
            run_id=run_id,
            notebook_id=short_id,
            created_at=_now(),
            web_url=web_url(self.host, self.project_id, short_id),
            extra={"mode": mode, "project_id": self.project_id},
        )

    # -- server mode

    async def _start_server_run(self, request: RunRequest, options: PostHogRunOptions) -> RunHandle:
        if request.blocks is not None:
            raise UnsupportedOperation(
                "server-side PostHog runs always run the whole notebook; selecting blocks "
                "needs mode='kernel'",
                capability=Capability.BLOCK_SELECTION.value,
            )
        defaults = PostHogRunOptions()
        changed = [
            name
            for name in _KERNEL_ONLY_OPTIONS
            if getattr(options, name) != getattr(defaults, name)
        ]
        if changed:
            raise ConfigurationError(
                f"{', '.join(changed)} only apply to kernel-mode runs; server-side runs "
                "manage cells, timeouts and outputs themselves"
            )
        short_id = request.notebook
        try:
            started = await self._start_server(self.project_id, short_id, request.inputs)
        except TransportError as error:
            if not error.request_sent:
                raise
            raise StartOutcomeUnknown(
                f"starting a server-side run of posthog notebook {short_id!r} failed after the "
                f"request was sent ({error}); a run may have started. PostHog allows one "
                "running run per notebook, so a new start answers 409 while it runs.",
                notebook=short_id,
                evidence="POST runs/ got no response",
            ) from error
        return self._make_handle(started.run_id, short_id, "server")

    async def _server_run(self, handle: RunHandle) -> Run:
        cached = self._finished_server_runs.get(handle.run_id)
        if cached is not None:
            return attrs.evolve(cached, handle=handle)
        project_id, short_id = self._handle_target(handle)
        status = await self._server_status(project_id, short_id, handle.run_id)
        state = SERVER_RUN_STATES(status.status)
        outputs: list[CellOutput] = []
        if state.is_terminal:
            for position, cell in enumerate(status.cells):
                if not cell.run_id:
                    continue
                try:
                    path_segment(cell.run_id, what="cell run id")
                except ConfigurationError:
                    # PostHog's data, not the caller's: skip the cell as if it had no result.
                    logger.warning(
                        "posthog named cell run %r of run %s, which cannot be read",
                        cell.run_id,
                        handle.run_id,
                    )
                    continue
                try:
                    cell_run = await self._cell_run(project_id, short_id, cell.run_id)
                except NotFound:
                    logger.warning(
                        "posthog cell run %s of run %s has no result", cell.run_id, handle.run_id
                    )
                    continue
                if cell_run.result is not None:
                    outputs.extend(
                        envelope_outputs(cell_run.result, cell_id=cell.node_id, cell_index=position)
                    )
        run = Run(
            handle=handle,
            state=state,
            vendor_state=status.status,
            created_at=status.created_at or handle.created_at,
            started_at=status.created_at,
            finished_at=status.finished_at if state.is_terminal else None,
            outputs=tuple(outputs),
            error=server_run_error(status),
            progress=server_run_progress(status),
            web_url=handle.web_url,
            raw=status,
        )
        if state.is_terminal:
            self._finished_server_runs[handle.run_id] = run
            while len(self._finished_server_runs) > 256:
                self._finished_server_runs.popitem(last=False)
        return run

    async def _watch_server(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        last: tuple[object, ...] | None = None
        attempt = 0
        began = anyio.current_time()
        while True:
            self._ensure_open()
            run = await self._server_run(handle)
            key = (run.state, run.vendor_state, run.progress, len(run.outputs))
            if key != last:
                last = key
                yield run
            if run.state.is_terminal:
                return
            await anyio.sleep(self._poll.delay(attempt, elapsed=anyio.current_time() - began))
            attempt += 1

    # -- kernel mode

    def _kernel_run(self, handle: RunHandle) -> _KernelRun:
        run = self._runs.get(handle.run_id)
        if run is None:
            raise KernelRunNotFound(
                f"posthog kernel-mode run {handle.run_id} is not known to this backend "
                "instance: kernel-mode runs exist only in the backend that started them and "
                "cannot be resumed elsewhere (use mode='server' for resumable runs); only the "
                f"latest {_KEEP_FINISHED} finished runs are remembered",
                status=404,
                vendor=self.name,
                method="GET",
                url=handle.web_url or "",
            )
        return run

    async def _start_kernel_run(self, request: RunRequest, options: PostHogRunOptions) -> RunHandle:
        setup = inputs_code(request.inputs)
        notebook = await self._json(
            "GET", notebook_path(self.project_id, request.notebook), Notebook, what="a notebook"
        )
        cells = select_cells(extract_cells(notebook.content), options.cell_types, request.blocks)
        # The id the caller named (and that was just read successfully), not the answer's
        # short_id: the kernel requests must go to the notebook that was read.
        handle = self._make_handle(f"kernel-{uuid.uuid4().hex}", request.notebook, "kernel")
        run = _KernelRun(
            handle=handle,
            project_id=self.project_id,
            cells=cells,
            setup_code=setup,
            options=options,
            changed=anyio.Event(),
            done=anyio.Event(),
        )
        group = await self._runs_group()
        self._runs[handle.run_id] = run
        group.start_soon(self._drive, run, name=f"posthog run {handle.run_id}")
        logger.info(
            "started posthog kernel run %s of %s (%d cells)",
            handle.run_id,
            request.notebook,
            len(cells),
        )
        return handle

    async def _runs_group(self) -> anyio.abc.TaskGroup:
        """The backend's own task group, hosted by a task created on first use.

        A task group must be exited by the task that entered it, and start_run and aclose
        are called from arbitrary tasks; so one host task (asyncio, like aiohttp itself)
        owns the group for the backend's lifetime and aclose asks it to finish.
        """
        if self._host_task is None:
            self._host_ready = anyio.Event()
            self._host_stop = anyio.Event()
            self._host_task = asyncio.get_running_loop().create_task(
                self._host_runs(), name="notebookops posthog runs"
            )
        assert self._host_ready is not None
        await self._host_ready.wait()
        if self._task_group is None or self._host_stop is None or self._host_stop.is_set():
            raise BackendClosed("the posthog backend is closed; create a new one")
        return self._task_group

    async def _host_runs(self) -> None:
        assert self._host_ready is not None
        assert self._host_stop is not None
        try:
            async with anyio.create_task_group() as group:
                self._task_group = group
                self._host_ready.set()
                await self._host_stop.wait()
                group.cancel_scope.cancel()
        finally:
            self._task_group = None
            self._host_ready.set()

    def _lock(self, project_id: str, short_id: str) -> anyio.Lock:
        key = (project_id, short_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        return lock

    def _snapshot(self, run: _KernelRun) -> Run:
        return Run(
            handle=run.handle,
            state=run.state,
            vendor_state=run.vendor_state,
            created_at=run.handle.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            outputs=tuple(run.outputs),
            error=run.error if run.state.is_terminal else None,
            progress=RunProgress(
                completed=run.completed, total=len(run.cells), current=run.current
            ),
            web_url=run.handle.web_url,
            raw={"mode": "kernel", "results": list(run.results)},
        )

    async def _drive(self, run: _KernelRun) -> None:
        """Run the cells of ``run`` (the body of its background task). Never raises: every
        failure ends the run, so one run can never take the task group down."""
        short_id = run.handle.notebook_id
        try:
            with anyio.CancelScope() as scope:
                run.scope = scope
                if run.cancel_requested:
                    scope.cancel()
                async with self._lock(run.project_id, short_id):
                    run.started_at = _now()
                    run.state = RunState.RUNNING
                    run.vendor_state = "running"
                    run.notify()
                    await self._run_cells(run)
            run.scope = None
            if run.cancel_requested:
                await self._finish_cancelled(run)
                return
            if run.options.write_outputs and run.executions:
                await self._write_back(run)
            if run.options.stop_kernel_at_end and run.kernel_used:
                try:
                    await self._stop_kernel(run.project_id, short_id)
                except NotebookOpsError as error:
                    logger.warning(
                        "could not stop the kernel of posthog notebook %s: %s", short_id, error
                    )
            self._finish(run)
        except anyio.get_cancelled_exc_class():
            # The backend is closing: settle the run and stop its kernel, then let go.
            with anyio.CancelScope(shield=True):
                await self._finish_cancelled(run)
            raise
        except Exception as error:
            logger.exception("posthog run %s failed unexpectedly", run.handle.run_id)
            run.error = RunErrorInfo(
                message=f"the run broke down: {type(error).__name__}: {error}",
                name=type(error).__name__,
                platform=True,
            )
            self._finish(run)
        finally:
            run.done.set()
            self._forget_old_runs()

    def _forget_old_runs(self) -> None:
        finished = [run_id for run_id, run in self._runs.items() if run.done.is_set()]
        for run_id in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._runs[run_id]

    def _finish(self, run: _KernelRun) -> None:
        run.state = RunState.FAILED if run.error is not None else RunState.SUCCEEDED
        if run.error is None:
            run.vendor_state = "ok"
        run.current = None
        run.finished_at = _now()
        run.notify()

    async def _finish_cancelled(self, run: _KernelRun) -> None:
        if run.kernel_used:
            with anyio.move_on_after(self._cancel_timeout) as scope:
                try:
                    await self._stop_kernel(run.project_id, run.handle.notebook_id)
                except NotebookOpsError as error:
                    run.stop_error = error
            if scope.cancelled_caught and run.stop_error is None:
                run.stop_error = RequestTimeout(
                    f"stopping the kernel of posthog notebook {run.handle.notebook_id} did not "
                    f"finish within {self._cancel_timeout:g}s; it may still be running",
                    vendor=self.name,
                    method="POST",
                )
        run.state = RunState.CANCELLED
        run.vendor_state = "cancelled"
        run.current = None
        run.finished_at = _now()
        run.notify()

    async def _run_cells(self, run: _KernelRun) -> None:
        if run.setup_code is not None:
            setup = Cell(index=-1, kind="python", code=run.setup_code, node_id=_INPUTS_CELL_ID)
            if not await self._run_python(run, setup, record=False):
                return
        for cell in run.cells:
            run.current = cell.label
            run.notify()
            if cell.kind == "python":
                ok = await self._run_python(run, cell)
            else:
                ok = await self._run_hogql(run, cell)
            run.completed += 1
            run.notify()
            if not ok:
                return

    def _cell_failure(self, run: _KernelRun, cell: Cell, error: NotebookOpsError) -> None:
        if isinstance(error, KernelStreamError):
            message = f"cell {cell.label} could not run: PostHog reported {error.error!r}"
            run.vendor_state = "infrastructure_error"
        else:
            message = f"cell {cell.label} could not run: {error}"
            run.vendor_state = "request_failed"
        run.error = RunErrorInfo(
            message=strip_ansi(message),
            name=type(error).__name__,
            cell_id=cell.node_id,
            cell_index=cell.index if cell.index >= 0 else None,
            platform=_platform(error),
        )

    async def _run_python(self, run: _KernelRun, cell: Cell, *, record: bool = True) -> bool:
        run.kernel_used = True
        body = execute_body(
            cell.code,
            return_variables=run.options.return_variables and record,
            timeout=run.options.cell_timeout,
        )
        streamed: set[str] = set()
        result: ExecutionResult | None = None
        raw: Any = None
        try:
            async with aclosing(
                self._kernel_frames(run.project_id, run.handle.notebook_id, body)
            ) as frames:
                async for event, raw_frame in frames:
                    if isinstance(event, KernelOutput):
                        if record:
                            streamed.add(event.name)
                            run.outputs.append(
                                CellOutput(
                                    output_type="stream",
                                    name=event.name,
                                    text=event.text,
                                    cell_id=cell.node_id,
                                    cell_index=cell.index,
                                )
                            )
                            run.notify()
                    else:
                        result, raw = event, raw_frame
        except NotebookOpsError as error:
            self._cell_failure(run, cell, error)
            return False
        assert result is not None  # _kernel_frames raises when no result came
        if record:
            run.results.append(raw)
            run.executions[cell] = raw
            run.outputs.extend(execution_outputs(result, cell, streamed=streamed))
        failure = execution_error(result, cell, timeout=run.options.cell_timeout)
        if failure is not None:
            if cell.index < 0:
                failure = attrs.evolve(
                    failure,
                    message=f"assigning the run's inputs failed: {failure.message}",
                    cell_index=None,
                )
            run.error = failure
            run.vendor_state = result.status
            if not record:
                run.outputs.extend(execution_outputs(result, cell, streamed=streamed))
            return False
        return True

    async def _run_hogql(self, run: _KernelRun, cell: Cell) -> bool:
        try:
            result = await self._hogql(run.project_id, run.handle.notebook_id, cell.code)
        except BadRequest as error:
            words = error.data.get("error") if isinstance(error.data, dict) else None
            reason = words if isinstance(words, str) and words else error.message
            run.outputs.append(
                CellOutput(
                    output_type="error",
                    cell_id=cell.node_id,
                    cell_index=cell.index,
                    ename="HogQLError",
                    evalue=reason,
                )
            )
            run.error = RunErrorInfo(
                message=f"cell {cell.label}: HogQL query failed: {reason}",
                name="HogQLError",
                cell_id=cell.node_id,
                cell_index=cell.index,
            )
            run.vendor_state = "error"
            return False
        except NotebookOpsError as error:
            self._cell_failure(run, cell, error)
            return False
        run.results.append(result.raw)
        run.outputs.append(hogql_output(result, cell))
        return True

    async def _write_back(self, run: _KernelRun) -> None:
        executions = dict(run.executions)

        def transform(content: dict[str, Any] | None) -> dict[str, Any] | None:
            return apply_executions(content, executions)

        try:
            await self._update_content(
                run.project_id, run.handle.notebook_id, transform, _WRITE_ATTEMPTS
            )
        except NotebookOpsError as error:
            logger.warning(
                "could not write outputs of posthog run %s: %s", run.handle.run_id, error
            )
            if run.error is None:
                run.error = RunErrorInfo(
                    message=f"every cell ran, but writing the outputs back failed: {error}",
                    name=type(error).__name__,
                    platform=True,
                )
                run.vendor_state = "write_failed"

    async def _aclose(self) -> None:
        host = self._host_task
        if host is not None:
            for run in self._runs.values():
                if not run.done.is_set():
                    run.cancel_requested = True
            assert self._host_stop is not None
            self._host_stop.set()
            with anyio.CancelScope(shield=True):
                try:
                    await host
                except Exception:
                    logger.exception("the posthog run task group ended with an error")
            self._host_task = None
        await self._transport.aclose()
