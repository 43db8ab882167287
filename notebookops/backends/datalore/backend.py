"""The Datalore adapter: the notebookops protocol over :class:`DataloreClient`."""

from __future__ import annotations

import uuid

import aiohttp

from ..._validate import utc_now
from ...backend import BaseBackend, StateTable
from ...errors import ConfigurationError, UnsupportedOperation
from ...models import Capability, Run, RunHandle, RunRequest
from ...policies import RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Transport
from ._requests import (
    DATALORE_STATES,
    DataloreRunOptions,
    check_computation,
    parse_notebook_id,
    run_from_status,
    submitted_run,
)
from .client import DataloreClient

__all__ = ["DataloreBackend"]


class DataloreBackend(BaseBackend):
    """Runs JetBrains Datalore notebooks through the Run API (over :class:`DataloreClient`).

    ``token`` defaults to ``$DATALORE_TOKEN`` (Datalore: Account settings > API tokens);
    ``base_url`` to ``$DATALORE_URL``, then ``https://datalore.jetbrains.com``. On-premises
    installations serve the same API on their own host.

    Notebooks are named ``"owner/id"`` (from ``.../notebook/<owner>/<id>``) or by their full
    URL. ``inputs`` become the run's ``parameters`` (values of the notebook's interactive
    controls, sent as strings). Pass :class:`DataloreRunOptions` as ``options`` for the report
    update, direct file storage, or the Computation API (``mode="computation"``, whose runs
    are :attr:`~notebookops.RunState.SUBMITTED`: Datalore gives no way to follow them).

    A run's state is read from its status document by the rules documented at
    :data:`DATALORE_STATES`. Datalore documents no way to cancel a run, so there is no CANCEL
    capability: when ``run_and_wait`` reaches its deadline the run is left running and
    :class:`RunTimeout` says so. Failed runs carry no reason (the API gives none), only a
    pointer to the notebook.
    """

    name = "datalore"
    capabilities = frozenset(
        {Capability.RUN_STATUS, Capability.INPUTS, Capability.RESUMABLE, Capability.ARTIFACTS}
    )

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        allow_http: bool = False,
        transport: Transport | None = None,
        client: DataloreClient | None = None,
    ) -> None:
        """Create the backend; the arguments are :class:`DataloreClient`'s.

        Or pass a ready ``client`` (and none of the others): the backend then uses it and
        leaves closing it to the caller.
        """
        if client is None:
            client = DataloreClient(
                token,
                base_url=base_url,
                session=session,
                timeout=timeout,
                retry=retry,
                rate_limiter=rate_limiter,
                allow_http=allow_http,
                transport=transport,
            )
            self._owns_client = True
        elif not isinstance(client, DataloreClient):
            raise ConfigurationError(f"expected a DataloreClient, got {type(client).__name__}")
        elif (token, base_url, session, retry, rate_limiter) != (None,) * 5 or (
            timeout != 30.0 or allow_http
        ):
            raise ConfigurationError(
                "pass either client= or the settings to build one (token, base_url...), not both"
            )
        else:
            self._owns_client = False
        self.client = client
        #: The Datalore installation in use, without a trailing slash.
        self.base_url = client.base_url
        self._states = StateTable(self.name, DATALORE_STATES)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<DataloreBackend {self.base_url} ({state})>"

    async def _aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    # -- protocol

    async def start_run(self, request: RunRequest) -> RunHandle:
        """Start a run (``POST /api/run/v1/notebook``) or a computation.

        The start request is never retried once it may have reached Datalore: an ambiguous
        failure raises :class:`StartOutcomeUnknown` (Datalore offers no way to look the run
        up), pointing at the notebook's page to check before starting again.
        """
        self._ensure_open()
        if not isinstance(request, RunRequest):
            raise ConfigurationError(f"expected a RunRequest, got {type(request).__name__}")
        options = self._options(request, DataloreRunOptions)
        if request.blocks is not None:
            self._require(Capability.BLOCK_SELECTION, "run selected blocks")
        notebook_id = parse_notebook_id(request.notebook, base_url=self.base_url)
        web_url = self.client.notebook_url(notebook_id)
        if options.mode == "computation":
            check_computation(request.inputs, options)
            await self.client.start_computation(notebook_id)
            # No run id exists: a local one keeps the handle unique and serialisable.
            local_id = f"computation-{uuid.uuid4().hex}"
            return self._handle(local_id, notebook_id, web_url, "computation")
        run_id = await self.client.start_run(
            notebook_id,
            request.inputs,
            update_report=options.update_report,
            direct_file_storage_write=options.direct_file_storage_write,
        )
        return self._handle(run_id, notebook_id, web_url, "run")

    async def get_run(self, handle: RunHandle) -> Run:
        """Read the run's status (``GET /api/run/v1/{runId}``).

        A computation's handle is answered locally as SUBMITTED: Datalore has no status for it.
        """
        self._check_handle(handle)
        mode = handle.extra.get("mode", "run")
        if mode == "computation":
            return submitted_run(handle)
        if mode != "run":
            raise ConfigurationError(f"unknown Datalore handle mode {mode!r}")
        self._check_installation(handle)
        status = await self.client.run_status(handle.run_id)
        return run_from_status(
            status,
            handle=handle,
            base_url=self.base_url,
            web_url=self._web_url(handle),
            states=self._states,
        )

    async def cancel_run(self, handle: RunHandle) -> None:
        """Always UnsupportedOperation: Datalore's Run API has no cancel endpoint."""
        self._check_handle(handle)
        where = self._web_url(handle) or "the notebook's page in Datalore"
        raise UnsupportedOperation(
            "the datalore backend cannot cancel runs (no CANCEL capability): Datalore's Run "
            f"API has no cancel endpoint; stop run {handle.run_id} from {where}",
            capability=Capability.CANCEL.value,
        )

    # -- helpers

    def _web_url(self, handle: RunHandle) -> str | None:
        """The handle's page, or the notebook's; None for a hand-made handle with an odd id."""
        if handle.web_url:
            return handle.web_url
        try:
            return self.client.notebook_url(handle.notebook_id)
        except ConfigurationError:
            return None

    def _handle(self, run_id: str, notebook_id: str, web_url: str, mode: str) -> RunHandle:
        return RunHandle(
            backend=self.name,
            run_id=run_id,
            notebook_id=notebook_id,
            created_at=utc_now(),
            web_url=web_url,
            extra={"mode": mode, "base_url": self.base_url},
        )

    def _check_installation(self, handle: RunHandle) -> None:
        started_on = handle.extra.get("base_url")
        if started_on is not None and started_on.rstrip("/").lower() != self.base_url.lower():
            raise ConfigurationError(
                f"run {handle.run_id} was started on {started_on}, but this backend talks to "
                f"{self.base_url}: create the backend with base_url={started_on!r}"
            )
