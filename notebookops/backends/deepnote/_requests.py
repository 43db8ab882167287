"""Pure request builders, local validation and response decoders for Deepnote (no I/O).

Everything here is a plain function of its arguments, tested without an event loop. Local
validation refuses what Deepnote is known to reject anyway (empty or duplicate block ids,
blocks on a detached run, an unknown timezone), so the mistake is reported before a request is
spent on it, with a message that says how to fix it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, TypeVar

import attrs

from ..._api_errors import VendorProfile, default_error_message
from ..._redact import redact_url, trim
from ..._urls import path_segment
from ...errors import APIError, ConfigurationError, PermissionDenied, ResponseDecodeError
from ...models import CellOutput, RunErrorInfo, RunState
from ...transport import Response
from ._wire import (
    Pagination,
    RunDetails,
    RunStarted,
    SnapshotBlock,
    SnapshotOutput,
    converter,
    read_fast,
)

__all__ = [
    "DEEPNOTE_STATES",
    "MAX_PAGE_SIZE",
    "PROFILE",
    "SNAPSHOT_DELIVERIES",
    "BlockPlacement",
    "DeepnoteRunOptions",
    "SnapshotYamlError",
    "build_project_body",
    "build_reorder_body",
    "build_run_body",
    "build_schedule_body",
    "check_page_size",
    "decode",
    "decode_run",
    "decode_started",
    "next_page_token",
    "notebook_web_url",
    "outputs_from_blocks",
    "outputs_from_snapshot",
    "parse_yaml",
    "run_error_info",
]

logger = logging.getLogger("notebookops.deepnote")

T = TypeVar("T")

VENDOR: Final = "deepnote"

#: Deepnote run status -> RunState. ``internal_error`` is FAILED and flagged as a platform
#: failure in ``Run.error``; ``stopped`` (someone pressed stop) is CANCELLED.
DEEPNOTE_STATES: Final[Mapping[str, RunState]] = {
    "pending": RunState.PENDING,
    "running": RunState.RUNNING,
    "success": RunState.SUCCEEDED,
    "error": RunState.FAILED,
    "internal_error": RunState.FAILED,
    "stopped": RunState.CANCELLED,
}

SnapshotDelivery = Literal["blocks", "inline", "downloadUrl"]
SNAPSHOT_DELIVERIES: Final = ("blocks", "inline", "downloadUrl")
StorageMode = Literal["read_write", "readonly"]
_STORAGE_MODES: Final = ("read_write", "readonly")
MAX_PAGE_SIZE: Final = 100


# --------------------------------------------------------------------------- errors


def _error_message(data: Any, text: str) -> str | None:
    """Deepnote's ``{"message": ...}`` (or the older ``{"error": ...}``), plus any list of
    validation details, which says which field was wrong."""
    message = default_error_message(data, text)
    if not isinstance(data, dict):
        return message
    for key in ("details", "issues", "errors"):
        details = data.get(key)
        if isinstance(details, list) and details:
            parts = []
            for item in details[:5]:
                if isinstance(item, str):
                    parts.append(item)
                elif isinstance(item, dict) and isinstance(item.get("message"), str):
                    parts.append(item["message"])
            if parts:
                joined = trim("; ".join(parts), 300)
                return f"{message} ({joined})" if message else joined
    return message


def _refine_error(error: APIError) -> APIError:
    # Deepnote's own client reads a bare 403 on the schedule endpoint as "scheduling is not
    # enabled for this workspace or plan": say so instead of a generic permission hint.
    if isinstance(error, PermissionDenied) and error.data is None and "/schedule" in error.url:
        error.message = (
            f"{error.message} (a bare 403 here usually means scheduling is not enabled for "
            "this workspace or plan)"
        )
        error.args = (error.message,)
    return error


PROFILE: Final = VendorProfile(
    name=VENDOR, error_message=_error_message, refine_error=_refine_error
)


def decode_error(response: Response, detail: str) -> ResponseDecodeError:
    """A ResponseDecodeError for a body that is JSON but not the shape we expect."""
    url = redact_url(response.url)
    return ResponseDecodeError(
        f"{VENDOR} {response.method} {url} returned {response.status} with a body that does "
        f"not match the expected shape: {trim(detail, 300)}",
        vendor=VENDOR,
        url=url,
        status=response.status,
        body=trim(response.text, 1000),
    )


def _describe(exc: Exception) -> str:
    import cattrs  # loaded with the converter that raised ``exc``

    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path="$"))
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- options


def _optional_bool(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(
            f"DeepnoteRunOptions.{attribute.name} must be True, False or None, got {value!r}"
        )


def _storage_mode(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and value not in _STORAGE_MODES:
        raise ConfigurationError(
            f"DeepnoteRunOptions.detached_run_storage_mode must be one of {_STORAGE_MODES}, "
            f"got {value!r}"
        )


def _optional_id(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigurationError(
            f"DeepnoteRunOptions.{attribute.name} must be a non-empty string, got {value!r}"
        )


@attrs.frozen
class DeepnoteRunOptions:
    """Deepnote-specific settings for one run (``RunRequest.options``).

    ``detached``: run a copy that leaves the live editor session alone. ``None`` (the default)
    does what Deepnote's own client does: detached for whole-notebook runs, live when
    ``blocks`` are selected (Deepnote refuses blocks on a detached run).
    ``detached_run_storage_mode``: ``"read_write"`` (Deepnote's default) or ``"readonly"``
    project storage, detached runs only. ``run_dependent_blocks``: with ``blocks``, also run
    the blocks downstream of them.

    ``use_v1``: trigger through the legacy ``/v1/.../execute`` endpoint (no inputs, no blocks)
    and then look for the run it started in the v2 runs list; ``None`` follows the backend's
    ``use_v1`` flag. ``project_id`` is needed by v1 (it is looked up from the notebook when
    absent) and lets the adapter build the notebook's web URL.
    """

    detached: bool | None = attrs.field(default=None, validator=_optional_bool)
    detached_run_storage_mode: StorageMode | None = attrs.field(
        default=None, validator=_storage_mode
    )
    run_dependent_blocks: bool | None = attrs.field(default=None, validator=_optional_bool)
    use_v1: bool | None = attrs.field(default=None, validator=_optional_bool)
    project_id: str | None = attrs.field(default=None, validator=_optional_id)


@attrs.frozen
class BlockPlacement:
    """Where ``reorder_blocks`` puts the moved blocks: :meth:`start`, :meth:`end` or
    :meth:`after` an anchor block (Deepnote has no "before" form)."""

    type: Literal["start", "end", "after"]
    block_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.type not in ("start", "end", "after"):
            raise ConfigurationError(
                f"placement type must be 'start', 'end' or 'after', got {self.type!r}"
            )
        if self.type == "after":
            if not isinstance(self.block_id, str) or not self.block_id:
                raise ConfigurationError("an 'after' placement needs the anchor block id")
        elif self.block_id is not None:
            raise ConfigurationError(f"a {self.type!r} placement takes no block id")

    @classmethod
    def start(cls) -> BlockPlacement:
        return cls("start")

    @classmethod
    def end(cls) -> BlockPlacement:
        return cls("end")

    @classmethod
    def after(cls, block_id: str) -> BlockPlacement:
        return cls("after", block_id)

    def to_wire(self) -> dict[str, str]:
        if self.type == "after":
            assert self.block_id is not None
            return {"type": "after", "blockId": self.block_id}
        return {"type": self.type}


# --------------------------------------------------------------------------- request bodies


def _check_block_ids(block_ids: Sequence[str], what: str) -> list[str]:
    if isinstance(block_ids, str):
        raise ConfigurationError(f"{what} must be a list of block ids, not a single string")
    ids = list(block_ids)
    if not ids:
        raise ConfigurationError(f"{what} must name at least one block")
    for block_id in ids:
        if not isinstance(block_id, str) or not block_id:
            raise ConfigurationError(f"{what} must be non-empty strings, got {block_id!r}")
    duplicates = sorted(block_id for block_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ConfigurationError(f"{what} must be unique; repeated: {', '.join(duplicates)}")
    return ids


def _check_input(name: str, value: object) -> Any:
    if isinstance(value, str | bool):
        return value
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ConfigurationError(
        f"input {name!r} must be a string, a boolean (checkbox) or a list of strings "
        f"(multi-select, date range), got {type(value).__name__}; Deepnote takes numbers as "
        f"strings, e.g. {str(value)!r}"
    )


def build_run_body(
    notebook_id: str,
    *,
    inputs: Mapping[str, Any] | None = None,
    blocks: Sequence[str] | None = None,
    options: DeepnoteRunOptions | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v2/runs``, after checking what Deepnote would refuse."""
    if not isinstance(notebook_id, str) or not notebook_id.strip():
        raise ConfigurationError(f"notebook id must be a non-empty string, got {notebook_id!r}")
    options = options or DeepnoteRunOptions()
    body: dict[str, Any] = {"notebookId": notebook_id}
    if blocks is not None:
        ids = _check_block_ids(blocks, "blocks")
        if options.detached is True:
            raise ConfigurationError(
                "Deepnote runs selected blocks live only (blockIds is not supported for "
                "detached runs): drop blocks or detached=True"
            )
        if options.detached_run_storage_mode is not None:
            raise ConfigurationError(
                "detached_run_storage_mode applies to detached runs, and runs of selected "
                "blocks are live: drop one of them"
            )
        body["blockIds"] = ids
        body["detached"] = False
        if options.run_dependent_blocks is not None:
            body["runDependentBlocks"] = options.run_dependent_blocks
    else:
        if options.run_dependent_blocks:
            raise ConfigurationError("run_dependent_blocks needs blocks to start from")
        detached = True if options.detached is None else options.detached
        body["detached"] = detached
        if options.detached_run_storage_mode is not None:
            if not detached:
                raise ConfigurationError(
                    "detached_run_storage_mode applies to detached runs only; "
                    "drop it or leave detached unset"
                )
            body["detachedRunStorageMode"] = options.detached_run_storage_mode
    if inputs:
        body["inputs"] = {name: _check_input(name, value) for name, value in inputs.items()}
    return body


def build_reorder_body(block_ids: Sequence[str], placement: BlockPlacement) -> dict[str, Any]:
    """The body of ``POST /v2/notebooks/{id}/reorder-blocks``."""
    if not isinstance(placement, BlockPlacement):
        raise ConfigurationError(
            f"placement must be a BlockPlacement, got {type(placement).__name__}"
        )
    ids = _check_block_ids(block_ids, "block_ids")
    if placement.type == "after" and placement.block_id in ids:
        raise ConfigurationError(
            f"the anchor block {placement.block_id!r} cannot be one of the blocks being moved"
        )
    return {"blockIds": ids, "placement": placement.to_wire()}


def build_schedule_body(cron: str, timezone: str | None) -> dict[str, Any]:
    """The body of ``POST /v2/notebooks/{id}/schedule``; the timezone must be a known IANA
    name (checked with :mod:`zoneinfo`), or None for Deepnote's default (UTC)."""
    if not isinstance(cron, str) or not cron.strip():
        raise ConfigurationError(f"cron must be a non-empty cron expression, got {cron!r}")
    body: dict[str, Any] = {"cron": cron.strip()}
    if timezone is not None:
        if not isinstance(timezone, str) or not timezone.strip():
            raise ConfigurationError(f"timezone must be an IANA name, got {timezone!r}")
        import zoneinfo  # only schedules need it; importing the adapter should not

        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"unknown timezone {timezone!r}: use an IANA name such as 'Europe/Prague'"
            ) from None
        body["timezone"] = timezone
    return body


