"""Pure pieces of the Datalore adapter: options, id parsing, request bodies, response decoding.

Nothing here does I/O; every function is tested without an event loop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import quote, unquote, urlsplit

import attrs
import cattrs

from ..._redact import redact_url, trim
from ..._urls import path_segment
from ...backend import StateTable
from ...errors import APIError, ConfigurationError, ResponseDecodeError
from ...models import Artifact, Run, RunErrorInfo, RunHandle, RunState
from ...transport import Response
from ._wire import (
    CONVERTER,
    ArtifactWire,
    ComputationRequestWire,
    ParameterWire,
    RunNotebookRequestWire,
    RunStartedWire,
    RunStatusWire,
)

__all__ = [
    "COMPUTATION_PATH",
    "DATALORE_IN_PROGRESS_STATES",
    "DEFAULT_BASE_URL",
    "RUN_PATH",
    "DataloreRunOptions",
    "build_computation_body",
    "build_parameters",
    "build_run_body",
    "decode_run_started",
    "decode_run_status",
    "handle_web_url",
    "notebook_web_url",
    "parse_notebook_id",
    "refine_error",
    "run_from_status",
    "status_path",
    "submitted_run",
]

DEFAULT_BASE_URL: Final = "https://datalore.jetbrains.com"
RUN_PATH: Final = "/api/run/v1/notebook"
COMPUTATION_PATH: Final = "/api/computation/v1/notebook"

#: Datalore's in-progress ``status`` strings. The docs show only a placeholder ("example"), so
#: this table is a guess at the usual spellings (compared case-insensitively); anything else is
#: reported as RunState.UNKNOWN, with the raw string kept in ``Run.vendor_state``. Finished runs
#: carry no ``status`` at all: ``success`` decides their outcome.
DATALORE_IN_PROGRESS_STATES: Final[Mapping[str, RunState]] = {
    "running": RunState.RUNNING,
    "in_progress": RunState.RUNNING,
    "in progress": RunState.RUNNING,
    "in-progress": RunState.RUNNING,
    "inprogress": RunState.RUNNING,
    "executing": RunState.RUNNING,
    "computing": RunState.RUNNING,
    "started": RunState.RUNNING,
    "pending": RunState.PENDING,
    "queued": RunState.PENDING,
    "starting": RunState.PENDING,
    "scheduled": RunState.PENDING,
    "created": RunState.PENDING,
}

UpdateReport = Literal["never", "on success"]
Mode = Literal["run", "computation"]

_UPDATE_REPORT_VALUES: Final = ("never", "on success")
_MODES: Final = ("run", "computation")
# Characters no Datalore owner or notebook id contains, and which would change a URL's meaning.
_BAD_ID_CHARS: Final = re.compile(r"[\s/\\?#\x00-\x1f\x7f]")
_ID_SHAPE_HELP: Final = (
    "a Datalore notebook id looks like 'owner/id': the two parts after /notebook/ in the "
    "notebook's URL (https://datalore.jetbrains.com/notebook/<owner>/<id>); the full URL is "
    "accepted too"
)


def _one_of(allowed: tuple[str, ...]) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in allowed:
            choices = " or ".join(repr(choice) for choice in allowed)
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name} must be {choices}, got {value!r}"
            )

    return check


def _is_bool(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be True or False, got {value!r}"
        )


@attrs.frozen
class DataloreRunOptions:
    """Datalore-specific settings for :class:`~notebookops.RunRequest` ``options``.

    * ``update_report``: ``"on success"`` updates the notebook's published report when the
      run succeeds (Datalore ignores it if no report was published); default ``"never"``.
    * ``direct_file_storage_write``: save run data into the notebook's files instead of the
      run's isolated artifact storage (the UI's "Run data isolation"); default False.
    * ``mode``: ``"run"`` (the Run API: a tracked run with a run id, parameters and artifacts)
      or ``"computation"`` (the Computation API: the notebook is run interactively and its
      outputs are updated in place). Datalore returns no run id for a computation, so its run
      is :attr:`~notebookops.RunState.SUBMITTED` at once and ``run_and_wait`` returns
      immediately without knowing the outcome. A computation takes no inputs and neither of
      the two settings above.
    """

    update_report: UpdateReport = attrs.field(
        default="never", validator=_one_of(_UPDATE_REPORT_VALUES)
    )
    direct_file_storage_write: bool = attrs.field(default=False, validator=_is_bool)
    mode: Mode = attrs.field(default="run", validator=_one_of(_MODES))


# --------------------------------------------------------------------------- ids and URLs


def _check_id_part(part: str, original: object) -> str:
    if not part or part in (".", "..") or _BAD_ID_CHARS.search(part):
        raise ConfigurationError(f"{_ID_SHAPE_HELP}; got {trim(repr(original), 200)}")
    return part


def parse_notebook_id(value: object, *, base_url: str | None = None) -> str:
    """Normalise a notebook reference to Datalore's ``"owner/id"``.

    Accepts ``"owner/id"`` or a notebook URL (``https://host/notebook/owner/id/...``); anything
    else is refused with ConfigurationError describing the expected shape. With ``base_url``,
    a URL on another host is refused too: the run would go to a different Datalore.
    """
    if not isinstance(value, str):
        raise ConfigurationError(f"{_ID_SHAPE_HELP}; got {type(value).__name__}")
    text = value.strip()
    if text.lower().startswith(("http://", "https://")):
        return _id_from_url(text, value, base_url)
    if text.endswith("/"):
        text = text[:-1]
    parts = text.split("/")
    if len(parts) != 2:
        raise ConfigurationError(f"{_ID_SHAPE_HELP}; got {trim(repr(value), 200)}")
    owner, notebook = (_check_id_part(part, value) for part in parts)
    return f"{owner}/{notebook}"


def _id_from_url(text: str, original: str, base_url: str | None) -> str:
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        raise ConfigurationError(f"{_ID_SHAPE_HELP}; got an unreadable URL") from None
    segments = [unquote(segment) for segment in parts.path.split("/") if segment]
    for index, segment in enumerate(segments[:-2]):
        if segment == "notebook":
            owner, notebook = segments[index + 1], segments[index + 2]
            break
    else:
        raise ConfigurationError(
            f"{_ID_SHAPE_HELP}; the URL {redact_url(text)!r} has no /notebook/<owner>/<id> part"
        )
    if base_url is not None:
        expected = urlsplit(base_url).hostname
        if host and expected and host.lower() != expected.lower():
            raise ConfigurationError(
                f"the notebook URL is on {host}, but this backend talks to {expected}: pass "
                f"base_url= (or set DATALORE_URL) for {host}, or give the id as 'owner/id'"
            )
    return f"{_check_id_part(owner, original)}/{_check_id_part(notebook, original)}"


def _split_id(notebook_id: str) -> tuple[str, str]:
    owner, _, notebook = notebook_id.partition("/")
    return owner, notebook


def notebook_web_url(base_url: str, notebook_id: str) -> str:
    """The notebook's page for people: ``{base_url}/notebook/{owner}/{id}``."""
    owner, notebook = _split_id(notebook_id)
    owner_part = path_segment(owner, what="Datalore notebook owner")
    notebook_part = path_segment(notebook, what="Datalore notebook id")
    return f"{base_url}/notebook/{owner_part}/{notebook_part}"


def handle_web_url(handle: RunHandle, base_url: str) -> str | None:
    """The handle's page, or the notebook's; None for a hand-made handle with an odd id."""
    if handle.web_url:
        return handle.web_url
    try:
        return notebook_web_url(base_url, handle.notebook_id)
    except ConfigurationError:
        return None


def status_path(run_id: str) -> str:
    """``/api/run/v1/{runId}``, with the id safely encoded."""
    return f"/api/run/v1/{path_segment(run_id, what='Datalore run id')}"


def artifact_url(base_url: str, path: str) -> str:
    """An absolute URL for an artifact ``path`` (kept as is if it already is one)."""
    if path.lower().startswith(("http://", "https://")):
        return path
    # "%" stays as is: a path that arrives percent-encoded must not be encoded twice.
    encoded = quote(path if path.startswith("/") else "/" + path, safe="/%:@!$&'()*+,;=~")
    return base_url + encoded


# --------------------------------------------------------------------------- requests


def build_parameters(inputs: Mapping[str, Any]) -> list[ParameterWire]:
    """``inputs`` as Datalore ``parameters``: ``[{"name", "value"}]`` in the given order.

    Names are the ``Variable`` of the notebook's interactive controls. Values are sent as given
    if they are str, int, float or bool; Datalore documents only string values, so when in
    doubt pass strings. Anything else is refused rather than silently converted.
    """
    parameters: list[ParameterWire] = []
    for name, value in inputs.items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigurationError(
                f"Datalore parameter {name!r} must be a str, int, float or bool, got "
                f"{type(value).__name__}: convert it to a string the notebook's control accepts"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigurationError(
                f"Datalore parameter {name!r} is {value!r}, which JSON cannot carry"
            )
        parameters.append(ParameterWire(name=name, value=value))
    return parameters


def build_run_body(
    notebook_id: str, inputs: Mapping[str, Any], options: DataloreRunOptions
) -> dict[str, Any]:
    """The JSON body of ``POST /api/run/v1/notebook`` (``parameters`` only when there are)."""
    parameters = build_parameters(inputs)
    wire = RunNotebookRequestWire(
        notebook_id=notebook_id,
        update_report=options.update_report,
        direct_file_storage_write=options.direct_file_storage_write,
        parameters=parameters or None,
    )
    body: dict[str, Any] = CONVERTER.unstructure(wire)
    return body


def build_computation_body(
    notebook_id: str, inputs: Mapping[str, Any], options: DataloreRunOptions
) -> dict[str, Any]:
    """The JSON body of ``POST /api/computation/v1/notebook``.

    The Computation API takes only the notebook id: inputs or run settings are refused rather
    than dropped, so nobody believes a parameter reached the notebook when it did not.
    """
    if inputs:
        raise ConfigurationError(
            "Datalore's Computation API takes no parameters: drop the inputs, or use "
            "DataloreRunOptions(mode='run') to pass them to a tracked run"
        )
    if options.update_report != "never" or options.direct_file_storage_write:
        raise ConfigurationError(
            "update_report and direct_file_storage_write apply to the Run API only; "
            "leave them at their defaults with mode='computation'"
        )
    body: dict[str, Any] = CONVERTER.unstructure(ComputationRequestWire(notebook_id=notebook_id))
    return body


# --------------------------------------------------------------------------- responses


def _decode_error(response: Response, what: str, detail: str) -> ResponseDecodeError:
    url = redact_url(response.url)
    return ResponseDecodeError(
        f"datalore {response.method} {url} returned {response.status} with {what} this version "
        f"cannot read: {detail}",
        vendor="datalore",
        url=url,
        status=response.status,
        body=trim(response.text, 1000),
    )


def _structure(response: Response, cls: type[Any], what: str) -> tuple[Any, Any]:
    """``(instance of cls, decoded JSON)``; anything unreadable is a ResponseDecodeError."""
    data = response.json()
    try:
        return CONVERTER.structure(data, cls), data
    except cattrs.BaseValidationError as exc:
        details = "; ".join(cattrs.transform_error(exc))
        raise _decode_error(response, what, details.replace(f"{__package__}._wire.", "")) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _decode_error(response, what, str(exc)) from None


def decode_run_started(response: Response, *, web_url: str) -> str:
    """The ``runId`` of a successful start response.

    Datalore accepted the run when this is called, so a failure here says so: the notebook is
    most likely running, and starting it again would run it twice.
    """
    what = "a run-start answer"
    try:
        wire: RunStartedWire = _structure(response, RunStartedWire, what)[0]
        if not wire.run_id.strip():
            raise _decode_error(response, what, "runId is empty")
    except ResponseDecodeError as error:
        raise ResponseDecodeError(
            f"{error.message}. Datalore accepted the request, so the notebook is probably "
            f"running, but its run id is unknown: check {web_url} before starting it again",
            vendor=error.vendor,
            url=error.url,
            status=error.status,
            body=error.body,
        ) from None
    return wire.run_id


def decode_run_status(response: Response) -> tuple[RunStatusWire, Any]:
    """The status document of ``GET /api/run/v1/{runId}`` and the raw JSON it came from."""
    wire, data = _structure(response, RunStatusWire, "a run status")
    return wire, data


def _artifact(wire: ArtifactWire, base_url: str) -> Artifact | None:
    if not wire.path and not wire.name:
        return None
    name = wire.name or (wire.path or "").rstrip("/").rsplit("/", 1)[-1] or "artifact"
    url = artifact_url(base_url, wire.path) if wire.path else None
    return Artifact(name=name, url=url, path=wire.path)


def run_from_status(
    wire: RunStatusWire,
    raw: Any,
    *,
    handle: RunHandle,
    base_url: str,
    states: StateTable,
) -> Run:
    """Map a status document to a :class:`Run`.

    The run is still in progress while ``status`` is present (``null`` counts as absent); it
    has finished once ``status`` is gone or ``endTime`` is set, and then ``success`` decides
    between SUCCEEDED and FAILED (a missing ``success`` counts as a failure: nothing says the
    run worked).
    """
    web_url = handle_web_url(handle, base_url)
    where = web_url or f"the notebook {handle.notebook_id} in Datalore"
    found = (_artifact(artifact, base_url) for artifact in wire.artifacts or ())
    artifacts = tuple(artifact for artifact in found if artifact is not None)
    finished = wire.status is None or wire.end_time is not None
    error: RunErrorInfo | None = None
    if not finished:
        state = states(wire.status)
    elif wire.success is True:
        state = RunState.SUCCEEDED
    else:
        state = RunState.FAILED
        said = (
            "reported the run as unsuccessful"
            if wire.success is False
            else "reported the run as finished without saying whether it succeeded"
        )
        error = RunErrorInfo(
            message=(
                f"Datalore {said}, and its Run API gives no failure reason: open {where} "
                "to see the run's outputs and errors"
            ),
            name="DataloreRunFailed",
        )
    return Run(
        handle=handle,
        state=state,
        vendor_state=wire.status,
        created_at=handle.created_at,
        started_at=wire.start_time,
        finished_at=wire.end_time,
        artifacts=artifacts,
        error=error,
        web_url=web_url,
        raw=raw,
    )


def submitted_run(handle: RunHandle) -> Run:
    """The only thing known about a Computation API run: Datalore accepted it."""
    return Run(
        handle=handle,
        state=RunState.SUBMITTED,
        vendor_state=None,
        created_at=handle.created_at,
        web_url=handle.web_url,
        raw=None,
    )


# --------------------------------------------------------------------------- errors

_TOKEN_HINT: Final = (
    "the Datalore API token is missing, invalid or expired: create one in Datalore under "
    "Account settings > API tokens and pass it as token= or set DATALORE_TOKEN"
)

_HINTS: Final[dict[tuple[int, str], str]] = {
    (400, "POST"): (
        "Datalore refused the request as malformed: check that the notebook id is 'owner/id' "
        "and that every input name is the Variable of one of the notebook's interactive controls"
    ),
    (400, "GET"): "Datalore refused the status request as malformed: check the run id",
    (401, "POST"): _TOKEN_HINT,
    (401, "GET"): _TOKEN_HINT,
    (403, "POST"): (
        "the token's account has view-only access to this notebook, and running it needs edit "
        "access: ask the notebook's owner to share it with you as an editor"
    ),
    (403, "GET"): (
        "the token's account may not read this run: it needs access to the run's notebook"
    ),
    (404, "POST"): (
        "the notebook is not shared with the token's account, or the notebook id is wrong: "
        "copy 'owner/id' from the notebook's URL, and check that DATALORE_URL (or base_url) "
        "points at the Datalore installation that hosts it"
    ),
    (404, "GET"): (
        "Datalore knows no such run: check the run id, and that DATALORE_URL (or base_url) "
        "points at the Datalore installation that started it"
    ),
}


def refine_error(error: APIError) -> APIError:
    """Add what to fix to Datalore's 400/401/403/404 answers (the docs' error table)."""
    hint = _HINTS.get((error.status, error.method.upper()))
    if hint is None:
        return error
    return type(error)(
        f"{error.message}. {hint}",
        status=error.status,
        vendor=error.vendor,
        method=error.method,
        url=error.url,
        request_id=error.request_id,
        body=error.body,
        data=error.data,
    )
