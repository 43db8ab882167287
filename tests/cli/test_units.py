"""The command line's pure parts: parsing, exit codes, hints, rendering, the console."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from notebookops import (
    Artifact,
    AuthenticationError,
    BadRequest,
    CellOutput,
    ConfigurationError,
    ConnectError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResponseDecodeError,
    Run,
    RunCancelled,
    RunErrorInfo,
    RunFailed,
    RunHandle,
    RunProgress,
    RunState,
    RunTimeout,
    ServerError,
    StartOutcomeUnknown,
    UnsupportedOperation,
)
from notebookops._cli_render import (
    MAX_OUTPUT_LINES,
    Console,
    Progress,
    failure_text,
    format_elapsed,
    format_run,
    format_table,
    progress_text,
)
from notebookops._cli_targets import (
    Target,
    not_resumable_reason,
    parse_inputs,
    parse_parameters,
    parse_target,
    parse_value,
    secret_values,
    text_warning,
)
from notebookops.cli import (
    EXIT_API_ERROR,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    exit_code_for,
    hint_for,
    report_error,
)

HANDLE = RunHandle(backend="deepnote", run_id="r-1", notebook_id="nb")


def api(cls: type[Exception], vendor: str = "deepnote", **extra: object) -> Exception:
    return cls(  # type: ignore[call-arg]
        "boom", status=400, vendor=vendor, method="GET", url="https://x/y", **extra
    )


# -------------------------------------------------------------------- targets and inputs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deepnote:abc123", Target("deepnote", "abc123")),
        ("DeepNote:abc123", Target("deepnote", "abc123")),
        ("posthog:Xy12", Target("posthog", "Xy12")),
        ("datalore:owner/id", Target("datalore", "owner/id")),
        ("datalore:https://datalore.jetbrains.com/notebook/o/i", Target("datalore", "https://datalore.jetbrains.com/notebook/o/i")),
        ("local:notes/report", Target("local", "notes/report")),
        ("report.ipynb", Target("local", "report.ipynb")),
        ("C:\\work\\report.ipynb", Target("local", "C:\\work\\report.ipynb")),
    ],
)  # fmt: skip
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


def test_an_existing_file_is_a_local_target(tmp_path: Path) -> None:
    path = tmp_path / "notebook.json"
    path.write_text("{}")
    assert parse_target(str(path)) == Target("local", str(path))


@pytest.mark.parametrize("text", ["", "nothing", "foo:bar", "posthog:", "datalore:  "])
def test_bad_targets(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"deepnote:<notebookId>|names no notebook"):
        parse_target(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("2.5", 2.5),
        ("true", True),
        ("null", None),
        ('"5"', "5"),
        ('["a", "b"]', ["a", "b"]),
        ('{"k": 1}', {"k": 1}),
        ("Ada", "Ada"),
        ("2026-11-22", "2026-11-22"),
        ("NaN2", "NaN2"),
        ("", ""),
    ],
)
def test_parse_value(text: str, value: object) -> None:
    assert parse_value(text) == value


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "[1, NaN]", "1e999", "[-1e999]"])
def test_parse_value_refuses_numbers_json_cannot_carry(text: str) -> None:
    # As 1e999 is refused (it reads as inf), rather than passed on as text.
    with pytest.raises(ConfigurationError, match=r"input 'count' must be a finite number"):
        parse_value(text, name="count")


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        ("[1, 2", "is not valid JSON"),
        ('{"a": 1', "is not valid JSON"),
        ('"unterminated', "is not valid JSON"),
        ("True", "did you mean true?"),
        ("None", "did you mean null?"),
        ("Ada", None),
        ("2026-11-22", None),
        ("", None),
        ("[ok]", "is not valid JSON"),
    ],
)
def test_text_warning(text: str, warned: str | None) -> None:
    warning = text_warning("x", text)
    if warned is None:
        assert warning is None
    else:
        assert warning is not None
        assert warned in warning
        assert warning.startswith(f"-i x={text} ")


def test_parse_inputs_warns_about_mistyped_json() -> None:
    heard: list[str] = []
    inputs = parse_inputs(["a=[1,", "b=5", "c=Ada"], ["d=[1,"], warn=heard.append)
    assert inputs == {"a": "[1,", "b": 5, "c": "Ada", "d": "[1,"}
    assert len(heard) == 1
    assert heard[0].startswith("-i a=[1, is not valid JSON")


def test_parse_parameters() -> None:
    text = "name: Ada\ncount: 3\nday: 2026-11-22\ntags: [a, b]\nnested: {when: 2026-11-22}\n"
    assert parse_parameters(text, "p.yaml") == {
        "name": "Ada",
        "count": 3,
        "day": "2026-11-22",
        "tags": ["a", "b"],
        "nested": {"when": "2026-11-22"},
    }
    assert parse_parameters('{"name": "Ada", "count": 3}', "p.json") == {"name": "Ada", "count": 3}
    assert parse_parameters("", "empty.yaml") == {}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- a\n- b\n", "must hold a mapping of NAME: VALUE, got list"),
        ("name: [unclosed\n", "is not valid YAML or JSON"),
        ("1: one\n", "input names must be text, got 1"),
        ("count: .nan\n", "input 'count' must be a finite number"),
        ("count: [.inf]\n", "input 'count' must be a finite number"),
    ],
)
def test_parse_parameters_refusals(text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_parameters(text, "p.yaml")


def test_parse_inputs() -> None:
    assert parse_inputs(["n=5", "flag=true", "eq=a=b"], ["s=5"]) == {
        "n": 5,
        "flag": True,
        "eq": "a=b",
        "s": "5",
    }
    with pytest.raises(ConfigurationError, match="-i takes NAME=VALUE"):
        parse_inputs(["=5"])
    with pytest.raises(ConfigurationError, match="-s takes NAME=VALUE"):
        parse_inputs([], ["novalue"])
    with pytest.raises(ConfigurationError, match="given twice"):
        parse_inputs(["a=1", "a=2"])


def test_secret_values_skip_short_and_empty_ones() -> None:
    env = {
        "DEEPNOTE_API_KEY": " dn-secret-123 ",
        "POSTHOG_PERSONAL_API_KEY": "abc",
        "DATALORE_TOKEN": "",
        "OTHER": "not-a-secret-here",
    }
    assert secret_values(env) == ["dn-secret-123"]


def test_not_resumable_reason() -> None:
    assert "--mode server" in not_resumable_reason("posthog")
    assert "local runs live only" in not_resumable_reason("local")


# -------------------------------------------------------------------- exit codes and hints


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RunFailed("x", run=None), EXIT_FAILED),
        (RunCancelled("x", run=None), EXIT_CANCELLED),
        (RunTimeout("x", run=None, cancelled=True), EXIT_TIMEOUT),
        (ConfigurationError("x"), EXIT_USAGE),
        (UnsupportedOperation("x"), EXIT_USAGE),
        (api(NotFound), EXIT_API_ERROR),
        (ConnectError("x"), EXIT_API_ERROR),
        (ResponseDecodeError("x"), EXIT_API_ERROR),
        (StartOutcomeUnknown("x", notebook="n"), EXIT_API_ERROR),
        (RuntimeError("bug"), EXIT_API_ERROR),
    ],
)
def test_exit_codes(error: Exception, code: int) -> None:
    assert exit_code_for(error) == code


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (api(AuthenticationError, "posthog"), "check POSTHOG_PERSONAL_API_KEY"),
        (api(AuthenticationError, "datalore"), "check DATALORE_TOKEN"),
        (api(PermissionDenied), "access and scopes"),
        (api(NotFound, "posthog"), "notebookops list posthog --help"),
        (api(NotFound, "datalore"), "shared with the token's account"),
        (api(RateLimited), "wait a little"),
        (api(ServerError), "try again later"),
        (ConnectError("x", vendor="datalore"), "check the network and DATALORE_URL"),
        (ConnectError("x"), "check the network"),
        (ResponseDecodeError("x"), "--debug and report it"),
        (StartOutcomeUnknown("x", notebook="n"), "check the vendor's UI"),
        (ConfigurationError("x"), "see 'notebookops run --help'"),
        (ValueError("x"), "this is a bug in notebookops"),
    ],
)
def test_hints(error: Exception, hint: str) -> None:
    assert hint in (hint_for(error, "run") or "")


def test_no_hint_when_the_message_says_it_all() -> None:
    assert hint_for(api(BadRequest)) is None
    assert hint_for(UnsupportedOperation("x")) is None


def test_report_error_is_one_line_and_scrubbed() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, secrets=["sekret-token-1"])
    code = report_error(
        console, ConfigurationError("bad\n  key sekret-token-1"), debug=False, command="run"
    )
    assert code == EXIT_USAGE
    lines = err.getvalue().splitlines()
    assert lines == [
        "notebookops: error: bad key ***",
        "notebookops: hint: see 'notebookops run --help'",
    ]
    assert out.getvalue() == ""


def test_report_error_with_debug_and_an_unexpected_error() -> None:
    err = io.StringIO()
    console = Console(io.StringIO(), err)
    try:
        raise KeyError("surprise")
    except KeyError as error:
        code = report_error(console, error, debug=True, command="run")
    text = err.getvalue()
    assert code == EXIT_API_ERROR
    assert text.startswith("Traceback (most recent call last)")
    assert "notebookops: error: unexpected KeyError: 'surprise'" in text


# -------------------------------------------------------------------- rendering


def test_format_elapsed() -> None:
    assert format_elapsed(4.24) == "4.2s"
    assert format_elapsed(65) == "1m05s"
    assert format_elapsed(7380) == "2h03m"


def test_progress_text() -> None:
    run = Run(
        handle=HANDLE,
        state=RunState.RUNNING,
        progress=RunProgress(completed=2, total=5, current="load\ndata"),
    )
    assert (
        progress_text(run, None, 3.14) == "deepnote run r-1: running, 3.1s, cell 2 of 5 (load data)"
    )
    assert progress_text(None, HANDLE, None) == "deepnote run r-1: starting"
    assert progress_text(None, None, 1) == "run: starting, 1.0s"
    odd = Run(handle=HANDLE, state=RunState.UNKNOWN, vendor_state="warming_up")
    assert (
        progress_text(odd, None, None, compact=True) == "unknown (warming_up)  [deepnote run r-1]"
    )
    partial = Run(handle=HANDLE, state=RunState.RUNNING, progress=RunProgress(completed=1))
    assert progress_text(partial, None, None) == "deepnote run r-1: running, cell 1"


def test_format_run_shows_error_outputs_and_artifacts() -> None:
    markdown = {"text/markdown": "**hi**", "text/plain": "<obj>"}
    private: dict[str, object] = {"application/vnd.posthog.variables+json": {}}
    run = Run(
        handle=RunHandle(backend="local", run_id="r", notebook_id="n.ipynb", web_url="https://w"),
        state=RunState.FAILED,
        vendor_state="failed",
        error=RunErrorInfo("it broke", "ValueError", cell_index=2, platform=True),
        progress=RunProgress(completed=3, total=4),
        outputs=(
            CellOutput("stream", cell_index=1, text="line 1\nline 2\n"),
            CellOutput("display_data", cell_id="c", data=markdown),
            CellOutput("display_data", cell_index=1, data=private),
            CellOutput("display_data", data={"image/png": "iVBOR"}),
            CellOutput("error", cell_index=2, ename="ValueError", evalue="it broke",
                       traceback=("\x1b[0;31mValueError\x1b[0m: it broke",)),
        ),
        artifacts=(Artifact(name="out.ipynb", path="/tmp/out.ipynb"),),
    )  # fmt: skip
    lines = format_run(run, elapsed=2.0)
    assert lines[0] == "local run r: failed after 2.0s"
    assert "  url: https://w" in lines
    assert "  cells: 3 of 4 done" in lines
    assert "  error in cell 2: ValueError: it broke" in lines
    assert any("platform failed" in line for line in lines)
    text = "\n".join(lines)
    assert "    [1] line 1\n        line 2" in text
    assert "    [c] **hi**" in text
    assert "posthog" not in text  # vendor-private bundles stay in --json
    assert "    [-] <image/png>" in text
    assert "    [2] ValueError: it broke" in text  # ANSI stripped
    assert "    out.ipynb  /tmp/out.ipynb" in text


def test_format_run_truncates_long_outputs() -> None:
    output = CellOutput("stream", cell_index=0, text="\n".join(str(i) for i in range(100)))
    lines = format_run(Run(handle=HANDLE, state=RunState.SUCCEEDED, outputs=(output,)))
    assert len([line for line in lines if line.startswith("    ")]) == MAX_OUTPUT_LINES + 1
    assert "60 more lines" in lines[-1]
    assert lines[0] == "deepnote run r-1: succeeded"


def test_format_table() -> None:
    when = datetime(2026, 11, 22, 4, 5, 6, 789, tzinfo=UTC)
    assert format_table(["ID", "NAME"], [["a", None], ["bbb", when]]) == [
        "ID   NAME",
        "a    -",
        "bbb  2026-11-22 04:05:06Z",
    ]


# -------------------------------------------------------------------- console and progress


def test_console_scrubs_every_stream() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, secrets=["short", "longer-secret"], err_is_tty=True)
    console.print("a longer-secret b")
    console.err("short!")
    console.status("status short")
    assert "secret" not in out.getvalue()
    assert "short" not in err.getvalue()


def test_console_keeps_the_status_line_below_messages() -> None:
    err = io.StringIO()
    console = Console(io.StringIO(), err, err_is_tty=True)
    console.status("working")
    console.err("a warning")
    console.clear_status()
    assert err.getvalue() == ("\r\x1b[2Kworking\r\x1b[2Ka warning\n\r\x1b[2Kworking\r\x1b[2K")


def test_console_without_a_terminal_draws_no_status_line() -> None:
    err = io.StringIO()
    console = Console(io.StringIO(), err, err_is_tty=False)
    console.status("working")
    console.clear_status()
    assert err.getvalue() == ""


def test_progress_on_a_pipe_prints_one_line_per_visible_change() -> None:
    err = io.StringIO()
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    progress = Progress(Console(io.StringIO(), err, err_is_tty=False), clock=lambda: next(clock))
    progress.start(HANDLE)
    running = Run(handle=HANDLE, state=RunState.RUNNING)
    progress.update(running)
    progress.update(running)  # e.g. a new output: nothing new to show
    progress.update(Run(handle=HANDLE, state=RunState.SUCCEEDED))
    assert err.getvalue().splitlines() == [
        "notebookops: started deepnote run r-1",
        "notebookops: deepnote run r-1: running, 1.0s",
        "notebookops: deepnote run r-1: succeeded, 2.0s",
    ]


def test_quiet_progress_still_names_the_run() -> None:
    err = io.StringIO()
    progress = Progress(Console(io.StringIO(), err, err_is_tty=False), enabled=False)
    progress.start(RunHandle(backend="x", run_id="1", notebook_id="n", web_url="https://u"))
    progress.update(Run(handle=HANDLE, state=RunState.RUNNING))
    assert err.getvalue() == "notebookops: started x run 1 (https://u)\n"


async def test_progress_on_a_terminal_redraws_with_a_moving_clock() -> None:
    err = io.StringIO()
    progress = Progress(Console(io.StringIO(), err, err_is_tty=True))
    progress.start(HANDLE)
    progress.update(Run(handle=HANDLE, state=RunState.RUNNING, progress=RunProgress(1, 2)))
    with anyio.move_on_after(0.5):
        await progress.tick()
    progress.finish()
    text = err.getvalue()
    assert "notebookops: started deepnote run r-1\n" in text
    assert text.count("\r\x1b[2K") >= 3
    assert "running, 0.0s, cell 1 of 2  [deepnote run r-1]" in text
    assert text.endswith("\r\x1b[2K")


async def test_tick_does_nothing_off_a_terminal() -> None:
    progress = Progress(Console(io.StringIO(), io.StringIO(), err_is_tty=False))
    with anyio.fail_after(1):
        await progress.tick()


def test_seconds_parsing_rejects_nan() -> None:
    from notebookops.cli import _seconds

    with pytest.raises(Exception, match="> 0"):
        _seconds("nan")
    assert _seconds("1e-3") == pytest.approx(0.001)
    assert not math.isnan(_seconds("2"))


async def test_session_signals_cancel_the_innermost_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    from notebookops.cli import EXIT_INTERRUPTED, _Session

    err = io.StringIO()
    async with anyio.create_task_group() as group:
        session = _Session(Console(io.StringIO(), err), group)
        with session.interruptible() as first:
            session.on_signal()
            await anyio.sleep(5)
        assert first.cancelled_caught
        with session.interruptible() as late:  # a signal came already: cancelled at once
            await anyio.sleep(5)
        assert late.cancelled_caught
        with session.interruptible(already=False) as cleanup:
            session.on_signal()
            await anyio.sleep(5)
        assert cleanup.cancelled_caught
        assert "interrupted again" in err.getvalue()
        exits: list[int] = []
        monkeypatch.setattr("os._exit", exits.append)
        session.on_signal()
        assert exits == [EXIT_INTERRUPTED]
        assert "exiting now" in err.getvalue()


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (None, ": no reason given by the vendor"),
        (RunErrorInfo("bad", name="ValueError", cell_index=3), " in cell 3: ValueError: bad"),
        # A message that already names its type is not prefixed twice.
        (
            RunErrorInfo("TypeError: bad", name="TypeError", cell_id="c1"),
            " in cell c1: TypeError: bad",
        ),
        (RunErrorInfo("it broke\n  badly"), ": it broke badly"),
    ],
)
def test_failure_text(error: RunErrorInfo | None, text: str) -> None:
    assert failure_text(error) == text
