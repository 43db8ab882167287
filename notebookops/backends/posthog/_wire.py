"""PostHog's JSON, as attrs classes, and the one cattrs converter that reads it.

Shapes follow PostHog's serializers (see the contract notes). PostHog calls this API early
access, so every field that could be missing has a default and unknown keys are ignored.
Nothing here does I/O; :func:`decode` turns any structuring failure into ResponseDecodeError.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ..._convert import make_converter, register_camel_case
from ..._redact import redact_url, trim
from ...errors import ResponseDecodeError

__all__ = [
    "CONVERTER",
    "ActivityEntry",
    "ActivityPage",
    "CellRunEnvelope",
    "CellRunStarted",
    "CellRunStatus",
    "CollabEvent",
    "CollabPresence",
    "CollabStep",
    "CollabStreamError",
    "CollabUnknownEvent",
    "CollabUpdate",
    "DataFramePage",
    "ExecutionResult",
    "HogQLResult",
    "KernelConfig",
    "KernelOutput",
    "KernelRuntime",
    "KernelStatus",
    "KernelStreamEvent",
    "MediaItem",
    "Notebook",
    "NotebookPage",
    "NotebookRunCell",
    "NotebookRunStarted",
    "NotebookRunStatus",
    "NotebookSummary",
    "RecordingComment",
    "RunInterruptResult",
    "SharePassword",
    "SharePasswordCreated",
    "SharingConfiguration",
    "UserBasic",
    "VariableInfo",
    "decode",
]

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class UserBasic:
    """A PostHog user as embedded in other objects."""

    id: int | None = None
    uuid: str | None = None
    distinct_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    is_email_verified: bool | None = None
    hedgehog_config: dict[str, Any] | None = None
    role_at_organization: str | None = None


@attrs.frozen(kw_only=True)
class NotebookSummary:
    """A notebook as the list endpoint returns it (no content)."""

    id: str
    short_id: str
    title: str | None = None
    deleted: bool = False
    created_at: datetime | None = None
    created_by: UserBasic | None = None
    last_modified_at: datetime | None = None
    last_modified_by: UserBasic | None = None
    user_access_level: str | None = None


@attrs.frozen(kw_only=True)
class Notebook(NotebookSummary):
    """A full notebook: ``content`` is a ProseMirror document; ``version`` guards content
    updates (send it back with a content PATCH)."""

    content: dict[str, Any] | None = None
    text_content: str | None = None
    version: int = 0
    parent_resource: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class NotebookPage:
    """One page of the limit/offset notebook list."""

    count: int | None = None
    next: str | None = None
    previous: str | None = None
    results: list[NotebookSummary] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class ActivityEntry:
    """One activity-log entry (``activity``: created, updated, deleted, restored,
    save_rejected_conflict, save_rejected_stale, ...)."""

    id: str | None = None
    user: dict[str, Any] | None = None
    activity: str | None = None
    scope: str | None = None
    item_id: str | None = None
    detail: dict[str, Any] | None = None
    created_at: datetime | None = None


@attrs.frozen(kw_only=True)
class ActivityPage:
    """One page of an activity log (page-based: follow ``next``)."""

    results: list[ActivityEntry] = attrs.field(factory=list)
    next: str | None = None
    previous: str | None = None
    total_count: int | None = None


@attrs.frozen(kw_only=True)
class RecordingComment:
    """A comment on a session recording, found in a notebook (camelCase on the wire)."""

    id: str | None = None
    time_in_recording: Any = None
    comment: str | None = None
    notebook_short_id: str | None = None
    notebook_title: str | None = None


@attrs.frozen(kw_only=True)
class SharePassword:
    """An active password of a sharing configuration (the password itself is never sent)."""

    id: str | None = None
    created_at: datetime | None = None
    note: str | None = None
    created_by_email: str | None = None
    is_active: bool | None = None


@attrs.frozen(kw_only=True)
class SharePasswordCreated:
    """A new share password. ``password`` is shown once, by PostHog and here: keep it safe
    (it is left out of ``repr``)."""

    id: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    note: str | None = None
    created_at: datetime | None = None
    created_by_email: str | None = None


@attrs.frozen(kw_only=True)
class SharingConfiguration:
    """How a notebook is shared. ``access_token`` is the public link's secret (not in repr)."""

    created_at: datetime | None = None
    enabled: bool = False
    access_token: str | None = attrs.field(default=None, repr=False)
    settings: dict[str, Any] | None = None
    password_required: bool = False
    share_passwords: list[SharePassword] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class KernelRuntime:
    """The sandboxed kernel behind a notebook (one per notebook and user)."""

    id: str | None = None
    status: str | None = None
    last_used_at: datetime | None = None
    sandbox_id: str | None = None


