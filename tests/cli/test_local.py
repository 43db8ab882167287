"""The CLI on the local backend: real kernels (about a second each), so only two tests."""

from __future__ import annotations

import signal
from pathlib import Path

from notebookops.cli import EXIT_INTERRUPTED, EXIT_OK
from notebookops.testing.local import Cell, write_notebook

from .conftest import EXAMPLES, FAST, Running, assert_no_kernels, base_env, cli


def test_local_run_with_inputs_json_and_saved_notebook(runtime_dir: Path, tmp_path: Path) -> None:
    env = base_env(JUPYTER_RUNTIME_DIR=str(runtime_dir))
    notebook = EXAMPLES / "notebooks" / "hello.ipynb"
    result = cli(
        "run", str(notebook), "-i", "name=Ada", "-i", "count=2", "--json",
        "--output", str(tmp_path), *FAST, env=env,
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    run = result.json()
    assert run["state"] == "succeeded"
    texts = [output["text"] or "" for output in run["outputs"]]
    assert "1. Hello, Ada!\n2. Hello, Ada!\n" in texts
    assert run["progress"]["completed"] == run["progress"]["total"]
    (saved,) = run["artifacts"]
    assert Path(saved["path"]).parent == tmp_path
    assert Path(saved["path"]).is_file()
    assert "cell 5 of 5" in result.stderr
    assert_no_kernels(runtime_dir)


def test_sigint_cancels_a_local_run_and_leaves_no_kernel(runtime_dir: Path, tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "long.ipynb",
        [
            Cell("x = 0", tags=("parameters",)),
            "import time\nfor _ in range(600):\n    time.sleep(0.1)",
        ],
    )
    env = base_env(JUPYTER_RUNTIME_DIR=str(runtime_dir))
    running = Running(["run", str(notebook), "-i", "x=1", *FAST], env)
    running.wait_for(r"running, .*cell 2 of 3 \(cell-1\)")
    running.send(signal.SIGINT)
    result = running.finish()
    assert result.returncode == EXIT_INTERRUPTED
    assert "interrupted: cancelled local run" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_kernels(runtime_dir)
