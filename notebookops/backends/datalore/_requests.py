"""Pure pieces of the Datalore adapter: options, ids, request bodies, the status table.

Nothing here does I/O or knows about HTTP; every function is tested without an event loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import quote, unquote, urlsplit

import attrs

from ..._api_errors import rebuild_error
from ..._redact import redact_url, trim
from ...backend import StateTable
from ...errors import APIError, ConfigurationError
from ...models import Artifact, Run, RunErrorInfo, RunHandle, RunState
from ._wire import (
    CONVERTER,
    ComputationRequestWire,
    ParameterWire,
    RunArtifact,
    RunNotebookRequestWire,
    RunStatus,
)

__all__ = [
    "COMPUTATION_PATH",
    "DATALORE_STATES",
    "RUN_PATH",
    "DataloreRunOptions",
    "artifact_url",
    "build_computation_body",
    "build_parameters",
    "build_run_body",
    "check_computation",
    "parameter_value",
    "parse_notebook_id",
    "refine_error",
    "run_from_status",
    "split_notebook_id",
    "submitted_run",
]

RUN_PATH: Final = "/api/run/v1/notebook"
COMPUTATION_PATH: Final = "/api/computation/v1/notebook"

#: Datalore's ``status`` words and the state each means, compared case-insensitively.
#:
#: Datalore documents ``status`` as present only while a run is in progress and shows no real
#: value (only ``"example"``), so this table holds the usual spellings. How a status document
#: is read, in order:
#:
#: 1. ``endTime`` is set: the run has finished; ``success: true`` is SUCCEEDED, anything else
#:    FAILED (nothing says the run worked).
#: 2. ``status`` is set: its word is looked up here. Words of a run in progress give PENDING or
#:    RUNNING; words of failure give FAILED and words of a stopped run CANCELLED at once, even
#:    without ``endTime``. A word not in the table is UNKNOWN (logged once per word): the run is
#:    treated as still in progress and followed until it finishes or the deadline passes.
#:    Words of success are not in the table on purpose: only ``success: true`` says a run
#:    worked.
#: 3. No ``status`` but ``success`` is set: the run has finished, and ``success`` decides.
#: 4. None of ``status``, ``endTime``, ``success``: Datalore accepted the run and has not
#:    started it yet (queued): PENDING.
#:
#: The raw word is kept in ``Run.vendor_state``.
DATALORE_STATES: Final[Mapping[str, RunState]] = {
    "pending": RunState.PENDING,
    "queued": RunState.PENDING,
    "waiting": RunState.PENDING,
    "starting": RunState.PENDING,
    "scheduled": RunState.PENDING,
    "created": RunState.PENDING,
    "running": RunState.RUNNING,
    "in_progress": RunState.RUNNING,
    "in progress": RunState.RUNNING,
    "in-progress": RunState.RUNNING,
    "inprogress": RunState.RUNNING,
    "executing": RunState.RUNNING,
    "computing": RunState.RUNNING,
    "started": RunState.RUNNING,
    "failed": RunState.FAILED,
    "failure": RunState.FAILED,
    "error": RunState.FAILED,
    "errored": RunState.FAILED,
    "crashed": RunState.FAILED,
    "timeout": RunState.FAILED,
    "timed_out": RunState.FAILED,
    "cancelled": RunState.CANCELLED,
    "canceled": RunState.CANCELLED,
    "stopped": RunState.CANCELLED,
    "aborted": RunState.CANCELLED,
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


def _optional(check: Any) -> Any:
    def optional(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


@attrs.frozen
class DataloreRunOptions:
    """Datalore-specific settings for :class:`~notebookops.RunRequest` ``options``.

    * ``update_report``: ``"on success"`` updates the notebook's published report when the
      run succeeds (Datalore ignores it if no report was published), ``"never"`` does not.
    * ``direct_file_storage_write``: True saves run data into the notebook's files instead of
      the run's isolated artifact storage (the UI's "Run data isolation").
    * ``mode``: ``"run"`` (the Run API: a tracked run with a run id, parameters and artifacts)
      or ``"computation"`` (the Computation API: the notebook is run interactively and its
      outputs are updated in place). Datalore returns no run id for a computation, so its run
      is :attr:`~notebookops.RunState.SUBMITTED` at once and ``run_and_wait`` returns
      immediately without knowing the outcome. A computation takes no inputs and neither of
      the two settings above.

    The two settings default to ``None``: not sent, so Datalore applies its own defaults
    (``"never"`` and False). Only settings given here are sent, which keeps requests
    acceptable to older on-premises servers that refuse fields they do not know.
    """

    update_report: UpdateReport | None = attrs.field(
        default=None, validator=_optional(_one_of(_UPDATE_REPORT_VALUES))
    )
    direct_file_storage_write: bool | None = attrs.field(
        default=None, validator=_optional(_is_bool)
    )
    mode: Mode = attrs.field(default="run", validator=_one_of(_MODES))


# --------------------------------------------------------------------------- ids


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


def split_notebook_id(notebook_id: str) -> tuple[str, str]:
    """``"owner/id"`` as ``(owner, id)``."""
    owner, _, notebook = notebook_id.partition("/")
    return owner, notebook


def artifact_url(base_url: str, path: str) -> str:
    """An absolute URL for an artifact ``path`` (kept as is if it already is one)."""
    if path.lower().startswith(("http://", "https://")):
        return path
    # "%" stays as is: a path that arrives percent-encoded must not be encoded twice.
    encoded = quote(path if path.startswith("/") else "/" + path, safe="/%:@!$&'()*+,;=~")
    return base_url + encoded


# --------------------------------------------------------------------------- requests


def parameter_value(name: str, value: object) -> str:
    """One input as the string Datalore documents for parameter values.

    Strings are sent as they are; booleans as ``"true"``/``"false"`` and numbers as their JSON
    text (``3``, ``0.5``, ``1e+20``), the spellings a notebook control shows. Anything else
    (None, lists, dates...) is refused rather than guessed at: convert it to the string the
    notebook's control expects.
    """
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        try:
            return json.dumps(float(value), allow_nan=False)
        except ValueError:
            raise ConfigurationError(
                f"Datalore parameter {name!r} is {value!r}, which has no value a control accepts"
            ) from None
    raise ConfigurationError(
        f"Datalore parameter {name!r} must be a str, int, float or bool, got "
        f"{type(value).__name__}: convert it to a string the notebook's control accepts"
    )


def build_parameters(inputs: Mapping[str, Any]) -> list[ParameterWire]:
    """``inputs`` as Datalore ``parameters``: ``[{"name", "value"}]`` in the given order.

    Names are the ``Variable`` of the notebook's interactive controls; values are converted
    by :func:`parameter_value`.
    """
    return [
        ParameterWire(name=name, value=parameter_value(name, value))
        for name, value in inputs.items()
    ]


def build_run_body(
    notebook_id: str, inputs: Mapping[str, Any], options: DataloreRunOptions
) -> dict[str, Any]:
    """The JSON body of ``POST /api/run/v1/notebook``: ``notebookId``, then only what was set
    (``updateReport``, ``directFileStorageWrite``, ``parameters`` when there are inputs)."""
    wire = RunNotebookRequestWire(
        notebook_id=notebook_id,
        update_report=options.update_report,
        direct_file_storage_write=options.direct_file_storage_write,
        parameters=build_parameters(inputs) or None,
    )
    body: dict[str, Any] = CONVERTER.unstructure(wire)
    return body


def check_computation(inputs: Mapping[str, Any], options: DataloreRunOptions) -> None:
    """Refuse what the Computation API cannot take (it takes only the notebook id): inputs
    and run settings are refused rather than dropped, so nobody believes a parameter reached
    the notebook when it did not."""
    if inputs:
        raise ConfigurationError(
            "Datalore's Computation API takes no parameters: drop the inputs, or use "
            "DataloreRunOptions(mode='run') to pass them to a tracked run"
        )
    if options.update_report is not None or options.direct_file_storage_write is not None:
        raise ConfigurationError(
            "update_report and direct_file_storage_write apply to the Run API only; "
            "leave them unset with mode='computation'"
        )


def build_computation_body(notebook_id: str) -> dict[str, Any]:
    """The JSON body of ``POST /api/computation/v1/notebook``: only ``notebookId``."""
    body: dict[str, Any] = CONVERTER.unstructure(ComputationRequestWire(notebook_id=notebook_id))
    return body


# --------------------------------------------------------------------------- responses


def _artifact(wire: RunArtifact, base_url: str) -> Artifact | None:
    if not wire.path and not wire.name:
        return None
    name = wire.name or (wire.path or "").rstrip("/").rsplit("/", 1)[-1] or "artifact"
    url = artifact_url(base_url, wire.path) if wire.path else None
    return Artifact(name=name, url=url, path=wire.path)


def _state(status: RunStatus, states: StateTable) -> RunState:
    """The four rules documented at :data:`DATALORE_STATES`."""
    if status.end_time is not None:
        return RunState.SUCCEEDED if status.success is True else RunState.FAILED
    if status.status is not None:
        return states(status.status)
    if status.success is not None:
        return RunState.SUCCEEDED if status.success else RunState.FAILED
    return RunState.PENDING


def run_from_status(
    status: RunStatus,
    *,
    handle: RunHandle,
    base_url: str,
    web_url: str | None,
    states: StateTable,
) -> Run:
    """Map a status document to a :class:`Run` by the rules at :data:`DATALORE_STATES`.

    ``web_url`` is the notebook's page (None when the handle's id cannot name one).
    """
    where = web_url or f"the notebook {handle.notebook_id} in Datalore"
    found = (_artifact(artifact, base_url) for artifact in status.artifacts or ())
    artifacts = tuple(artifact for artifact in found if artifact is not None)
    state = _state(status, states)
    error: RunErrorInfo | None = None
    if state is RunState.FAILED:
        if status.end_time is None and status.status is not None:
            said = f"reported the run as {status.status!r}"
        elif status.success is False:
            said = "reported the run as unsuccessful"
        else:
            said = "reported the run as finished without saying whether it succeeded"
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
        vendor_state=status.status,
        created_at=handle.created_at,
        started_at=status.start_time,
        finished_at=status.end_time,
        artifacts=artifacts,
        error=error,
        web_url=web_url,
        raw=status.raw,
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
    return rebuild_error(type(error), error, f"{error.message}. {hint}")
