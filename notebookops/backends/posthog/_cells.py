"""PostHog notebooks' cells and what running them produces (pure: no I/O, no event loop).

Both notebook formats (rich-text ``ph-python`` / ``ph-hogql-sql`` nodes, and markdown-format
``<PythonV2>`` / ``<SQLV2>`` tags), the kernel inputs cell, kernel and server-run results as
:class:`~notebookops.CellOutput`, the ``pythonExecution`` write-back, and the server-run
status mapping.
"""

from __future__ import annotations

import contextlib
import copy
import html
import json
import keyword
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from ..._redact import trim
from ...backend import StateTable
from ...errors import ConfigurationError, ResponseDecodeError
from ...models import CellOutput, RunErrorInfo, RunProgress, RunState
from ._wire import (
    CellRunEnvelope,
    CellRunStatus,
    ExecutionResult,
    HogQLResult,
    NotebookRunStatus,
)

__all__ = [
    "CELL_KINDS",
    "LOOKED_FOR",
    "MARKDOWN_TAGS",
    "SERVER_RUN_STATES",
    "Cell",
    "apply_executions",
    "cell_run_outputs",
    "component_props",
    "envelope_outputs",
    "execution_error",
    "execution_outputs",
    "extract_cells",
    "hogql_output",
    "inputs_code",
    "markdown_of",
    "python_execution_attrs",
    "select_cells",
    "server_run_error",
    "server_run_progress",
    "strip_ansi",
]

VENDOR: Final = "posthog"


def inputs_code(inputs: Mapping[str, Any]) -> str | None:
    """A Python cell assigning ``inputs`` as kernel variables (None when there are none).

    Values travel as JSON (decoded in the kernel), so only JSON-serialisable values are
    accepted and no input can inject code; names must be Python identifiers.
    """
    if not inputs:
        return None
    lines = ["import json as _notebookops_json"]
    for name, value in inputs.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigurationError(
                f"input name {name!r} is not a valid Python variable name (kernel inputs are "
                "assigned as variables)"
            )
        if name.startswith("_notebookops"):
            raise ConfigurationError(f"input name {name!r} is reserved by notebookops")
        try:
            encoded = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"input {name!r} cannot be sent to the kernel: it is not JSON-serialisable ({exc})"
            ) from None
        lines.append(f"{name} = _notebookops_json.loads({encoded!r})")
    lines.append("del _notebookops_json")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- cells

_ANSI = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")

#: Cell kinds the adapter can run, and the ProseMirror node types they come from.
CELL_KINDS: Final[Mapping[str, str]] = {"python": "ph-python", "hogql": "ph-hogql-sql"}
_NODE_KINDS: Final = {node: kind for kind, node in CELL_KINDS.items()}
#: The markdown format's cell tags (inside one ``ph-markdown-notebook`` node).
MARKDOWN_NODE: Final = "ph-markdown-notebook"
MARKDOWN_TAGS: Final[Mapping[str, str]] = {"PythonV2": "python", "SQLV2": "hogql"}
#: How a "no runnable cell" error names what was looked for.
LOOKED_FOR: Final = (
    "rich-text nodes ph-python / ph-hogql-sql, or <PythonV2> / <SQLV2> tags in a "
    "ph-markdown-notebook node"
)


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


@attrs.frozen
class Cell:
    """A runnable cell of a notebook.

    ``index`` is its position among the notebook's code cells in document order (stable
    whichever cells are selected); ``path`` is where a rich-text node sits in the content
    tree (empty for a markdown-format cell, which lives inside the markdown text).
    """

    index: int
    kind: str
    code: str
    node_id: str | None = None
    title: str | None = None
    path: tuple[int, ...] = ()
    markdown: bool = False

    @property
    def label(self) -> str:
        """How the cell is named in messages."""
        return self.node_id or f"#{self.index}"


def _walk(node: Any, path: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], Mapping[str, Any]]]:
    if not isinstance(node, Mapping):
        return
    yield path, node
    children = node.get("content")
    if isinstance(children, list):
        for position, child in enumerate(children):
            yield from _walk(child, (*path, position))


