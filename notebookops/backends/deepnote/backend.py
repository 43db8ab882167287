"""The Deepnote adapter: every Public API v2 endpoint (and v1 execute) as a typed async method,
plus the :class:`~notebookops.NotebookBackend` protocol on top of them.

Behaviour worth knowing (see the module docs of ``notebookops.backends.deepnote``):

* Deepnote has no endpoint to stop a run, so this backend has no CANCEL capability: at a
  deadline ``run_and_wait`` leaves the run going and says so.
* Starting a run is never retried blindly. After an ambiguous failure (the connection broke or
  timed out after the request was sent, a 5xx, an unreadable 2xx) the notebook's runs list is
  read; a single run created since the attempt is adopted (never one this backend started for
  another call, nor one another ambiguous start of the notebook may have made), otherwise
  StartOutcomeUnknown says what was seen.
* A finished run's snapshot may still be ``pending``; ``get_run`` waits a bounded extra time for
  it. A snapshot download URL on another origin is fetched without the API key.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import anyio

from ..._client import ApiClient
from ..._protect import protected
from ..._redact import Secret, redact_url
from ..._urls import check_base_url, path_segment
from ...backend import BaseBackend, StateTable
from ...errors import (
    AuthenticationError,
    BadRequest,
    ConfigurationError,
    NotebookOpsError,
    NotFound,
    PermissionDenied,
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
    RunRequest,
    RunState,
)
from ...policies import RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Response
from ._requests import (
    DEEPNOTE_STATES,
    PROFILE,
    SNAPSHOT_DELIVERIES,
    BlockPlacement,
    DeepnoteRunOptions,
    SnapshotDelivery,
    build_notebook_body,
    build_project_body,
    build_reorder_body,
    build_run_body,
    build_schedule_body,
    check_page_size,
    created_since,
    decode,
    decode_run,
    decode_started,
    next_page_token,
    notebook_web_url,
    outputs_from_blocks,
    outputs_from_snapshot,
    run_error_info,
)
from ._sharing import NOT_SHARED, READ_NOW, ListedRun, SharedRunPolls
from ._wire import (
    Me,
    Notebook,
    Pagination,
    Project,
    ProjectPage,
    ReorderResult,
    RunDetails,
    RunPage,
    RunStarted,
    RunSummary,
    Schedule,
)

__all__ = ["API_KEY_ENV", "API_URL_ENV", "DEFAULT_BASE_URL", "DeepnoteBackend"]

logger = logging.getLogger("notebookops.deepnote")

T = TypeVar("T")

#: The environment variable the API key is read from when none is passed.
API_KEY_ENV: Final = "DEEPNOTE_API_KEY"
#: Optional override of the API origin (a proxy, a test server, the sandbox).
API_URL_ENV: Final = "DEEPNOTE_API_URL"
DEFAULT_BASE_URL: Final = "https://api.deepnote.com"
DEFAULT_WEB_URL: Final = "https://deepnote.com"
#: ``RunHandle.extra["mode"]`` of a v1 run whose v2 run could not be found (SUBMITTED).
V1_SUBMITTED: Final = "v1-submitted"
#: Bound on looking a run up after an ambiguous start.
_RECONCILE_BOUND: Final = 60.0
_RECONCILE_PAGES: Final = 5
_RECONCILE_PAGE_SIZE: Final = 20
#: Run ids this instance started, remembered so reconciliation never adopts one of them.
_KEEP_OWN_RUNS: Final = 10_000
#: How long an ambiguous start attempt counts as a possible author of new runs.
_AMBIGUITY_MEMORY: Final = timedelta(minutes=10)


def _seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        limit = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {limit}, got {value!r}")
    return float(value)


def _limiter(rate_limiter: RateLimiter | None, max_rate: float | None) -> RateLimiter:
    if rate_limiter is None:
        return RateLimiter(max_rate)
    if not isinstance(rate_limiter, RateLimiter):
        raise ConfigurationError(
            f"rate_limiter must be a notebookops.RateLimiter, got {type(rate_limiter).__name__}"
        )
    if max_rate is not None:
        raise ConfigurationError(
            "pass max_rate to the RateLimiter given as rate_limiter=, not to the backend as well"
        )
    return rate_limiter


def _run_path(run_id: str, delivery: SnapshotDelivery) -> str:
    """``/v2/runs/{runId}?snapshotDelivery=...``: the delivery is one of the known literals
    (checked by the caller), safe in a query as it is."""
    return f"/v2/runs/{path_segment(run_id, what='run id')}?snapshotDelivery={delivery}"


def _now() -> datetime:
    return datetime.now(UTC)


class DeepnoteBackend(BaseBackend):
    """Runs Deepnote notebooks through the Public API v2 (or triggers them through v1).

    ``api_key`` falls back to the ``DEEPNOTE_API_KEY`` environment variable. ``base_url`` is the
    API origin (default: ``DEEPNOTE_API_URL``, else https://api.deepnote.com); ``/v2`` and
    ``/v1`` are added here. ``workspace`` (the workspace id or slug from
    the Deepnote URL) lets runs carry a web URL for people; without it, or while the project id
    is unknown, ``Run.web_url`` stays None rather than guessed.

    Snapshots: ``snapshot_delivery`` is how ``get_run`` asks for outputs (``"blocks"``, the
    newer and lightest; servers that refuse it are read with ``"downloadUrl"`` from then on).
    A finished run whose snapshot is still pending is re-read every ``snapshot_interval``
    seconds for up to ``snapshot_wait`` seconds.

    v1 mode (``use_v1=True`` or ``DeepnoteRunOptions(use_v1=True)``): the run is triggered with
    ``POST /v1/projects/{p}/notebooks/{n}/execute``, which returns no run id; the run it started
    is looked for in the v2 runs list for up to ``v1_discovery_timeout`` seconds and tracked.
    If it cannot be found (no v2 access, or the notebook was already running, in which case
    Deepnote ignores the trigger), the run is SUBMITTED: ``run_and_wait`` returns at once with
    that state, since nothing more can be learnt.

    Ambiguous start failures are reconciled with up to ``reconcile_attempts`` reads of the
    runs list ``reconcile_interval`` seconds apart; runs created up to ``clock_skew`` seconds
    before the attempt count, to absorb clock differences with Deepnote's servers.

    Shared polls (``share_polls=True``, the default): while two or more runs of one notebook
    are being waited on, and polled often enough for one request to answer several reads,
    their status reads share the notebook's runs list (``GET /v2/notebooks/{id}/runs``, a page
    of up to 100, followed to up to 10 pages while runs waited on may be further down) instead
    of one ``GET /v2/runs/{id}`` each. A read joins a list request in flight or reuses one sent
    at most ``share_window`` seconds ago, so a status may be that much older than the read; a
    run's first read within that window is answered by its start's own answer (pending), so a
    burst of starts costs no reads. A run the list reports finished, or does not report (e.g.
    one older than the page), is read on its own, so a finished run always carries its outputs. A
    run counts as waited on from its first ``get_run`` until it is read finished or goes 300 s
    unread. If the list is refused (a key without access to it), that notebook's runs are read
    one by one, with one warning.

    Under ``run_and_wait`` (which calls :meth:`next_change`), waits on one notebook go further:
    they sleep until the list shows their run changed. One of them reads the list when the
    earliest is due and moves every unchanged wait on to its next poll without waking it; a
    read counts for a wait due within a quarter of its poll interval, so jittered schedules
    share one request. A run the list shows finished is read at once, ahead of its schedule.
    With no ``on_update`` to tell (``next_change(quiet=True)``), a wait sleeps through its run's
    changes until it ends, and the start's answer stands for its first read.

    Rate limiting: every request goes through one :class:`notebookops.RateLimiter`, which learns
    Deepnote's rate from its 429 answers. ``max_rate`` caps it; ``rate_limiter`` shares one
    limiter between several backends using the same API key (Deepnote limits per key).
    """

    name = "deepnote"
    capabilities = frozenset(
        {
            Capability.RUN_STATUS,
            Capability.OUTPUTS,
            Capability.INPUTS,
            Capability.BLOCK_SELECTION,
            Capability.RESUMABLE,
            Capability.RECONCILE_START,
        }
    )

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        workspace: str | None = None,
        web_base_url: str = DEFAULT_WEB_URL,
        use_v1: bool = False,
        snapshot_delivery: SnapshotDelivery = "blocks",
        snapshot_wait: float = 5.0,
        snapshot_interval: float = 1.5,
        v1_discovery_timeout: float = 30.0,
        v1_discovery_interval: float = 2.0,
        reconcile_attempts: int = 3,
        reconcile_interval: float = 1.0,
        clock_skew: float = 5.0,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_rate: float | None = None,
        rate_limiter: RateLimiter | None = None,
        allow_http: bool = False,
        share_polls: bool = True,
        share_window: float = 0.5,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if key is None or (isinstance(key, str) and not key.strip()):
            raise ConfigurationError(
                f"no Deepnote API key: pass api_key=... or set the {API_KEY_ENV} environment "
                "variable (create one under Settings & members > Security > API keys)"
            )
        if not isinstance(key, str):
            raise ConfigurationError(f"api_key must be a string, got {type(key).__name__}")
        key = key.strip()
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
            raise ConfigurationError("the Deepnote API key contains control characters")
        if base_url is None:
            base_url = os.environ.get(API_URL_ENV) or DEFAULT_BASE_URL
        origin = check_base_url(base_url, allow_http=allow_http)
        if origin.rstrip("/").endswith(("/v1", "/v2")):
            raise ConfigurationError(
                f"base_url is the API origin (e.g. {DEFAULT_BASE_URL}); notebookops adds /v1 "
                f"and /v2 itself. Got {redact_url(origin)!r}"
            )
        self._web_base = check_base_url(web_base_url, allow_http=allow_http, what="web URL")
        if workspace is not None and (not isinstance(workspace, str) or not workspace.strip()):
            raise ConfigurationError(f"workspace must be a non-empty string, got {workspace!r}")
        if snapshot_delivery not in SNAPSHOT_DELIVERIES:
            raise ConfigurationError(
                f"snapshot_delivery must be one of {SNAPSHOT_DELIVERIES}, got {snapshot_delivery!r}"
            )
        if not isinstance(use_v1, bool):
            raise ConfigurationError(f"use_v1 must be True or False, got {use_v1!r}")
        if not isinstance(share_polls, bool):
            raise ConfigurationError(f"share_polls must be True or False, got {share_polls!r}")
        window = _seconds("share_window", share_window)
        if (
            isinstance(reconcile_attempts, bool)
            or not isinstance(reconcile_attempts, int)
            or reconcile_attempts < 1
        ):
            raise ConfigurationError(
                f"reconcile_attempts must be an int >= 1, got {reconcile_attempts!r}"
            )
        self._workspace = workspace
        self._use_v1 = use_v1
        self._delivery: SnapshotDelivery = snapshot_delivery
        self._snapshot_wait = _seconds("snapshot_wait", snapshot_wait)
        self._snapshot_interval = _seconds("snapshot_interval", snapshot_interval, allow_zero=False)
        self._v1_timeout = _seconds("v1_discovery_timeout", v1_discovery_timeout)
        self._v1_interval = _seconds(
            "v1_discovery_interval", v1_discovery_interval, allow_zero=False
        )
        self._reconcile_attempts = reconcile_attempts
        self._reconcile_interval = _seconds("reconcile_interval", reconcile_interval)
        self._clock_skew = _seconds("clock_skew", clock_skew)
        self._states = StateTable(self.name, DEEPNOTE_STATES)
        # Reconciliation looks for "the one run created since the attempt": runs this instance
        # started for other calls must not count, nor may two reconciliations of one notebook
        # adopt the same run. So: the ids we started, the POSTs still in flight per notebook,
        # and one lock per notebook around adopting.
        self._own_runs: OrderedDict[str, None] = OrderedDict()
        self._posting: Counter[str] = Counter()
        self._posts_done: dict[str, anyio.Event] = {}
        self._reconciling: dict[str, anyio.Lock] = {}
        #: When ambiguous start attempts were made, per notebook (recent ones only).
        self._ambiguous: dict[str, list[datetime]] = {}
        self._transport = ApiClient(
            PROFILE,
            base_url=origin,
            token=Secret(key),
            timeout=timeout,
            retry=retry,
            rate_limiter=_limiter(rate_limiter, max_rate),
            allow_http=allow_http,
        )
        self._polls = (
            SharedRunPolls(self._list_runs_response, self._states, window=window)
            if share_polls
            else None
        )

    async def _aclose(self) -> None:
        await self._transport.aclose()

    @property
    def base_url(self) -> str:
        """The API origin requests go to."""
        return self._transport.base_url

    # ================================================================== runs

    async def create_run(
        self,
        notebook_id: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        blocks: Sequence[str] | None = None,
        options: DeepnoteRunOptions | None = None,
    ) -> RunStarted:
        """``POST /v2/runs``: start a run. One attempt, no reconciliation: an ambiguous failure
        is raised as is (``start_run`` is the method that settles it)."""
        self._ensure_open()
        body = build_run_body(notebook_id, inputs=inputs, blocks=blocks, options=options)
        return await self._post_run(body)

    async def _post_run(self, body: Mapping[str, Any]) -> RunStarted:
        return (await self._post_run_answer(body))[0]

    async def _post_run_answer(self, body: Mapping[str, Any]) -> tuple[RunStarted, Response]:
        response = await self._transport.request("POST", "/v2/runs", json=dict(body))
        started = decode_started(response)
        self._remember(started.run_id)
        return started, response

    def _remember(self, run_id: str) -> None:
        self._own_runs[run_id] = None
        while len(self._own_runs) > _KEEP_OWN_RUNS:
            self._own_runs.popitem(last=False)

    async def get_run_details(
        self, run_id: str, *, snapshot_delivery: SnapshotDelivery | None = None
    ) -> RunDetails:
        """``GET /v2/runs/{runId}?snapshotDelivery=...`` (the backend's default delivery when
        None)."""
        self._ensure_open()
        delivery = snapshot_delivery or self._delivery
        if delivery not in SNAPSHOT_DELIVERIES:
            raise ConfigurationError(
                f"snapshot_delivery must be one of {SNAPSHOT_DELIVERIES}, got {delivery!r}"
            )
        return decode_run(await self._transport.request("GET", _run_path(run_id, delivery)))

    async def fetch_snapshot(self, url: str) -> str:
        """Download a snapshot document (``snapshotDownloadUrl``). A URL on another origin (a
        presigned S3 link) gets no Authorization header."""
        self._ensure_open()
        if not isinstance(url, str) or not url:
            raise ConfigurationError(f"snapshot URL must be a non-empty string, got {url!r}")
        response = await self._transport.request(
            "GET", url, headers={"Accept": "application/x-yaml, text/yaml, text/plain, */*"}
        )
        try:
            return response.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ResponseDecodeError(
                f"the snapshot at {redact_url(url)} is not UTF-8 text",
                vendor=self.name,
                url=redact_url(url),
                status=response.status,
            ) from None

    def list_notebook_runs(
        self, notebook_id: str, *, page_size: int = 20
    ) -> AsyncIterator[RunSummary]:
        """Every run of a notebook, newest first (UI and scheduled runs included), following
        ``nextPageToken`` while ``hasMore``. ``page_size`` is 1 to 100.

        A server that hands out a token it already gave ends the iteration with a
        ResponseDecodeError instead of looping forever.
        """
        self._ensure_open()
        check_page_size(page_size)
        path_segment(notebook_id, what="notebook id")

        async def fetch(token: str | None) -> tuple[list[RunSummary], Pagination, Response]:
            page, response = await self._runs_page(notebook_id, page_size, token)
            return page.runs, page.pagination, response

        return self._paginate(fetch, "notebook runs")

    async def list_notebook_runs_page(
        self, notebook_id: str, *, page_size: int = 20, page_token: str | None = None
    ) -> RunPage:
        """``GET /v2/notebooks/{id}/runs``: one page of a notebook's runs, newest first."""
        self._ensure_open()
        check_page_size(page_size)
        return (await self._runs_page(notebook_id, page_size, page_token))[0]

    async def _runs_page(
        self, notebook_id: str, page_size: int, page_token: str | None
    ) -> tuple[RunPage, Response]:
        response = await self._list_runs_response(notebook_id, page_size, page_token)
        return decode(response, RunPage), response

    async def _list_runs_response(
        self, notebook_id: str, page_size: int, page_token: str | None = None
    ) -> Response:
        params: dict[str, str | int] = {"pageSize": page_size}
        if page_token is not None:
            params["pageToken"] = page_token
        return await self._transport.request(
            "GET",
            f"/v2/notebooks/{path_segment(notebook_id, what='notebook id')}/runs",
            params=params,
        )

    # ================================================================== notebooks

    async def create_notebook(self, project_id: str, name: str | None = None) -> Notebook:
        """``POST /v2/notebooks``: an empty notebook in a project (names are unique per
        project; a duplicate is a Conflict)."""
        self._ensure_open()
        response = await self._transport.request(
            "POST", "/v2/notebooks", json=build_notebook_body(project_id, name)
        )
        return decode(response, Notebook, envelope="notebook")

    async def get_notebook(self, notebook_id: str) -> Notebook:
        """``GET /v2/notebooks/{id}``: blocks and input variables (names to use in inputs)."""
        self._ensure_open()
        response = await self._transport.request(
            "GET", f"/v2/notebooks/{path_segment(notebook_id, what='notebook id')}"
        )
        return decode(response, Notebook, envelope="notebook")

    async def delete_notebook(self, notebook_id: str) -> None:
        """``DELETE /v2/notebooks/{id}`` (204)."""
        self._ensure_open()
        await self._transport.request(
            "DELETE", f"/v2/notebooks/{path_segment(notebook_id, what='notebook id')}"
        )

    async def reorder_blocks(
        self, notebook_id: str, block_ids: Sequence[str], placement: BlockPlacement
    ) -> list[str]:
        """``POST /v2/notebooks/{id}/reorder-blocks``: move ``block_ids`` (in that order) to
        ``placement``; returns the notebook's full resulting block order. Safe to repeat."""
        self._ensure_open()
        body = build_reorder_body(block_ids, placement)
        response = await self._transport.request(
            "POST",
            f"/v2/notebooks/{path_segment(notebook_id, what='notebook id')}/reorder-blocks",
            json=body,
            # Moving blocks to an absolute place gives the same result however often it runs.
            idempotent=True,
        )
        return decode(response, ReorderResult).block_ids

    async def upsert_schedule(
        self, notebook_id: str, cron: str, timezone: str | None = None
    ) -> Schedule:
        """``POST /v2/notebooks/{id}/schedule``: create or replace the schedule of the
        notebook's project (one per project: this re-points it to this notebook). ``timezone``
        is an IANA name, checked locally; None means UTC."""
        self._ensure_open()
        body = build_schedule_body(cron, timezone)
        response = await self._transport.request(
            "POST",
            f"/v2/notebooks/{path_segment(notebook_id, what='notebook id')}/schedule",
            json=body,
            # An upsert to the same values is the same schedule.
            idempotent=True,
        )
        return decode(response, Schedule, envelope="schedule")

    # ================================================================== projects

    def list_projects(
        self, *, name_contains: str | None = None, page_size: int = 50
    ) -> AsyncIterator[Project]:
        """Every project of the workspace (``name_contains`` is a case-insensitive substring),
        following ``nextPageToken`` while ``hasMore``. ``page_size`` is 1 to 100."""
        self._ensure_open()
        check_page_size(page_size)
        self._check_name_filter(name_contains)

        async def fetch(token: str | None) -> tuple[list[Project], Pagination, Response]:
            page, response = await self._projects_page(page_size, token, name_contains)
            return page.projects, page.pagination, response

        return self._paginate(fetch, "projects")

    async def list_projects_page(
        self,
        *,
        page_size: int = 50,
        page_token: str | None = None,
        name_contains: str | None = None,
    ) -> ProjectPage:
        """``GET /v2/projects``: one page of projects."""
        self._ensure_open()
        check_page_size(page_size)
        self._check_name_filter(name_contains)
        return (await self._projects_page(page_size, page_token, name_contains))[0]

    @staticmethod
    def _check_name_filter(name_contains: str | None) -> None:
        if name_contains is not None and not isinstance(name_contains, str):
            raise ConfigurationError(f"name_contains must be a string, got {name_contains!r}")

    async def _projects_page(
        self, page_size: int, page_token: str | None, name_contains: str | None
    ) -> tuple[ProjectPage, Response]:
        params: dict[str, str | int] = {"pageSize": page_size}
        if page_token is not None:
            params["pageToken"] = page_token
        if name_contains:
            params["nameContains"] = name_contains
        response = await self._transport.request("GET", "/v2/projects", params=params)
        return decode(response, ProjectPage), response

    async def create_project(
        self, name: str, *, folder_id: str | None = None, project_type: str | None = None
    ) -> Project:
        """``POST /v2/projects``: a new project (seeded by Deepnote with one empty notebook)."""
        self._ensure_open()
        body = build_project_body(name, folder_id=folder_id, project_type=project_type)
        response = await self._transport.request("POST", "/v2/projects", json=body)
        return decode(response, Project, envelope="project")

    async def get_project(self, project_id: str) -> Project:
        """``GET /v2/projects/{id}``: the project with its notebooks and files."""
        self._ensure_open()
        response = await self._transport.request(
            "GET", f"/v2/projects/{path_segment(project_id, what='project id')}"
        )
        return decode(response, Project, envelope="project")

    async def delete_project(self, project_id: str) -> None:
        """``DELETE /v2/projects/{id}`` (204)."""
        self._ensure_open()
        await self._transport.request(
            "DELETE", f"/v2/projects/{path_segment(project_id, what='project id')}"
        )

    async def me(self) -> Me:
        """``GET /v2/me``: the API key, its creator, its workspace and the access level."""
        self._ensure_open()
        response = await self._transport.request("GET", "/v2/me")
        return decode(response, Me)

    # ================================================================== v1

    async def execute_v1(self, project_id: str, notebook_id: str) -> None:
        """``POST /v1/projects/{p}/notebooks/{n}/execute`` (202): start the notebook's machine
        if needed and run it. No run id comes back, and a notebook already running ignores it.
        Not retried after an ambiguous failure."""
        self._ensure_open()
        project = path_segment(project_id, what="project id")
        notebook = path_segment(notebook_id, what="notebook id")
        await self._transport.request(
            "POST", f"/v1/projects/{project}/notebooks/{notebook}/execute"
        )

    # ================================================================== pagination

    async def _paginate(
        self,
        fetch: Callable[[str | None], Awaitable[tuple[Sequence[T], Pagination, Response]]],
        what: str,
    ) -> AsyncIterator[T]:
        seen: set[str] = set()
        token: str | None = None
        while True:
            self._ensure_open()
            items, pagination, response = await fetch(token)
            # Checked before yielding: a page behind a repeated token is a repeat itself.
            token = next_page_token(pagination, seen, response, what)
            for item in items:
                yield item
            if token is None:
                return

    # ================================================================== NotebookBackend

    async def start_run(self, request: RunRequest) -> RunHandle:
        """Start a run (``POST /v2/runs``, or v1 execute in v1 mode) and return its handle.

        The POST is sent once. If its outcome is ambiguous, the notebook's runs list decides:
        exactly one run created since the attempt, and not started by this backend for another
        call, is adopted, unless another ambiguous start of the same notebook could have made
        it; anything else raises StartOutcomeUnknown (chained to the original error) with
        what was seen.
        """
        self._ensure_open()
        if not isinstance(request, RunRequest):
            raise ConfigurationError(f"expected a RunRequest, got {type(request).__name__}")
        options = self._options(request, DeepnoteRunOptions)
        use_v1 = self._use_v1 if options.use_v1 is None else options.use_v1
        if use_v1:
            return await self._start_v1(request, options)
        body = build_run_body(
            request.notebook, inputs=request.inputs, blocks=request.blocks, options=options
        )
        attempt_at = _now()
        self._posting[request.notebook] += 1
        posting = True
        try:
            # _post_run_answer inlined, without its copy of the body (ours is new): one
            # coroutine and one dict fewer per start waiting for a connection.
            answer = await self._transport.request("POST", "/v2/runs", json=body)
            started = decode_started(answer)
            self._remember(started.run_id)
        except (TransportError, ServerError, ResponseDecodeError) as error:
            if isinstance(error, TransportError) and not error.request_sent:
                raise  # provably never reached Deepnote: no run can exist
            posting = False
            self._done_posting(request.notebook)
            self._ambiguous.setdefault(request.notebook, []).append(attempt_at)
            # The run may exist: the look-up is seen through whatever happens to the caller
            # (the NotebookBackend.start_run contract), within its own bound.
            try:
                found = await protected(
                    functools.partial(self._reconcile, request.notebook, attempt_at, error),
                    _RECONCILE_BOUND,
                )
            except TimeoutError:
                raise StartOutcomeUnknown(
                    f"starting Deepnote notebook {request.notebook} failed ambiguously ({error}) "
                    f"and its runs list could not be read within {_RECONCILE_BOUND:g}s",
                    notebook=request.notebook,
                    evidence="the runs list did not answer in time",
                ) from error
            return self._handle(
                found.run_id, request.notebook, found.created_at, options.project_id
            )
        finally:
            if posting:
                self._done_posting(request.notebook)
        handle = self._handle(
            started.run_id, request.notebook, started.created_at, options.project_id
        )
        if self._polls is not None:
            # When the POST was sent, not when it was made: a start queued for a connection
            # behind thousands of others has a fresh answer all the same.
            sent_at = self._polls.clock()
            self._polls.started(handle, started.status, answer, sent_at)
        return handle

    async def get_run(self, handle: RunHandle) -> Run:
        """Read the run (``GET /v2/runs/{id}``, or the notebook's shared runs list while other
        runs of it are waited on too: see the class docs). A finished run carries its outputs
        and, when it failed, the reason (from the run's ``error`` or the snapshot's error
        outputs)."""
        self._check_handle(handle)
        if handle.extra.get("mode") == V1_SUBMITTED:
            return Run(
                handle=handle,
                state=RunState.SUBMITTED,
                vendor_state="accepted",
                created_at=handle.created_at,
                web_url=handle.web_url,
            )
        if self._polls is not None:
            listed = await self._polls.read(handle)
            if listed is not None:
                return self._listed_run(handle, listed)
        return await self._read_alone(handle)

    def watches_changes(self, handle: RunHandle) -> bool:
        """Whether :meth:`next_change` shares this run's reads: with shared polls, for a run
        started through v2 (a v1 submission cannot be read at all)."""
        return self._polls is not None and handle.extra.get("mode") != V1_SUBMITTED

    async def next_change(
        self,
        handle: RunHandle,
        last: Run | None,
        next_delay: Callable[[], float],
        *,
        quiet: bool = False,
    ) -> Run:
        """The run's next read that differs from ``last`` (another state or vendor status) or
        is terminal, with reads due as ``next_delay()`` says (each call is one read).

        ``run_and_wait`` uses this instead of sleeping and calling :meth:`get_run` itself:
        with shared polls, waits on one notebook then sleep until the shared runs list shows
        their run changed, and one list read moves every unchanged wait on to its next poll
        without waking it (see the class docs). Otherwise it is exactly that sleep-and-read
        loop. ``quiet``: the caller needs only the terminal read, so a change while the run is
        still in progress does not end the call (nor wake a shared wait). ``last`` None (only
        with ``quiet``): nothing read yet; the start's answer, when it said the run is in
        progress, stands for the first read (as it would serve :meth:`get_run`), else the run
        is read at once. Transient read errors are raised, for the caller's retry schedule.
        """
        self._check_handle(handle)
        polls = self._polls if self.watches_changes(handle) else None
        status: str | None = None
        if last is None:
            if not quiet:
                raise ConfigurationError("next_change needs the last Run read, unless quiet")
            status = polls.take_start(handle) if polls is not None else None
            if status is None:
                last = await self.get_run(handle)
                if last.state.is_terminal:
                    return last
        if last is not None:
            status = last.vendor_state
        while True:
            outcome: object = NOT_SHARED
            if polls is not None:
                outcome = await polls.wait(handle, status, next_delay, quiet=quiet)
            if isinstance(outcome, ListedRun):
                return self._listed_run(handle, outcome)
            if outcome is READ_NOW:
                run = await self._read_alone(handle)
            else:
                await anyio.sleep(next_delay())
                run = await self.get_run(handle)
            if run.state.is_terminal or (
                not quiet
                and last is not None
                and (run.state, run.vendor_state) != (last.state, last.vendor_state)
            ):
                return run

    def _listed_run(self, handle: RunHandle, listed: ListedRun) -> Run:
        return Run(
            handle=handle,
            state=listed.state,
            vendor_state=listed.summary.status,
            created_at=listed.summary.created_at or handle.created_at,
            web_url=self._web_url(
                listed.project_id or handle.extra.get("project_id"),
                listed.summary.notebook_id or handle.notebook_id,
            ),
            raw=listed.raw,
        )

    async def _read_alone(self, handle: RunHandle) -> Run:
        """``GET /v2/runs/{id}``: the run's own read, with its outputs once it finished."""
        details = await self._read_run(handle.run_id)
        state = self._states(details.status)
        if self._polls is not None:
            self._polls.read_alone(
                handle, finished=state.is_terminal, project_id=details.project_id
            )
        if state.is_terminal and details.snapshot_status == "pending":
            details = await self._await_snapshot(handle.run_id, details)
        outputs: list[CellOutput] = []
        snapshot_error: RunErrorInfo | None = None
        # Most reads are of a run in progress without blocks: nothing to fetch or read.
        if state.is_terminal or details.snapshot_blocks is not None:
            outputs, snapshot_error = await self._outputs(details, state, handle)
        project_id = details.project_id or handle.extra.get("project_id")
        return Run(
            handle=handle,
            state=state,
            vendor_state=details.status,
            created_at=details.created_at or handle.created_at,
            finished_at=details.finished_at,
            outputs=tuple(outputs),
            error=run_error_info(details, state, outputs, snapshot_error),
            web_url=self._web_url(project_id, details.notebook_id or handle.notebook_id),
            raw=details.raw,
        )

    async def cancel_run(self, handle: RunHandle) -> None:
        """Deepnote's API has no endpoint to stop a run: always UnsupportedOperation."""
        self._check_handle(handle)
        raise UnsupportedOperation(
            "the deepnote backend cannot cancel runs (no CANCEL capability): Deepnote's API "
            "has no endpoint to stop a run; stop it from the notebook in the Deepnote app",
            capability=Capability.CANCEL.value,
        )

    # ------------------------------------------------------------------ helpers: handles

    def _web_url(self, project_id: str | None, notebook_id: str | None) -> str | None:
        return notebook_web_url(self._web_base, self._workspace, project_id, notebook_id)

    def _handle(
        self,
        run_id: str,
        notebook_id: str,
        created_at: datetime | None,
        project_id: str | None,
        *,
        extra: Mapping[str, str] | None = None,
    ) -> RunHandle:
        values = dict(extra or {})
        if project_id:
            values["project_id"] = project_id
        return RunHandle(
            backend=self.name,
            run_id=run_id,
            notebook_id=notebook_id,
            created_at=created_at,
            web_url=self._web_url(project_id, notebook_id),
            extra=values,
        )

    # ------------------------------------------------------------------ helpers: reading

    async def _read_run(self, run_id: str) -> RunDetails:
        delivery = self._delivery
        try:
            # get_run_details without its argument checks and its coroutine: one read per
            # wait per poll.
            return decode_run(await self._transport.request("GET", _run_path(run_id, delivery)))
        except BadRequest:
            if delivery != "blocks":
                raise
            # "blocks" is newer than the documented values; an older server rejects it.
            details = await self.get_run_details(run_id, snapshot_delivery="downloadUrl")
            logger.warning(
                "deepnote refused snapshotDelivery=blocks; using downloadUrl from now on"
            )
            self._delivery = "downloadUrl"
            return details

    async def _await_snapshot(self, run_id: str, details: RunDetails) -> RunDetails:
        """Re-read a finished run while its snapshot is ``pending``, within snapshot_wait."""
        deadline = anyio.current_time() + self._snapshot_wait
        while (
            details.snapshot_status == "pending"
            and anyio.current_time() + self._snapshot_interval <= deadline
        ):
            await anyio.sleep(self._snapshot_interval)
            details = await self._read_run(run_id)
        if details.snapshot_status == "pending":
            logger.info(
                "deepnote run %s finished but its snapshot is still pending after %gs; "
                "returning it without outputs",
                run_id,
                self._snapshot_wait,
            )
        return details

    async def _outputs(
        self, details: RunDetails, state: RunState, handle: RunHandle
    ) -> tuple[list[CellOutput], RunErrorInfo | None]:
        """Outputs from whichever snapshot form the run carries. A snapshot that cannot be
        fetched or read costs the outputs (logged), never the run's state."""
        if details.snapshot_blocks is not None:
            return outputs_from_blocks(details.snapshot_blocks), None
        if not state.is_terminal:
            return [], None
        text = details.snapshot_content
        if text is None and details.snapshot_download_url:
            try:
                text = await self.fetch_snapshot(details.snapshot_download_url)
            except NotebookOpsError as error:
                logger.warning(
                    "could not download the snapshot of deepnote run %s: %s", handle.run_id, error
                )
                return [], None
        if text is None:
            return [], None
        try:
            result = outputs_from_snapshot(text, details.notebook_id or handle.notebook_id)
        except ValueError as error:
            logger.warning(
                "could not read the snapshot of deepnote run %s: %s", handle.run_id, error
            )
            return [], None
        if result.skipped_outputs:
            logger.warning(
                "skipped %d unreadable outputs in the snapshot of deepnote run %s",
                result.skipped_outputs,
                handle.run_id,
            )
        return list(result.outputs), result.error

    # ------------------------------------------------------------------ helpers: starting

    async def _runs_since(self, notebook_id: str, threshold: datetime) -> list[RunSummary]:
        """The notebook's runs created at or after ``threshold``, newest first (a few pages
        at most: the list is newest first, so older pages cannot hold any)."""
        found: list[RunSummary] = []
        seen: set[str] = set()
        token: str | None = None
        for _ in range(_RECONCILE_PAGES):
            page, response = await self._runs_page(notebook_id, _RECONCILE_PAGE_SIZE, token)
            older = False
            for run in page.runs:
                if created_since(run.created_at, threshold):
                    if run.run_id.strip():
                        found.append(run)
                elif run.created_at is not None:
                    older = True
            token = next_page_token(page.pagination, seen, response, "notebook runs")
            if older or token is None:
                break
        return found

    def _done_posting(self, notebook_id: str) -> None:
        self._posting[notebook_id] -= 1
        if self._posting[notebook_id] <= 0:
            del self._posting[notebook_id]
            idle = self._posts_done.pop(notebook_id, None)
            if idle is not None:
                idle.set()

    def _rivals(self, notebook_id: str, created_at: datetime | None) -> int:
        """Other ambiguous attempts on this notebook that could have created a run made at
        ``created_at`` (any recent one when the time is unknown)."""
        skew = timedelta(seconds=self._clock_skew)
        recent = [
            at for at in self._ambiguous.get(notebook_id, []) if at > _now() - _AMBIGUITY_MEMORY
        ]
        self._ambiguous[notebook_id] = recent
        possible = [at for at in recent if created_at is None or created_at >= at - skew]
        return max(0, len(possible) - 1)  # one of them is the attempt being reconciled

    async def _reconcile(
        self, notebook_id: str, attempt_at: datetime, error: NotebookOpsError
    ) -> RunSummary:
        lock = self._reconciling.setdefault(notebook_id, anyio.Lock())
        async with lock:
            return await self._reconcile_locked(notebook_id, attempt_at, error)

    async def _reconcile_locked(
        self, notebook_id: str, attempt_at: datetime, error: NotebookOpsError
    ) -> RunSummary:
        threshold = attempt_at - timedelta(seconds=self._clock_skew)
        evidence: list[str] = []
        for attempt in range(self._reconcile_attempts):
            if attempt:
                await anyio.sleep(self._reconcile_interval)
            # Another start of this notebook still waiting for its answer would leave its run
            # looking like ours: let those answers arrive first (each is bounded by its timeout).
            while self._posting[notebook_id] > 0:
                await self._posts_done.setdefault(notebook_id, anyio.Event()).wait()
            try:
                found = await self._runs_since(notebook_id, threshold)
                candidates = [run for run in found if run.run_id not in self._own_runs]
            except NotebookOpsError as list_error:
                evidence.append(f"reading the notebook's runs failed ({list_error})")
                if isinstance(list_error, AuthenticationError | PermissionDenied | NotFound):
                    break
                continue
            rivals = self._rivals(notebook_id, candidates[0].created_at) if candidates else 0
            if len(candidates) == 1 and rivals:
                evidence.append(
                    f"run {candidates[0].run_id} was created since the attempt, but {rivals} "
                    "other start(s) of this notebook by this backend failed ambiguously around "
                    "then: cannot tell whose it is"
                )
                break
            if len(candidates) == 1:
                self._remember(candidates[0].run_id)
                logger.warning(
                    "starting deepnote notebook %s failed ambiguously (%s); adopted run %s, "
                    "the only one created since the attempt",
                    notebook_id,
                    type(error).__name__,
                    candidates[0].run_id,
                )
                return candidates[0]
            if candidates:
                ids = ", ".join(run.run_id for run in candidates[:5])
                evidence.append(
                    f"{len(candidates)} runs were created since the attempt ({ids}); "
                    "cannot tell which one is ours"
                )
                break
            evidence.append(f"read {attempt + 1}: no run created since {threshold.isoformat()}")
        raise StartOutcomeUnknown(
            f"starting deepnote notebook {notebook_id!r} failed ambiguously ({error}); the run "
            "may or may not have started. Check the notebook's runs in Deepnote before "
            "starting it again",
            notebook=notebook_id,
            evidence="; ".join(evidence),
        ) from error

    async def _project_of(self, notebook_id: str) -> str:
        hint = "pass DeepnoteRunOptions(project_id=...) (the id is in the notebook's URL)"
        try:
            notebook = await self.get_notebook(notebook_id)
        except (AuthenticationError, PermissionDenied, NotFound) as error:
            raise ConfigurationError(
                f"v1 execute needs the project id of notebook {notebook_id!r} and it could not "
                f"be read through v2 ({error}); {hint}"
            ) from error
        if not notebook.project_id:
            raise ConfigurationError(
                f"Deepnote did not say which project notebook {notebook_id!r} is in; {hint}"
            )
        return notebook.project_id

    async def _start_v1(self, request: RunRequest, options: DeepnoteRunOptions) -> RunHandle:
        if request.inputs or request.blocks is not None:
            raise ConfigurationError(
                "Deepnote's v1 execute endpoint takes no inputs and no block selection; "
                "use the v2 API (use_v1=False) for those"
            )
        if (
            options.detached is not None
            or options.detached_run_storage_mode is not None
            or options.run_dependent_blocks is not None
        ):
            raise ConfigurationError(
                "detached, detached_run_storage_mode and run_dependent_blocks are v2 options; "
                "v1 execute cannot honour them"
            )
        notebook_id = request.notebook
        project_id = options.project_id or await self._project_of(notebook_id)
        known: set[str] | None
        try:
            page, _ = await self._runs_page(notebook_id, _RECONCILE_PAGE_SIZE, None)
            known = {run.run_id for run in page.runs}
        except (AuthenticationError, PermissionDenied, NotFound) as error:
            logger.info(
                "deepnote v2 runs list unavailable for %s (%s); a v1 run will be SUBMITTED",
                notebook_id,
                error,
            )
            known = None
        triggered_at = _now()
        try:
            await self.execute_v1(project_id, notebook_id)
        except (TransportError, ServerError) as error:
            if isinstance(error, TransportError) and not error.request_sent:
                raise
            found = await self._discover_v1(notebook_id, known, triggered_at)
            if found is None:
                raise StartOutcomeUnknown(
                    f"triggering deepnote notebook {notebook_id!r} through v1 failed "
                    f"ambiguously ({error}); it may or may not be running",
                    notebook=notebook_id,
                    evidence=(
                        "no v2 runs list to check"
                        if known is None
                        else f"no new run appeared within {self._v1_timeout:g}s"
                    ),
                ) from error
            return self._handle(found.run_id, notebook_id, found.created_at, project_id)
        found = await self._discover_v1(notebook_id, known, triggered_at)
        if found is not None:
            return self._handle(found.run_id, notebook_id, found.created_at, project_id)
        logger.info(
            "deepnote v1 trigger of %s accepted, but its run could not be found; SUBMITTED",
            notebook_id,
        )
        return self._handle(
            f"v1-{uuid.uuid4().hex}",
            notebook_id,
            triggered_at,
            project_id,
            extra={"mode": V1_SUBMITTED},
        )

    async def _discover_v1(
        self, notebook_id: str, known: set[str] | None, triggered_at: datetime
    ) -> RunSummary | None:
        """The run a v1 trigger started: the newest run not seen before the trigger and
        created at or after it, looked for within v1_discovery_timeout."""
        if known is None:
            return None
        threshold = triggered_at - timedelta(seconds=self._clock_skew)
        deadline = anyio.current_time() + self._v1_timeout
        while True:
            try:
                candidates = [
                    run
                    for run in await self._runs_since(notebook_id, threshold)
                    if run.run_id not in known
                ]
            except (AuthenticationError, PermissionDenied, NotFound):
                return None
            except NotebookOpsError as error:
                logger.warning("reading deepnote runs of %s failed: %s", notebook_id, error)
                candidates = []
            if candidates:
                if len(candidates) > 1:
                    logger.warning(
                        "%d new runs of deepnote notebook %s after a v1 trigger; tracking the "
                        "newest, %s",
                        len(candidates),
                        notebook_id,
                        candidates[0].run_id,
                    )
                return candidates[0]
            if anyio.current_time() + self._v1_interval > deadline:
                return None
            await anyio.sleep(self._v1_interval)