def build_project_body(
    name: str, *, folder_id: str | None = None, project_type: str | None = None
) -> dict[str, Any]:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"project name must be a non-empty string, got {name!r}")
    body: dict[str, Any] = {"name": name}
    if folder_id is not None:
        if not isinstance(folder_id, str) or not folder_id:
            raise ConfigurationError(f"folder_id must be a non-empty string, got {folder_id!r}")
        body["folderId"] = folder_id
    if project_type is not None:
        if project_type not in ("standard", "notebook", "agent"):
            raise ConfigurationError(
                f"project_type must be 'standard', 'notebook' or 'agent', got {project_type!r}"
            )
        body["projectType"] = project_type
    return body


def build_notebook_body(project_id: str, name: str | None) -> dict[str, Any]:
    if not isinstance(project_id, str) or not project_id:
        raise ConfigurationError(f"project_id must be a non-empty string, got {project_id!r}")
    body: dict[str, Any] = {"projectId": project_id}
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"notebook name must be a non-empty string, got {name!r}")
        body["name"] = name
    return body


def check_page_size(page_size: object) -> int:
    """Deepnote pages hold 1 to 100 items."""
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise ConfigurationError(f"page_size must be an int, got {page_size!r}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ConfigurationError(
            f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}"
        )
    return page_size