def markdown_of(content: Mapping[str, Any] | None) -> str | None:
    """The text of a markdown-format notebook (one ``ph-markdown-notebook`` node), else None."""
    nodes = content.get("content") if isinstance(content, Mapping) else None
    if not isinstance(nodes, list) or len(nodes) != 1 or not isinstance(nodes[0], Mapping):
        return None
    node = nodes[0]
    node_attrs = node.get("attrs")
    text = node_attrs.get("markdown") if isinstance(node_attrs, Mapping) else None
    return text if node.get("type") == MARKDOWN_NODE and isinstance(text, str) else None


_TAG_START = re.compile(r"<([A-Z][A-Za-z0-9]*)(?=[\s/>])")
_PROP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_RAW_VALUE = re.compile(r"[^\s/>]+")


def _component_blocks(markdown: str) -> Iterator[tuple[str, str]]:
    """``(tag, source)`` of each JSX-like component block: it starts a line with ``<Tag`` and
    ends at ``/>`` or ``</Tag>`` before the next blank line; fenced code is skipped."""
    lines = markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    position = 0
    while position < len(lines):
        line = lines[position].strip()
        if line.startswith("```"):
            position += 1
            while position < len(lines) and not lines[position].strip().startswith("```"):
                position += 1
            position += 1
            continue
        start = _TAG_START.match(line)
        if start is None:
            position += 1
            continue
        tag = start.group(1)
        end = position
        while end < len(lines) and (end == position or lines[end].strip()):
            source = "\n".join(lines[position : end + 1]).strip()
            if source.endswith("/>") or f"</{tag}>" in source:
                yield tag, source
                break
            end += 1
        position = end + 1


def _prop_value(source: str, index: int) -> tuple[Any, int]:
    """One prop value at ``index``: a quoted string, a ``{...}`` JSON expression or a bare
    word; returns the value and the index after it."""
    first = source[index : index + 1]
    if first in ('"', "'"):
        end = index + 1
        while end < len(source) and source[end] != first:
            end += 2 if source[end] == "\\" else 1
        text = source[index : end + 1]
        if first == '"':
            with contextlib.suppress(ValueError):
                return html.unescape(json.loads(text)), end + 1
        return html.unescape(text[1:-1]), end + 1
    if first == "{":
        depth, end, quote = 0, index, ""
        while end < len(source):
            char = source[end]
            if quote:
                if char == "\\":
                    end += 1
                elif char == quote:
                    quote = ""
            elif char in "\"'":
                quote = char
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    break
            end += 1
        inner = source[index + 1 : end].strip()
        try:
            return json.loads(inner), end + 1
        except ValueError:
            return inner, end + 1
    match = _RAW_VALUE.match(source, index)
    word = match.group(0) if match else ""
    return word, index + max(len(word), 1)


def component_props(source: str) -> dict[str, Any]:
    """The props of one component block (``<PythonV2 nodeId="a" code="x = 1" />``)."""
    start = _TAG_START.match(source)
    if start is None:
        return {}
    body = source[start.end() :]
    props: dict[str, Any] = {}
    index = 0
    while index < len(body):
        while index < len(body) and body[index].isspace():
            index += 1
        name = _PROP_NAME.match(body, index)
        if name is None:
            break
        index = name.end()
        while index < len(body) and body[index].isspace():
            index += 1
        if body[index : index + 1] != "=":
            props[name.group(0)] = True
            continue
        index += 1
        while index < len(body) and body[index].isspace():
            index += 1
        props[name.group(0)], index = _prop_value(body, index)
    return props


def _markdown_cells(markdown: str) -> list[Cell]:
    cells: list[Cell] = []
    for tag, source in _component_blocks(markdown):
        kind = MARKDOWN_TAGS.get(tag)
        if kind is None:
            continue
        props = component_props(source)
        code = props.get("code", "")
        node_id = props.get("nodeId")
        title = props.get("title")
        if not isinstance(code, str) or not isinstance(node_id, str) or not node_id:
            continue  # PostHog skips a cell without a nodeId too
        cells.append(
            Cell(
                index=len(cells),
                kind=kind,
                code=code,
                node_id=node_id,
                title=title if isinstance(title, str) and title else None,
                markdown=True,
            )
        )
    return cells


