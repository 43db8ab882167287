"""Run.to_json / Run.from_json: what a store keeps of a finished run reads back equal.

(Lives here because the stores depend on it; the lead may move it into tests/core/test_models.py.)
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notebookops import ConfigurationError
from notebookops.models import (
    Artifact,
    CellOutput,
    Run,
    RunErrorInfo,
    RunHandle,
    RunProgress,
    RunState,
)


def _run() -> Run:
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    handle = RunHandle(
        backend="fake", run_id="r1", notebook_id="nb", created_at=when, extra={"project": "p"}
    )
    return Run(
        handle=handle,
        state=RunState.FAILED,
        vendor_state="failed",
        created_at=when,
        started_at=when,
        finished_at=when,
        outputs=(
            CellOutput("stream", cell_id="c1", cell_index=0, name="stdout", text="hi\n"),
            CellOutput("execute_result", data={"text/plain": ["1"]}, metadata={"k": [1, 2]}),
            CellOutput("error", ename="ValueError", evalue="bad", traceback=("l1", "l2")),
        ),
        artifacts=(Artifact("out.csv", url="https://example.invalid/out.csv", size=12),),
        error=RunErrorInfo("bad", name="ValueError", traceback=("l1",), cell_index=2),
        progress=RunProgress(completed=2, total=3, current="c3"),
        web_url="https://example.invalid/run",
        raw={"not": "kept"},
    )


def test_run_round_trips_through_json() -> None:
    run = _run()
    again = Run.from_json(run.to_json())
    assert again == run
    assert again.raw is None  # raw is left out unless asked for
    assert Run.from_json(run.to_json().encode()) == run
    assert Run.from_dict(run.to_dict()) == run


def test_run_json_keeps_raw_when_asked() -> None:
    run = _run()
    assert Run.from_json(run.to_json(include_raw=True)).raw == {"not": "kept"}


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", "{}", '{"handle": {"backend": "x"}, "state": "failed"}', "[" * 10_000],
)
def test_bad_run_json_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match="not a valid notebookops run"):
        Run.from_json(text)


def test_unknown_state_is_a_configuration_error() -> None:
    data = _run().to_dict()
    data["state"] = "exploded"
    with pytest.raises(ConfigurationError, match="not a valid notebookops run"):
        Run.from_dict(data)