def next_page_token(
    pagination: Pagination, seen: set[str], response: Response, what: str
) -> str | None:
    """The token of the next page, or None at the end. A token the server already gave us
    would loop forever, and "more, but no token" cannot be followed: both are decode errors."""
    if not pagination.more:
        return None
    token = pagination.next_page_token
    if not token:
        raise decode_error(response, f"{what}: hasMore is true but nextPageToken is empty")
    if token in seen:
        raise decode_error(
            response,
            f"{what}: the server returned a page token it had already returned; stopping "
            "instead of looping forever",
        )
    seen.add(token)
    return token


# --------------------------------------------------------------------------- decoding


def structure(data: Any, cls: type[T], response: Response, *, envelope: str | None = None) -> T:
    """Structure decoded JSON into ``cls``; ``{envelope: {...}}`` and the bare object are both
    accepted (Deepnote's reference and its OpenAPI seed disagree on several endpoints)."""
    payload = data
    if envelope is not None and isinstance(data, dict) and isinstance(data.get(envelope), dict):
        payload = data[envelope]
    if not isinstance(payload, dict):
        raise decode_error(response, f"expected a JSON object, got {type(payload).__name__}")
    # The hand-written reader takes the ordinary shapes of the hot path (every poll reads a
    # run); the converter everything else, and it words the errors.
    result = read_fast(payload, cls)
    if result is not None:
        return result
    import cattrs  # loaded by converter() below; kept out of this module's import

    try:
        result = converter().structure(payload, cls)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise decode_error(response, _describe(exc)) from None
    if attrs.has(cls) and "raw" in attrs.fields_dict(cls):
        result = attrs.evolve(result, raw=payload)  # type: ignore[misc]
    return result


def decode(response: Response, cls: type[T], *, envelope: str | None = None) -> T:
    """Decode a JSON response body into ``cls`` (ResponseDecodeError on anything else)."""
    return structure(response.json(), cls, response, envelope=envelope)


def _require_run_id(run_id: str, response: Response) -> None:
    if not run_id.strip():
        raise decode_error(response, "the run id is empty")


def decode_started(response: Response) -> RunStarted:
    """``POST /v2/runs``: flat ``{runId, status, createdAt}`` (a ``run`` envelope or ``id`` for
    ``runId`` is accepted too, as Deepnote's own client does)."""
    data = response.json()
    if isinstance(data, dict) and isinstance(data.get("run"), dict):
        data = data["run"]
    if isinstance(data, dict) and "runId" not in data and isinstance(data.get("id"), str):
        data = {**data, "runId": data["id"]}
    started = structure(data, RunStarted, response)
    _require_run_id(started.run_id, response)
    return started


def decode_run(response: Response) -> RunDetails:
    """``GET /v2/runs/{id}``: the ``run`` envelope (or a bare run), with ``id`` accepted for
    ``runId`` and a nested ``snapshot`` object folded into the flat fields."""
    data = response.json()
    if isinstance(data, dict) and isinstance(data.get("run"), dict):
        data = data["run"]
    if isinstance(data, dict) and "runId" not in data and isinstance(data.get("id"), str):
        data = {**data, "runId": data["id"]}
    details = structure(data, RunDetails, response)
    _require_run_id(details.run_id, response)
    nested = details.snapshot
    if nested is not None:
        details = attrs.evolve(
            details,
            snapshot_content=details.snapshot_content or nested.snapshot_content,
            snapshot_download_url=details.snapshot_download_url or nested.download_url,
        )
    return details


