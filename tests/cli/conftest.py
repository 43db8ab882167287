"""Command-line tests: one sandbox process for the session, and helpers to drive the CLI.

The CLI always runs as a real subprocess (``sys.executable -m notebookops ...``) so that exit
codes, stdout/stderr separation and signal handling are what a user gets.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
#: Every variable the CLI or the examples read: cleared so the developer's own never leak in.
VENDOR_PREFIXES = ("DEEPNOTE_", "POSTHOG_", "DATALORE_")
#: Seconds a sandbox demo run takes: long enough to be seen running, short for the suite.
SANDBOX_DURATION = 0.3
#: Fast polling for the CLI against the sandbox.
FAST = ("--poll-interval", "0.05")
TIMEOUT = 60.0


def base_env(**extra: str) -> dict[str, str]:
    """The parent's environment without vendor variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(VENDOR_PREFIXES)}
    env.setdefault("JUPYTER_PLATFORM_DIRS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@attrs.frozen
class Result:
    """A finished CLI (or example) process."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("notebookops: error")]


def run_process(
    args: list[str], env: Mapping[str, str], *, cwd: Path | None = None, timeout: float = TIMEOUT
) -> Result:
    done = subprocess.run(
        args,
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def python(code: str) -> Result:
    """``python -c CODE`` to completion, in the tests' environment."""
    return run_process([sys.executable, "-c", code], base_env())


def cli(*args: str, env: Mapping[str, str], cwd: Path | None = None) -> Result:
    """``python -m notebookops ARGS`` to completion."""
    return run_process([sys.executable, "-m", "notebookops", *args], env, cwd=cwd)


class Running:
    """A CLI process still going: read its stderr line by line, signal it, collect it."""

    def __init__(self, args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "notebookops", *args],
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        # A thread, because select() cannot see lines already buffered by the text wrapper.
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """Read stderr until a line matches ``pattern`` (regex); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        self.process.kill()
        self.process.wait()
        pytest.fail(f"no line matching {pattern!r} on stderr; saw: {''.join(self.seen)}")

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = TIMEOUT) -> Result:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the CLI did not exit; stderr so far: {''.join(self.seen)}")
        self._reader.join(timeout=5)
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                self.seen.append(line)
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        self.process.stdout.close()
        assert self.process.stderr is not None
        self.process.stderr.close()
        return Result(self.process.returncode, stdout, "".join(self.seen))


@attrs.frozen
class SandboxInfo:
    """The running sandbox process's variables."""

    env: dict[str, str]

    def tokens(self) -> list[str]:
        return [
            self.env[name]
            for name in ("DEEPNOTE_API_KEY", "POSTHOG_PERSONAL_API_KEY", "DATALORE_TOKEN")
        ]


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``python -m notebookops.testing.sandbox`` for the whole session."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "notebookops.testing.sandbox",
            "--duration",
            str(SANDBOX_DURATION),
        ],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    exports: dict[str, str] = {}
    lines: list[str] = []
    deadline = time.monotonic() + 30
    for line in process.stdout:
        lines.append(line)
        if line.startswith("export "):
            name, _, value = line[len("export ") :].strip().partition("=")
            exports[name] = shlex.split(value)[0]
        if "Ctrl-C to stop" in line or time.monotonic() > deadline:
            break
    if "Ctrl-C to stop" not in "".join(lines):
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"the sandbox did not start: {''.join(lines)}{stderr}")
    try:
        yield process, exports
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


@pytest.fixture
def sandbox(
    sandbox_process: tuple[subprocess.Popen[str], dict[str, str]],
) -> SandboxInfo:
    process, exports = sandbox_process
    assert process.poll() is None, "the sandbox process died"
    return SandboxInfo(env=base_env(**exports))


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    """A Jupyter runtime directory of the test's own, to find its kernels afterwards."""
    path = tmp_path / "jupyter-runtime"
    path.mkdir()
    return path


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (kernels name their connection
    file, which lives in the test's runtime directory). Empty without /proc."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def assert_no_kernels(runtime: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    left = processes_mentioning(str(runtime))
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_mentioning(str(runtime))
    assert not left, f"kernel processes outlived the CLI: {left}"