def extract_cells(content: Mapping[str, Any] | None) -> list[Cell]:
    """Every Python and HogQL cell of a notebook, in document order, in either format.

    A markdown-format notebook (one ``ph-markdown-notebook`` node, what newer PostHog stores
    for every new notebook) has ``<PythonV2 nodeId=... code=... />`` and ``<SQLV2 ... />``
    tags; an older rich-text notebook has ``ph-python`` and ``ph-hogql-sql`` nodes, read
    depth-first. A node without string code is not a cell (empty code is: it runs as a
    no-op, like in the UI).
    """
    cells: list[Cell] = []
    if content is None:
        return cells
    if not isinstance(content, Mapping):
        raise ResponseDecodeError(
            "posthog sent notebook content that is not a ProseMirror document",
            vendor=VENDOR,
            body=trim(repr(content), 500),
        )
    markdown = markdown_of(content)
    if markdown is not None:
        return _markdown_cells(markdown)
    for path, node in _walk(content, ()):
        kind = _NODE_KINDS.get(str(node.get("type")))
        if kind is None:
            continue
        node_attrs = node.get("attrs")
        node_attrs = node_attrs if isinstance(node_attrs, Mapping) else {}
        code = node_attrs.get("code", "")
        if not isinstance(code, str):
            continue
        node_id = node_attrs.get("nodeId")
        title = node_attrs.get("title")
        cells.append(
            Cell(
                index=len(cells),
                kind=kind,
                code=code,
                node_id=node_id if isinstance(node_id, str) and node_id else None,
                title=title if isinstance(title, str) and title else None,
                path=path,
            )
        )
    return cells


def select_cells(
    cells: Sequence[Cell], kinds: Iterable[str], blocks: Sequence[str] | None = None
) -> list[Cell]:
    """The cells of ``kinds``, optionally only those whose ``nodeId`` is in ``blocks``
    (kept in document order). Unknown block ids are refused, naming the known ones."""
    wanted = set(kinds)
    chosen = [cell for cell in cells if cell.kind in wanted]
    if blocks is None:
        return chosen
    known = {cell.node_id for cell in chosen if cell.node_id}
    unknown = [block for block in blocks if block not in known]
    if unknown:
        raise ConfigurationError(
            f"no {'/'.join(sorted(wanted))} cell with nodeId {', '.join(map(repr, unknown))} "
            f"in this notebook; known: {', '.join(sorted(known)) or 'none'}"
        )
    selected = set(blocks)
    return [cell for cell in chosen if cell.node_id in selected]


# --------------------------------------------------------------------------- outputs