# --------------------------------------------------------------------------- results


def _cell_output(raw: SnapshotOutput, cell_id: str | None, cell_index: int | None) -> CellOutput:
    text = "".join(raw.text) if isinstance(raw.text, list) else raw.text
    metadata = dict(raw.metadata)
    if raw.execution_count is not None:
        metadata.setdefault("execution_count", raw.execution_count)
    return CellOutput(
        output_type=raw.output_type,
        cell_id=cell_id,
        cell_index=cell_index,
        name=raw.name,
        text=text,
        data=dict(raw.data),
        ename=raw.ename,
        evalue=raw.evalue,
        traceback=tuple(raw.traceback),
        metadata=metadata,
    )


def outputs_from_blocks(blocks: Iterable[SnapshotBlock]) -> list[CellOutput]:
    """Outputs of a ``snapshotDelivery=blocks`` snapshot, in block order."""
    outputs: list[CellOutput] = []
    for index, block in enumerate(blocks):
        outputs.extend(_cell_output(output, block.id, index) for output in block.outputs)
    return outputs


@attrs.frozen
class SnapshotResult:
    """What a ``.deepnote`` snapshot document says about a run."""

    outputs: tuple[CellOutput, ...] = ()
    #: ``execution.error`` of the snapshot: ``{name, message, traceback}`` when present.
    error: RunErrorInfo | None = None
    skipped_outputs: int = 0


class SnapshotFormatError(ValueError):
    """The snapshot document is YAML, but not shaped like a ``.deepnote`` snapshot."""


def outputs_from_snapshot(text: str, notebook_id: str | None) -> SnapshotResult:
    """Parse a ``.deepnote`` snapshot (YAML) and return the outputs of ``notebook_id``'s blocks.

    A snapshot covers the whole project; the run's notebook is picked by id (or, when the
    snapshot holds a single notebook, that one). Raises SnapshotYamlError or
    SnapshotFormatError (both ValueError) when the document cannot be read.
    """
    doc = parse_yaml(text)
    if not isinstance(doc, dict):
        raise SnapshotFormatError("the snapshot is not a YAML mapping")
    project = doc.get("project")
    notebooks = project.get("notebooks") if isinstance(project, dict) else None
    if not isinstance(notebooks, list):
        raise SnapshotFormatError("the snapshot has no project.notebooks list")
    chosen = [nb for nb in notebooks if isinstance(nb, dict) and nb.get("id") == notebook_id]
    if not chosen and len(notebooks) == 1 and isinstance(notebooks[0], dict):
        chosen = [notebooks[0]]
    outputs: list[CellOutput] = []
    skipped = 0
    if chosen:
        blocks = chosen[0].get("blocks") or []
        if not isinstance(blocks, list):
            raise SnapshotFormatError("the notebook's blocks are not a list")
        for index, block in enumerate(blocks):
            if not isinstance(block, dict):
                continue
            raw_outputs = block.get("outputs") or []
            if not isinstance(raw_outputs, list):
                skipped += 1
                continue
            block_id = block.get("id") if isinstance(block.get("id"), str) else None
            for raw in raw_outputs:
                parsed = _snapshot_output(raw)
                if parsed is None:
                    skipped += 1
                    continue
                outputs.append(_cell_output(parsed, block_id, index))
    return SnapshotResult(
        outputs=tuple(outputs),
        error=_execution_error(doc.get("execution")),
        skipped_outputs=skipped,
    )


def _snapshot_output(raw: object) -> SnapshotOutput | None:
    """One output of a snapshot document, or None when it cannot be read."""
    if isinstance(raw, dict):
        parsed = read_fast(raw, SnapshotOutput)
        if parsed is not None:
            return parsed
    import cattrs  # loaded by converter() below; kept out of this module's import

    try:
        return converter().structure(raw, SnapshotOutput)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError):
        return None


def _execution_error(execution: object) -> RunErrorInfo | None:
    if not isinstance(execution, dict):
        return None
    error = execution.get("error")
    if not isinstance(error, dict):
        return None
    name = error.get("name") if isinstance(error.get("name"), str) else None
    message = error.get("message") if isinstance(error.get("message"), str) else None
    traceback = error.get("traceback")
    lines = (
        tuple(line for line in traceback if isinstance(line, str))
        if isinstance(traceback, list)
        else ()
    )
    if not (name or message):
        return None
    return RunErrorInfo(message=message or name or "", name=name, traceback=lines)


def _error_text(error: object) -> str | None:
    """The run's ``error`` field: a string, ``{message}``, or anything else as JSON-ish text."""
    if error is None:
        return None
    if isinstance(error, str):
        return error.strip() or None
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message.strip():
            return message.strip()
    return trim(repr(error), 300)


