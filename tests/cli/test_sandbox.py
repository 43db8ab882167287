"""The sandbox: its servers and demos in-process, and the command that serves them."""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from notebookops import PollPolicy, RunState, run_and_wait
from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.deepnote import DeepnoteBackend
from notebookops.backends.posthog import PostHogBackend
from notebookops.testing.sandbox import (
    DATALORE_DEMOS,
    DEEPNOTE_DEMOS,
    POSTHOG_DEMOS,
    sandbox,
    serve,
)

from .conftest import base_env, cli, python, run_process

FAST = PollPolicy(initial=0.01, maximum=0.05)


async def test_sandbox_environment_and_demos() -> None:
    async with sandbox(duration=0.05) as box:
        env = box.environment()
        assert set(env) == {
            "DEEPNOTE_API_KEY", "DEEPNOTE_API_URL", "POSTHOG_PERSONAL_API_KEY",
            "POSTHOG_PROJECT_ID", "POSTHOG_HOST", "DATALORE_TOKEN", "DATALORE_URL",
            "DEEPNOTE_NOTEBOOK_ID", "POSTHOG_NOTEBOOK_ID", "DATALORE_NOTEBOOK_ID",
        }  # fmt: skip
        for name in ("DEEPNOTE_API_URL", "POSTHOG_HOST", "DATALORE_URL"):
            assert env[name].startswith("http://127.0.0.1:")
        assert env["POSTHOG_PERSONAL_API_KEY"].startswith("phx_")
        assert all(f"export {name}=" in line for name, line in zip(env, box.exports(), strict=True))
        targets = [demo.target for demo in box.demos]
        assert len(targets) == 9
        assert f"deepnote:{DEEPNOTE_DEMOS['slow']}" in targets
        assert set(DEEPNOTE_DEMOS.values()) <= set(box.deepnote.notebooks)
        assert set(POSTHOG_DEMOS.values()) <= set(box.posthog.notebooks)
        assert set(DATALORE_DEMOS.values()) <= set(box.datalore.notebooks)

        async with DeepnoteBackend(env["DEEPNOTE_API_KEY"], base_url=env["DEEPNOTE_API_URL"]) as dn:
            run = await run_and_wait(dn, DEEPNOTE_DEMOS["fails"], poll=FAST, raise_on_failure=False)
            assert run.state is RunState.FAILED
            assert run.error is not None
            assert "fails on purpose" in run.error.message
        async with PostHogBackend(
            env["POSTHOG_PERSONAL_API_KEY"], project_id="1", base_url=env["POSTHOG_HOST"]
        ) as ph:
            run = await run_and_wait(ph, "hello", inputs={"name": "Ann"}, poll=FAST)
            assert any("Hello, Ann!" in (out.plain_text or "") for out in run.outputs)
        async with DataloreBackend(env["DATALORE_TOKEN"], base_url=env["DATALORE_URL"]) as dl:
            run = await run_and_wait(dl, "demo/hello", inputs={"name": "Ann"}, poll=FAST)
            assert run.state is RunState.SUCCEEDED
    # Two sandboxes never share a token.
    async with sandbox() as first, sandbox() as second:
        assert first.deepnote.token != second.deepnote.token


async def test_sandbox_rejects_a_bad_duration() -> None:
    with pytest.raises(ValueError, match="duration"):
        async with sandbox(duration=0):
            pass


def test_serve_refuses_an_env_file_in_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve(env_file=tmp_path / "no" / "env") == 2
    assert "its directory does not exist" in capsys.readouterr().err


def test_sandbox_command_writes_and_removes_its_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "sandbox.env"
    process = subprocess.Popen(
        [sys.executable, "-m", "notebookops", "sandbox", "--env-file", str(env_file)],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not env_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        text = env_file.read_text()
        assert "export DEEPNOTE_API_KEY=sandbox-deepnote-" in text
        assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert f"source {env_file}" in stdout
    assert "Press Ctrl-C to stop the sandbox" in stdout
    assert "sandbox stopped" in stderr
    assert not env_file.exists()


def test_the_fake_servers_import_without_pytest() -> None:
    # The sandbox ships in the package; pytest is only a development dependency.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pytest', '_pytest'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import notebookops.testing.sandbox\n"
        "import notebookops.cli\n"
        "assert 'pytest' not in sys.modules\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr


def test_the_test_kit_never_imports_the_command_line() -> None:
    # Imports run downwards: the CLI may use the test kit (`notebookops sandbox`), never the
    # other way round.
    code = (
        "import pkgutil, sys\n"
        "import notebookops.testing\n"
        "for module in pkgutil.iter_modules(notebookops.testing.__path__):\n"
        "    if module.name != 'conformance':\n"
        "        __import__(f'notebookops.testing.{module.name}')\n"
        "leaked = sorted(name for name in sys.modules if name.startswith('notebookops._cli_')\n"
        "                or name == 'notebookops.cli')\n"
        "assert not leaked, leaked\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr


def test_sandbox_help_and_usage_errors_come_from_the_sandbox_itself() -> None:
    helped = cli("sandbox", "--help", env=base_env())
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: notebookops sandbox")
    assert "--duration S" in helped.stdout
    refused = run_process(
        [sys.executable, "-m", "notebookops.testing.sandbox", "--duration", "nan"], base_env()
    )
    assert refused.returncode == 2
    assert "expected a number of seconds > 0, got 'nan'" in refused.stderr


def _gone(pid: int) -> bool:
    """The process has exited (a zombie no one reaps counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_print_env_returns_once_ready_for_eval_in_a_script(tmp_path: Path) -> None:
    # The README's block, pasted as a script: no race between the sandbox and its variables.
    notebookops = f"{shlex.quote(sys.executable)} -m notebookops"
    script = (
        f'eval "$({notebookops} sandbox --print-env --duration 0.2)"\n'
        'echo "pid=$NOTEBOOKOPS_SANDBOX_PID"\n'
        f"{notebookops} run posthog:hello -i name=Ada -q --poll-interval 0.05\n"
    )
    result = subprocess.run(
        ["sh", "-c", script],
        env=base_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    pids = [line[4:] for line in result.stdout.splitlines() if line.startswith("pid=")]
    assert pids, result.stderr
    pid = int(pids[0])
    try:
        assert result.returncode == 0, result.stderr
        assert "Hello, Ada!" in result.stdout
        assert f"stop it with: kill {pid}" in result.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid), "the background sandbox outlived its SIGTERM"


def test_output_to_a_closed_pipe_is_no_error() -> None:
    # `notebookops run ... | head -1`: the reader leaves early; the run is not an error.
    notebook = Path(__file__).resolve().parents[2] / "examples" / "notebooks" / "hello.ipynb"
    process = subprocess.Popen(
        [sys.executable, "-m", "notebookops", "run", str(notebook), "-q"],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "error" not in stderr
