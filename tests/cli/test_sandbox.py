"""The sandbox: its servers and demos in-process, and the command that serves them."""

from __future__ import annotations

import os
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

from .conftest import base_env

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
    result = subprocess.run(
        [sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
