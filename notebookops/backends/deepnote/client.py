"""DeepnoteClient: every Deepnote endpoint notebookops uses, one async method each.

The client speaks HTTP and returns the wire types of ``_wire`` (the attrs classes exported by
``notebookops.backends.deepnote``); it knows nothing of runs being waited on, reconciliation or
the :class:`~notebookops.NotebookBackend` protocol, which :class:`DeepnoteBackend` adds on top.
Use it directly for what the protocol does not cover (projects, notebooks, schedules)::

    async with DeepnoteClient() as deepnote:              # DEEPNOTE_API_KEY
        async for project in deepnote.list_projects(name_contains="Sales"):
            print(project.id, project.name)

Requests are retried as :class:`~notebookops.RetryPolicy` says, except the ones that start
something (``create_run``, ``execute_v1``, ``create_*``): a 5xx or a broken connection there
is raised as it is, since repeating it could start a second run. Every request goes through
one :class:`~notebookops.RateLimiter`, which learns Deepnote's rate from its 429 answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from ..._api_errors import VendorProfile, default_error_message
from ..._client import ApiClient, VendorClient
from ..._redact import Secret, redact_url
from ..._urls import check_base_url, path_segment
from ...errors import ConfigurationError, NotFound, ResponseDecodeError
from ...policies import RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Response as Response
from ...transport import Transport
from ._requests import (
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
    decode,
    next_page_token,
    refine_error,
    with_details,
)
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

__all__ = [
    "DEFAULT_BASE_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "DeepnoteClient",
    "Response",
    "check_base_url",
    "path_segment",
]

T = TypeVar("T")

#: The environment variable the API key is read from when none is passed.
TOKEN_ENV: Final = "DEEPNOTE_API_KEY"
#: Optional override of the API origin (a proxy, a test server, the sandbox).
URL_ENV: Final = "DEEPNOTE_API_URL"
#: Deepnote's API origin; ``/v1`` and ``/v2`` are added per endpoint.
DEFAULT_BASE_URL: Final = "https://api.deepnote.com"

PROFILE: Final = VendorProfile(
    name="deepnote",
    error_message=lambda data, text: with_details(default_error_message(data, text), data),
    refine_error=refine_error,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _token(token: object) -> Secret:
    value = os.environ.get(TOKEN_ENV) if token is None else token
    if not isinstance(value, str | None):
        raise ConfigurationError(
            f"the Deepnote API key must be a string, got {type(value).__name__}"
        )
    value = (value or "").strip()
    if not value:
        raise ConfigurationError(
            f"no Deepnote API key: pass token=... or set the {TOKEN_ENV} environment "
            "variable (create one under Settings & members > Security > API keys)"
        )
    if _CONTROL.search(value):
        raise ConfigurationError("the Deepnote API key contains control characters")
    return Secret(value)


def _origin(base_url: str | None, allow_http: bool) -> str:
    origin = check_base_url(
        base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL, allow_http=allow_http
    )
    if origin.rstrip("/").endswith(("/v1", "/v2")):
        raise ConfigurationError(
            f"base_url is the API origin (e.g. {DEFAULT_BASE_URL}); notebookops adds /v1 "
            f"and /v2 itself. Got {redact_url(origin)!r}"
        )
    return origin


def _limiter(rate_limiter: RateLimiter | None, max_rate: float | None) -> RateLimiter:
    if rate_limiter is None:
        return RateLimiter(max_rate)
    if not isinstance(rate_limiter, RateLimiter):
        raise ConfigurationError(
            f"rate_limiter must be a notebookops.RateLimiter, got {type(rate_limiter).__name__}"
        )
    if max_rate is not None:
        raise ConfigurationError(
            "pass max_rate to the RateLimiter given as rate_limiter=, not to the client as well"
        )
    return rate_limiter


def _notebook_path(notebook_id: str, tail: str = "") -> str:
    return f"/v2/notebooks/{path_segment(notebook_id, what='notebook id')}{tail}"


def _project_path(project_id: str) -> str:
    return f"/v2/projects/{path_segment(project_id, what='project id')}"


class DeepnoteClient(VendorClient):
    """Deepnote's Public API v2 (and legacy v1 execute), one async method per endpoint.

    ``token`` (the workspace API key) falls back to ``$DEEPNOTE_API_KEY``; ``base_url`` (the
    API origin) to ``$DEEPNOTE_API_URL``, then https://api.deepnote.com. ``timeout`` bounds
    each request once it has a connection; ``retry`` says how reads are retried. ``max_rate``
    caps requests per second; ``rate_limiter`` shares one limiter between clients using the
    same key (Deepnote limits per key). ``allow_http`` permits plain http:// for a non-loopback
    origin (the key then travels unencrypted).
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_rate: float | None = None,
        rate_limiter: RateLimiter | None = None,
        allow_http: bool = False,
        transport: Transport | None = None,
    ) -> None:
        self.api = ApiClient(
            PROFILE,
            base_url=_origin(base_url, allow_http),
            token=_token(token),
            timeout=timeout,
            retry=retry,
            rate_limiter=_limiter(rate_limiter, max_rate),
            allow_http=allow_http,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"<DeepnoteClient {self.base_url}>"

    # ------------------------------------------------------------------ runs

    async def create_run(
        self,
        notebook_id: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        blocks: Sequence[str] | None = None,
        options: DeepnoteRunOptions | None = None,
    ) -> RunStarted:
        """``POST /v2/runs``: start a run. Sent once: an ambiguous failure (a 5xx, a broken
        connection, an unreadable answer) is raised as it is, since the run may exist
        (``DeepnoteBackend.start_run`` settles that through the notebook's runs list)."""
        body = build_run_body(notebook_id, inputs=inputs, blocks=blocks, options=options)
        response = await self.api.request("POST", "/v2/runs", json=body)
        return decode(response, RunStarted, envelope="run")

    async def get_run(
        self, run_id: str, *, snapshot_delivery: SnapshotDelivery = "blocks"
    ) -> RunDetails:
        """``GET /v2/runs/{runId}?snapshotDelivery=...``: the run, with its snapshot once it
        is available (``"blocks"``: outputs per block, the newest and lightest form;
        ``"inline"``: the YAML document; ``"downloadUrl"``: a link to it)."""
        if snapshot_delivery not in SNAPSHOT_DELIVERIES:
            raise ConfigurationError(
                f"snapshot_delivery must be one of {SNAPSHOT_DELIVERIES}, got {snapshot_delivery!r}"
            )
        path = f"/v2/runs/{path_segment(run_id, what='run id')}"
        response = await self.api.request(
            "GET", path, params={"snapshotDelivery": snapshot_delivery}
        )
        return decode(response, RunDetails, envelope="run")

    async def fetch_snapshot(self, url: str) -> str:
        """Download a snapshot document (a run's ``download_url``). The API key goes only to
        the API's own origin: a presigned link elsewhere (S3) is fetched without it."""
        if not isinstance(url, str) or not url:
            raise ConfigurationError(f"snapshot URL must be a non-empty string, got {url!r}")
        response = await self.api.request(
            "GET", url, headers={"Accept": "application/x-yaml, text/yaml, text/plain, */*"}
        )
        try:
            return response.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ResponseDecodeError(
                f"the snapshot at {redact_url(url)} is not UTF-8 text",
                vendor=PROFILE.name,
                url=redact_url(url),
                status=response.status,
            ) from None

    async def list_notebook_runs_page(
        self, notebook_id: str, *, page_size: int = 20, page_token: str | None = None
    ) -> RunPage:
        """``GET /v2/notebooks/{id}/runs``: one page of a notebook's runs, newest first (UI and
        scheduled runs included). ``page_size`` is 1 to 100."""
        return (await self._runs_page(notebook_id, page_size, page_token))[0]

    def list_notebook_runs(
        self, notebook_id: str, *, page_size: int = 20
    ) -> AsyncGenerator[RunSummary, None]:
        """Every run of a notebook, newest first, following ``nextPageToken`` while
        ``hasMore``. A server handing out a token it already gave ends the iteration with a
        ResponseDecodeError instead of looping forever."""
        check_page_size(page_size)
        path_segment(notebook_id, what="notebook id")

        async def fetch(token: str | None) -> tuple[list[RunSummary], Pagination, Response]:
            page, response = await self._runs_page(notebook_id, page_size, token)
            return page.runs, page.pagination, response

        return self._paginate(fetch, "notebook runs")

    async def _runs_page(
        self, notebook_id: str, page_size: int, page_token: str | None
    ) -> tuple[RunPage, Response]:
        params: dict[str, str | int] = {"pageSize": check_page_size(page_size)}
        if page_token is not None:
            params["pageToken"] = page_token
        response = await self.api.request(
            "GET", _notebook_path(notebook_id, "/runs"), params=params
        )
        return decode(response, RunPage), response

    # ------------------------------------------------------------------ notebooks

    async def create_notebook(self, project_id: str, name: str | None = None) -> Notebook:
        """``POST /v2/notebooks``: an empty notebook in a project (names are unique per
        project; a duplicate is a Conflict)."""
        body = build_notebook_body(project_id, name)
        response = await self.api.request("POST", "/v2/notebooks", json=body)
        return decode(response, Notebook, envelope="notebook")

    async def get_notebook(self, notebook_id: str) -> Notebook:
        """``GET /v2/notebooks/{id}``: blocks and input variables (names to use in inputs)."""
        response = await self.api.request("GET", _notebook_path(notebook_id))
        return decode(response, Notebook, envelope="notebook")

    async def delete_notebook(self, notebook_id: str) -> None:
        """``DELETE /v2/notebooks/{id}`` (204)."""
        await self.api.request("DELETE", _notebook_path(notebook_id))

    async def reorder_blocks(
        self, notebook_id: str, block_ids: Sequence[str], placement: BlockPlacement
    ) -> list[str]:
        """``POST /v2/notebooks/{id}/reorder-blocks``: move ``block_ids`` (in that order) to
        ``placement``; returns the notebook's full resulting block order. Safe to repeat."""
        body = build_reorder_body(block_ids, placement)
        response = await self.api.request(
            "POST",
            _notebook_path(notebook_id, "/reorder-blocks"),
            json=body,
            # Moving blocks to an absolute place gives the same result however often it runs.
            idempotent=True,
        )
        return decode(response, ReorderResult).block_ids

    async def upsert_schedule(
        self, notebook_id: str, cron: str, timezone: str | None = None
    ) -> Schedule:
        """``POST /v2/notebooks/{id}/schedule``: create or replace the schedule of the
        notebook's project. Deepnote keeps one scheduled notebook per project, so this
        re-points the project's schedule to this notebook. ``timezone`` is an IANA name,
        checked locally; None means UTC. A bare 403 usually means scheduling is not enabled
        for the workspace or plan (the error says so)."""
        body = build_schedule_body(cron, timezone)
        response = await self.api.request(
            "POST",
            _notebook_path(notebook_id, "/schedule"),
            json=body,
            # An upsert to the same values is the same schedule.
            idempotent=True,
        )
        return decode(response, Schedule, envelope="schedule")

    async def delete_schedule(self, notebook_id: str) -> bool:
        """``DELETE /v2/notebooks/{id}/schedule`` (204): stop scheduling the notebook.

        Returns True when a schedule was removed, False when Deepnote answered 404 (the
        notebook has no schedule, or, as Deepnote's own client reads that 404 too, no such
        notebook). What is known of the scope, from Deepnote's own client (the reference does
        not document this endpoint): a project has at most one scheduled notebook, and a
        schedule is addressed by the notebook it points at; whether deleting through another
        notebook of the same project removes the project's schedule is not documented, so
        pass the scheduled notebook (``Project.notebooks[].is_scheduled`` says which).
        Removing a schedule is not plan-gated: a 403 is a plain PermissionDenied. Safe to
        repeat.
        """
        try:
            await self.api.request(
                "DELETE", _notebook_path(notebook_id, "/schedule"), idempotent=True
            )
        except NotFound:
            return False
        return True

    # ------------------------------------------------------------------ projects

    async def list_projects_page(
        self,
        *,
        page_size: int = 50,
        page_token: str | None = None,
        name_contains: str | None = None,
    ) -> ProjectPage:
        """``GET /v2/projects``: one page of projects (``name_contains``: a case-insensitive
        substring of the name). ``page_size`` is 1 to 100."""
        return (await self._projects_page(page_size, page_token, name_contains))[0]

    def list_projects(
        self, *, name_contains: str | None = None, page_size: int = 50
    ) -> AsyncGenerator[Project, None]:
        """Every project of the workspace, following ``nextPageToken`` while ``hasMore``."""
        check_page_size(page_size)
        _check_name_filter(name_contains)

        async def fetch(token: str | None) -> tuple[list[Project], Pagination, Response]:
            page, response = await self._projects_page(page_size, token, name_contains)
            return page.projects, page.pagination, response

        return self._paginate(fetch, "projects")

    async def _projects_page(
        self, page_size: int, page_token: str | None, name_contains: str | None
    ) -> tuple[ProjectPage, Response]:
        params: dict[str, str | int] = {"pageSize": check_page_size(page_size)}
        if page_token is not None:
            params["pageToken"] = page_token
        if _check_name_filter(name_contains):
            params["nameContains"] = name_contains  # type: ignore[assignment]
        response = await self.api.request("GET", "/v2/projects", params=params)
        return decode(response, ProjectPage), response

    async def create_project(
        self, name: str, *, folder_id: str | None = None, project_type: str | None = None
    ) -> Project:
        """``POST /v2/projects``: a new project (seeded by Deepnote with one empty notebook)."""
        body = build_project_body(name, folder_id=folder_id, project_type=project_type)
        response = await self.api.request("POST", "/v2/projects", json=body)
        return decode(response, Project, envelope="project")

    async def get_project(self, project_id: str) -> Project:
        """``GET /v2/projects/{id}``: the project with its notebooks and files."""
        response = await self.api.request("GET", _project_path(project_id))
        return decode(response, Project, envelope="project")

    async def delete_project(self, project_id: str) -> None:
        """``DELETE /v2/projects/{id}`` (204)."""
        await self.api.request("DELETE", _project_path(project_id))

    async def me(self) -> Me:
        """``GET /v2/me``: the API key, its creator, its workspace and the access level."""
        response = await self.api.request("GET", "/v2/me")
        return decode(response, Me)

    # ------------------------------------------------------------------ v1

    async def execute_v1(self, project_id: str, notebook_id: str) -> None:
        """``POST /v1/projects/{p}/notebooks/{n}/execute`` (202): start the notebook's machine
        if needed and run it. No run id comes back, and a notebook already running ignores
        it. Sent once, like ``create_run``."""
        project = path_segment(project_id, what="project id")
        notebook = path_segment(notebook_id, what="notebook id")
        await self.api.request("POST", f"/v1/projects/{project}/notebooks/{notebook}/execute")

    # ------------------------------------------------------------------ pagination

    @staticmethod
    async def _paginate(
        fetch: Callable[[str | None], Awaitable[tuple[Sequence[T], Pagination, Response]]],
        what: str,
    ) -> AsyncGenerator[T, None]:
        seen: set[str] = set()
        token: str | None = None
        while True:
            items, pagination, response = await fetch(token)
            # Checked before yielding: a page behind a repeated token is a repeat itself.
            token = next_page_token(pagination, seen, response, what)
            for item in items:
                yield item
            if token is None:
                return


def _check_name_filter(name_contains: object) -> bool:
    """Whether to send ``nameContains`` (an empty filter matches everything)."""
    if name_contains is not None and not isinstance(name_contains, str):
        raise ConfigurationError(f"name_contains must be a string, got {name_contains!r}")
    return bool(name_contains)
