"""Deepnote's JSON, as attrs classes, and the one cattrs converter that reads it.

The classes are shaped like the vendor's payloads (camelCase on the wire, snake_case here;
Jupyter outputs and snapshot blocks keep their snake_case keys) and are also the return types
of :class:`~notebookops.backends.deepnote.DeepnoteClient`'s methods. They carry no behaviour
beyond small conveniences.

Reading is lenient where the API is (it is labelled "preview"): unknown fields are ignored,
most fields are optional, and a ``null`` reads as an absent field, so a ``null`` in an optional
field (a block's ``metadata``, an output's ``traceback``) is its default rather than an error.
A block's outputs are kept as JSON here and read one by one (``_requests.read_output``), so
one output that cannot be read never costs the run's status. Types are strict, though: a
number where a string belongs is a decode error, not a silent ``str(5)``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, get_args, get_origin

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ..._convert import make_converter as make_base_converter
from ..._convert import to_camel

__all__ = [
    "CONVERTER",
    "make_converter",
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


def _run_id(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise ValueError("the run id is empty")


@attrs.frozen
class RunStarted:
    """``POST /v2/runs`` answer: flat, no ``run`` envelope."""

    run_id: str = attrs.field(validator=_run_id)
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
    """A block of the run's snapshot (``snapshotDelivery=blocks``): outputs, no source.

    ``outputs`` are the Jupyter-style output objects as sent; each is read into a
    :class:`SnapshotOutput` on its own, and one that cannot be read is kept as it is.
    """

    id: str
    type: str | None = None
    outputs: list[Any] = attrs.field(factory=list)
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

    run_id: str = attrs.field(validator=_run_id)
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

    @property
    def snapshot_text(self) -> str | None:
        """The inline snapshot document, from either form Deepnote sends it in."""
        nested = self.snapshot.snapshot_content if self.snapshot else None
        return self.snapshot_content or nested

    @property
    def download_url(self) -> str | None:
        """The snapshot's download URL, from either form Deepnote sends it in."""
        nested = self.snapshot.download_url if self.snapshot else None
        return self.snapshot_download_url or nested


@attrs.frozen
class RunSummary:
    """One row of ``GET /v2/notebooks/{id}/runs``: no snapshot, no error."""

    run_id: str
    status: str
    notebook_id: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    legacy_finished_at: datetime | None = None
    #: The decoded JSON object this was read from.
    raw: Any = attrs.field(default=None, eq=False, repr=False)

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
    """A notebook schedule. Deepnote keeps one scheduled notebook per project: scheduling
    another notebook of the project re-points the schedule to it."""

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


def _strict(expected: type[Any], what: str) -> Callable[[Any, Any], Any]:
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


def _is_list(cls: Any) -> bool:
    return get_origin(cls) is list


def _list_hook(converter: cattrs.Converter, cls: Any) -> Callable[[Any, Any], list[Any]]:
    (item_type,) = get_args(cls) or (Any,)
    item = converter.get_structure_hook(item_type)

    def hook(value: Any, _: Any) -> list[Any]:
        # cattrs would iterate a string or an object into a list.
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return [item(element, item_type) for element in value]

    return hook


#: Classes whose JSON keys are snake_case (Jupyter's and the snapshot's); the rest are camelCase.
_SNAKE_CASE: Final = frozenset({SnapshotOutput, SnapshotBlock})
#: Where a decoded object's own JSON travels to its ``raw`` field: not a key Deepnote sends.
_RAW_KEY: Final = "\x00raw"
#: The seed OpenAPI calls the completion time ``finishedAt``; reality says ``completedAt``.
_RENAMES: Final = {"legacy_finished_at": "finishedAt"}


def _object_hook(converter: cattrs.Converter, cls: type[Any]) -> Callable[[Any, Any], Any]:
    keys = {
        field.name: field.name
        if cls in _SNAKE_CASE
        else _RENAMES.get(field.name) or to_camel(field.name)
        for field in attrs.fields(cls)
    }
    overrides = {name: override(rename=key) for name, key in keys.items()}
    keeps_raw = "raw" in keys
    if keeps_raw:
        # The JSON object itself, handed through as it is (under a key no JSON field has).
        overrides["raw"] = override(rename=_RAW_KEY, struct_hook=lambda value, _: value)
    structure = make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]
    takes_id = "run_id" in keys

    def hook(data: Any, _: Any) -> Any:
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        # A null is an absent field: its default, or "missing" when it is required.
        present = {key: value for key, value in data.items() if value is not None}
        if takes_id and "runId" not in present and isinstance(present.get("id"), str):
            present["runId"] = present["id"]  # what some deployments send (Deepnote's client)
        if keeps_raw:
            present[_RAW_KEY] = data
        return structure(present, cls)

    return hook


def make_converter() -> cattrs.Converter:
    """The Deepnote converter: strict scalar types, camelCase keys (snake_case for Jupyter
    outputs and snapshot blocks), ``null`` read as absent, ``raw`` set to the JSON object."""
    converter = make_base_converter()
    # cattrs would otherwise coerce (str(5), bool("false")): a type mismatch must be an error.
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(bool, _strict(bool, "a boolean"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook_factory(_is_list, lambda cls: _list_hook(converter, cls))
    converter.register_structure_hook_func(
        lambda cls: cls == (str | list[str] | None), _structure_text
    )
    converter.register_structure_hook_factory(attrs.has, lambda cls: _object_hook(converter, cls))
    return converter


#: The one Deepnote converter (never use the global cattrs one).
CONVERTER: Final = make_converter()