def run_error_info(
    details: RunDetails,
    state: RunState,
    outputs: Sequence[CellOutput] = (),
    snapshot_error: RunErrorInfo | None = None,
) -> RunErrorInfo | None:
    """Why a FAILED run failed: the run's ``error`` (often null), else the first error output
    of the snapshot, else the snapshot's ``execution.error``. ``internal_error`` is always
    reported, as a platform failure."""
    if state is not RunState.FAILED:
        return None
    platform = details.status.lower() == "internal_error"
    message = _error_text(details.error)
    first = next((output for output in outputs if output.output_type == "error"), None)
    name: str | None = None
    traceback: tuple[str, ...] = ()
    cell_id: str | None = None
    cell_index: int | None = None
    if first is not None:
        name, traceback = first.ename, first.traceback
        cell_id, cell_index = first.cell_id, first.cell_index
        detail = ": ".join(part for part in (first.ename, first.evalue) if part)
        message = message or detail or None
    elif snapshot_error is not None:
        name, traceback = snapshot_error.name, snapshot_error.traceback
        detail = ": ".join(part for part in (snapshot_error.name, snapshot_error.message) if part)
        message = message or detail or None
    if message is None and platform:
        message = (
            "Deepnote reported an internal error (a platform failure, not the notebook's code)"
        )
    if message is None:
        return None
    return RunErrorInfo(
        message=message,
        name=name,
        traceback=traceback,
        cell_id=cell_id,
        cell_index=cell_index,
        platform=platform,
    )


def notebook_web_url(
    web_base: str, workspace: str | None, project_id: str | None, notebook_id: str | None
) -> str | None:
    """``{web_base}/workspace/{w}/project/{p}/notebook/{n}``, only when every id is known and
    usable in a path (otherwise None: no guessed URLs)."""
    if not (workspace and project_id and notebook_id):
        return None
    try:
        parts = (
            path_segment(workspace, what="workspace"),
            path_segment(project_id, what="project id"),
            path_segment(notebook_id, what="notebook id"),
        )
    except ConfigurationError:
        return None
    return f"{web_base}/workspace/{parts[0]}/project/{parts[1]}/notebook/{parts[2]}"


def created_since(created_at: datetime | None, threshold: datetime) -> bool:
    """True when a run was created at or after ``threshold`` (runs without a time never are)."""
    return created_at is not None and created_at >= threshold


# --------------------------------------------------------------------------- YAML subset

# Deepnote snapshots are YAML (``.snapshot.deepnote``) and notebookops depends on no YAML
# library, so this reads the block-style subset that YAML emitters produce: mappings,
# sequences, plain/quoted/literal/folded scalars, flow collections and comments. Anchors,
# aliases, tags and complex keys are refused with SnapshotYamlError rather than misread.

_MAX_DEPTH: Final = 100
_NULLS: Final = frozenset({"", "~", "null", "Null", "NULL"})
_TRUE: Final = frozenset({"true", "True", "TRUE"})
_FALSE: Final = frozenset({"false", "False", "FALSE"})
_INT = re.compile(r"[-+]?[0-9]+\Z")
_OCT = re.compile(r"0o[0-7]+\Z")
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(nan|NaN|NAN)\Z")
_ESCAPES: Final = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES: Final = {"x": 2, "u": 4, "U": 8}


class SnapshotYamlError(ValueError):
    """The snapshot text is not YAML this reader understands."""

    def __init__(self, message: str, line: int | None = None) -> None:
        where = f" (line {line + 1})" if line is not None else ""
        super().__init__(f"{message}{where}")


def parse_yaml(text: str) -> Any:
    """Parse one YAML document (the subset described above) into JSON-like Python values."""
    if not isinstance(text, str):
        raise SnapshotYamlError("expected YAML text")
    try:
        return _YamlReader(text).document()
    except RecursionError:
        raise SnapshotYamlError("the document is nested too deeply") from None


def resolve_plain(text: str) -> Any:
    """Type a plain scalar as YAML 1.2's core schema does."""
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _INT.match(text):
        return int(text)
    if _OCT.match(text):
        return int(text[2:], 8)
    if _HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _NAN.match(text):
        return float("nan")
    return text


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_doc_marker(line: str) -> bool:
    return line[:3] in ("---", "...") and (len(line) == 3 or line[3] in " \t")


def _is_entry(content: str) -> bool:
    return content == "-" or content.startswith(("- ", "-\t"))


def _strip_comment(text: str) -> str:
    """Cut a ``#`` comment off a plain (unquoted) fragment."""
    for index, char in enumerate(text):
        if char == "#" and (index == 0 or text[index - 1] in " \t"):
            return text[:index]
    return text


def _rest_is_empty(rest: str) -> bool:
    stripped = rest.strip(" \t")
    return not stripped or (stripped.startswith("#") and rest[:1] in (" ", "\t"))


