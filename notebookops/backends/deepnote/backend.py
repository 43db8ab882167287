"""DeepnoteBackend: the :class:`~notebookops.NotebookBackend` protocol over a DeepnoteClient.

Behaviour worth knowing (see the module docs of ``notebookops.backends.deepnote``):

* Deepnote has no endpoint to stop a run, so this backend has no CANCEL capability: at a
  deadline ``run_and_wait`` leaves the run going and says so.
* Starting a run is never retried blindly; an ambiguous failure is settled through the
  notebook's runs list or reported as StartOutcomeUnknown (``_starts``).
* Concurrent reads of one notebook's runs share one runs-list request (``_reads``).
* A finished run's snapshot may still be ``pending``; ``get_run`` waits a bounded extra time for
  it. A snapshot download URL on another origin is fetched without the API key.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import aclosing
from datetime import datetime
from typing import Any, Final

import anyio
import attrs

from ..._validate import count, seconds
from ...backend import BaseBackend, StateTable
from ...errors import BadRequest, ConfigurationError, NotebookOpsError, UnsupportedOperation
from ...models import Capability, CellOutput, Run, RunErrorInfo, RunHandle, RunRequest, RunState
from ...policies import RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Transport
from ._reads import ReadCoalescer
from ._requests import (
    DEEPNOTE_STATES,
    SNAPSHOT_DELIVERIES,
    DeepnoteRunOptions,
    SnapshotDelivery,
    outputs_from_blocks,
    outputs_from_snapshot,
    run_error_info,
    workspace_segment,
)
from ._starts import V1_SUBMITTED, Reconciler, StartSettings, V1Starter
from ._wire import RunDetails, RunSummary
from .client import DeepnoteClient, check_base_url, path_segment

__all__ = ["DEFAULT_WEB_URL", "DeepnoteBackend", "DeepnoteOptions"]

logger = logging.getLogger("notebookops.deepnote")

#: Where Deepnote's web app lives (for ``Run.web_url``).
DEFAULT_WEB_URL: Final = "https://deepnote.com"
#: Notebooks whose project an individual read named, kept for the web URL of listed runs.
_KEEP_PROJECTS: Final = 10_000


def _seconds(*, allow_zero: bool) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        seconds(f"DeepnoteOptions.{attribute.name}", value, allow_zero=allow_zero)

    return check


def _flag(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"DeepnoteOptions.{attribute.name} must be True or False, got {value!r}"
        )


def _workspace(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        workspace_segment(value)  # type: ignore[arg-type]


def _delivery(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in SNAPSHOT_DELIVERIES:
        raise ConfigurationError(
            f"DeepnoteOptions.snapshot_delivery must be one of {SNAPSHOT_DELIVERIES}, got {value!r}"
        )


def _attempts(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    count("DeepnoteOptions.reconcile_attempts", value, minimum=1)


@attrs.frozen
class DeepnoteOptions:
    """How a :class:`DeepnoteBackend` runs and reads (the connection is the client's).

    * ``workspace``: the workspace part of the notebook's Deepnote link, ``{slug}-{id}`` (as in
      ``https://deepnote.com/workspace/acme-0b3b2c53-.../project/...``) or the bare workspace
      id; ``DeepnoteClient.me()`` gives both parts. With it, runs carry a ``web_url`` once the
      project is known; without it (or while the project is unknown), ``web_url`` stays None
      rather than guessed. ``web_base_url``: the web app's origin.
    * ``use_v1``: start runs through the legacy ``/v1/.../execute`` endpoint, then look for the
      run it started in the v2 runs list for up to ``v1_discovery_timeout`` seconds, every
      ``v1_discovery_interval``. A run that cannot be found (no v2 access, or the notebook was
      already running, in which case Deepnote ignores the trigger) is SUBMITTED:
      ``run_and_wait`` returns at once, since nothing more can be learnt.
    * ``snapshot_delivery``: how finished runs' outputs are asked for: ``"blocks"`` (the newer
      and lightest; a server refusing it is read with ``"downloadUrl"`` from then on),
      ``"inline"`` or ``"downloadUrl"``. A finished run whose snapshot is still pending is
      re-read every ``snapshot_interval`` seconds for up to ``snapshot_wait``.
    * ``reconcile_attempts``, ``reconcile_interval``: reads of the runs list that settle an
      ambiguous start; runs created up to ``clock_skew`` seconds before the attempt count.
    * ``share_reads``: concurrent ``get_run`` calls on runs of one notebook share one
      runs-list request (``GET /v2/notebooks/{id}/runs``, 100 rows) instead of one
      ``GET /v2/runs/{id}`` each; a run the list reports finished, or does not show, is still
      read on its own (so finished runs carry their outputs). A shared answer can be older
      than a read by up to one request's duration. False: every read is its own request.
    """

    workspace: str | None = attrs.field(default=None, validator=_workspace)
    web_base_url: str = DEFAULT_WEB_URL
    use_v1: bool = attrs.field(default=False, validator=_flag)
    snapshot_delivery: SnapshotDelivery = attrs.field(default="blocks", validator=_delivery)
    snapshot_wait: float = attrs.field(default=5.0, validator=_seconds(allow_zero=True))
    snapshot_interval: float = attrs.field(default=1.5, validator=_seconds(allow_zero=False))
    v1_discovery_timeout: float = attrs.field(default=30.0, validator=_seconds(allow_zero=True))
    v1_discovery_interval: float = attrs.field(default=2.0, validator=_seconds(allow_zero=False))
    reconcile_attempts: int = attrs.field(default=3, validator=_attempts)
    reconcile_interval: float = attrs.field(default=1.0, validator=_seconds(allow_zero=True))
    clock_skew: float = attrs.field(default=5.0, validator=_seconds(allow_zero=True))
    share_reads: bool = attrs.field(default=True, validator=_flag)


class DeepnoteBackend(BaseBackend):
    """Runs Deepnote notebooks through the Public API v2 (or triggers them through v1).

    The connection: ``token`` (``$DEEPNOTE_API_KEY`` when None), ``base_url`` (the API origin:
    ``$DEEPNOTE_API_URL``, else https://api.deepnote.com), ``timeout``, ``retry``,
    ``max_rate`` / ``rate_limiter`` and ``allow_http`` build the backend's
    :class:`DeepnoteClient` (see there). Or pass ``client=`` instead: a client passed in is
    used as is and not closed by the backend. ``options`` (:class:`DeepnoteOptions`) says how
    runs are started and read. The client is :attr:`client`, for every endpoint the protocol
    does not cover (projects, notebooks, schedules).
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
        token: str | None = None,
        *,
        base_url: str | None = None,
        options: DeepnoteOptions | None = None,
        client: DeepnoteClient | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_rate: float | None = None,
        rate_limiter: RateLimiter | None = None,
        allow_http: bool = False,
        transport: Transport | None = None,
    ) -> None:
        options = DeepnoteOptions() if options is None else options
        if not isinstance(options, DeepnoteOptions):
            raise ConfigurationError(
                f"options must be a DeepnoteOptions, got {type(options).__name__}"
            )
        if client is None:
            client = DeepnoteClient(
                token,
                base_url=base_url,
                timeout=timeout,
                retry=retry,
                max_rate=max_rate,
                rate_limiter=rate_limiter,
                allow_http=allow_http,
                transport=transport,
            )
            self._owns_client = True
        elif not isinstance(client, DeepnoteClient):
            raise ConfigurationError(
                f"client must be a DeepnoteClient, got {type(client).__name__}"
            )
        elif any(value is not None for value in (token, base_url, retry, max_rate, rate_limiter)):
            raise ConfigurationError(
                "pass the connection settings to the DeepnoteClient given as client=, not to "
                "the backend as well"
            )
        else:
            self._owns_client = False
        self._web_base = check_base_url(options.web_base_url, allow_http=allow_http, what="web URL")
        #: Every Deepnote endpoint, for what the protocol does not cover.
        self.client = client
        self.options = options
        self._delivery: SnapshotDelivery = options.snapshot_delivery
        self._states = StateTable(self.name, DEEPNOTE_STATES)
        settings = StartSettings(
            attempts=options.reconcile_attempts,
            interval=options.reconcile_interval,
            clock_skew=options.clock_skew,
            v1_timeout=options.v1_discovery_timeout,
            v1_interval=options.v1_discovery_interval,
        )
        self._starts = Reconciler(client, settings)
        self._v1 = V1Starter(client, settings)
        self._reads = ReadCoalescer(client) if options.share_reads else None
        self._projects: OrderedDict[str, str] = OrderedDict()

    async def _aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    @property
    def base_url(self) -> str:
        """The API origin requests go to."""
        return self.client.base_url

    # ------------------------------------------------------------------ protocol

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
        use_v1 = self.options.use_v1 if options.use_v1 is None else options.use_v1
        if use_v1:
            return await self._v1.start(request, options, self._handle)
        started = await self._starts.start(request, options)
        return self._handle(
            started.run_id, request.notebook, started.created_at, options.project_id, {}
        )

    async def get_run(self, handle: RunHandle) -> Run:
        """Read the run: from a runs list shared with concurrent reads of its notebook (see
        ``DeepnoteOptions.share_reads``), or ``GET /v2/runs/{id}``. A finished run carries its
        outputs and, when it failed, the reason (the run's ``error`` or the snapshot's error
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
        if self._reads is None:
            return await self._read_alone(handle)
        row = await self._reads.listed(handle.notebook_id, handle.run_id)
        if row is not None:
            state = self._states(row.status)
            if not state.is_terminal:  # a finished run is read on its own, for its outputs
                return self._listed_run(handle, row, state)
        return await self._read_alone(handle)

    async def cancel_run(self, handle: RunHandle) -> None:
        """Deepnote's API has no endpoint to stop a run: always UnsupportedOperation."""
        self._check_handle(handle)
        raise UnsupportedOperation(
            "the deepnote backend cannot cancel runs (no CANCEL capability): Deepnote's API "
            "has no endpoint to stop a run; stop it from the notebook in the Deepnote app",
            capability=Capability.CANCEL.value,
        )

    def state_of(self, status: str | None) -> RunState:
        """The RunState a Deepnote run status means (an unknown one is UNKNOWN, logged once)."""
        return self._states(status)

    async def find_runs(
        self, notebook: str, *, since: datetime, until: datetime
    ) -> list[RunHandle]:
        """The runs of ``notebook`` created from ``since`` to ``until``, from its runs list
        (newest first, read until a run older than ``since``): how a keyed start whose
        process died mid-request is settled (see ``run_and_wait(key=...)``)."""
        self._ensure_open()
        found: list[RunHandle] = []
        async with aclosing(self.client.list_notebook_runs(notebook, page_size=100)) as runs:
            async for row in runs:
                if row.created_at is None:
                    continue
                if row.created_at < since:
                    break
                if row.created_at <= until:
                    found.append(self._handle(row.run_id, notebook, row.created_at, None, {}))
        return found

    # ------------------------------------------------------------------ handles and links

    def _web_url(self, project_id: str | None, notebook_id: str | None) -> str | None:
        """The notebook's link as Deepnote's own client builds it
        (``/workspace/{workspace}/project/-{project}/notebook/{notebook}``), or None unless
        every part is known: no guessed URLs."""
        workspace = self.options.workspace
        if not (workspace and project_id and notebook_id):
            return None
        try:
            project = path_segment(project_id, what="project id")
            notebook = path_segment(notebook_id, what="notebook id")
        except ConfigurationError:
            return None
        return f"{self._web_base}/workspace/{workspace}/project/-{project}/notebook/{notebook}"

    def _handle(
        self,
        run_id: str,
        notebook_id: str,
        created_at: datetime | None,
        project_id: str | None,
        extra: dict[str, str],
    ) -> RunHandle:
        if project_id:
            extra = {**extra, "project_id": project_id}
        return RunHandle(
            backend=self.name,
            run_id=run_id,
            notebook_id=notebook_id,
            created_at=created_at,
            web_url=self._web_url(project_id, notebook_id),
            extra=extra,
        )

    def _project_of(self, handle: RunHandle, notebook_id: str) -> str | None:
        return handle.extra.get("project_id") or self._projects.get(notebook_id)

    def _learn_project(self, notebook_id: str, project_id: str | None) -> None:
        if project_id and self._projects.get(notebook_id) != project_id:
            self._projects[notebook_id] = project_id
            while len(self._projects) > _KEEP_PROJECTS:
                self._projects.popitem(last=False)

    # ------------------------------------------------------------------ reading

    def _listed_run(self, handle: RunHandle, row: RunSummary, state: RunState) -> Run:
        notebook_id = row.notebook_id or handle.notebook_id
        return Run(
            handle=handle,
            state=state,
            vendor_state=row.status,
            created_at=row.created_at or handle.created_at,
            web_url=self._web_url(self._project_of(handle, notebook_id), notebook_id),
            raw=row.raw,
        )

    async def _read_alone(self, handle: RunHandle) -> Run:
        """``GET /v2/runs/{id}``: the run's own read, with its outputs once it finished."""
        details = await self._read_details(handle.run_id)
        state = self._states(details.status)
        if state.is_terminal and details.snapshot_status == "pending":
            details = await self._await_snapshot(handle.run_id, details)
        outputs, snapshot_error = await self._outputs(details, state, handle)
        notebook_id = details.notebook_id or handle.notebook_id
        self._learn_project(notebook_id, details.project_id)
        return Run(
            handle=handle,
            state=state,
            vendor_state=details.status,
            created_at=details.created_at or handle.created_at,
            finished_at=details.finished_at,
            outputs=tuple(outputs),
            error=run_error_info(details, state, outputs, snapshot_error),
            web_url=self._web_url(self._project_of(handle, notebook_id), notebook_id),
            raw=details.raw,
        )

    async def _read_details(self, run_id: str) -> RunDetails:
        delivery = self._delivery
        try:
            return await self.client.get_run(run_id, snapshot_delivery=delivery)
        except BadRequest:
            if delivery != "blocks":
                raise
            # "blocks" is newer than the documented values; an older server rejects it.
            details = await self.client.get_run(run_id, snapshot_delivery="downloadUrl")
            logger.warning(
                "deepnote refused snapshotDelivery=blocks; using downloadUrl from now on"
            )
            self._delivery = "downloadUrl"
            return details

    async def _await_snapshot(self, run_id: str, details: RunDetails) -> RunDetails:
        """Re-read a finished run while its snapshot is ``pending``, within snapshot_wait."""
        wait, interval = self.options.snapshot_wait, self.options.snapshot_interval
        deadline = anyio.current_time() + wait
        while details.snapshot_status == "pending" and anyio.current_time() + interval <= deadline:
            await anyio.sleep(interval)
            details = await self._read_details(run_id)
        if details.snapshot_status == "pending":
            logger.info(
                "deepnote run %s finished but its snapshot is still pending after %gs; "
                "returning it without outputs",
                run_id,
                wait,
            )
        return details

    async def _outputs(
        self, details: RunDetails, state: RunState, handle: RunHandle
    ) -> tuple[Sequence[CellOutput], RunErrorInfo | None]:
        """Outputs from whichever snapshot form the run carries. A snapshot that cannot be
        fetched or read costs the outputs (logged), never the run's state; an output that
        cannot be read is kept as it came (logged)."""
        if details.snapshot_blocks is not None:
            result = outputs_from_blocks(details.snapshot_blocks)
        elif not state.is_terminal:
            return (), None
        else:
            text, url = details.snapshot_text, details.download_url
            try:
                if text is None and url:
                    text = await self.client.fetch_snapshot(url)
                if text is None:
                    return (), None
                notebook_id = details.notebook_id or handle.notebook_id
                result = outputs_from_snapshot(text, notebook_id, url=url or "")
            except NotebookOpsError as error:
                logger.warning(
                    "could not read the snapshot of deepnote run %s: %s", handle.run_id, error
                )
                return (), None
        if result.unreadable:
            logger.warning(
                "deepnote run %s: %d output(s) could not be read and are kept as they came "
                "(CellOutput.metadata['unreadable'])",
                handle.run_id,
                result.unreadable,
            )
        return result.outputs, result.error
