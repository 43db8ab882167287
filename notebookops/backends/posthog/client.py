"""``PostHogClient``: one typed async method per PostHog notebooks endpoint.

The client owns the HTTP transport (retries, rate limiting, PostHog's error shapes) and knows
nothing of runs: :class:`~notebookops.backends.posthog.PostHogBackend` builds the
:class:`~notebookops.NotebookBackend` protocol on top of it. Use the client directly for
everything else PostHog offers (CRUD, collaboration, the kernel, HogQL, server-side runs)::

    async with PostHogClient() as client:     # POSTHOG_PERSONAL_API_KEY, POSTHOG_PROJECT_ID
        notebook = await client.get_notebook("aB3dE5fG")
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from datetime import datetime
from typing import Any, Final, Literal, Self, TypeVar

import aiohttp
import anyio
import anyio.lowlevel

from ..._client import ApiClient, VendorClient
from ..._redact import redact_url
from ..._urls import path_segment
from ..._validate import count, seconds
from ...errors import (
    BackendClosed,
    ConfigurationError,
    ConnectionLost,
    RequestTimeout,
    ResponseDecodeError,
)
from ...policies import RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Response, Transport
from ._errors import VersionConflict
from ._requests import (
    PROFILE,
    UNSET,
    _Unset,
    activity_params,
    collab_save_body,
    decode_collab_event,
    decode_kernel_event,
    execute_body,
    kernel_config_body,
    list_params,
    markdown_save_body,
    next_path,
    notebook_path,
    notebooks_path,
    presence_body,
    run_variables_body,
    sharing_path,
    update_body,
    validate_cell_timeout,
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

__all__ = ["DEFAULT_BASE_URL", "PROJECT_ENV", "TOKEN_ENV", "URL_ENV", "PostHogClient"]

logger = logging.getLogger("notebookops.posthog")

T = TypeVar("T")
P = TypeVar("P", NotebookPage, ActivityPage)

#: PostHog US cloud; EU cloud is ``https://eu.posthog.com``, self-hosted instances work alike.
DEFAULT_BASE_URL: Final = "https://us.posthog.com"
#: The environment variable holding the personal API key (``phx_...``).
TOKEN_ENV: Final = "POSTHOG_PERSONAL_API_KEY"
#: The environment variable holding the project id.
PROJECT_ENV: Final = "POSTHOG_PROJECT_ID"
#: The environment variable holding the base URL (PostHog's own name for it).
URL_ENV: Final = "POSTHOG_HOST"

#: Content updates retried this many times on 409 before giving up.
WRITE_ATTEMPTS: Final = 5
#: Extra seconds a blocking execute may take beyond the cell timeout (kernel provisioning).
EXECUTE_MARGIN: Final = 90.0


def _personal_api_key(value: str | None) -> str:
    key = value if value is not None else os.environ.get(TOKEN_ENV)
    if not isinstance(key, str) or not key.strip():
        raise ConfigurationError(
            f"no PostHog personal API key: pass personal_api_key= or set {TOKEN_ENV}"
        )
    key = key.strip()
    if key.startswith("phc_"):
        raise ConfigurationError(
            "that is a PostHog project API key (phc_...), which only sends events; the "
            "notebooks API needs a personal API key (phx_...)"
        )
    return key


def _project_id(value: str | int | None) -> str:
    project = value if value is not None else os.environ.get(PROJECT_ENV)
    if isinstance(project, int) and not isinstance(project, bool):
        project = str(project)
    if not isinstance(project, str) or not project.strip():
        raise ConfigurationError(f"no PostHog project id: pass project_id= or set {PROJECT_ENV}")
    project = project.strip()
    path_segment(project, what="project id")
    return project


class PostHogClient(VendorClient):
    """PostHog's notebooks API for one project, as typed async methods.

    ``personal_api_key``, ``project_id`` and ``base_url`` fall back to
    ``POSTHOG_PERSONAL_API_KEY``, ``POSTHOG_PROJECT_ID`` and ``POSTHOG_HOST`` (default
    ``https://us.posthog.com``). Notebooks are named by their ``short_id``.

    Errors are the notebookops tree, refined for PostHog (``VersionConflict``,
    ``CollabConflict``, ``MissingScope``, ``ScopedKeyNotAllowed``...). Which endpoints exist
    depends on the server's version (see the package docs): a missing one answers 404.
    """

    def __init__(
        self,
        personal_api_key: str | None = None,
        *,
        project_id: str | int | None = None,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        max_rate: float | None = None,
        allow_http: bool = False,
        transport: Transport | None = None,
        stream_idle_timeout: float = 60.0,
        collab_reconnect_delay: float = 1.0,
    ) -> None:
        key = _personal_api_key(personal_api_key)
        self.project_id = _project_id(project_id)
        seconds("stream_idle_timeout", stream_idle_timeout)
        seconds("collab_reconnect_delay", collab_reconnect_delay)
        base = base_url if base_url is not None else (os.environ.get(URL_ENV) or DEFAULT_BASE_URL)
        self.api = ApiClient(
            PROFILE,
            base_url=base,
            token=key,
            session=session,
            timeout=timeout,
            retry=retry,
            rate_limiter=rate_limiter or RateLimiter(max_rate),
            allow_http=allow_http,
            transport=transport,
        )
        self._timeout = float(timeout)
        self._stream_idle_timeout = float(stream_idle_timeout)
        self._collab_reconnect_delay = float(collab_reconnect_delay)
        self._owns_transport = True
        self._closed = False

    def for_project(self, project_id: str | int) -> PostHogClient:
        """A client for another project sharing this one's connections (closing it closes
        nothing; close this one)."""
        other = copy.copy(self)
        # Verbatim (a handle's project id is PostHog's own), only checked as a path segment.
        other.project_id = str(project_id)
        path_segment(other.project_id, what="project id")
        other._owns_transport = False
        return other

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<PostHogClient {self.base_url} project {self.project_id} ({state})>"

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def aclose(self) -> None:
        """Close the connections (idempotent; a client from :meth:`for_project` leaves them
        to this one); any later call raises BackendClosed."""
        if self._closed:
            return
        self._closed = True
        if self._owns_transport:
            await self.api.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    def web_url(self, short_id: str) -> str:
        """The page a person opens for a notebook."""
        return (
            f"{self.base_url}/project/{path_segment(self.project_id, what='project id')}"
            f"/notebooks/{path_segment(short_id, what='notebook short_id')}"
        )

    # ------------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise BackendClosed("the posthog client is closed; create a new one")

    async def _request_json(
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
        protect: bool | None = None,
        timeout: float | None = None,
    ) -> T:
        response = await self.api.request(
            method,
            path,
            params=params,
            json=json_body,
            headers=headers,
            idempotent=idempotent,
            protect=protect,
            timeout=timeout,
        )
        return self._decode(response, cls, what=what)

    async def _follow(self, page: P, cls: type[P], *, what: str) -> AsyncGenerator[P, None]:
        """``page`` and every page after it by its ``next`` link (a repeated link ends it)."""
        seen: set[str] = set()
        while True:
            yield page
            if not page.next:
                return
            path = next_path(page.next, self.base_url)
            if path in seen:
                logger.warning("posthog repeated a page link (%s); stopping there", what)
                return
            seen.add(path)
            self._check_open()
            page = await self._request_json("GET", path, cls, what=what)

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
        self._check_open()
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
        return await self._request_json(
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
        async with aclosing(self._follow(page, NotebookPage, what="a notebook list")) as pages:
            async for each in pages:
                for item in each.results:
                    yield item

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
        self._check_open()
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
        return await self._request_json(
            "POST", notebooks_path(self.project_id), Notebook, what="a notebook", json_body=body
        )

    async def get_notebook(self, short_id: str) -> Notebook:
        """A notebook with its content and version (404 for a soft-deleted one)."""
        self._check_open()
        return await self._request_json(
            "GET", notebook_path(self.project_id, short_id), Notebook, what="a notebook"
        )

    async def get_notebook_if_changed(self, short_id: str, version: int) -> Notebook | None:
        """The notebook, or None when its version is still ``version`` (a 304).

        PostHog compares ``If-None-Match`` with the bare version number, without quotes.
        """
        self._check_open()
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigurationError(f"version must be an int, got {version!r}")
        response = await self.api.request(
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
        self._check_open()
        body = update_body(
            title=title,
            content=content,
            text_content=text_content,
            version=version,
            deleted=deleted,
        )
        return await self._patch(short_id, body)

    async def _patch(self, short_id: str, body: dict[str, Any]) -> Notebook:
        # A PATCH with a version is safe to repeat (a stale repeat gets 409); without content
        # it sets fields to fixed values. Either way a retry cannot do harm.
        return await self._request_json(
            "PATCH",
            notebook_path(self.project_id, short_id),
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
        max_attempts: int = WRITE_ATTEMPTS,
    ) -> Notebook:
        """Read the notebook, apply ``transform`` to (a copy of) its content and PATCH the
        result with the version read; on 409 read again and re-apply, up to ``max_attempts``
        times. ``transform`` returning None means "no change" (the notebook is returned)."""
        self._check_open()
        count("max_attempts", max_attempts, minimum=1)
        return await self._update_content(short_id, transform, max_attempts)

    async def _update_content(
        self,
        short_id: str,
        transform: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        max_attempts: int,
    ) -> Notebook:
        conflict: VersionConflict | None = None
        for attempt in range(max_attempts):
            notebook = await self._request_json(
                "GET", notebook_path(self.project_id, short_id), Notebook, what="a notebook"
            )
            content = transform(copy.deepcopy(notebook.content))
            if content is None:
                return notebook
            try:
                return await self._patch(
                    short_id, update_body(content=content, version=notebook.version)
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

    async def get_markdown(self, short_id: str) -> str | None:
        """``markdown/``: a markdown notebook's text. Newer servers answer ``null`` for a
        rich-text notebook: that is None here."""
        self._check_open()
        data = await self.api.request_json(
            "GET", notebook_path(self.project_id, short_id, "markdown")
        )
        markdown = data.get("markdown", "") if isinstance(data, dict) else ""
        if markdown is None:
            return None
        if not isinstance(markdown, str):
            raise ResponseDecodeError(
                "posthog sent a markdown response without a 'markdown' string",
                vendor="posthog",
                body=str(data)[:1000],
            )
        return markdown

    async def notebook_activity(
        self, short_id: str, *, limit: int | None = None, page: int | None = None
    ) -> ActivityPage:
        """One page of a notebook's activity log (needs the ``activity_log:read`` scope)."""
        self._check_open()
        return await self._request_json(
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
        self._check_open()
        return await self._request_json(
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
        async with aclosing(self._follow(first, ActivityPage, what="an activity page")) as pages:
            async for page in pages:
                for entry in page.results:
                    yield entry

    async def recording_comments(self, recording_id: str) -> list[RecordingComment]:
        """Comments on a session recording made in notebooks (unscoped keys only)."""
        self._check_open()
        if not isinstance(recording_id, str) or not recording_id:
            raise ConfigurationError("recording_id must be a non-empty string")
        data = await self.api.request_json(
            "GET",
            notebooks_path(self.project_id, "recording_comments"),
            params={"recording_id": recording_id},
        )
        results = data.get("results") if isinstance(data, dict) else None
        return decode(results, list[RecordingComment], what="recording comments")

    # ------------------------------------------------------------------ sharing

    async def get_sharing(self, notebook_id: str) -> SharingConfiguration:
        """The notebook's sharing configuration (``sharing_configuration:read``)."""
        self._check_open()
        return await self._request_json(
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
        self._check_open()
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
        return await self._request_json(
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
        self._check_open()
        body: dict[str, Any] = {}
        if raw_password is not None:
            if len(raw_password) < 8:
                raise ConfigurationError("share passwords must be at least 8 characters long")
            body["raw_password"] = raw_password
        if note is not None:
            if len(note) > 100:
                raise ConfigurationError("a share password note is at most 100 characters")
            body["note"] = note
        return await self._request_json(
            "POST",
            sharing_path(self.project_id, notebook_id, "passwords"),
            SharePasswordCreated,
            what="a share password",
            json_body=body,
        )

    async def delete_sharing_password(self, notebook_id: str, password_id: str) -> None:
        """Deactivate a share password (204)."""
        self._check_open()
        await self.api.request(
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
        self._check_open()
        return await self._request_json(
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
        self._check_open()
        body = collab_save_body(
            client_id=client_id,
            version=version,
            steps=steps,
            content=content,
            text_content=text_content,
            title=title,
            cursor_head=cursor_head,
        )
        return await self._request_json(
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
        self._check_open()
        body = markdown_save_body(
            client_id=client_id,
            version=version,
            content=content,
            text_content=text_content,
            title=title,
            cursor=cursor,
        )
        return await self._request_json(
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
        cursor: Mapping[str, int],
    ) -> None:
        """Announce this client's cursor to the others (204). PostHog requires ``cursor``
        (``head``, ``node_index``, ``offset``, ``list_item_index``: ints >= 0; ``{}`` is
        allowed)."""
        self._check_open()
        await self.api.request(
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
        self._check_open()
        count("max_failures", max_failures)
        path = notebook_path(self.project_id, short_id, "collab", "stream")
        resume = last_event_id
        failures = 0
        while True:
            delay = self._collab_reconnect_delay
            try:
                async with self.api.sse(
                    "GET", path, last_event_id=resume, idle_timeout=self._stream_idle_timeout
                ) as events:
                    async for event in events:
                        await anyio.lowlevel.checkpoint()  # see kernel_execute_stream
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
            self._check_open()
            await anyio.sleep(delay)

    # ------------------------------------------------------------------ HogQL and kernel

    async def hogql_execute(self, short_id: str, query: str) -> HogQLResult:
        """Run a HogQL query as the caller (``"scratchpad"`` works as short_id). A failing
        query is a :class:`BadRequest` with PostHog's message."""
        self._check_open()
        if not isinstance(query, str):
            raise ConfigurationError(f"query must be a string, got {type(query).__name__}")
        return await self._request_json(
            "POST",
            notebook_path(self.project_id, short_id, "hogql", "execute"),
            HogQLResult,
            what="a HogQL result",
            json_body={"query": query},
            # HogQL is read-only, so a repeated query cannot change anything.
            idempotent=True,
        )

    async def kernel_start(self, short_id: str) -> KernelRuntime:
        """Start the notebook's kernel (optional: every execute starts it)."""
        self._check_open()
        return await self._request_json(
            "POST",
            notebook_path(self.project_id, short_id, "kernel", "start"),
            KernelRuntime,
            what="a kernel runtime",
            idempotent=True,
        )

    async def kernel_restart(self, short_id: str) -> KernelRuntime:
        """Restart the kernel: every variable is lost."""
        self._check_open()
        return await self._request_json(
            "POST",
            notebook_path(self.project_id, short_id, "kernel", "restart"),
            KernelRuntime,
            what="a kernel runtime",
        )

    async def kernel_stop(self, short_id: str) -> bool:
        """Stop the kernel. False when no kernel was running."""
        self._check_open()
        data = await self.api.request_json(
            "POST", notebook_path(self.project_id, short_id, "kernel", "stop"), idempotent=True
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
        self._check_open()
        return await self._request_json(
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
        self._check_open()
        body = kernel_config_body(
            cpu_cores=cpu_cores, memory_gb=memory_gb, idle_timeout_seconds=idle_timeout_seconds
        )
        return await self._request_json(
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
        self._check_open()
        body = execute_body(code, return_variables=return_variables, timeout=timeout)
        # Never retried: the code may have side effects. Not protected either: it starts no
        # run (a kernel-mode run lives in this process), and cancelling a run must be able to
        # stop waiting for the cell it is in.
        return await self._request_json(
            "POST",
            notebook_path(self.project_id, short_id, "kernel", "execute"),
            ExecutionResult,
            what="a kernel result",
            json_body=body,
            protect=False,
            timeout=max(self._timeout, (timeout or 30.0) + EXECUTE_MARGIN),
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
        self._check_open()
        body = execute_body(code, return_variables=return_variables, timeout=timeout)
        path = notebook_path(self.project_id, short_id, "kernel", "execute", "stream")
        url = redact_url(self.api.url_for(path))
        # The stream has no keepalives: a quiet cell is silent for up to its timeout.
        idle = max(self._stream_idle_timeout, float(body.get("timeout") or 30.0) + EXECUTE_MARGIN)
        async with self.api.sse("POST", path, json=body, idle_timeout=idle) as events:
            async for event in events:
                # Frames that are already buffered arrive without a suspension point: yield
                # to the loop (and to cancellation) once per frame.
                await anyio.lowlevel.checkpoint()
                decoded = decode_kernel_event(event, url=url)
                if decoded is None:
                    continue
                yield decoded
                if isinstance(decoded, ExecutionResult):
                    return
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
        self._check_open()
        if not isinstance(variable_name, str) or not variable_name.isidentifier():
            raise ConfigurationError(f"variable_name must be an identifier, got {variable_name!r}")
        count("offset", offset)
        count("limit", limit, minimum=1, maximum=500)
        params: dict[str, str | int | float] = {
            "variable_name": variable_name,
            "offset": offset,
            "limit": limit,
        }
        checked = validate_cell_timeout(timeout)
        if checked is not None:
            params["timeout"] = checked
        return await self._request_json(
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
        self,
        short_id: str,
        *,
        variables: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> NotebookRunStarted:
        """``POST runs/``: run the whole notebook on the server (newer PostHog, behind the
        ``revamped-py-notebooks`` flag: 404 where it is off or absent).

        ``variables`` are the notebook variables the cells read: a mapping of name to scalar
        value (``{"country": "NZ", "days": 7}``, the type is inferred) or PostHog's own list
        of ``{"name", "type", "value"}``; at most 10, identifier names, scalar values, all
        checked before sending. **Newer servers replace the notebook's saved variables with
        the ones sent.** PostHog answers 400 when the notebook has no markdown cell to run
        and 409 while another run of it is going.
        """
        self._check_open()
        body = run_variables_body(variables)
        # Not retried on an ambiguous failure: a repeat could start a second run.
        return await self._request_json(
            "POST",
            notebook_path(self.project_id, short_id, "runs"),
            NotebookRunStarted,
            what="a started run",
            json_body=body,
        )

    async def get_notebook_run(self, short_id: str, run_id: str) -> NotebookRunStatus:
        """``GET runs/{run_id}/``: a server-side run's status and cells (no results)."""
        self._check_open()
        return await self._request_json(
            "GET",
            notebook_path(self.project_id, short_id, "runs", path_segment(run_id, what="run id")),
            NotebookRunStatus,
            what="a run status",
        )

    async def interrupt_notebook_run(self, short_id: str, run_id: str) -> RunInterruptResult:
        """``POST runs/{run_id}/interrupt/``."""
        self._check_open()
        return await self._request_json(
            "POST",
            notebook_path(
                self.project_id,
                short_id,
                "runs",
                path_segment(run_id, what="run id"),
                "interrupt",
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
        self._check_open()
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
        return await self._request_json(
            "POST",
            notebook_path(self.project_id, short_id, "sql_v2", "run"),
            CellRunStarted,
            what="a started cell run",
            json_body=body,
        )

    async def get_cell_run(self, short_id: str, run_id: str) -> CellRunStatus:
        """``GET sql_v2/runs/{run_id}/``: one cell run's status and result envelope."""
        self._check_open()
        return await self._request_json(
            "GET",
            notebook_path(
                self.project_id,
                short_id,
                "sql_v2",
                "runs",
                path_segment(run_id, what="cell run id"),
            ),
            CellRunStatus,
            what="a cell run",
        )
