"""The Datalore adapter: the Run API (tracked runs with parameters) and the Computation API."""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime
from typing import Final

import aiohttp

from ..._api_errors import VendorProfile
from ..._client import ApiClient
from ..._redact import Secret
from ...backend import BaseBackend, StateTable
from ...errors import (
    ConfigurationError,
    ServerError,
    StartOutcomeUnknown,
    TransportError,
    UnsupportedOperation,
)
from ...models import Capability, Run, RunHandle, RunRequest
from ...policies import RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Response
from ._requests import (
    COMPUTATION_PATH,
    DATALORE_IN_PROGRESS_STATES,
    DEFAULT_BASE_URL,
    RUN_PATH,
    DataloreRunOptions,
    build_computation_body,
    build_run_body,
    decode_run_started,
    decode_run_status,
    handle_web_url,
    notebook_web_url,
    parse_notebook_id,
    refine_error,
    run_from_status,
    status_path,
    submitted_run,
)

__all__ = ["DataloreBackend"]

TOKEN_ENV: Final = "DATALORE_TOKEN"
URL_ENV: Final = "DATALORE_URL"

PROFILE: Final = VendorProfile(name="datalore", refine_error=refine_error)

# Statuses a gateway uses when it lost track of a request it forwarded: the run may exist.
_AMBIGUOUS_STATUSES: Final = frozenset({502, 504})
_TOKEN_BAD_CHARS: Final = re.compile(r"[\s\x00-\x1f\x7f]")


class DataloreBackend(BaseBackend):
    """Runs JetBrains Datalore notebooks through the Run API.

    ``token`` defaults to ``$DATALORE_TOKEN`` (Datalore: Account settings > API tokens);
    ``base_url`` to ``$DATALORE_URL``, then ``https://datalore.jetbrains.com``. On-premises
    installations serve the same API on their own host.

    Notebooks are named ``"owner/id"`` (from ``.../notebook/<owner>/<id>``) or by their full
    URL. ``inputs`` become the run's ``parameters`` (values of the notebook's interactive
    controls). Pass :class:`DataloreRunOptions` as ``options`` for the report update, direct
    file storage, or the Computation API (``mode="computation"``, whose runs are
    :attr:`~notebookops.RunState.SUBMITTED`: Datalore gives no way to follow them).

    Datalore documents no way to cancel a run, so there is no CANCEL capability: when
    ``run_and_wait`` reaches its deadline the run is left running and :class:`RunTimeout`
    says so. Failed runs carry no reason (the API gives none), only a pointer to the notebook.
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
    ) -> None:
        """Create the backend; see the class docstring for the environment fallbacks.

        ``session`` is used as is and not closed by the backend. ``rate_limiter`` may be shared
        with other backends using the same token. ``allow_http`` permits plain http:// for a
        non-loopback on-premises host (the token then travels unencrypted).
        """
        raw: object = os.environ.get(TOKEN_ENV) if token is None else token
        if not isinstance(raw, str | None):
            kind = type(raw).__name__
            raise ConfigurationError(f"the Datalore token must be a string, not {kind}")
        token = (raw or "").strip()
        if not token:
            raise ConfigurationError(
                f"no Datalore API token: pass token= or set {TOKEN_ENV} (create a token in "
                "Datalore under Account settings > API tokens)"
            )
        if _TOKEN_BAD_CHARS.search(token):
            raise ConfigurationError(
                "the Datalore API token contains whitespace or control characters; "
                "copy it again from Datalore"
            )
        if base_url is None:
            base_url = os.environ.get(URL_ENV) or DEFAULT_BASE_URL
        self._transport = ApiClient(
            PROFILE,
            base_url=base_url,
            token=Secret(token),
            session=session,
            timeout=timeout,
            retry=retry,
            rate_limiter=rate_limiter,
            allow_http=allow_http,
        )
        #: The Datalore installation in use, without a trailing slash.
        self.base_url = self._transport.base_url
        self._states = StateTable(self.name, DATALORE_IN_PROGRESS_STATES)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<DataloreBackend {self.base_url} ({state})>"

    async def _aclose(self) -> None:
        await self._transport.aclose()

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
        web_url = notebook_web_url(self.base_url, notebook_id)
        if options.mode == "computation":
            body = build_computation_body(notebook_id, request.inputs, options)
            await self._post_start(COMPUTATION_PATH, body, notebook_id, web_url)
            # No run id exists: a local one keeps the handle unique and serialisable.
            local_id = f"computation-{uuid.uuid4().hex}"
            return self._handle(local_id, notebook_id, web_url, "computation")
        body = build_run_body(notebook_id, request.inputs, options)
        response = await self._post_start(RUN_PATH, body, notebook_id, web_url)
        run_id = decode_run_started(response, web_url=web_url)
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
        response = await self._transport.request("GET", status_path(handle.run_id))
        wire, raw = decode_run_status(response)
        return run_from_status(
            wire, raw, handle=handle, base_url=self.base_url, states=self._states
        )

    async def cancel_run(self, handle: RunHandle) -> None:
        """Always UnsupportedOperation: Datalore's Run API has no cancel endpoint."""
        self._check_handle(handle)
        where = handle_web_url(handle, self.base_url) or "the notebook's page in Datalore"
        raise UnsupportedOperation(
            "the datalore backend cannot cancel runs (no CANCEL capability): Datalore's Run "
            f"API has no cancel endpoint; stop run {handle.run_id} from {where}",
            capability=Capability.CANCEL.value,
        )

    # -- helpers

    async def _post_start(
        self, path: str, body: dict[str, object], notebook_id: str, web_url: str
    ) -> Response:
        try:
            return await self._transport.request("POST", path, json=body)
        except TransportError as error:
            if not error.request_sent:
                raise
            raise self._outcome_unknown(notebook_id, web_url, str(error)) from error
        except ServerError as error:
            if error.status not in _AMBIGUOUS_STATUSES:
                raise
            raise self._outcome_unknown(notebook_id, web_url, str(error)) from error

    @staticmethod
    def _outcome_unknown(notebook_id: str, web_url: str, what: str) -> StartOutcomeUnknown:
        return StartOutcomeUnknown(
            f"starting Datalore notebook {notebook_id} failed after the request may have "
            f"reached Datalore ({what}); it was not retried, since that could run the notebook "
            f"twice. Check {web_url} before starting it again",
            notebook=notebook_id,
            evidence="Datalore's API offers no way to list a notebook's runs",
        )

    def _handle(self, run_id: str, notebook_id: str, web_url: str, mode: str) -> RunHandle:
        return RunHandle(
            backend=self.name,
            run_id=run_id,
            notebook_id=notebook_id,
            created_at=datetime.now(UTC),
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
