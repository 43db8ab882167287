"""Pure request builders, local validation and response decoders for Deepnote (no I/O).

Everything here is a plain function of its arguments, tested without an event loop. Local
validation refuses what Deepnote is known to reject anyway (empty or duplicate block ids,
blocks on a detached run, an unknown timezone), so the mistake is reported before a request is
spent on it, with a message that says how to fix it. Responses are read with :func:`decode`,
the one way JSON becomes a wire class; snapshot documents (YAML) with PyYAML's ``safe_load``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs
import cattrs
from cattrs.v import format_exception

from ..._api_errors import rebuild_error
from ..._redact import redact_url, trim
from ..._validate import count
from ...errors import APIError, ConfigurationError, PermissionDenied, ResponseDecodeError
from ...models import CellOutput, RunErrorInfo, RunState
from ._wire import CONVERTER, Pagination, RunDetails, SnapshotBlock, SnapshotOutput

if TYPE_CHECKING:
    from .client import Response

__all__ = [
    "DEEPNOTE_STATES",
    "MAX_PAGE_SIZE",
    "SNAPSHOT_DELIVERIES",
    "BlockPlacement",
    "DeepnoteRunOptions",
    "Outputs",
    "build_project_body",
    "build_reorder_body",
    "build_run_body",
    "build_schedule_body",
    "check_page_size",
    "decode",
    "next_page_token",
    "outputs_from_blocks",
    "outputs_from_snapshot",
    "read_output",
    "refine_error",
    "run_error_info",
    "with_details",
    "workspace_segment",
]

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


def with_details(message: str | None, data: Any) -> str | None:
    """An error's ``message`` (Deepnote's ``{"message": ...}``, or the older ``{"error": ...}``)
    plus any list of validation details in its body, which says which field was wrong."""
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


def refine_error(error: APIError) -> APIError:
    """Deepnote's own client reads a bare 403 on setting a schedule as "scheduling is not
    enabled for this workspace or plan": say so instead of a generic permission hint. (Removing
    a schedule is not plan-gated, so its 403 keeps the generic words.)"""
    if (
        isinstance(error, PermissionDenied)
        and error.data is None
        and error.method == "POST"
        and error.url.endswith("/schedule")
    ):
        return rebuild_error(
            type(error),
            error,
            f"{error.message} (a bare 403 here usually means scheduling is not enabled for "
            "this workspace or plan)",
        )
    return error


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


def _format(exc: BaseException, type_: Any) -> str:
    if type(exc) is ValueError:  # our own checks (an empty run id) word themselves
        return str(exc)
    return format_exception(exc, type_)


def _describe(exc: Exception) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path="$", format_exception=_format))
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
    and then look for the run it started in the v2 runs list; ``None`` follows
    ``DeepnoteOptions.use_v1``. ``project_id`` is needed by v1 (it is looked up from the
    notebook when absent) and lets the adapter build the notebook's web URL.
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
    advice = ""
    if isinstance(value, int | float):  # (bool was taken above)
        advice = f"; Deepnote takes numbers as strings, e.g. {str(value)!r}"
    raise ConfigurationError(
        f"input {name!r} must be a string, a boolean (checkbox) or a list of strings "
        f"(multi-select, date range), got {type(value).__name__}{advice}"
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
    return count("page_size", page_size, minimum=1, maximum=MAX_PAGE_SIZE)


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


def decode(response: Response, cls: type[T], *, envelope: str | None = None) -> T:
    """The JSON body of ``response`` read as ``cls`` through the Deepnote converter;
    ResponseDecodeError (with the body, trimmed) when it is not JSON or not that shape.

    ``{envelope: {...}}`` and the bare object are both accepted: Deepnote's reference and the
    seed OpenAPI disagree on several endpoints, and Deepnote's own client accepts both.
    """
    data = response.json()
    if envelope is not None and isinstance(data, dict) and isinstance(data.get(envelope), dict):
        data = data[envelope]
    if not isinstance(data, dict):
        raise decode_error(response, f"expected a JSON object, got {type(data).__name__}")
    try:
        return CONVERTER.structure(data, cls)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise decode_error(response, _describe(exc)) from None


# --------------------------------------------------------------------------- outputs


@attrs.frozen
class Outputs:
    """The outputs read from a snapshot, in block order.

    An output that cannot be read is kept as it came, in ``metadata["unreadable"]`` of a
    CellOutput whose ``output_type`` is its own when that is a string, else ``"unknown"``;
    ``unreadable`` counts them (the backend logs a warning). ``error`` is the snapshot
    document's ``execution.error``, when it has one.
    """

    outputs: tuple[CellOutput, ...] = ()
    unreadable: int = 0
    error: RunErrorInfo | None = None


def read_output(raw: object) -> SnapshotOutput | None:
    """One Jupyter-style output, or None when it cannot be read."""
    try:
        return CONVERTER.structure(raw, SnapshotOutput)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _cell_output(raw: object, cell_id: str | None, cell_index: int | None) -> CellOutput:
    output = read_output(raw)
    if output is None:
        kind = raw.get("output_type") if isinstance(raw, dict) else None
        return CellOutput(
            output_type=kind if isinstance(kind, str) else "unknown",
            cell_id=cell_id,
            cell_index=cell_index,
            metadata={"unreadable": raw},
        )
    text = "".join(output.text) if isinstance(output.text, list) else output.text
    metadata = dict(output.metadata)
    if output.execution_count is not None:
        metadata.setdefault("execution_count", output.execution_count)
    return CellOutput(
        output_type=output.output_type,
        cell_id=cell_id,
        cell_index=cell_index,
        name=output.name,
        text=text,
        data=dict(output.data),
        ename=output.ename,
        evalue=output.evalue,
        traceback=tuple(output.traceback),
        metadata=metadata,
    )


def _collect(blocks: Iterable[tuple[str | None, object]]) -> tuple[list[CellOutput], int]:
    outputs: list[CellOutput] = []
    unreadable = 0
    for index, (block_id, raw_outputs) in enumerate(blocks):
        if not isinstance(raw_outputs, list):
            raw_outputs = [raw_outputs]  # kept, as one output nobody can read
        for raw in raw_outputs:
            output = _cell_output(raw, block_id, index)
            unreadable += output.metadata.get("unreadable") is raw
            outputs.append(output)
    return outputs, unreadable


def outputs_from_blocks(blocks: Iterable[SnapshotBlock]) -> Outputs:
    """Outputs of a ``snapshotDelivery=blocks`` snapshot, in block order."""
    outputs, unreadable = _collect((block.id, block.outputs) for block in blocks)
    return Outputs(tuple(outputs), unreadable)


def outputs_from_snapshot(text: str, notebook_id: str | None, *, url: str = "") -> Outputs:
    """Read a ``.deepnote`` snapshot document (YAML) and return the outputs of
    ``notebook_id``'s blocks, with the document's ``execution.error``.

    A snapshot covers the whole project; the run's notebook is picked by id (or, when the
    snapshot holds a single notebook, that one). A document that is not YAML, or not shaped
    like a snapshot, raises ResponseDecodeError (``url`` says where it came from).
    """
    import yaml  # only finished runs read documents; importing the adapter should not load it

    def malformed(detail: str) -> ResponseDecodeError:
        where = redact_url(url) if url else "inline"
        return ResponseDecodeError(
            f"{VENDOR} snapshot ({where}) cannot be read: {trim(detail, 300)}",
            vendor=VENDOR,
            url=redact_url(url),
            body=trim(text, 1000),
        )

    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise malformed(f"not YAML ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise malformed("the document is not a mapping")
    project = doc.get("project")
    notebooks = project.get("notebooks") if isinstance(project, dict) else None
    if not isinstance(notebooks, list):
        raise malformed("it has no project.notebooks list")
    chosen = [nb for nb in notebooks if isinstance(nb, dict) and nb.get("id") == notebook_id]
    if not chosen and len(notebooks) == 1 and isinstance(notebooks[0], dict):
        chosen = [notebooks[0]]
    blocks = (chosen[0].get("blocks") or []) if chosen else []
    if not isinstance(blocks, list):
        raise malformed("the notebook's blocks are not a list")
    outputs, unreadable = _collect(
        (
            block.get("id") if isinstance(block.get("id"), str) else None,
            block.get("outputs") or [],
        )
        for block in blocks
        if isinstance(block, dict)
    )
    return Outputs(tuple(outputs), unreadable, _execution_error(doc.get("execution")))


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


# --------------------------------------------------------------------------- web links

#: A workspace segment of Deepnote's links: ``{slug}-{id}`` or the bare id, the id a UUID.
_WORKSPACE_SEGMENT = re.compile(
    r"(?:[A-Za-z0-9][A-Za-z0-9-]*-)?"
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)


def workspace_segment(workspace: str) -> str:
    """Check a workspace as Deepnote's links name it: ``{slug}-{id}`` (what the address bar
    shows, e.g. ``acme-0b3b2c53-a7ad-441b-80f8-bf8350752305``) or the bare workspace id. A
    slug alone does not route (Deepnote finds the workspace by the id at its end)."""
    if not isinstance(workspace, str) or not _WORKSPACE_SEGMENT.match(workspace.strip()):
        raise ConfigurationError(
            f"workspace must be the workspace part of a Deepnote link, '{{slug}}-{{id}}' or "
            f"the workspace id (a UUID, e.g. 'acme-0b3b2c53-a7ad-441b-80f8-bf8350752305' "
            f"from https://deepnote.com/workspace/acme-0b3b2c53-...), got {workspace!r}; "
            "`GET /v2/me` (DeepnoteClient.me()) gives both parts"
        )
    return workspace.strip()