def _last_line(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        stripped = strip_ansi(line).strip()
        if stripped:
            return stripped.splitlines()[-1].strip()
    return ""


def _evalue(error_name: str | None, traceback: Sequence[str]) -> str:
    last = _last_line(traceback)
    if error_name and last.startswith(f"{error_name}:"):
        return last[len(error_name) + 1 :].strip()
    if error_name and last == error_name:
        return ""
    return last


def execution_outputs(
    result: ExecutionResult,
    cell: Cell,
    *,
    streamed: Iterable[str] = (),
) -> list[CellOutput]:
    """A kernel result as Jupyter-shaped outputs. Streams named in ``streamed`` were already
    delivered chunk by chunk, so the result's copy of them is not repeated."""
    outputs: list[CellOutput] = []
    already = set(streamed)
    base: dict[str, Any] = {"cell_id": cell.node_id, "cell_index": cell.index}
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if text and name not in already:
            outputs.append(CellOutput(output_type="stream", name=name, text=text, **base))
    if result.result:
        outputs.append(
            CellOutput(
                output_type="execute_result",
                data=dict(result.result),
                metadata={"execution_count": result.execution_count},
                **base,
            )
        )
    for item in result.media:
        outputs.append(
            CellOutput(output_type="display_data", data={item.mime_type: item.data}, **base)
        )
    if result.variables:
        outputs.append(
            CellOutput(
                output_type="display_data",
                data={
                    "application/vnd.posthog.variables+json": {
                        name: attrs.asdict(info) for name, info in result.variables.items()
                    }
                },
                metadata={"posthog": "variables"},
                **base,
            )
        )
    if result.status != "ok":
        if result.status == "error":
            ename = result.error_name or "Error"
            evalue = _evalue(result.error_name, result.traceback)
        else:
            ename = "CellTimeout" if result.status == "timeout" else f"Cell{result.status.title()}"
            evalue = f"the kernel reported status {result.status!r}"
        outputs.append(
            CellOutput(
                output_type="error",
                ename=ename,
                evalue=evalue,
                traceback=tuple(result.traceback),
                **base,
            )
        )
    return outputs


def execution_error(
    result: ExecutionResult, cell: Cell, *, timeout: float | None = None
) -> RunErrorInfo | None:
    """Why a cell failed (None for status ``ok``). The message has ANSI colour stripped; the
    traceback is kept raw, as the kernel sent it."""
    if result.status == "ok":
        return None
    if result.status == "error":
        evalue = _evalue(result.error_name, result.traceback)
        name = result.error_name or "Error"
        summary = f"{name}: {evalue}" if evalue else name
        message = f"cell {cell.label} raised {summary}"
    elif result.status == "timeout":
        name = "timeout"
        limit = f" within {timeout:g}s" if timeout is not None else ""
        message = f"cell {cell.label} timed out: the kernel sent nothing{limit}"
    else:
        name = result.status
        message = f"cell {cell.label} ended with kernel status {result.status!r}"
    return RunErrorInfo(
        message=strip_ansi(message),
        name=name,
        traceback=tuple(result.traceback),
        cell_id=cell.node_id,
        cell_index=cell.index,
    )


def _table_text(columns: Sequence[Any], rows: Sequence[Sequence[Any]], limit: int = 20) -> str:
    header = [str(column) for column in columns]
    body = [[str(value) for value in row] for row in rows[:limit]]
    widths = [len(h) for h in header]
    for row in body:
        for position, value in enumerate(row):
            if position < len(widths):
                widths[position] = max(widths[position], len(value))
            else:
                widths.append(len(value))
    lines = []
    if header:
        lines.append("  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip())
    for row in body:
        lines.append("  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip())
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows")
    return "\n".join(lines)


def hogql_output(result: HogQLResult, cell: Cell) -> CellOutput:
    """A HogQL result as an ``execute_result`` (JSON and a plain-text table)."""
    return CellOutput(
        output_type="execute_result",
        cell_id=cell.node_id,
        cell_index=cell.index,
        data={
            "application/json": result.raw
            or {"columns": result.columns, "results": result.results},
            "text/plain": _table_text(result.columns, result.results),
        },
        metadata={"posthog": "hogql"},
    )


def cell_run_outputs(
    status: CellRunStatus, *, cell_id: str | None, cell_index: int
) -> list[CellOutput]:
    """One server-side cell run as outputs. A failed cell's ``result`` is null: its reason is
    in ``error``."""
    if status.result is not None:
        return envelope_outputs(status.result, cell_id=cell_id, cell_index=cell_index)
    if status.error is None:
        return []
    text = status.error if isinstance(status.error, str) else json.dumps(status.error)
    lines = tuple(text.splitlines())
    return [
        CellOutput(
            output_type="error",
            ename="CellError",
            evalue=_last_line(lines),
            traceback=lines,
            cell_id=cell_id,
            cell_index=cell_index,
        )
    ]


def envelope_outputs(
    envelope: CellRunEnvelope, *, cell_id: str | None, cell_index: int
) -> list[CellOutput]:
    """A server-side cell run's result envelope as outputs."""
    base: dict[str, Any] = {"cell_id": cell_id, "cell_index": cell_index}
    outputs: list[CellOutput] = []
    for name, text in (("stdout", envelope.stdout), ("stderr", envelope.stderr)):
        if text:
            outputs.append(CellOutput(output_type="stream", name=name, text=text, **base))
    for item in envelope.media or ():
        outputs.append(
            CellOutput(output_type="display_data", data={item.mime_type: item.data}, **base)
        )
    if envelope.columns:
        rows = envelope.first_page or []
        outputs.append(
            CellOutput(
                output_type="execute_result",
                data={
                    "application/json": {
                        "columns": envelope.columns,
                        "types": envelope.types,
                        "rows": rows,
                        "row_count": envelope.row_count,
                        "has_more": envelope.has_more,
                    },
                    "text/plain": _table_text(
                        envelope.columns, [r for r in rows if isinstance(r, list | tuple)]
                    ),
                },
                **base,
            )
        )
    if envelope.status == "error" or envelope.error:
        text = envelope.error if isinstance(envelope.error, str) else json.dumps(envelope.error)
        lines = tuple(text.splitlines()) if envelope.error else ()
        outputs.append(
            CellOutput(
                output_type="error",
                ename="CellError",
                evalue=_last_line(lines),
                traceback=lines,
                **base,
            )
        )
    return outputs


# --------------------------------------------------------------------------- write back


def python_execution_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A kernel result in the front end's ``pythonExecution`` shape (camelCase)."""
    variables = raw.get("variables")
    variable_list = []
    if isinstance(variables, Mapping):
        for name, info in variables.items():
            entry = {"name": name}
            if isinstance(info, Mapping):
                entry.update({k: v for k, v in info.items() if v is not None})
            variable_list.append(entry)
    media = raw.get("media")
    return {
        "status": raw.get("status"),
        "stdout": raw.get("stdout") or "",
        "stderr": raw.get("stderr") or "",
        "result": raw.get("result"),
        "executionCount": raw.get("execution_count"),
        "errorName": raw.get("error_name"),
        "traceback": list(raw.get("traceback") or []),
        "variables": variable_list,
        "media": [
            {"mimeType": item.get("mime_type"), "data": item.get("data")}
            for item in (media if isinstance(media, list) else [])
            if isinstance(item, Mapping)
        ],
        "startedAt": raw.get("started_at"),
        "completedAt": raw.get("completed_at"),
    }


def apply_executions(
    content: Mapping[str, Any] | None, executions: Mapping[Cell, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """A copy of ``content`` with each executed Python cell's ``attrs.pythonExecution`` set.

    Cells are found by ``nodeId``, or (without one) by position, and only while their code is
    still the code that ran: an output is never attached to code someone has since changed.
    Returns None when no cell matched (nothing to write).
    """
    if content is None or not executions:
        return None
    updated = copy.deepcopy(dict(content))
    current = {
        (cell.node_id or ("index", cell.index)): cell
        for cell in extract_cells(updated)
        if not cell.markdown  # outputs live in rich-text nodes' attrs only
    }
    changed = False
    for ran, raw in executions.items():
        if ran.kind != "python":
            continue
        target = current.get(ran.node_id or ("index", ran.index))
        if target is None or target.code != ran.code:
            continue
        node: Any = updated
        for position in target.path:
            node = node["content"][position]
        node_attrs = node.setdefault("attrs", {})
        node_attrs["pythonExecution"] = python_execution_attrs(raw)
        changed = True
    return updated if changed else None


# --------------------------------------------------------------------------- server runs

#: ``GET runs/{id}/`` statuses (contracts §10). Anything else is UNKNOWN, not terminal.
SERVER_RUN_STATES: Final = StateTable(
    VENDOR,
    {
        "running": RunState.RUNNING,
        "done": RunState.SUCCEEDED,
        "failed": RunState.FAILED,
        "interrupted": RunState.CANCELLED,
    },
)

_DONE_CELL_STATUSES: Final = frozenset({"done", "ok", "succeeded", "success", "completed"})


def server_run_progress(status: NotebookRunStatus) -> RunProgress:
    """How far a server-side run has got."""
    total = status.cell_count if status.cell_count is not None else len(status.cells) or None
    completed = sum(
        1 for cell in status.cells if (cell.status or "").lower() in _DONE_CELL_STATUSES
    )
    if not status.cells and status.current_index is not None:
        completed = status.current_index
    return RunProgress(completed=completed, total=total, current=status.current_node_id)


def server_run_error(status: NotebookRunStatus) -> RunErrorInfo | None:
    """Why a server-side run failed (None unless it did)."""
    if SERVER_RUN_STATES(status.status) is not RunState.FAILED:
        return None
    failed_index: int | None = None
    cell_error: Any = None
    for position, cell in enumerate(status.cells):
        if status.failed_node_id is not None and cell.node_id == status.failed_node_id:
            failed_index = position
            cell_error = cell.error
            break
    raw = status.error or cell_error
    text = raw if isinstance(raw, str) else (json.dumps(raw) if raw is not None else "")
    lines = tuple(text.splitlines())
    where = f"cell {status.failed_node_id}" if status.failed_node_id else "the notebook"
    summary = _last_line(lines) or "no reason given by PostHog"
    return RunErrorInfo(
        message=f"{where} failed: {summary}",
        traceback=lines if len(lines) > 1 else (),
        cell_id=status.failed_node_id,
        cell_index=failed_index,
    )
