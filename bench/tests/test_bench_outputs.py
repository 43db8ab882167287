"""Smoke and try-out runs write to a scratch path; only an explicit ``--out`` or
``--publish`` writes the committed results (issue 29, item 14)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def report(load_bench: Callable[[str], ModuleType], tmp_path: Path) -> ModuleType:
    """run.py with one instant scenario, and its committed paths moved under tmp_path."""
    module = load_bench("run.py")

    def instant(args: argparse.Namespace) -> list[object]:
        section = module.Section("import", "Scenario 4: import time")
        section.add("body")
        section.target("`import notebookops` <= 1.2x `import aiohttp`", "0.25x", True)
        return [section]

    for name, value in {
        "RUNNERS": dict.fromkeys(module.SCENARIOS, instant),
        "compile_bytecode": lambda: None,
        "RESULTS": tmp_path / "results",
        "README": tmp_path / "README.md",
    }.items():
        setattr(module, name, value)
    module.README.write_text("x\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    return module


def test_a_quick_run_writes_to_a_new_scratch_directory(
    report: ModuleType,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    report.main(["--quick", "--scenario", "import"])
    assert not report.RESULTS.exists()
    assert "old" in report.README.read_text()
    out, err = capsys.readouterr()
    written = Path(err.strip().splitlines()[-1].split("wrote ")[1])
    assert written.parent.parent == scratch
    assert written.name == "benchmarks.md"
    assert "Scenario 4: import time" in written.read_text()
    # The targets of what was just run, on stdout.
    assert "| `import notebookops` <= 1.2x `import aiohttp` | 0.25x | **met** |" in out


def test_out_writes_there_and_leaves_the_readme(report: ModuleType, tmp_path: Path) -> None:
    report.main(["--budget", "--out", str(tmp_path / "budget")])
    assert (tmp_path / "budget" / "benchmarks.md").exists()
    assert (tmp_path / "budget" / "benchmarks.json").exists()
    assert not report.RESULTS.exists()
    assert "old" in report.README.read_text()


def test_publish_writes_the_results_and_quotes_them_in_the_readme(report: ModuleType) -> None:
    report.main(["--budget", "--publish"])
    assert (report.RESULTS / "benchmarks.md").exists()
    readme = report.README.read_text()
    assert "old" not in readme
    assert "| `import notebookops` <= 1.2x `import aiohttp` | 0.25x | **met** |" in readme


@pytest.mark.parametrize(
    "argv", [["--quick", "--publish"], ["--publish", "--out", "/tmp/elsewhere"]]
)
def test_publish_refuses_a_smoke_run_or_another_directory(
    report: ModuleType, argv: list[str]
) -> None:
    with pytest.raises(SystemExit):
        report.parse_arguments(argv)


def test_budget_runs_exactly_the_budgets_scenarios(report: ModuleType) -> None:
    args = report.parse_arguments(["--budget"])
    assert args.wanted == ["overhead", "import", "streaming", "sharing"]
    assert args.out is None


def test_chaos_writes_a_file_only_when_asked(load_bench: Callable[[str], ModuleType]) -> None:
    chaos = load_bench("chaos.py")
    assert chaos._arguments([]).out is None
