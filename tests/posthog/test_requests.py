"""Pure PostHog helpers: cells, ANSI, inputs, outputs, write-back, options, configuration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from notebookops.backends.posthog import (
    ExecutionResult,
    MediaItem,
    PostHogBackend,
    PostHogRunOptions,
    VariableInfo,
)
from notebookops.backends.posthog._cells import (
    SERVER_RUN_STATES,
    Cell,
    apply_executions,
    envelope_outputs,
    execution_error,
    execution_outputs,
    extract_cells,
    hogql_output,
    inputs_code,
    python_execution_attrs,
    select_cells,
    server_run_error,
    server_run_progress,
    strip_ansi,
)
from notebookops.backends.posthog._requests import (
    next_path,
)
from notebookops.backends.posthog._wire import (
    CellRunEnvelope,
    HogQLResult,
    Notebook,
    NotebookRunCell,
    NotebookRunStatus,
    decode,
)
from notebookops.errors import ConfigurationError, ResponseDecodeError
from notebookops.models import Capability, RunState
from notebookops.testing.posthog import hogql_cell, notebook_content, python_cell

from ._mock import KEY

DOC = {
    "type": "doc",
    "content": [
        {"type": "heading", "content": [{"type": "text", "text": "T"}]},
        {"type": "ph-python", "attrs": {"code": "a = 1", "nodeId": "n1", "title": "first"}},
        {
            "type": "blockquote",
            "content": [
                {"type": "ph-hogql-sql", "attrs": {"code": "select 1", "nodeId": "n2"}},
                {"type": "ph-python", "attrs": {"code": "b = a + 1"}},
            ],
        },
        {"type": "ph-python", "attrs": {"code": None, "nodeId": "bad"}},
        {"type": "ph-duck-sql", "attrs": {"code": "select 2"}},
        {"type": "ph-python", "attrs": {"nodeId": "empty"}},
        "not a node",
    ],
}


def test_extract_cells_in_document_order() -> None:
    cells = extract_cells(DOC)
    assert [(c.kind, c.code, c.node_id) for c in cells] == [
        ("python", "a = 1", "n1"),
        ("hogql", "select 1", "n2"),
        ("python", "b = a + 1", None),
        ("python", "", "empty"),
    ]
    assert [c.index for c in cells] == [0, 1, 2, 3]
    assert cells[2].path == (2, 1)
    assert cells[0].title == "first"
    assert cells[2].label == "#2"
    assert extract_cells(None) == []
    with pytest.raises(ResponseDecodeError):
        extract_cells(["not", "a", "doc"])  # type: ignore[arg-type]


def test_select_cells_by_kind_and_block() -> None:
    cells = extract_cells(DOC)
    assert [c.node_id for c in select_cells(cells, ["python"])] == ["n1", None, "empty"]
    assert [c.node_id for c in select_cells(cells, ["python", "hogql"], ["n2", "n1"])] == [
        "n1",
        "n2",
    ]
    with pytest.raises(ConfigurationError, match=r"'zz'.*known: empty, n1"):
        select_cells(cells, ["python"], ["zz"])


def test_strip_ansi() -> None:
    coloured = "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero\x1b]8;;http://x\x07link"
    assert strip_ansi(coloured) == "ZeroDivisionError: division by zero" + "link"
    assert strip_ansi("plain") == "plain"


def test_inputs_code_assigns_json_values_safely() -> None:
    code = inputs_code({"day": "2025-01-01", "n": 3, "cfg": {"a": [1, None]}, "quote": "'\n"})
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    assert namespace["day"] == "2025-01-01"
    assert namespace["cfg"] == {"a": [1, None]}
    assert namespace["quote"] == "'\n"
    assert "_notebookops_json" not in namespace
    assert inputs_code({}) is None


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"1x": 1}, "variable name"),
        ({"class": 1}, "variable name"),
        ({"a b": 1}, "variable name"),
        ({"x": object()}, "JSON"),
        ({"_notebookops_json": 1}, "reserved"),
        ({"x": float("nan")}, "JSON"),
    ],
)
def test_inputs_code_refuses_bad_inputs(inputs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        inputs_code(inputs)


def test_next_path() -> None:
    base = "https://ph.example"
    assert next_path("http://internal/api/x/?a=1&b=2", base) == "/api/x/?a=1&b=2"
    assert next_path("/api/x/", base) == "/api/x/"
    assert next_path("https://h.example/ph/api/x/?q=1", "https://h.example/ph") == "/api/x/?q=1"
    assert next_path("api/x/", base) == "/api/x/"


CELL = Cell(index=1, kind="python", code="x", node_id="n1")


def _result(**fields: Any) -> ExecutionResult:
    return ExecutionResult(**({"status": "ok"} | fields))


def test_execution_outputs_for_a_rich_result() -> None:
    result = _result(
        stdout="out\n",
        stderr="err\n",
        result={"text/plain": "2"},
        media=[MediaItem(mime_type="image/png", data="iVBOR")],
        execution_count=4,
        variables={"x": VariableInfo(status="ok", type="int")},
    )
    outputs = execution_outputs(result, CELL)
    kinds = [(o.output_type, o.name) for o in outputs]
    assert kinds == [
        ("stream", "stdout"),
        ("stream", "stderr"),
        ("execute_result", None),
        ("display_data", None),
        ("display_data", None),
    ]
    assert outputs[2].plain_text == "2"
    assert outputs[2].metadata == {"execution_count": 4}
    assert outputs[3].data == {"image/png": "iVBOR"}
    assert outputs[4].data["application/vnd.posthog.variables+json"]["x"]["type"] == "int"
    assert all(o.cell_id == "n1" and o.cell_index == 1 for o in outputs)
    # Streams already delivered chunk by chunk are not repeated.
    again = execution_outputs(result, CELL, streamed={"stdout"})
    assert [o.name for o in again if o.output_type == "stream"] == ["stderr"]
    assert execution_error(result, CELL) is None


def test_execution_error_strips_ansi_and_keeps_raw_traceback() -> None:
    traceback = [
        "\x1b[0;31m---------------------------------------------------------------\x1b[0m",
        "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero",
    ]
    result = _result(status="error", error_name="ZeroDivisionError", traceback=traceback)
    error = execution_error(result, CELL)
    assert error is not None
    assert error.message == "cell n1 raised ZeroDivisionError: division by zero"
    assert error.name == "ZeroDivisionError"
    assert error.traceback == tuple(traceback)
    assert (error.cell_id, error.cell_index, error.platform) == ("n1", 1, False)
    output = execution_outputs(result, CELL)[-1]
    assert (output.output_type, output.ename, output.evalue) == (
        "error",
        "ZeroDivisionError",
        "division by zero",
    )
    bare = execution_error(
        _result(status="error", error_name="KeyboardInterrupt", traceback=["KeyboardInterrupt"]),
        CELL,
    )
    assert bare is not None
    assert bare.message == "cell n1 raised KeyboardInterrupt"


def test_execution_timeout_and_unknown_statuses() -> None:
    timeout = execution_error(_result(status="timeout"), CELL, timeout=2.5)
    assert timeout is not None
    assert timeout.name == "timeout"
    assert "2.5s" in timeout.message
    assert execution_outputs(_result(status="timeout"), CELL)[-1].ename == "CellTimeout"
    aborted = execution_error(_result(status="aborted"), CELL)
    assert aborted is not None
    assert "'aborted'" in aborted.message
    assert execution_outputs(_result(status="aborted"), CELL)[-1].ename == "CellAborted"


def test_hogql_and_envelope_outputs() -> None:
    result = decode(
        {"results": [[1, "a"], [22, "bb"]], "columns": ["id", "name"], "hasMore": False},
        HogQLResult,
        what="x",
    )
    output = hogql_output(result, Cell(index=0, kind="hogql", code="select", node_id="h"))
    assert output.data["text/plain"].splitlines() == ["id  name", "1   a", "22  bb"]
    assert output.data["application/json"]["results"] == [[1, "a"], [22, "bb"]]
    envelope = CellRunEnvelope(
        status="error",
        stdout="o",
        stderr="e",
        media=[MediaItem(mime_type="text/html", data="<b>")],
        columns=["a"],
        first_page=[[1]],
        row_count=1,
        error="Traceback\nValueError: bad",
    )
    outputs = envelope_outputs(envelope, cell_id="n", cell_index=2)
    assert [o.output_type for o in outputs] == [
        "stream",
        "stream",
        "display_data",
        "execute_result",
        "error",
    ]
    assert outputs[-1].evalue == "ValueError: bad"
    assert outputs[3].data["application/json"]["rows"] == [[1]]


def test_python_execution_attrs_and_apply() -> None:
    raw = {
        "status": "ok",
        "stdout": "hi\n",
        "result": {"text/plain": "1"},
        "execution_count": 2,
        "variables": {"x": {"status": "ok", "type": "int", "hogql_query": None}},
        "media": [{"mime_type": "image/png", "data": "AA"}],
        "started_at": "s",
        "completed_at": "c",
    }
    attrs = python_execution_attrs(raw)
    assert attrs["executionCount"] == 2
    assert attrs["variables"] == [{"name": "x", "status": "ok", "type": "int"}]
    assert attrs["media"] == [{"mimeType": "image/png", "data": "AA"}]
    doc = notebook_content(python_cell("a = 1", node_id="n1"), python_cell("b = 2", node_id="n2"))
    cells = extract_cells(doc)
    updated = apply_executions(doc, {cells[0]: raw})
    assert updated is not None
    assert updated["content"][1]["attrs"]["pythonExecution"]["stdout"] == "hi\n"
    assert "pythonExecution" not in updated["content"][2]["attrs"]
    assert "pythonExecution" not in doc["content"][1]["attrs"]  # the original is untouched
    # Code changed since the run: nothing is attached to it.
    edited = notebook_content(python_cell("a = 99", node_id="n1"))
    assert apply_executions(edited, {cells[0]: raw}) is None
    assert apply_executions(None, {cells[0]: raw}) is None
    hogql = extract_cells(notebook_content(hogql_cell("select 1", node_id="h")))[0]
    assert apply_executions(doc, {hogql: raw}) is None


def test_server_run_mapping() -> None:
    assert SERVER_RUN_STATES("running") is RunState.RUNNING
    assert SERVER_RUN_STATES("done") is RunState.SUCCEEDED
    assert SERVER_RUN_STATES("failed") is RunState.FAILED
    assert SERVER_RUN_STATES("interrupted") is RunState.CANCELLED
    assert SERVER_RUN_STATES("warming_up") is RunState.UNKNOWN
    status = NotebookRunStatus(
        run_id="r",
        status="failed",
        cell_count=3,
        failed_node_id="n2",
        cells=[
            NotebookRunCell(node_id="n1", status="done"),
            NotebookRunCell(node_id="n2", status="failed", error="Trace\nKeyError: 'x'"),
        ],
    )
    progress = server_run_progress(status)
    assert (progress.completed, progress.total) == (1, 3)
    error = server_run_error(status)
    assert error is not None
    assert error.message == "cell n2 failed: KeyError: 'x'"
    assert (error.cell_id, error.cell_index) == ("n2", 1)
    assert server_run_error(NotebookRunStatus(run_id="r", status="done")) is None
    no_detail = server_run_error(NotebookRunStatus(run_id="r", status="failed"))
    assert no_detail is not None
    assert "no reason" in no_detail.message
    early = server_run_progress(NotebookRunStatus(run_id="r", status="running", current_index=2))
    assert early.completed == 2


def test_decode_wraps_every_failure() -> None:
    with pytest.raises(ResponseDecodeError, match="a notebook") as caught:
        decode({"title": "no id"}, Notebook, what="a notebook")
    assert caught.value.vendor == "posthog"
    with pytest.raises(ResponseDecodeError, match="a HogQL result"):
        decode([1, 2], HogQLResult, what="a HogQL result")
    with pytest.raises(ResponseDecodeError) as bad:
        decode({"status": 1, "variables": "nope"}, ExecutionResult, what="a kernel result")
    assert json.loads(bad.value.body)["variables"] == "nope"


# ----------------------------------------------------------------- options and configuration


def test_run_options_validation() -> None:
    assert PostHogRunOptions().cell_types == ("python",)
    assert PostHogRunOptions(cell_types=["hogql", "python"]).cell_types == ("hogql", "python")
    for kwargs in (
        {"cell_timeout": 0.05},
        {"cell_timeout": 121},
        {"cell_timeout": "5"},
        {"cell_types": "python"},
        {"cell_types": ()},
        {"cell_types": ("duck",)},
        {"mode": "cloud"},
        {"write_outputs": "yes"},
        {"stop_kernel_at_end": 1},
    ):
        with pytest.raises(ConfigurationError):
            PostHogRunOptions(**kwargs)


def test_backend_configuration_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTHOG_PERSONAL_API_KEY", raising=False)
    monkeypatch.delenv("POSTHOG_PROJECT_ID", raising=False)
    monkeypatch.delenv("POSTHOG_HOST", raising=False)
    with pytest.raises(ConfigurationError, match="POSTHOG_PERSONAL_API_KEY"):
        PostHogBackend(project_id=1)
    with pytest.raises(ConfigurationError, match="POSTHOG_PROJECT_ID"):
        PostHogBackend(KEY)
    with pytest.raises(ConfigurationError, match="project API key"):
        PostHogBackend("phc_abc", project_id=1)
    with pytest.raises(ConfigurationError, match="mode"):
        PostHogBackend(KEY, project_id=1, mode="batch")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="plain http"):
        PostHogBackend(KEY, project_id=1, base_url="http://posthog.internal")
    with pytest.raises(ConfigurationError, match="cancel_timeout"):
        PostHogBackend(KEY, project_id=1, cancel_timeout=0)
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", KEY)
    monkeypatch.setenv("POSTHOG_PROJECT_ID", "42")
    monkeypatch.setenv("POSTHOG_HOST", "https://eu.posthog.com/")
    backend = PostHogBackend()
    assert (backend.project_id, backend.base_url) == ("42", "https://eu.posthog.com")
    assert KEY not in repr(backend)
    assert Capability.STREAMING in backend.capabilities
    assert Capability.RESUMABLE not in backend.capabilities
    server = PostHogBackend(mode="server", project_id=5)
    assert server.project_id == "5"
    assert server.base_url == "https://eu.posthog.com"
    assert Capability.RESUMABLE in server.capabilities
    assert Capability.STREAMING not in server.capabilities
    monkeypatch.delenv("POSTHOG_HOST")
    assert PostHogBackend().base_url == "https://us.posthog.com"
