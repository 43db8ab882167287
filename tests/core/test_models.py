"""Models: validation, state semantics, JSON round-trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notebookops import (
    CellOutput,
    ConfigurationError,
    Run,
    RunErrorInfo,
    RunHandle,
    RunProgress,
    RunRequest,
    RunState,
)
from notebookops._convert import format_datetime, parse_datetime, to_camel


def test_terminal_states() -> None:
    terminal = {s for s in RunState if s.is_terminal}
    assert terminal == {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.CANCELLED,
        RunState.SUBMITTED,
    }
    assert not RunState.UNKNOWN.is_terminal
    assert RunState.SUCCEEDED.is_success
    assert not RunState.FAILED.is_success


def test_run_request_validation() -> None:
    request = RunRequest("nb", inputs={"a": 1}, blocks=["b1", "b2"])
    assert request.blocks == ("b1", "b2")
    with pytest.raises(ConfigurationError):
        RunRequest("")
    with pytest.raises(ConfigurationError):
        RunRequest("  ")
    with pytest.raises(ConfigurationError):
        RunRequest(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RunRequest("nb", inputs={"": 1})
    with pytest.raises(ConfigurationError):
        RunRequest("nb", inputs=[("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RunRequest("nb", blocks="b1")
    with pytest.raises(ConfigurationError):
        RunRequest("nb", blocks=["b1", ""])


def test_run_request_copies_inputs() -> None:
    inputs = {"a": 1}
    request = RunRequest("nb", inputs=inputs)
    inputs["a"] = 2
    assert request.inputs == {"a": 1}


def test_handle_json_round_trip() -> None:
    handle = RunHandle(
        backend="deepnote",
        run_id="r-1",
        notebook_id="nb",
        created_at=datetime(2026, 11, 22, 3, 0, tzinfo=UTC),
        web_url="https://example.invalid/x",
        extra={"project_id": "p"},
    )
    text = handle.to_json()
    assert '"created_at":"2026-11-22T03:00:00Z"' in text
    assert RunHandle.from_json(text) == handle
    assert RunHandle.from_json(text.encode()) == handle
    assert hash(handle) == hash(RunHandle.from_json(text))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "{}",
        '{"backend": "x"}',
        '{"backend": "", "run_id": "r", "notebook_id": "n"}',
        '{"backend": "x", "run_id": "r", "notebook_id": "n", "created_at": "yesterday"}',
    ],
)
def test_handle_from_bad_json(text: str) -> None:
    with pytest.raises(ConfigurationError, match="not a valid notebookops run handle"):
        RunHandle.from_json(text)


@given(
    run_id=st.text(min_size=1).filter(str.strip),
    notebook=st.text(min_size=1).filter(str.strip),
    extra=st.dictionaries(st.text(), st.text(), max_size=3),
)
def test_handle_round_trip_property(run_id: str, notebook: str, extra: dict[str, str]) -> None:
    handle = RunHandle(backend="b", run_id=run_id, notebook_id=notebook, extra=extra)
    assert RunHandle.from_json(handle.to_json()) == handle


def test_run_to_dict_excludes_raw_by_default() -> None:
    handle = RunHandle(backend="b", run_id="r", notebook_id="n")
    run = Run(
        handle=handle,
        state=RunState.FAILED,
        vendor_state="error",
        outputs=(CellOutput(output_type="stream", name="stdout", text="hi"),),
        error=RunErrorInfo(message="boom", traceback=("a", "b")),
        progress=RunProgress(completed=1, total=2),
        raw={"secret": "payload"},
    )
    data = run.to_dict()
    assert "raw" not in data
    assert data["state"] == "failed"
    assert data["error"]["traceback"] == ["a", "b"]
    assert run.to_dict(include_raw=True)["raw"] == {"secret": "payload"}
    assert '"state": "failed"' in run.to_json()
    assert run.run_id == "r"


def test_cell_output_plain_text() -> None:
    assert CellOutput("stream", text="x").plain_text == "x"
    assert CellOutput("execute_result", data={"text/plain": ["a", "b"]}).plain_text == "ab"
    assert CellOutput("execute_result", data={"text/plain": 3}).plain_text == "3"
    assert CellOutput("error", ename="ValueError", evalue="bad").plain_text == "ValueError: bad"
    assert CellOutput("display_data", data={"image/png": "..."}).plain_text is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-07-30T08:00:00Z", datetime(2026, 7, 30, 8, tzinfo=UTC)),
        ("2026-07-30T08:00:00.123456789Z", datetime(2026, 7, 30, 8, 0, 0, 123456, tzinfo=UTC)),
        ("2026-07-30T08:00:00.1+00:00", datetime(2026, 7, 30, 8, 0, 0, 100000, tzinfo=UTC)),
        ("2026-07-30T08:00:00", datetime(2026, 7, 30, 8, tzinfo=UTC)),
        (
            "2026-07-30T10:00:00+02:00",
            datetime(2026, 7, 30, 10, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_parse_datetime(text: str, expected: datetime) -> None:
    assert parse_datetime(text) == expected


def test_parse_datetime_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_datetime("yesterday")
    with pytest.raises(TypeError):
        parse_datetime(12)


def test_format_datetime_is_utc_z() -> None:
    assert format_datetime(datetime(2026, 1, 1)) == "2026-01-01T00:00:00Z"
    local = datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert format_datetime(local) == "2026-01-01T00:00:00Z"


def test_to_camel() -> None:
    assert to_camel("snapshot_delivery") == "snapshotDelivery"
    assert to_camel("run_id") == "runId"
    assert to_camel("name") == "name"


def test_plain_text_reads_a_rich_display_whose_plain_form_is_only_a_repr() -> None:
    markdown = CellOutput(
        output_type="display_data",
        data={"text/plain": "<IPython.core.display.Markdown object>", "text/markdown": "# Hi"},
    )
    assert markdown.plain_text == "# Hi"
    both = CellOutput(
        output_type="execute_result", data={"text/plain": "42", "text/markdown": "**42**"}
    )
    assert both.plain_text == "42"
    lines = CellOutput(output_type="display_data", data={"text/markdown": ["a\n", "b"]})
    assert lines.plain_text == "a\nb"


def test_a_failing_cell_is_named_the_same_way_everywhere() -> None:
    assert RunErrorInfo("x", cell_index=3, cell_id="c-3").cell == "3 (c-3)"
    assert RunErrorInfo("x", cell_index=0).cell == "0"
    assert RunErrorInfo("x", cell_id="c-3").cell == "c-3"
    assert RunErrorInfo("x").cell is None
