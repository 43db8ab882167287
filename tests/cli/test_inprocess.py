"""``notebookops.cli.main`` called in this process: the many error paths, quickly.

The subprocess tests (test_commands.py) prove the real command behaves; these cover every
refusal and edge without paying an interpreter start each.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from notebookops import RunHandle
from notebookops.cli import (
    EXIT_API_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    main,
)
from notebookops.testing.sandbox import DEEPNOTE_DEMOS

from .conftest import FAST, VENDOR_PREFIXES, SandboxInfo

HELLO = f"deepnote:{DEEPNOTE_DEMOS['hello']}"


@attrs.frozen
class Outcome:
    code: int | str | None
    out: str
    err: str


RunMain = Callable[..., Outcome]


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]) -> RunMain:
    def call(*args: str) -> Outcome:
        try:
            code: int | str | None = main(list(args))
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return call


@pytest.fixture
def vendor_env(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxInfo) -> SandboxInfo:
    """The sandbox's variables in this process's environment (and no others)."""
    for name in list(os.environ):
        if name.startswith(VENDOR_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in sandbox.env.items():
        if name.startswith(VENDOR_PREFIXES):
            monkeypatch.setenv(name, value)
    return sandbox


def one_error(err: str) -> str:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("notebookops: error: ")]
    assert len(errors) == 1, err
    return errors[0]


# -------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "the following arguments are required: TARGET"),
        (["bogus"], "invalid choice"),
        (["run", "x.ipynb", "--timeout", "0"], "expected a number of seconds > 0"),
        (["run", "x.ipynb", "--timeout", "soon"], "expected a number of seconds"),
        (["list", "deepnote", "runs", "abc", "--limit", "0"], "expected a number >= 1"),
        (["list", "deepnote", "runs", "abc", "--limit", "x"], "expected a whole number"),
        (["wait"], "HANDLE_FILE"),
    ],
)
def test_argument_errors(run_main: RunMain, args: list[str], message: str) -> None:
    outcome = run_main(*args)
    assert outcome.code == EXIT_USAGE
    assert message in one_error(outcome.err)
    assert "notebookops: hint: see 'notebookops" in outcome.err


def test_help_documents_exit_codes_targets_and_environment(run_main: RunMain) -> None:
    outcome = run_main("--help")
    assert outcome.code == 0
    for text in (
        "130  interrupted",
        "0    the run succeeded",
        "3    the run did not finish within --timeout",
        "4    API or transport error",
        "5    the run was cancelled",
        "deepnote:<notebookId>",
        "DEEPNOTE_API_URL",
        "POSTHOG_PERSONAL_API_KEY",
        "DATALORE_URL",
    ):
        assert text in outcome.out
    run_help = run_main("run", "--help")
    assert "--save-handle FILE" in run_help.out
    assert "2    usage or configuration error" in run_help.out
    assert "--version" in outcome.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nothing-here"], "neither a .ipynb file nor a known target"),
        (["run", "foo:bar"], "unknown backend 'foo'"),
        (["run", "deepnote:"], "names no notebook"),
        (["run", "x.ipynb", "-i", "novalue"], "-i takes NAME=VALUE"),
        (["run", "x.ipynb", "-i", "a=1", "-s", "a=2"], "input 'a' is given twice"),
        (["run", "x.ipynb", "--mode", "server"], "--mode applies to posthog"),
        (["run", "deepnote:abc", "--output", "out.ipynb"], "--output applies to local"),
    ],
)
def test_target_and_input_errors(run_main: RunMain, args: list[str], message: str) -> None:
    outcome = run_main(*args)
    assert outcome.code == EXIT_USAGE
    assert message in one_error(outcome.err)


# -------------------------------------------------------------------- configuration


def test_missing_credentials(run_main: RunMain, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATALORE_TOKEN", "DEEPNOTE_API_KEY", "POSTHOG_PERSONAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for args, variable in (
        (["run", "datalore:a/b"], "DATALORE_TOKEN"),
        (["list", "deepnote", "projects"], "DEEPNOTE_API_KEY"),
        (["list", "posthog", "notebooks"], "POSTHOG_PERSONAL_API_KEY"),
    ):
        outcome = run_main(*args)
        assert outcome.code == EXIT_USAGE
        assert variable in one_error(outcome.err)


def test_vendor_input_rules_and_string_inputs(run_main: RunMain, vendor_env: SandboxInfo) -> None:
    refused = run_main("run", HELLO, "-i", "name=5")
    assert refused.code == EXIT_USAGE
    assert "Deepnote takes numbers as strings" in one_error(refused.err)
    accepted = run_main("run", HELLO, "-s", "name=5", "-q", *FAST)
    assert accepted.code == EXIT_OK, accepted.err
    assert 'inputs={"name": "5"}' in accepted.out


def test_refusals_for_runs_that_end_with_the_process(
    run_main: RunMain, vendor_env: SandboxInfo
) -> None:
    for flag in ("--no-wait", "--detach"):
        outcome = run_main("run", "posthog:hello", flag)
        assert outcome.code == EXIT_USAGE
        assert f"{flag} would abandon the run" in one_error(outcome.err)


def test_handle_files_that_cannot_be_used(
    run_main: RunMain, vendor_env: SandboxInfo, tmp_path: Path
) -> None:
    cases = {
        "local": (RunHandle(backend="local", run_id="r", notebook_id="x.ipynb").to_json(),
                  "live only in the process that started them"),
        "kernel": (RunHandle(backend="posthog", run_id="k", notebook_id="hello").to_json(),
                   "use --mode server"),
        "alien": (RunHandle(backend="jupyterhub", run_id="a", notebook_id="n").to_json(),
                  "unknown backend 'jupyterhub'"),
        "broken": ("{not json", "not a valid notebookops run handle"),
    }  # fmt: skip
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        for command in ("status", "wait", "cancel"):
            outcome = run_main(command, str(path))
            assert outcome.code == EXIT_USAGE, (name, command)
            assert message in one_error(outcome.err)
    missing = run_main("status", str(tmp_path / "missing.json"))
    assert missing.code == EXIT_USAGE
    assert "cannot read the handle file" in missing.err


def test_save_handle_problems_are_found_before_the_run_starts(
    run_main: RunMain, vendor_env: SandboxInfo, tmp_path: Path
) -> None:
    for target, message in (
        (tmp_path / "no" / "h.json", "does not exist"),
        (tmp_path, "is a directory"),
    ):
        outcome = run_main("run", HELLO, "--save-handle", str(target))
        assert outcome.code == EXIT_USAGE
        assert message in one_error(outcome.err)
        assert "started" not in outcome.err


def test_cancel_without_the_capability(
    run_main: RunMain, vendor_env: SandboxInfo, tmp_path: Path
) -> None:
    handle_file = tmp_path / "h.json"
    started = run_main("run", HELLO, "--no-wait", "--save-handle", str(handle_file))
    assert started.code == EXIT_OK
    assert RunHandle.from_json(started.out) == RunHandle.from_json(handle_file.read_text())
    outcome = run_main("cancel", str(handle_file))
    assert outcome.code == EXIT_USAGE
    assert "cannot cancel runs" in one_error(outcome.err)


def test_timeout_cancels_when_the_backend_can(run_main: RunMain, vendor_env: SandboxInfo) -> None:
    outcome = run_main("run", "posthog:slow", "--timeout", "0.3", *FAST)
    assert outcome.code == EXIT_TIMEOUT
    assert "it was cancelled" in one_error(outcome.err)
    assert "posthog run" in outcome.out  # the last state seen
    assert "notebookops: hint" not in outcome.err  # nothing left to resume


def test_timeout_with_detach_leaves_a_resumable_run(
    run_main: RunMain, vendor_env: SandboxInfo, tmp_path: Path
) -> None:
    handle_file = tmp_path / "h.json"
    outcome = run_main(
        "run", "posthog:slow", "--mode", "server", "--detach", "--timeout", "0.3",
        "--save-handle", str(handle_file), "--json", *FAST,
    )  # fmt: skip
    assert outcome.code == EXIT_TIMEOUT
    assert "detach was requested" in one_error(outcome.err)
    assert f"notebookops wait {handle_file}" in outcome.err
    again = run_main("wait", str(handle_file), "--timeout", "0.2", *FAST)
    assert again.code == EXIT_TIMEOUT
    assert "it was cancelled" in again.err


def test_lists(run_main: RunMain, vendor_env: SandboxInfo) -> None:
    run_main("run", HELLO, "-s", "name=x", "-q", *FAST)
    runs = run_main("list", "deepnote", "runs", DEEPNOTE_DEMOS["hello"], "--limit", "1")
    assert runs.code == EXIT_OK
    lines = runs.out.splitlines()
    assert lines[0].split() == ["RUN", "ID", "STATE", "VENDOR", "STATUS", "CREATED", "FINISHED"]
    assert len(lines) == 2
    # The state as `run` reports it, then Deepnote's own word.
    assert lines[1].split()[1:3] == ["succeeded", "success"]
    project = run_main("list", "deepnote", "projects", "--json")
    project_id = json.loads(project.out)[0]["id"]
    one = run_main("list", "deepnote", "notebooks", "--project", project_id)
    assert f"deepnote:{DEEPNOTE_DEMOS['slow']}" in one.out
    empty = run_main("list", "posthog", "notebooks", "--search", "zzz-none")
    assert empty.code == EXIT_OK
    assert empty.out == ""
    assert "nothing to list" in empty.err
    datalore = run_main("list", "datalore")
    assert datalore.code == EXIT_USAGE
    assert "no list endpoints" in one_error(datalore.err)
    missing = run_main("list", "deepnote", "runs", "0000")
    assert missing.code == EXIT_API_ERROR


def test_main_leaves_logging_as_it_found_it(run_main: RunMain, vendor_env: SandboxInfo) -> None:
    logger = logging.getLogger("notebookops")
    before = (list(logger.handlers), logger.level, logger.propagate)
    run_main("run", "deepnote:0000", "--debug")
    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_interrupt_before_signal_handling_is_reported(
    run_main: RunMain, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio

    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(anyio, "run", interrupted)
    outcome = run_main("run", "x.ipynb")
    assert outcome.code == EXIT_INTERRUPTED
    assert "notebookops: interrupted" in outcome.err
