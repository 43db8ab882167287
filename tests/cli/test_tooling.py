"""The Makefile's promises: `make demo` installs only what the demo needs, and a virtualenv
that cannot run is rebuilt instead of staying broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, base_env

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_make_demo_installs_the_local_extra_only(tmp_path: Path) -> None:
    planned = make("-n", "demo", f"VENV={tmp_path / 'venv'}")
    assert planned.returncode == 0, planned.stderr
    assert '-e ".[local]"' in planned.stdout
    assert "[dev]" not in planned.stdout


def test_make_refuses_a_python_older_than_3_11(tmp_path: Path) -> None:
    old = tmp_path / "python2.7"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    refused = make("venv", f"VENV={tmp_path / 'venv'}", f"PYTHON={old}")
    assert refused.returncode != 0
    assert "needs Python 3.11 or newer" in refused.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.slow
def test_make_rebuilds_a_virtualenv_whose_python_does_not_run(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # What a .venv made by a Python that was since removed looks like.
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.11")
    rebuilt = make("venv", f"VENV={venv}", f"PYTHON={sys.executable}")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilding it" in rebuilt.stderr
    ran = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.strip() == "True"
    again = make("venv", f"VENV={venv}", f"PYTHON={sys.executable}")
    assert again.returncode == 0
    assert "rebuilding" not in again.stderr
