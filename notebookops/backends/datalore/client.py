"""DataloreClient: one typed async method per endpoint of Datalore's Run and Computation APIs.

This is the only module of the Datalore adapter that talks HTTP; :class:`DataloreBackend`
implements the notebookops protocol over it. Use the client directly for what the protocol
does not cover, e.g. a run's full status document::

    async with DataloreClient() as client:          # DATALORE_TOKEN (and DATALORE_URL)
        run_id = await client.start_run("owner/notebook-id", {"Columns": "revenue"})
        status = await client.run_status(run_id)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import aiohttp
import attrs
import cattrs

from ..._api_errors import VendorProfile
from ..._client import ApiClient, VendorClient
from ..._redact import Secret, redact_url, trim
from ..._urls import path_segment
from ...errors import (
    ConfigurationError,
    ResponseDecodeError,
    ServerError,
    StartOutcomeUnknown,
    TransportError,
)
from ...policies import RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Response, Transport
from ._requests import (
    COMPUTATION_PATH,
    RUN_PATH,
    DataloreRunOptions,
    UpdateReport,
    build_computation_body,
    build_run_body,
    parse_notebook_id,
    refine_error,
    split_notebook_id,
)
from ._wire import CONVERTER, RunStartedWire, RunStatus

__all__ = ["DEFAULT_BASE_URL", "PROFILE", "TOKEN_ENV", "URL_ENV", "DataloreClient"]

#: The environment variable holding the API token.
TOKEN_ENV: Final = "DATALORE_TOKEN"
#: The environment variable naming the Datalore installation (on premises).
URL_ENV: Final = "DATALORE_URL"
#: Datalore Cloud; on-premises installations serve the same API on their own origin.
DEFAULT_BASE_URL: Final = "https://datalore.jetbrains.com"

PROFILE: Final = VendorProfile(name="datalore", refine_error=refine_error)

_TOKEN_BAD_CHARS: Final = re.compile(r"[\s\x00-\x1f\x7f]")
_NO_LOOKUP: Final = "Datalore's API cannot list a notebook's runs, so this was not looked up"

T = TypeVar("T")


def _token(token: str | None) -> str:
    raw: object = os.environ.get(TOKEN_ENV) if token is None else token
    if not isinstance(raw, str | None):
        raise ConfigurationError(f"the Datalore token must be a string, not {type(raw).__name__}")
    value = (raw or "").strip()
    if not value:
        raise ConfigurationError(
            f"no Datalore API token: pass token= or set {TOKEN_ENV} (create a token in "
            "Datalore under Account settings > API tokens)"
        )
    if _TOKEN_BAD_CHARS.search(value):
        raise ConfigurationError(
            "the Datalore API token contains whitespace or control characters; "
            "copy it again from Datalore"
        )
    return value


class DataloreClient(VendorClient):
    """Datalore's Run API (``start_run``, ``run_status``) and Computation API
    (``start_computation``), typed, with retries and error mapping.

    ``token`` defaults to ``$DATALORE_TOKEN`` (Datalore: Account settings > API tokens);
    ``base_url`` to ``$DATALORE_URL``, then :data:`DEFAULT_BASE_URL`. ``session`` is used as
    is and not closed by the client; ``rate_limiter`` may be shared with other clients using
    the same token; ``allow_http`` permits plain http:// for a non-loopback on-premises host
    (the token then travels unencrypted).

    Starts are never retried once the request may have reached Datalore: when the answer is
    lost, is a 5xx, or carries no readable run id, the run may exist, and Datalore offers no
    way to look it up, so :class:`~notebookops.StartOutcomeUnknown` is raised (its
    ``evidence`` says what happened). Status reads are retried as the retry policy says.
    """

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
    ) -> None:
        if base_url is None:
            base_url = os.environ.get(URL_ENV) or DEFAULT_BASE_URL
        self.api = ApiClient(
            PROFILE,
            base_url=base_url,
            token=Secret(_token(token)),
            session=session,
            timeout=timeout,
            retry=retry,
            rate_limiter=rate_limiter,
            allow_http=allow_http,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"<DataloreClient {self.base_url}>"

    def notebook_url(self, notebook_id: str) -> str:
        """The notebook's page for people: ``{base_url}/notebook/{owner}/{id}``."""
        owner, notebook = split_notebook_id(notebook_id)
        owner_part = path_segment(owner, what="Datalore notebook owner")
        notebook_part = path_segment(notebook, what="Datalore notebook id")
        return f"{self.base_url}/notebook/{owner_part}/{notebook_part}"

    # -- endpoints

    async def start_run(
        self,
        notebook_id: str,
        parameters: Mapping[str, str | int | float | bool] | None = None,
        *,
        update_report: UpdateReport | None = None,
        direct_file_storage_write: bool | None = None,
    ) -> str:
        """``POST /api/run/v1/notebook``: start a tracked run and return its ``runId``.

        ``notebook_id`` is ``"owner/id"`` or the notebook's URL. ``parameters`` are values of
        the notebook's interactive controls by their ``Variable`` name, sent as strings (see
        :class:`~notebookops.backends.datalore.DataloreRunOptions` for the two settings, which
        are sent only when given).
        """
        notebook_id = parse_notebook_id(notebook_id, base_url=self.base_url)
        options = DataloreRunOptions(
            update_report=update_report, direct_file_storage_write=direct_file_storage_write
        )
        body = build_run_body(notebook_id, parameters or {}, options)
        response = await self._start(RUN_PATH, body, notebook_id)
        try:
            started = self._decode(response, response.json(), RunStartedWire, "a run-start answer")
            if not started.run_id.strip():
                raise self._decode_error(response, "a run-start answer", "runId is empty")
        except ResponseDecodeError as error:
            raise self._outcome_unknown(
                notebook_id,
                f"Datalore accepted the request (HTTP {response.status}), but its answer has "
                f"no run id this version can read ({error.message}); the answer was "
                f"{trim(response.text, 500)!r}",
            ) from error
        return started.run_id

    async def run_status(self, run_id: str) -> RunStatus:
        """``GET /api/run/v1/{runId}``: the run's status document (``raw`` holds the JSON)."""
        path = f"/api/run/v1/{path_segment(run_id, what='Datalore run id')}"
        response = await self.api.request("GET", path)
        data = response.json()
        status = self._decode(response, data, RunStatus, "a run status")
        return attrs.evolve(status, raw=data)

    async def start_computation(self, notebook_id: str) -> None:
        """``POST /api/computation/v1/notebook``: run the notebook interactively, updating its
        outputs in place. Datalore returns nothing to follow (no run id, no artifacts)."""
        notebook_id = parse_notebook_id(notebook_id, base_url=self.base_url)
        body = build_computation_body(notebook_id)
        await self._start(COMPUTATION_PATH, body, notebook_id)

    # -- helpers

    async def _start(self, path: str, body: dict[str, Any], notebook_id: str) -> Response:
        try:
            return await self.api.request("POST", path, json=body)
        except TransportError as error:
            if not error.request_sent:
                raise
            what = f"the answer was lost ({error})"
            raise self._outcome_unknown(notebook_id, what) from error
        except ServerError as error:
            # A 5xx may come after Datalore created the run (or from a gateway that lost
            # track of a request it forwarded).
            what = f"Datalore answered HTTP {error.status} ({error})"
            raise self._outcome_unknown(notebook_id, what) from error

    def _outcome_unknown(self, notebook_id: str, what: str) -> StartOutcomeUnknown:
        try:
            where = self.notebook_url(notebook_id)
        except ConfigurationError:
            where = f"the notebook {notebook_id} in Datalore"
        return StartOutcomeUnknown(
            f"starting Datalore notebook {notebook_id} failed after the request may have "
            f"reached Datalore: {what}. It was not retried, since that could run the notebook "
            f"twice; the notebook may be running now: check {where} before starting it again",
            notebook=notebook_id,
            evidence=f"{what}; {_NO_LOOKUP}",
        )

    def _decode(self, response: Response, data: Any, cls: type[T], what: str) -> T:
        """``data`` (the JSON of ``response``) as ``cls``; a ResponseDecodeError if it is not."""
        try:
            decoded: T = CONVERTER.structure(data, cls)
        except cattrs.BaseValidationError as exc:
            details = "; ".join(cattrs.transform_error(exc))
            detail = details.replace(f"{__package__}._wire.", "")
        except (KeyError, TypeError, ValueError) as exc:
            detail = str(exc)
        else:
            return decoded
        raise self._decode_error(response, what, detail)

    @staticmethod
    def _decode_error(response: Response, what: str, detail: str) -> ResponseDecodeError:
        url = redact_url(response.url)
        return ResponseDecodeError(
            f"datalore {response.method} {url} returned {response.status} with {what} this "
            f"version cannot read: {detail}",
            vendor="datalore",
            url=url,
            status=response.status,
            body=trim(response.text, 1000),
        )
