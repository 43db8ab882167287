"""Local backend tests: isolated Jupyter directories, and proof that no kernel outlives a test.

``JUPYTER_PLATFORM_DIRS=1`` opts in to the platformdirs layout that older jupyter_core
versions warn about at import (warnings are errors here). It must be set before
jupyter_core is first imported, hence at module level.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")


def child_processes() -> set[int]:
    """Live (non-zombie) child processes of this test process, read from /proc.

    Kernels are started as direct children, so a kernel that outlived its run shows up
    here. Without /proc (not Linux) this returns nothing and the check below is a no-op.
    """
    me = os.getpid()
    children: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2 and fields[1] == str(me) and fields[0] != "Z":
            children.add(int(entry))
    return children


@pytest.fixture(scope="session", autouse=True)
def _jupyter_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Kernel connection files go to a temporary directory, not the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path_factory.mktemp("jupyter-runtime")))
        yield


@pytest.fixture(autouse=True)
def _no_orphan_kernels() -> Iterator[None]:
    before = child_processes()
    yield
    deadline = time.monotonic() + 5.0
    left = child_processes() - before
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = child_processes() - before
    assert not left, f"processes started during the test are still running: {sorted(left)}"
