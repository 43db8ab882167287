"""The README's runnable blocks, pasted as scripts, work as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from .conftest import base_env

ROOT = Path(__file__).resolve().parents[2]


def _block(section: str, language: str) -> str:
    """The first ``language`` code block after the heading ``section``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n{section}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no {language} block under {section!r}"
    return match.group(1)


def test_the_usage_example_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _block("## Usage", "python")],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "succeeded"  # what the comment in the README says it prints
    assert any("Hello, Ada!" in line for line in lines[1:])
    assert "<IPython" not in done.stdout


def test_the_sandbox_block_runs_as_a_script(tmp_path: Path) -> None:
    notebookops = f"{shlex.quote(sys.executable)} -m notebookops"
    script = _block(
        "Try every vendor without an account, against loopback fakes of all three:", "bash"
    )
    script = re.sub(r"^notebookops ", f"{notebookops} ", script, flags=re.M)
    script = script.replace('"$(notebookops ', f'"$({notebookops} ')
    done = subprocess.run(
        ["sh", "-e", "-c", script],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