class _YamlReader:
    def __init__(self, text: str) -> None:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if text.startswith("\ufeff"):
            text = text[1:]
        # YAML line breaks are \n and \r only (str.splitlines would also split on \x85...).
        self.lines = text.split("\n")
        if len(self.lines) > 1 and self.lines[-1] == "":
            # The final line break ends the last line; it does not start an empty one.
            self.lines.pop()
        self.pos = 0
        self.depth = 0

    # -- helpers

    def _content_index(self) -> int | None:
        """Skip blank and comment lines; the index of the next content line, or None."""
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            stripped = line.lstrip(" ")
            if not stripped.strip(" \t") or stripped.startswith("#"):
                self.pos += 1
                continue
            if stripped.startswith("\t"):
                raise SnapshotYamlError("tabs cannot indent YAML", self.pos)
            return self.pos
        return None

    # -- structure

    def document(self) -> Any:
        index = self._content_index()
        while index is not None and self.lines[index].startswith("%"):
            self.pos += 1
            index = self._content_index()
        if (
            index is not None
            and self.lines[index].startswith("---")
            and _is_doc_marker(self.lines[index])
        ):
            rest = self.lines[index][3:].strip(" \t")
            if rest and not rest.startswith("#"):
                self.lines[index] = rest
            else:
                self.pos = index + 1
        value = self.block_node(0, -1)
        index = self._content_index()
        if index is not None:
            line = self.lines[index]
            if line.startswith("...") and _is_doc_marker(line):
                self.pos = index + 1
                if self._content_index() is None:
                    return value
            elif line.startswith("---") and _is_doc_marker(line):
                raise SnapshotYamlError("expected one YAML document, found several", index)
            raise SnapshotYamlError("unexpected content after the document", index)
        return value

    def block_node(self, min_indent: int, parent_indent: int) -> Any:
        index = self._content_index()
        if index is None:
            return None
        line = self.lines[index]
        indent = _indent_of(line)
        if indent < min_indent or (indent == 0 and _is_doc_marker(line)):
            return None
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise SnapshotYamlError("the document is nested too deeply", index)
        try:
            content = line[indent:]
            if _is_entry(content):
                return self.sequence(indent)
            if self.split_key(content, index) is not None:
                return self.mapping(indent)
            return self.scalar(index, indent, content, parent_indent)
        finally:
            self.depth -= 1

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while True:
            index = self._content_index()
            if index is None:
                break
            line = self.lines[index]
            line_indent = _indent_of(line)
            if line_indent < indent or (line_indent == 0 and _is_doc_marker(line)):
                break
            if line_indent > indent:
                raise SnapshotYamlError("bad indentation in a sequence", index)
            content = line[line_indent:]
            if not _is_entry(content):
                break
            rest = content[1:]
            stripped = rest.lstrip(" \t")
            if not stripped or stripped.startswith("#"):
                self.pos = index + 1
                items.append(self.block_node(indent + 1, indent))
                continue
            # Re-read the entry's content as a node of its own at its column, so that
            # "- key: value" continues with the following "  key: value" lines.
            column = indent + 1 + len(rest) - len(stripped)
            self.lines[index] = " " * column + stripped
            self.pos = index
            items.append(self.block_node(column, indent))
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while True:
            index = self._content_index()
            if index is None:
                break
            line = self.lines[index]
            line_indent = _indent_of(line)
            if line_indent < indent or (line_indent == 0 and _is_doc_marker(line)):
                break
            if line_indent > indent:
                raise SnapshotYamlError("bad indentation in a mapping", index)
            content = line[line_indent:]
            split = self.split_key(content, index)
            if split is None:
                raise SnapshotYamlError("expected 'key: value'", index)
            key, rest = split
            result[key] = self.value_after_key(index, indent, line, rest)
        return result

    def value_after_key(self, index: int, indent: int, line: str, rest: str) -> Any:
        if _rest_is_empty(rest) or not rest.strip(" \t"):
            self.pos = index + 1
            following = self._content_index()
            if following is not None:
                next_line = self.lines[following]
                next_indent = _indent_of(next_line)
                # A sequence may sit at its key's own indentation.
                if (
                    next_indent == indent
                    and _is_entry(next_line[next_indent:])
                    and not (next_indent == 0 and _is_doc_marker(next_line))
                ):
                    return self.sequence(indent)
            return self.block_node(indent + 1, indent)
        stripped = rest.lstrip(" \t")
        column = len(line) - len(stripped)
        return self.scalar(index, column, stripped, indent)

    def split_key(self, content: str, index: int) -> tuple[str, str] | None:
        """``(key, text after the colon)`` when ``content`` starts a mapping entry."""
        first = content[:1]
        if first in ('"', "'"):
            value, end_line, end_col = self.scan_quoted(index, _indent_of(self.lines[index]))
            if end_line != index:
                return None
            after = self.lines[index][end_col:].lstrip(" \t")
            if after.startswith(":") and (len(after) == 1 or after[1] in " \t"):
                return value, after[1:]
            return None
        if first in ("", "#", "[", "{", "|", ">"):
            return None
        if first == "?" and (len(content) == 1 or content[1] in " \t"):
            raise SnapshotYamlError("complex mapping keys are not supported", index)
        for position, char in enumerate(content):
            if char == "#" and position > 0 and content[position - 1] in " \t":
                return None
            if char == ":" and (position + 1 == len(content) or content[position + 1] in " \t"):
                key = content[:position].rstrip(" \t")
                if not key:
                    return None
                if key[0] in "&*!":
                    raise SnapshotYamlError("anchors, aliases and tags are not supported", index)
                return key, content[position + 1 :]
        return None

    # -- scalars

    def scalar(self, index: int, column: int, text: str, parent_indent: int) -> Any:
        first = text[0]
        if first in "|>":
            return self.block_scalar(index, text, parent_indent)
        if first in "\"'":
            value, end_line, end_col = self.scan_quoted(index, column)
            if not _rest_is_empty(self.lines[end_line][end_col:]):
                raise SnapshotYamlError("unexpected text after a quoted string", end_line)
            self.pos = end_line + 1
            return value
        if first in "[{":
            return self.flow(index, column)
        if first in "&*!%@`":
            raise SnapshotYamlError(
                "anchors, aliases, tags and reserved indicators are not supported", index
            )
        return self.plain(index, text, parent_indent)

    def plain(self, index: int, text: str, parent_indent: int) -> Any:
        parts = [_strip_comment(text).strip(" \t")]
        if text.lstrip(" \t") != _strip_comment(text).lstrip(" \t"):
            # A comment ends a plain scalar.
            self.pos = index + 1
            return resolve_plain(parts[0])
        position = index + 1
        breaks = 0
        while position < len(self.lines):
            line = self.lines[position]
            stripped = line.strip(" \t")
            if not stripped:
                breaks += 1
                position += 1
                continue
            line_indent = _indent_of(line)
            if (
                line_indent <= parent_indent
                or (line_indent == 0 and _is_doc_marker(line))
                or line.lstrip(" ").startswith("#")
            ):
                break
            piece = _strip_comment(stripped).strip(" \t")
            if ": " in piece or piece.endswith(":"):
                raise SnapshotYamlError("a mapping key inside a multi-line plain scalar", position)
            parts.append("\n" * breaks if breaks else " ")
            parts.append(piece)
            breaks = 0
            position += 1
            if piece != stripped:
                break
        self.pos = position
        if len(parts) == 1:
            return resolve_plain(parts[0])
        return "".join(parts)

    def scan_quoted(self, index: int, column: int) -> tuple[str, int, int]:
        return _scan_quoted(self.lines, index, column)

    def block_scalar(self, index: int, header: str, parent_indent: int) -> str:
        style = header[0]
        chomp = ""
        increment: int | None = None
        position = 1
        while position < len(header) and header[position] not in " \t":
            char = header[position]
            if char in "+-" and not chomp:
                chomp = char
            elif char in "123456789" and increment is None:
                increment = int(char)
            else:
                raise SnapshotYamlError("bad block scalar header", index)
            position += 1
        if not _rest_is_empty(header[position:]) and header[position:].strip(" \t"):
            raise SnapshotYamlError("unexpected text after a block scalar header", index)
        lines = self.lines
        min_indent = max(parent_indent + 1, 1)
        line_no = index + 1
        if increment is not None:
            content_indent = min_indent + increment - 1
        else:
            probe = line_no
            while probe < len(lines) and not lines[probe].strip(" "):
                probe += 1
            content_indent = _indent_of(lines[probe]) if probe < len(lines) else min_indent
            if content_indent < min_indent:
                content_indent = min_indent
        body: list[str] = []
        while line_no < len(lines):
            line = lines[line_no]
            # Blank lines belong to the scalar whatever their indentation.
            if not line.strip(" ") or _indent_of(line) >= content_indent:
                body.append(line[content_indent:])
            else:
                break
            line_no += 1
        self.pos = line_no
        trailing = 0
        while body and not body[-1].strip(" "):
            body.pop()
            trailing += 1
        text = "\n".join(body) if style == "|" else _fold(body)
        if not body:
            return "\n" * trailing if chomp == "+" else ""
        if chomp == "-":
            return text
        if chomp == "+":
            return text + "\n" + "\n" * trailing
        return text + "\n"

    def flow(self, index: int, column: int) -> Any:
        """A flow collection (``[...]``/``{...}``), possibly over several lines."""
        pieces: list[str] = []
        depth = 0
        quote = ""
        line_no = index
        position = column
        text = self.lines[index]
        while True:
            end: int | None = None
            start = position
            while position < len(text):
                char = text[position]
                if quote == '"':
                    if char == "\\":
                        position += 2
                        continue
                    if char == '"':
                        quote = ""
                elif quote == "'":
                    if char == "'":
                        quote = ""
                elif char in "\"'":
                    quote = char
                elif char == "#" and position > 0 and text[position - 1] in " \t":
                    break
                elif char in "[{":
                    depth += 1
                elif char in "]}":
                    depth -= 1
                    if depth == 0:
                        end = position + 1
                        break
                position += 1
            if end is not None:
                pieces.append(text[start:end])
                if not _rest_is_empty(text[end:]):
                    raise SnapshotYamlError("unexpected text after a flow collection", line_no)
                break
            pieces.append(text[start:position])
            line_no += 1
            if line_no >= len(self.lines):
                raise SnapshotYamlError("unterminated flow collection", index)
            text = self.lines[line_no]
            position = 0
        self.pos = line_no + 1
        parser = _FlowParser(" ".join(pieces), index)
        value = parser.value(0)
        parser.skip_space()
        if parser.position != len(parser.text):
            raise SnapshotYamlError("unexpected text after a flow collection", index)
        return value


