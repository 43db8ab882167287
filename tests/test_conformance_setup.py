"""The conformance suite as a user sets it up (issue 29: the one line it needs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUBCLASS = """
import pytest

from notebookops.testing.conformance import BackendConformance, fake_target


class TestMine(BackendConformance):
    target_factory = staticmethod(fake_target)
    pytestmark = pytest.mark.anyio  # the one line for anyio's own pytest plugin
"""


def test_the_suite_runs_under_plain_pytest_with_anyios_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(SUBCLASS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:asyncio", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout


def test_without_pytest_the_error_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None\n"
        "try:\n"
        "    import notebookops.testing.conformance\n"
        "except ModuleNotFoundError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'notebookops[testing]'" in done.stdout
