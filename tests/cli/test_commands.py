"""The CLI as a user runs it (a subprocess), against the sandbox's fake vendors."""

from __future__ import annotations

import signal
from pathlib import Path

from notebookops import RunHandle
from notebookops.cli import (
    EXIT_API_ERROR,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)
from notebookops.testing.sandbox import DATALORE_DEMOS, DEEPNOTE_DEMOS, POSTHOG_DEMOS

from .conftest import FAST, Running, SandboxInfo, base_env, cli

HELLO = f"deepnote:{DEEPNOTE_DEMOS['hello']}"


def assert_clean_error(result_stderr: str) -> None:
    """Errors are one `notebookops: error:` line (plus a hint), never a traceback."""
    assert "Traceback" not in result_stderr
    errors = [line for line in result_stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result_stderr
    assert errors[0].startswith("notebookops: error: ")


# -------------------------------------------------------------------- outcomes and exit codes


def test_run_succeeds_with_json_on_stdout_and_progress_on_stderr(sandbox: SandboxInfo) -> None:
    result = cli("run", HELLO, "-i", "name=Ada", "--json", *FAST, env=sandbox.env)
    assert result.returncode == EXIT_OK, result.stderr
    run = result.json()
    assert run["state"] == "succeeded"
    assert run["handle"]["backend"] == "deepnote"
    assert any('"name": "Ada"' in (output["text"] or "") for output in run["outputs"])
    assert "notebookops: started deepnote run" in result.stderr
    assert "running" in result.stderr or "pending" in result.stderr
    assert "raw" not in run


def test_run_human_summary_lists_outputs(sandbox: SandboxInfo) -> None:
    result = cli("run", "posthog:hello", "-i", "name=Grace", *FAST, env=sandbox.env)
    assert result.returncode == EXIT_OK, result.stderr
    assert "succeeded" in result.stdout
    assert "Hello, Grace!" in result.stdout
    assert "cell 3 of 3" in result.stderr  # progress from Run.progress


def test_failed_run_exits_1_with_the_reason(sandbox: SandboxInfo) -> None:
    result = cli("run", f"posthog:{POSTHOG_DEMOS['fails']}", *FAST, env=sandbox.env)
    assert result.returncode == EXIT_FAILED
    assert_clean_error(result.stderr)
    assert "failed in cell 1" in result.stderr
    assert "this demo notebook fails on purpose" in result.stdout  # the notebook's traceback


def test_failed_run_json_still_prints_the_run(sandbox: SandboxInfo) -> None:
    target = f"datalore:{DATALORE_DEMOS['fails']}"
    result = cli("run", target, "-i", "name=x", "--json", "-q", *FAST, env=sandbox.env)
    assert result.returncode == EXIT_FAILED
    assert result.json()["state"] == "failed"
    assert "notebookops: started datalore run" in result.stderr
    assert "datalore run run" in result.stderr
    assert "failed" in result.stderr


def test_timeout_on_a_backend_without_cancel_leaves_the_run_and_says_how_to_resume(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    handle_file = tmp_path / "slow.json"
    result = cli(
        "run",
        f"datalore:{DATALORE_DEMOS['slow']}",
        "--timeout",
        "0.4",
        "--save-handle",
        str(handle_file),
        *FAST,
        env=sandbox.env,
    )
    assert result.returncode == EXIT_TIMEOUT
    assert_clean_error(result.stderr)
    assert "left running" in result.stderr
    assert f"notebookops wait {handle_file}" in result.stderr
    assert RunHandle.from_json(handle_file.read_text()).backend == "datalore"


def test_api_error_exits_4_with_one_line_and_a_hint(sandbox: SandboxInfo) -> None:
    result = cli("run", "deepnote:0000", *FAST, env=sandbox.env)
    assert result.returncode == EXIT_API_ERROR
    assert_clean_error(result.stderr)
    assert "404" in result.stderr
    assert "notebookops: hint: check the id" in result.stderr


def test_usage_error_exits_2_without_traceback() -> None:
    result = cli("run", "what:ever", env=base_env())
    assert result.returncode == EXIT_USAGE
    assert_clean_error(result.stderr)
    assert "notebookops: hint: see 'notebookops run --help'" in result.stderr


def test_debug_shows_the_traceback(sandbox: SandboxInfo) -> None:
    result = cli("run", "deepnote:0000", "--debug", env=sandbox.env)
    assert result.returncode == EXIT_API_ERROR
    assert "Traceback (most recent call last)" in result.stderr
    assert "notebookops.errors.NotFound" in result.stderr
    assert result.stderr.rstrip().splitlines()[-2].startswith("notebookops: error: ")


# -------------------------------------------------------------------- secrets


def test_no_token_in_any_output(sandbox: SandboxInfo, tmp_path: Path) -> None:
    leaky = "tok-LEAKCHECK-3f9a1c77e2"
    wrong = dict(sandbox.env, DEEPNOTE_API_KEY=leaky, POSTHOG_PERSONAL_API_KEY=f"phx_{leaky}")
    handle_file = tmp_path / "h.json"
    refused = cli("run", HELLO, "--debug", env=wrong)
    assert refused.returncode == EXIT_API_ERROR
    assert "credentials were refused: check DEEPNOTE_API_KEY" in refused.stderr
    refused_too = cli("list", "posthog", "notebooks", "--debug", "--json", env=wrong)
    assert refused_too.returncode == EXIT_API_ERROR
    # With the right tokens: a whole run in debug mode, the handle saved before the wait.
    ran = cli(
        "run", HELLO, "-s", "name=x", "--json", "--debug", "--save-handle", str(handle_file),
        *FAST, env=sandbox.env,
    )  # fmt: skip
    assert ran.returncode == EXIT_OK, ran.stderr
    assert RunHandle.from_json(handle_file.read_text()).run_id == ran.json()["handle"]["run_id"]
    secrets = [leaky, *sandbox.tokens()]
    for result in (refused, refused_too, ran):
        for secret in secrets:
            assert secret not in result.output
    assert all(secret not in handle_file.read_text() for secret in secrets)


# -------------------------------------------------------------------- handles


def test_save_handle_then_status_and_wait(sandbox: SandboxInfo, tmp_path: Path) -> None:
    handle_file = tmp_path / "run.json"
    started = cli(
        "run",
        HELLO,
        "-i",
        "name=Ada",
        "--no-wait",
        "--save-handle",
        str(handle_file),
        env=sandbox.env,
    )
    assert started.returncode == EXIT_OK, started.stderr
    handle = RunHandle.from_json(started.stdout)
    assert RunHandle.from_json(handle_file.read_text()) == handle
    assert f"notebookops wait {handle_file}" in started.stderr

    status = cli("status", str(handle_file), "--json", env=sandbox.env)
    assert status.returncode == EXIT_OK
    assert status.json()["handle"]["run_id"] == handle.run_id
    assert status.json()["state"] in ("pending", "running", "succeeded")

    waited = cli("wait", str(handle_file), "--json", *FAST, env=sandbox.env)
    assert waited.returncode == EXIT_OK, waited.stderr
    assert waited.json()["state"] == "succeeded"
    assert f"following deepnote run {handle.run_id}" in waited.stderr

    summary = cli("status", str(handle_file), env=sandbox.env)
    assert summary.returncode == EXIT_OK
    assert f"deepnote run {handle.run_id}: succeeded" in summary.stdout


def test_cancel_from_another_process_ends_the_wait_with_exit_5(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    handle_file = tmp_path / "server.json"
    started = cli(
        "run",
        "posthog:slow",
        "--mode",
        "server",
        "--no-wait",
        "--save-handle",
        str(handle_file),
        env=sandbox.env,
    )
    assert started.returncode == EXIT_OK, started.stderr
    waiting = Running(["wait", str(handle_file), *FAST], sandbox.env)
    waiting.wait_for("following posthog run")
    cancelled = cli("cancel", str(handle_file), env=sandbox.env)
    assert cancelled.returncode == EXIT_OK, cancelled.stderr
    assert "cancel requested" in cancelled.stderr
    assert "cancelled" in cancelled.stdout
    result = waiting.finish()
    assert result.returncode == EXIT_CANCELLED
    assert "was cancelled" in result.stderr


# -------------------------------------------------------------------- Ctrl-C


def test_sigint_cancels_the_remote_run(sandbox: SandboxInfo) -> None:
    running = Running(["run", "posthog:slow", *FAST], sandbox.env)
    running.wait_for(r"cell 1 of 2")
    running.send(signal.SIGINT)
    result = running.finish()
    assert result.returncode == EXIT_INTERRUPTED
    assert "interrupted: cancelled posthog run" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigint_on_a_backend_that_cannot_cancel_says_the_run_goes_on(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    handle_file = tmp_path / "slow.json"
    args = ["run", f"deepnote:{DEEPNOTE_DEMOS['slow']}", "--save-handle", str(handle_file)]
    running = Running([*args, *FAST], sandbox.env)
    running.wait_for(r": running")
    running.send(signal.SIGINT)
    result = running.finish()
    assert result.returncode == EXIT_INTERRUPTED
    assert "cannot cancel runs" in result.stderr
    assert "is still running" in result.stderr
    # As at a timeout: how to pick the run up again.
    assert f"notebookops: hint: follow it with: notebookops wait {handle_file}" in result.stderr


def test_sigterm_with_detach_leaves_the_run_and_it_can_be_cancelled_later(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    handle_file = tmp_path / "h.json"
    args = [
        "run",
        "posthog:slow",
        "--mode",
        "server",
        "--detach",
        "--save-handle",
        str(handle_file),
        *FAST,
    ]
    running = Running(args, sandbox.env)
    running.wait_for(r": running")
    running.send(signal.SIGTERM)
    result = running.finish()
    assert result.returncode == EXIT_INTERRUPTED
    assert "left posthog run" in result.stderr
    assert "(--detach)" in result.stderr
    assert f"notebookops wait {handle_file}" in result.stderr
    status = cli("status", str(handle_file), "--json", env=sandbox.env)
    assert status.json()["state"] == "running"
    assert cli("cancel", str(handle_file), env=sandbox.env).returncode == EXIT_OK


# -------------------------------------------------------------------- lists


def test_list_commands(sandbox: SandboxInfo) -> None:
    projects = cli("list", "deepnote", "projects", env=sandbox.env)
    assert projects.returncode == EXIT_OK, projects.stderr
    assert projects.stdout.splitlines()[0].split() == ["ID", "NAME", "NOTEBOOKS", "UPDATED"]
    assert "Sandbox demos" in projects.stdout

    notebooks = cli("list", "deepnote", "notebooks", "--json", env=sandbox.env)
    targets = {row["target"] for row in notebooks.json()}
    assert {f"deepnote:{notebook_id}" for notebook_id in DEEPNOTE_DEMOS.values()} <= targets

    posthog = cli("list", "posthog", "notebooks", "--search", "hel", env=sandbox.env)
    assert posthog.returncode == EXIT_OK
    assert "posthog:hello" in posthog.stdout


def test_the_start_line_says_which_mode_a_posthog_run_took(sandbox: SandboxInfo) -> None:
    auto = cli("run", "posthog:hello", "-i", "name=Ada", *FAST, env=sandbox.env)
    assert auto.returncode == EXIT_OK, auto.stderr
    assert "in server mode" in auto.stderr  # the sandbox's PostHog has server runs
    kernel = cli(
        "run", "posthog:hello", "-i", "name=Ada", "--mode", "kernel", *FAST, env=sandbox.env
    )
    assert kernel.returncode == EXIT_OK, kernel.stderr
    assert "in kernel mode" in kernel.stderr