def _scan_quoted(lines: list[str], index: int, column: int) -> tuple[str, int, int]:
    """Read a quoted scalar starting at (index, column); returns the value and the line
    and column just after the closing quote. Line breaks fold as YAML says."""
    quote = lines[index][column]
    line_no = index
    text = lines[index]
    position = column + 1
    out: list[str] = []
    segment: list[str] = []
    protected = 0  # characters of `segment` (escapes) that trailing-space trimming keeps
    while True:
        if position >= len(text):
            joined = "".join(segment)
            out.append(joined[:protected] + joined[protected:].rstrip(" \t"))
            line_no += 1
            breaks = 0
            while line_no < len(lines) and not lines[line_no].strip(" \t"):
                breaks += 1
                line_no += 1
            if line_no >= len(lines):
                raise SnapshotYamlError("unterminated quoted string", index)
            text = lines[line_no]
            if _indent_of(text) == 0 and _is_doc_marker(text):
                raise SnapshotYamlError("unterminated quoted string", index)
            out.append("\n" * breaks if breaks else " ")
            position = len(text) - len(text.lstrip(" \t"))
            segment, protected = [], 0
            continue
        char = text[position]
        if quote == "'":
            if char == "'":
                if text[position + 1 : position + 2] == "'":
                    segment.append("'")
                    position += 2
                    protected = len(segment)
                    continue
                break
            segment.append(char)
            position += 1
            continue
        if char == '"':
            break
        if char != "\\":
            segment.append(char)
            position += 1
            continue
        if position + 1 >= len(text):
            # An escaped line break joins the lines without a space.
            out.append("".join(segment))
            segment, protected = [], 0
            line_no += 1
            if line_no >= len(lines):
                raise SnapshotYamlError("unterminated quoted string", index)
            text = lines[line_no]
            position = len(text) - len(text.lstrip(" \t"))
            continue
        escape = text[position + 1]
        if escape in _ESCAPES:
            segment.append(_ESCAPES[escape])
            position += 2
        elif escape in _HEX_ESCAPES:
            width = _HEX_ESCAPES[escape]
            digits = text[position + 2 : position + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise SnapshotYamlError(f"bad \\{escape} escape", line_no)
            code = int(digits, 16)
            position += 2 + width
            # JSON-style surrogate pairs (\ud83d\ude00) are one character.
            if 0xD800 <= code <= 0xDBFF and text[position : position + 2] == "\\u":
                low_digits = text[position + 2 : position + 6]
                if len(low_digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in low_digits):
                    low = int(low_digits, 16)
                    if 0xDC00 <= low <= 0xDFFF:
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        position += 6
            if code > 0x10FFFF:
                raise SnapshotYamlError("escape out of the Unicode range", line_no)
            segment.append(chr(code))
        else:
            raise SnapshotYamlError(f"unknown escape \\{escape}", line_no)
        protected = len(segment)
    out.append("".join(segment))
    return "".join(out), line_no, position + 1


def _fold(lines: list[str]) -> str:
    """Folded block scalar: single breaks between normal lines become spaces."""
    out: list[str] = []
    previous: str | None = None
    empties = 0
    for line in lines:
        if not line:
            empties += 1
            continue
        kind = "more" if line[0] in " \t" else "normal"
        if previous is None:
            out.append("\n" * empties)
        elif previous == "normal" and kind == "normal":
            out.append("\n" * empties if empties else " ")
        else:
            out.append("\n" * (empties + 1))
        out.append(line)
        previous = kind
        empties = 0
    return "".join(out)


class _FlowParser:
    """Recursive descent over one flow collection's text."""

    def __init__(self, text: str, line: int) -> None:
        self.text = text
        self.position = 0
        self.line = line

    def error(self, message: str) -> SnapshotYamlError:
        return SnapshotYamlError(f"{message} in a flow collection", self.line)

    def skip_space(self) -> None:
        while self.position < len(self.text) and self.text[self.position] in " \t\n":
            self.position += 1

    def peek(self) -> str:
        return self.text[self.position] if self.position < len(self.text) else ""

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.error("nesting too deep")
        self.skip_space()
        char = self.peek()
        if char == "[":
            return self.sequence(depth)
        if char == "{":
            return self.mapping(depth)
        if char in ('"', "'"):
            return self.quoted()
        if char in ("&", "*", "!", "|", ">", "%", "@", "`"):
            raise self.error(f"unsupported indicator {char!r}")
        return resolve_plain(self.plain())

    def sequence(self, depth: int) -> list[Any]:
        self.position += 1
        items: list[Any] = []
        while True:
            self.skip_space()
            char = self.peek()
            if char == "]":
                self.position += 1
                return items
            if not char:
                raise self.error("unterminated sequence")
            if char == ",":
                raise self.error("empty entry")
            items.append(self.value(depth + 1))
            self.skip_space()
            char = self.peek()
            if char == ",":
                self.position += 1
            elif char == ":":
                raise self.error("single-pair mappings are not supported")
            elif char != "]":
                raise self.error("expected ',' or ']'")

    def mapping(self, depth: int) -> dict[str, Any]:
        self.position += 1
        result: dict[str, Any] = {}
        while True:
            self.skip_space()
            char = self.peek()
            if char == "}":
                self.position += 1
                return result
            if not char:
                raise self.error("unterminated mapping")
            if char == ",":
                raise self.error("empty entry")
            if char in ('"', "'"):
                key = self.quoted()
            elif char in "[{":
                raise self.error("collection keys are not supported")
            else:
                key = self.plain()
            self.skip_space()
            value: Any = None
            if self.peek() == ":":
                self.position += 1
                self.skip_space()
                if self.peek() not in (",", "}"):
                    value = self.value(depth + 1)
            result[key] = value
            self.skip_space()
            char = self.peek()
            if char == ",":
                self.position += 1
            elif char != "}":
                raise self.error("expected ',' or '}'")

    def quoted(self) -> str:
        value, end_line, end_col = _scan_quoted([self.text], 0, self.position)
        if end_line != 0:  # pragma: no cover - the flow text is a single line
            raise self.error("unterminated string")
        self.position = end_col
        return value

    def plain(self) -> str:
        start = self.position
        text = self.text
        while self.position < len(text):
            char = text[self.position]
            if char in ",[]{}":
                break
            if char == ":" and (
                self.position + 1 == len(text) or text[self.position + 1] in " \t\n,[]{}"
            ):
                break
            self.position += 1
        value = text[start : self.position].strip(" \t\n")
        if not value and self.peek() not in (":",):
            raise self.error("expected a value")
        return value
