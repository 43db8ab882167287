"""The words ``bench/run.py`` writes around its figures follow the figures.

The report is quoted by the README; a sentence hard-coded there once said a policy keeps every
run within the lag bound while the table beside it showed it does not. These check the
sentences made from the polling figures, and the ratio display, on the real computation.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def report(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("run.py")


def _polling(report: ModuleType) -> dict[str, dict[float, Any]]:
    return {
        name: {length: report.schedules.sample(cadence, length, 201) for length in report.LENGTHS}
        for name, cadence in report._cadences()
    }


def test_only_the_policy_that_keeps_every_run_within_the_bound_is_said_to(
    report: ModuleType,
) -> None:
    results = _polling(report)
    said = report._tighter_policies(results, report.schedules.fewest_reads(7200))
    tenth, tight = said.split("; ")
    assert tenth.startswith("`PollPolicy(proportion=0.1)` keeps ")
    assert "every run" not in tenth
    assert "a little over" in tenth
    assert tight.startswith("`PollPolicy(initial=0.8, proportion=0.09)` keeps every run")
    assert all(s.within_bound == 1.0 for s in results[report.TIGHT_CADENCE].values())


def test_the_defaults_worst_lag_is_stated_as_computed(report: ModuleType) -> None:
    by = _polling(report)[report.DEFAULT_CADENCE]
    worst = max(max(by[length].ratios) for length in by if length <= 600) * 0.1
    said = report._default_lags(by)
    assert said.startswith(f"worst-case lag {worst:.0%} of the run")
    assert worst > 0.2  # the jitter's share: "20%" alone would understate it


@pytest.mark.parametrize(
    ("ratio", "shown"),
    [(1.3031, "1.303x"), (1.2951, "1.295x"), (1.3, "1.30x"), (1.25, "1.25x"), (1.4, "1.40x")],
)
def test_a_ratio_is_never_shown_on_the_wrong_side_of_its_target(
    report: ModuleType, ratio: float, shown: str
) -> None:
    assert report._vs_target(ratio) == shown


def test_rerender_rewrites_scenario_one_from_its_stored_samples(
    report: ModuleType, tmp_path: Path
) -> None:
    stored = json.loads((BENCH / "results" / "benchmarks.json").read_text())
    keys = [
        key
        for key, entry in stored.items()
        if key.startswith("overhead-") and "samples" in (entry.get("raw") or {})
    ]
    assert keys  # the repo's results hold scenario 1's samples
    for key in keys:
        stored[key]["body"], stored[key]["targets"] = "stale words", []
    out = tmp_path / "benchmarks.md"
    out.with_suffix(".json").write_text(json.dumps(stored))
    report.rerender(out)
    again = json.loads(out.with_suffix(".json").read_text())
    for key in keys:
        assert "stale words" not in again[key]["body"]
        assert "--rerender" in again[key]["body"]
        assert again[key]["targets"]  # verdicts computed again from the samples
        assert again[key]["command"] == stored[key]["command"]  # the measurement's own
    assert "stale words" not in out.read_text()


def test_cpu_targets_say_how_each_repeat_stands(report: ModuleType) -> None:
    # A median of five ratios that each move by +/-0.2: the row gives the repeats' range
    # and how many of them were within the target, from the same samples as the median.
    stored = json.loads((BENCH / "results" / "benchmarks.json").read_text())
    raw = stored["overhead-1000"]["raw"]
    samples = copy.deepcopy(raw["samples"])
    wanted = [1.2, 1.5, 1.25, 1.31, 1.1]
    for lib, shared, ratio in zip(samples["lib"], samples["shared"], wanted, strict=True):
        lib["cpu"] = shared["cpu"] * ratio
    section = report.Section("overhead-1000", "title")
    report._overhead_report(
        section,
        raw["n"],
        raw["notebooks"],
        raw["repeats"],
        raw["duration"],
        raw["label"],
        tuple(samples),
        samples,
    )
    shared_row = next(row for row in section.targets if "shared polls" in row[0])
    assert "1.25x per run" in shared_row[1]  # the median of the five
    assert "per repeat 1.10-1.50x, 3 of 5 repeats within 1.3x" in shared_row[1]
    same_row = next(row for row in section.targets if "same requests" in row[0])
    assert "of 5 repeats within 1.3x" in same_row[1]
