"""Deepnote's JSON, as attrs classes, and the one cattrs converter that reads it.

The classes are shaped like the vendor's payloads (camelCase on the wire, snake_case here) and
are also the public return types of :class:`~notebookops.backends.deepnote.DeepnoteBackend`'s
endpoint methods. They carry no behaviour beyond small conveniences.

Parsing is permissive where the API is (it is labelled "preview"): unknown fields are ignored,
most fields are optional, and both envelope shapes seen in the wild are accepted by the
decoders in ``_requests``. Types are strict, though: a number where a string belongs is a
decode error, not a silent ``str(5)``.

Two readers share these rules. The cattrs converter (:func:`converter`) reads every class; it
is built on first use, each class's structuring function on the first payload of that class,
so importing the adapter builds none of them. :func:`read_fast` reads the payloads of a wait's
hot path (a run, a runs-list row, a started run) by hand when they have the ordinary shape,
and declines anything else, which then goes to the converter: it reads it or words the error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from ..._convert import make_converter, parse_datetime

if TYPE_CHECKING:
    import cattrs

    #: The Deepnote converter (built on first access; :func:`converter` is the same object).
    CONVERTER: cattrs.Converter

__all__ = [
    "CONVERTER",
    "FolderPathItem",
    "Me",
    "Notebook",
    "NotebookBlock",
    "NotebookInput",
    "Pagination",
    "Project",
    "ProjectFile",
    "ProjectFolder",
    "ProjectNotebook",
    "ProjectPage",
    "ReorderResult",
    "RunDetails",
    "RunPage",
    "RunStarted",
    "RunSummary",
    "Schedule",
    "SnapshotBlock",
    "SnapshotOutput",
    "Workspace",
]


# --------------------------------------------------------------------------- runs


@attrs.frozen
class RunStarted:
    """``POST /v2/runs`` answer: flat, no ``run`` envelope."""

    run_id: str
    status: str | None = None
    created_at: datetime | None = None


@attrs.frozen
class SnapshotOutput:
    """One Jupyter-style output of a block (snake_case keys on the wire, as in Jupyter)."""

    output_type: str
    name: str | None = None
    text: str | list[str] | None = None
    data: dict[str, Any] = attrs.field(factory=dict)
    metadata: dict[str, Any] = attrs.field(factory=dict)
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] = attrs.field(factory=list)
    execution_count: int | None = None


@attrs.frozen
class SnapshotBlock:
    """A block of the run's snapshot (``snapshotDelivery=blocks``): outputs, no source."""

    id: str
    type: str | None = None
    outputs: list[SnapshotOutput] = attrs.field(factory=list)
    metadata: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class NestedSnapshot:
    """The ``snapshot: {snapshotContent, downloadUrl}`` form some deployments use."""

    snapshot_content: str | None = None
    download_url: str | None = None


@attrs.frozen
class RunDetails:
    """``GET /v2/runs/{runId}``: a run with its status and, when ready, its snapshot.

    ``error`` is often null even for failed runs; the reason then lives in the snapshot's error
    outputs. The completion time is ``completedAt`` (``finishedAt`` in older documents): use
    :attr:`finished_at`, which reads either.
    """

    run_id: str
    status: str
    notebook_id: str | None = None
    project_id: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    legacy_finished_at: datetime | None = None
    error: Any = None
    snapshot_status: str | None = None
    snapshot_content: str | None = None
    snapshot_download_url: str | None = None
    snapshot_blocks: list[SnapshotBlock] | None = None
    snapshot: NestedSnapshot | None = None
    #: The decoded JSON object this was read from (for anything not modelled).
    raw: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def finished_at(self) -> datetime | None:
        return self.completed_at or self.legacy_finished_at


@attrs.frozen
class RunSummary:
    """One row of ``GET /v2/notebooks/{id}/runs``: no snapshot, no error."""

    run_id: str
    status: str
    notebook_id: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    legacy_finished_at: datetime | None = None

    @property
    def finished_at(self) -> datetime | None:
        return self.completed_at or self.legacy_finished_at


