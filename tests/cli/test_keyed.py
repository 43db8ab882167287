"""``notebookops run --key``: the same command again follows the same run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from notebookops.cli import EXIT_INTERRUPTED, EXIT_OK
from notebookops.testing.sandbox import DEEPNOTE_DEMOS

from .conftest import FAST, Running, SandboxInfo, cli

HELLO = f"deepnote:{DEEPNOTE_DEMOS['hello']}"
SLOW = f"deepnote:{DEEPNOTE_DEMOS['slow']}"


def test_the_same_keyed_command_twice_reports_one_run(sandbox: SandboxInfo, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["run", HELLO, "-i", "name=Ada", "--json", "--key", "report-1", "--store", store]
    first = cli(*args, *FAST, env=sandbox.env)
    assert first.returncode == EXIT_OK, first.stderr
    second = cli(*args, *FAST, env=sandbox.env)
    assert second.returncode == EXIT_OK, second.stderr
    assert second.json()["handle"]["run_id"] == first.json()["handle"]["run_id"]


def test_the_default_store_is_a_file_in_the_state_directory(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    env = {**sandbox.env, "XDG_STATE_HOME": str(tmp_path)}
    result = cli("run", HELLO, "-i", "name=Ada", "--key", "k", *FAST, env=env)
    assert result.returncode == EXIT_OK, result.stderr
    assert (tmp_path / "notebookops" / "runs.db").is_file()


def test_ctrl_c_leaves_a_keyed_run_going_and_the_same_command_follows_it(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    handle_file = tmp_path / "h.json"
    args = ["run", SLOW, "--key", "slow-1", "--store", store]
    running = Running([*args, "--save-handle", str(handle_file), *FAST], sandbox.env)
    running.wait_for(r": running")
    running.send(signal.SIGINT)
    interrupted = running.finish()
    assert interrupted.returncode == EXIT_INTERRUPTED
    assert "left deepnote run" in interrupted.stderr
    assert "run the same command again" in interrupted.stderr
    started = json.loads(handle_file.read_text())["run_id"]
    again = Running([*args, "--json", *FAST], sandbox.env)
    again.wait_for(started)  # the progress line names the run it follows: the same one
    again.send(signal.SIGINT)
    assert again.finish().returncode == EXIT_INTERRUPTED


def test_store_without_key_and_an_unknown_store_are_usage_errors(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    alone = cli("run", HELLO, "--store", f"sqlite:///{tmp_path / 'x.db'}", env=sandbox.env)
    assert alone.returncode != EXIT_OK
    assert "--store goes with --key" in alone.stderr
    unknown = cli("run", HELLO, "--key", "k", "--store", "ftp://x", env=sandbox.env)
    assert unknown.returncode != EXIT_OK
    assert "Traceback" not in unknown.stderr
    assert "sqlite" in unknown.stderr