@attrs.frozen(kw_only=True)
class KernelStatus:
    """``kernel/status/``: ``status`` is starting, running, stopped, timed_out, discarded or
    error."""

    status: str
    backend: str | None = None
    last_used_at: datetime | None = None
    last_error: str | None = None
    runtime_id: str | None = None
    kernel_id: str | None = None
    kernel_pid: int | None = None
    sandbox_id: str | None = None
    cpu_cores: float | None = None
    memory_gb: float | None = None
    disk_size_gb: float | None = None
    idle_timeout_seconds: int | None = None
    frames: list[dict[str, Any]] | None = None


@attrs.frozen(kw_only=True)
class KernelConfig:
    """``kernel/config/``: ``None`` for values never set."""

    cpu_cores: float | None = None
    memory_gb: float | None = None
    idle_timeout_seconds: int | None = None
    restart_required: bool | None = None


@attrs.frozen(kw_only=True)
class MediaItem:
    """Rich output of a cell (e.g. a PNG, base64-encoded)."""

    mime_type: str
    data: Any = None


@attrs.frozen(kw_only=True)
class VariableInfo:
    """A module-level variable a cell defined: ``status`` ok (with ``type``) or error."""

    status: str | None = None
    type: str | None = None
    hogql_query: str | None = None
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] | None = None
    data: Any = None
    metadata: Any = None


@attrs.frozen(kw_only=True)
class ExecutionResult:
    """The outcome of one kernel execution.

    ``status`` is ``ok``, ``error`` (a Python exception: ``error_name`` and an ANSI-coloured
    ``traceback``) or ``timeout``. A Python exception is NOT an HTTP error.
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    result: dict[str, Any] | None = None
    media: list[MediaItem] = attrs.field(factory=list)
    execution_count: int | None = None
    error_name: str | None = None
    traceback: list[str] = attrs.field(factory=list)
    variables: dict[str, VariableInfo] | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    kernel_runtime: KernelRuntime | None = None
    #: The JSON object as PostHog sent it (what a notebook stores as ``pythonExecution``).
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class KernelOutput:
    """A stdout or stderr chunk of a streamed execution, as it arrived."""

    name: Literal["stdout", "stderr"]
    text: str


#: What ``kernel_execute_stream`` yields: output chunks, then exactly one result.
KernelStreamEvent = KernelOutput | ExecutionResult


@attrs.frozen(kw_only=True)
class DataFramePage:
    """A page of a kernel dataframe's rows (``row_count`` is the total)."""

    columns: list[str] = attrs.field(factory=list)
    rows: list[dict[str, Any]] = attrs.field(factory=list)
    row_count: int | None = None


@attrs.frozen(kw_only=True)
class HogQLResult:
    """A HogQL query's result. The exact keys are not settled by PostHog's source; the raw
    payload is kept in ``raw``."""

    results: list[list[Any]] = attrs.field(factory=list)
    columns: list[Any] = attrs.field(factory=list)
    types: list[Any] = attrs.field(factory=list)
    has_more: bool | None = None
    limit: int | None = None
    offset: int | None = None
    query: str | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


# -- collaboration stream


@attrs.frozen(kw_only=True)
class CollabStep:
    """``event: step``: one ProseMirror step another client saved. ``id`` (``<version>-0``)
    is the resume point."""

    step: dict[str, Any]
    client_id: str | None = None
    user_id: int | None = None
    user_name: str | None = None
    cursor_head: int | None = None
    id: str | None = None


@attrs.frozen(kw_only=True)
class CollabUpdate:
    """``event: update``: the notebook changed outside steps (a PATCH, a markdown save).
    No ``diff`` means: reload the notebook."""

    type: str = "update"
    version: int | None = None
    diff: Any = None
    client_id: str | None = None
    base_crc: int | None = None
    id: str | None = None


@attrs.frozen(kw_only=True)
class CollabPresence:
    """``event: presence``: where another client's cursor is."""

    type: str = "presence"
    client_id: str | None = None
    user_id: int | None = None
    user_name: str | None = None
    version: int | None = None
    cursor: Any = None
    id: str | None = None


@attrs.frozen(kw_only=True)
class CollabStreamError:
    """``event: error``: the server hit a stream error and is closing the stream."""

    error: str
    id: str | None = None


@attrs.frozen(kw_only=True)
class CollabUnknownEvent:
    """An event name this version does not know, passed through untouched."""

    event: str
    data: str
    id: str | None = None


CollabEvent = CollabStep | CollabUpdate | CollabPresence | CollabStreamError | CollabUnknownEvent


# -- server-side runs (contracts §10)