@attrs.frozen
class Pagination:
    """``CursorPagination``. ``has_more`` is absent in the seed OpenAPI: then a token means more."""

    next_page_token: str | None = None
    has_more: bool | None = None
    page_size: int | None = None

    @property
    def more(self) -> bool:
        if self.has_more is None:
            return bool(self.next_page_token)
        return self.has_more


@attrs.frozen
class RunPage:
    """One page of a notebook's runs, newest first."""

    runs: list[RunSummary]
    pagination: Pagination


# --------------------------------------------------------------------------- notebooks


@attrs.frozen
class NotebookBlock:
    id: str
    type: str | None = None
    content: str | None = None


@attrs.frozen
class NotebookInput:
    """An input block's variable: ``name`` is the key to use in a run's ``inputs``."""

    name: str
    type: str | None = None
    value: Any = None
    label: str | None = None
    options: list[Any] | None = None
    multiple: bool | None = None
    min: Any = None
    max: Any = None
    step: Any = None
    block_id: str | None = None


@attrs.frozen
class Notebook:
    id: str
    project_id: str | None = None
    name: str | None = None
    blocks: list[NotebookBlock] | None = None
    inputs: list[NotebookInput] | None = None
    raw: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class ReorderResult:
    """``POST /notebooks/{id}/reorder-blocks``: the notebook's full resulting block order."""

    block_ids: list[str]


@attrs.frozen
class Schedule:
    """A notebook schedule (one per project: setting it elsewhere re-points it)."""

    notebook_id: str
    cron: str
    timezone: str | None = None
    next_run_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


# --------------------------------------------------------------------------- projects


@attrs.frozen
class FolderPathItem:
    id: str
    name: str | None = None


@attrs.frozen
class ProjectFolder:
    id: str
    name: str | None = None
    path: list[FolderPathItem] = attrs.field(factory=list)
    is_path_complete: bool | None = None


@attrs.frozen
class ProjectNotebook:
    id: str
    name: str | None = None
    is_init: bool | None = None
    is_scheduled: bool | None = None
    last_run_at: datetime | None = None


@attrs.frozen
class ProjectFile:
    path: str
    size: int | None = None
    updated_at: datetime | None = None


@attrs.frozen
class Project:
    id: str
    name: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    project_type: str | None = None
    folder: ProjectFolder | None = None
    folder_id: str | None = None
    notebooks: list[ProjectNotebook] = attrs.field(factory=list)
    files: list[ProjectFile] = attrs.field(factory=list)
    raw: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class ProjectPage:
    projects: list[Project]
    pagination: Pagination


@attrs.frozen
class Workspace:
    id: str
    slug: str | None = None
    name: str | None = None


@attrs.frozen
class Me:
    """``GET /v2/me``: the key, its creator, its workspace and the access level."""

    workspace: Workspace
    access_level: str | None = None
    api_key: dict[str, Any] = attrs.field(factory=dict)
    user: dict[str, Any] = attrs.field(factory=dict)


# --------------------------------------------------------------------------- converter

T = TypeVar("T")


