"""What a newcomer meets first (issue 29): inputs, parameters files, help, Ctrl-C at start-up.

Each runs the CLI as a subprocess, as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from notebookops.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from notebookops.policies import PollPolicy
from notebookops.testing.sandbox import DEEPNOTE_DEMOS

from .conftest import EXAMPLES, FAST, SandboxInfo, base_env, cli, python

DEEPNOTE_HELLO = f"deepnote:{DEEPNOTE_DEMOS['hello']}"
HELLO_IPYNB = EXAMPLES / "notebooks" / "hello.ipynb"


# -------------------------------------------------------------------- --timeout none


def test_timeout_none_waits_as_long_as_the_run_takes(sandbox: SandboxInfo) -> None:
    result = cli(
        "run", "posthog:hello", "-i", "name=Ada", "--timeout", "none", *FAST, env=sandbox.env
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert "Hello, Ada!" in result.stdout


def test_timeout_refuses_what_is_neither_seconds_nor_none() -> None:
    result = cli("run", "posthog:hello", "--timeout", "forever", env=base_env())
    assert result.returncode == EXIT_USAGE
    assert "expected a number of seconds, got 'forever'" in result.stderr


# -------------------------------------------------------------------- inputs


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e999"])
def test_non_finite_numbers_are_refused_alike(value: str) -> None:
    result = cli("run", "posthog:hello", "-i", f"count={value}", env=base_env())
    assert result.returncode == EXIT_USAGE
    assert "notebookops: error: input 'count' must be a finite number" in result.stderr
    assert "Traceback" not in result.stderr


def test_mistyped_json_in_an_input_is_passed_as_text_with_a_warning(
    sandbox: SandboxInfo,
) -> None:
    result = cli("run", "posthog:hello", "-i", "name=[Ada", "-q", *FAST, env=sandbox.env)
    assert result.returncode == EXIT_OK, result.stderr
    assert "notebookops: warning: -i name=[Ada is not valid JSON" in result.stderr
    assert "Hello, [Ada!" in result.stdout
    quiet = cli("run", "posthog:hello", "-s", "name=[Ada", "-q", *FAST, env=sandbox.env)
    assert quiet.returncode == EXIT_OK, quiet.stderr
    assert "warning" not in quiet.stderr


def test_deepnote_number_input_advice_shows_the_command_line_form(sandbox: SandboxInfo) -> None:
    result = cli("run", DEEPNOTE_HELLO, "-i", "name=5", *FAST, env=sandbox.env)
    assert result.returncode == EXIT_USAGE
    assert "notebookops: hint: Deepnote takes numbers as text: pass -s name=5" in result.stderr
    assert "Traceback" not in result.stderr


def test_parameters_file_yaml_or_json_with_command_line_overrides(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    yaml_file = tmp_path / "params.yaml"
    yaml_file.write_text("# papermill style\nname: Ada\n")
    from_yaml = cli("run", "posthog:hello", "-f", str(yaml_file), "-q", *FAST, env=sandbox.env)
    assert from_yaml.returncode == EXIT_OK, from_yaml.stderr
    assert "Hello, Ada!" in from_yaml.stdout

    json_file = tmp_path / "params.json"
    json_file.write_text(json.dumps({"name": "Grace"}))
    overridden = cli(
        "run", "posthog:hello", "--parameters", str(json_file), "-s", "name=Bob", "-q", *FAST,
        env=sandbox.env,
    )  # fmt: skip
    assert overridden.returncode == EXIT_OK, overridden.stderr
    assert "Hello, Bob!" in overridden.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the parameters file"),
        ("- just\n- a list\n", "must hold a mapping of NAME: VALUE"),
        ("name: [unclosed\n", "is not valid YAML or JSON"),
    ],
)
def test_a_bad_parameters_file_is_a_usage_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "params.yaml"
    if content is not None:
        path.write_text(content)
    result = cli("run", "posthog:hello", "-f", str(path), env=base_env())
    assert result.returncode == EXIT_USAGE
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_local_run_names_the_error_type_once() -> None:
    result = cli("run", str(HELLO_IPYNB), "-i", "name=3", "-q", env=base_env())
    assert result.returncode == EXIT_FAILED
    line = result.error_lines()[0]
    assert ": TypeError: object of type 'int' has no len()" in line
    assert "TypeError: TypeError" not in result.output


# -------------------------------------------------------------------- help and usage


def test_notebookops_alone_prints_the_help_and_exits_2() -> None:
    result = cli(env=base_env())
    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.startswith("usage: notebookops")
    assert "exit codes:" in result.stderr


@pytest.mark.parametrize(
    ("args", "help_of"),
    [
        (["run", "x.ipynb", "--timout", "5"], "notebookops run"),
        (["status", "h.json", "--verbose"], "notebookops status"),
        (["list", "deepnote", "runs", "abc", "--bogus"], "notebookops list deepnote runs"),
    ],
)
def test_an_unknown_option_points_to_the_subcommands_help(args: list[str], help_of: str) -> None:
    result = cli(*args, env=base_env())
    assert result.returncode == EXIT_USAGE
    assert "notebookops: error: unrecognized arguments:" in result.stderr
    assert f"notebookops: hint: see '{help_of} --help'" in result.stderr


@pytest.mark.parametrize("what", ["projects", "notebooks", "runs"])
def test_list_deepnote_subcommands_describe_themselves(what: str) -> None:
    result = cli("list", "deepnote", what, "--help", env=base_env())
    assert result.returncode == EXIT_OK
    description = result.stdout.split("\n\n")[1]
    assert description.startswith("List ")


def test_poll_interval_help_names_the_real_cap() -> None:
    result = cli("run", "--help", env=base_env())
    text = " ".join(result.stdout.split())
    assert f"back off up to {PollPolicy().maximum:g} s" in text


def test_status_and_cancel_accept_quiet(sandbox: SandboxInfo, tmp_path: Path) -> None:
    handle_file = tmp_path / "run.json"
    started = cli(
        "run", "posthog:slow", "--mode", "server", "--no-wait", "--save-handle", str(handle_file),
        env=sandbox.env,
    )  # fmt: skip
    assert started.returncode == EXIT_OK, started.stderr
    status = cli("status", "-q", str(handle_file), env=sandbox.env)
    assert status.returncode == EXIT_OK, status.stderr
    assert status.stderr == ""
    cancelled = cli("cancel", "-q", str(handle_file), env=sandbox.env)
    assert cancelled.returncode == EXIT_OK, cancelled.stderr
    assert cancelled.stderr == ""
    assert "cancelled" in cancelled.stdout


def test_list_deepnote_runs_shows_normalised_states(sandbox: SandboxInfo) -> None:
    ran = cli("run", DEEPNOTE_HELLO, "-s", "name=x", "-q", *FAST, env=sandbox.env)
    assert ran.returncode == EXIT_OK, ran.stderr
    listed = cli("list", "deepnote", "runs", DEEPNOTE_DEMOS["hello"], "--json", env=sandbox.env)
    assert listed.returncode == EXIT_OK, listed.stderr
    rows = listed.json()
    assert rows
    assert {row["state"] for row in rows} <= {"pending", "running", "succeeded"}
    assert any(row["state"] == "succeeded" and row["vendor_status"] == "success" for row in rows)


def test_wait_on_a_finished_run_does_not_time_it(sandbox: SandboxInfo, tmp_path: Path) -> None:
    handle_file = tmp_path / "run.json"
    ran = cli(
        "run", DEEPNOTE_HELLO, "-s", "name=x", "-q", "--save-handle", str(handle_file), *FAST,
        env=sandbox.env,
    )  # fmt: skip
    assert ran.returncode == EXIT_OK, ran.stderr
    assert " after " in ran.stdout.splitlines()[0]
    waited = cli("wait", str(handle_file), *FAST, env=sandbox.env)
    assert waited.returncode == EXIT_OK, waited.stderr
    first = waited.stdout.splitlines()[0]
    assert first.startswith("deepnote run ")
    assert "succeeded" in first
    assert " after " not in first


# -------------------------------------------------------------------- Ctrl-C at start-up


def test_ctrl_c_while_the_command_line_loads_prints_no_traceback() -> None:
    # Deterministic stand-in for a Ctrl-C that lands while the modules are being imported.
    code = (
        "import builtins, sys\n"
        "from notebookops import _cli_entry\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "sys.exit(_cli_entry.main())\n"
    )
    result = python(code)
    assert result.returncode == EXIT_INTERRUPTED
    assert result.stderr == "notebookops: interrupted\n"


def test_the_command_lines_start_up_imports_nothing_heavy_before_it_can_catch_ctrl_c() -> None:
    # The console script imports notebookops._cli_entry, and so the package root, before any
    # of our code runs: both must be light, so that everything a Ctrl-C can land in happens
    # inside _cli_entry's guard.
    code = (
        "import sys\n"
        "import notebookops._cli_entry\n"
        "heavy = sorted(m for m in ('anyio', 'attr', 'cattrs', 'aiohttp') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