@attrs.frozen(kw_only=True)
class NotebookRunStarted:
    """``POST runs/``: a whole-notebook run accepted by the server."""

    run_id: str
    cell_count: int | None = None
    starts_sandbox: bool | None = None
    sandbox_hourly_price: Any = None


@attrs.frozen(kw_only=True)
class NotebookRunCell:
    """One cell of a server-side run; its results live at ``sql_v2/runs/{run_id}/``."""

    node_id: str | None = None
    cell_type: str | None = None
    dataframe_name: str | None = None
    run_id: str | None = None
    status: str | None = None
    error: Any = None


@attrs.frozen(kw_only=True)
class NotebookRunStatus:
    """``GET runs/{id}/``: status running, done, failed or interrupted (others may come)."""

    run_id: str
    status: str
    trigger: str | None = None
    variables: Any = None
    cell_count: int | None = None
    current_index: int | None = None
    current_node_id: str | None = None
    failed_node_id: str | None = None
    error: Any = None
    cells: list[NotebookRunCell] = attrs.field(factory=list)
    created_at: datetime | None = None
    finished_at: datetime | None = None


@attrs.frozen(kw_only=True)
class RunInterruptResult:
    """``POST runs/{id}/interrupt/``."""

    interrupted: bool = False
    status: str | None = None


@attrs.frozen(kw_only=True)
class CellRunStarted:
    """``POST sql_v2/run/``."""

    run_id: str


@attrs.frozen(kw_only=True)
class CellRunEnvelope:
    """The result of one server-side cell run (status ok, error or interrupted)."""

    status: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    media: list[MediaItem] | None = None
    columns: list[Any] | None = None
    types: list[Any] | None = None
    row_count: int | None = None
    has_more: bool | None = None
    first_page: list[Any] | None = None
    result_id: str | None = None
    error: Any = None
    frames: Any = None
    timings: Any = None


@attrs.frozen(kw_only=True)
class CellRunStatus:
    """``GET sql_v2/runs/{id}/``: status running, done, failed or interrupted."""

    status: str
    result: CellRunEnvelope | None = None
    error: Any = None


def _make_converter() -> cattrs.Converter:
    converter = make_converter()
    register_camel_case(converter, RecordingComment)

    structure_hogql = make_dict_structure_fn(
        HogQLResult,
        converter,
        has_more=override(rename="hasMore"),
        raw=override(omit=True),
    )

    def hogql_hook(value: Any, _: type[Any]) -> HogQLResult:
        result = structure_hogql(value, HogQLResult)
        return attrs.evolve(result, raw=dict(value))

    converter.register_structure_hook(HogQLResult, hogql_hook)
    _keep_raw(converter, ExecutionResult)
    for started in (NotebookRunStarted, CellRunStarted):
        _require_run_id(converter, started)
    return converter


def _keep_raw(converter: cattrs.Converter, cls: type[Any]) -> None:
    structure = make_dict_structure_fn(cls, converter, raw=override(omit=True))

    def hook(value: Any, _: type[Any]) -> Any:
        return attrs.evolve(structure(value, cls), raw=dict(value))

    converter.register_structure_hook(cls, hook)


def _require_run_id(converter: cattrs.Converter, cls: type[Any]) -> None:
    """A start answer's ``run_id`` must be a real id: cattrs alone would turn ``null`` into
    the string "None" and track a run nobody has."""
    inner = converter.get_structure_hook(cls)

    def structure(value: Any, target: Any) -> Any:
        run_id = value.get("run_id") if isinstance(value, dict) else None
        if not isinstance(run_id, str) or not run_id.strip():
            raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
        return inner(value, target)

    converter.register_structure_hook(cls, structure)


#: PostHog's converter. Never the global cattrs one: hooks are per vendor.
CONVERTER = _make_converter()


def _describe(error: BaseException) -> str:
    if isinstance(error, cattrs.BaseValidationError):
        messages = cattrs.transform_error(error)
        return "; ".join(messages[:5]) or str(error)
    return f"{type(error).__name__}: {error}"


def decode(data: Any, cls: type[T], *, what: str, url: str = "", status: int = 0) -> T:
    """Structure ``data`` as ``cls``; any failure is a ResponseDecodeError with the body."""
    try:
        return CONVERTER.structure(data, cls)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError, AttributeError) as exc:
        try:
            body = json.dumps(data, default=str)
        except (TypeError, ValueError):
            body = repr(data)
        raise ResponseDecodeError(
            f"posthog sent {what} that could not be read ({_describe(exc)})",
            vendor="posthog",
            url=redact_url(url) if url else "",
            status=status,
            body=trim(body, 1000),
        ) from None