def _strict(expected: type[Any] | tuple[type[Any], ...], what: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        # bool is an int subclass; a JSON true is never a valid count or size.
        if isinstance(value, bool) and expected is not bool:
            raise TypeError(f"expected {what}, got a boolean")
        if not isinstance(value, expected):
            raise TypeError(f"expected {what}, got {type(value).__name__}")
        return value

    return hook


def _structure_text(value: Any, _: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return list(value)
    raise TypeError(f"expected a string or a list of strings, got {type(value).__name__}")


#: Classes read with camelCase keys. Jupyter outputs and snapshot blocks keep their snake_case
#: keys (cattrs' default hooks).
_CAMEL_CASE: frozenset[type[Any]] = frozenset(
    {
        NestedSnapshot,
        RunStarted,
        Pagination,
        RunSummary,
        RunDetails,
        RunPage,
        NotebookBlock,
        NotebookInput,
        Notebook,
        ReorderResult,
        Schedule,
        FolderPathItem,
        ProjectFolder,
        ProjectNotebook,
        ProjectFile,
        Project,
        ProjectPage,
        Workspace,
        Me,
    }
)


def _make_converter() -> cattrs.Converter:
    from cattrs.gen import make_dict_structure_fn, override

    converter = make_converter()
    # cattrs would otherwise coerce (str(5), bool("false")): a type mismatch must be an error.
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(bool, _strict(bool, "a boolean"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook_func(
        lambda cls: cls == (str | list[str] | None), _structure_text
    )

    def camel_case(cls: type[Any]) -> Callable[[Any, Any], Any]:
        # Made on the first payload of ``cls``, when the hooks of its field types (the strict
        # ones above, and the classes it contains, made the same way) are all in place.
        overrides = {
            field.name: override(
                rename=_RENAMES.get(field.name) or _camel(field.name), omit=field.name == "raw"
            )
            for field in attrs.fields(cls)
        }
        return make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]

    converter.register_structure_hook_factory(lambda cls: cls in _CAMEL_CASE, camel_case)
    return converter


#: The seed OpenAPI calls the completion time ``finishedAt``; reality says ``completedAt``.
_RENAMES = {"legacy_finished_at": "finishedAt"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_CONVERTER: cattrs.Converter | None = None


def converter() -> cattrs.Converter:
    """The Deepnote converter, built on first use. Never use the global cattrs one."""
    global _CONVERTER
    if _CONVERTER is None:
        _CONVERTER = _make_converter()
    return _CONVERTER


def __getattr__(name: str) -> Any:
    # ``CONVERTER`` stays importable, without building the converter at import time.
    if name == "CONVERTER":
        return converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- fast readers

# Hand-written equivalents of the converter for the payloads every poll reads. Each one returns
# exactly what ``converter().structure`` returns for the payloads it accepts (with ``raw`` set
# to the payload, as ``_requests.structure`` sets it on the converter's result), checking types
# the same strict way, and raises _Unusual for anything else: a missing or mistyped field, a
# timestamp it cannot parse, a container of another type (cattrs would iterate a string into a
# list). tests/deepnote/test_wire_fast_path.py holds the two readers to the same results.


class _Unusual(Exception):
    """The payload is not in the ordinary shape: the converter must read it."""


_ABSENT: Any = object()


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if type(value) is str:
        return value
    raise _Unusual


def _optional_string(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or type(value) is str:
        return value
    raise _Unusual


def _optional_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None or type(value) is int:
        return value
    raise _Unusual


def _optional_bool(data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is None or type(value) is bool:
        return value
    raise _Unusual


def _optional_time(data: dict[str, Any], key: str) -> datetime | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) is str:
        try:
            return parse_datetime(value)
        except ValueError:
            raise _Unusual from None
    raise _Unusual


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    """A ``dict[str, Any]`` field that defaults to ``{}`` (a fresh copy, as cattrs makes)."""
    value = data.get(key, _ABSENT)
    if value is _ABSENT:
        return {}
    if type(value) is dict and all(type(name) is str for name in value):
        return dict(value)
    raise _Unusual


def _strings(value: object) -> list[str]:
    if type(value) is list and all(type(item) is str for item in value):
        return list(value)
    raise _Unusual


def _dict(value: object) -> dict[str, Any]:
    if type(value) is dict:
        return value
    raise _Unusual


def _snapshot_output(value: object) -> SnapshotOutput:
    data = _dict(value)
    text = data.get("text")
    if text is not None and type(text) is not str:
        text = _strings(text)
    traceback = data.get("traceback", _ABSENT)
    return SnapshotOutput(
        output_type=_string(data, "output_type"),
        name=_optional_string(data, "name"),
        text=text,
        data=_object(data, "data"),
        metadata=_object(data, "metadata"),
        ename=_optional_string(data, "ename"),
        evalue=_optional_string(data, "evalue"),
        traceback=[] if traceback is _ABSENT else _strings(traceback),
        execution_count=_optional_int(data, "execution_count"),
    )


def _snapshot_block(value: object) -> SnapshotBlock:
    data = _dict(value)
    outputs = data.get("outputs", _ABSENT)
    if outputs is _ABSENT:
        outputs = []
    elif type(outputs) is list:
        outputs = [_snapshot_output(output) for output in outputs]
    else:
        raise _Unusual
    return SnapshotBlock(
        id=_string(data, "id"),
        type=_optional_string(data, "type"),
        outputs=outputs,
        metadata=_object(data, "metadata"),
    )


def _run_details(data: dict[str, Any]) -> RunDetails:
    blocks = data.get("snapshotBlocks")
    if blocks is not None:
        if type(blocks) is not list:
            raise _Unusual
        blocks = [_snapshot_block(block) for block in blocks]
    nested = data.get("snapshot")
    if nested is not None:
        nested = _dict(nested)
        nested = NestedSnapshot(
            snapshot_content=_optional_string(nested, "snapshotContent"),
            download_url=_optional_string(nested, "downloadUrl"),
        )
    return RunDetails(
        run_id=_string(data, "runId"),
        status=_string(data, "status"),
        notebook_id=_optional_string(data, "notebookId"),
        project_id=_optional_string(data, "projectId"),
        created_at=_optional_time(data, "createdAt"),
        completed_at=_optional_time(data, "completedAt"),
        legacy_finished_at=_optional_time(data, "finishedAt"),
        error=data.get("error"),
        snapshot_status=_optional_string(data, "snapshotStatus"),
        snapshot_content=_optional_string(data, "snapshotContent"),
        snapshot_download_url=_optional_string(data, "snapshotDownloadUrl"),
        snapshot_blocks=blocks,
        snapshot=nested,
        raw=data,
    )


def _run_summary(value: object) -> RunSummary:
    data = _dict(value)
    return RunSummary(
        run_id=_string(data, "runId"),
        status=_string(data, "status"),
        notebook_id=_optional_string(data, "notebookId"),
        created_at=_optional_time(data, "createdAt"),
        completed_at=_optional_time(data, "completedAt"),
        legacy_finished_at=_optional_time(data, "finishedAt"),
    )


def _run_started(data: dict[str, Any]) -> RunStarted:
    return RunStarted(
        run_id=_string(data, "runId"),
        status=_optional_string(data, "status"),
        created_at=_optional_time(data, "createdAt"),
    )


def _pagination(value: object) -> Pagination:
    data = _dict(value)
    return Pagination(
        next_page_token=_optional_string(data, "nextPageToken"),
        has_more=_optional_bool(data, "hasMore"),
        page_size=_optional_int(data, "pageSize"),
    )


def _run_page(data: dict[str, Any]) -> RunPage:
    runs = data.get("runs")
    if type(runs) is not list:
        raise _Unusual
    return RunPage(
        runs=[_run_summary(run) for run in runs],
        pagination=_pagination(data.get("pagination")),
    )


_FAST: dict[type[Any], Callable[[dict[str, Any]], Any]] = {
    RunDetails: _run_details,
    RunSummary: _run_summary,
    RunStarted: _run_started,
    RunPage: _run_page,
    Pagination: _pagination,
    SnapshotOutput: _snapshot_output,
    SnapshotBlock: _snapshot_block,
}


def read_fast(data: dict[str, Any], cls: type[T]) -> T | None:
    """``data`` read as ``cls`` by hand, when ``cls`` has a fast reader and ``data`` the
    ordinary shape (``raw``, where ``cls`` has it, is ``data``); None otherwise, for the
    converter to read it or say what is wrong."""
    reader = _FAST.get(cls)
    if reader is None:
        return None
    try:
        return cast(T, reader(data))
    except _Unusual:
        return None
