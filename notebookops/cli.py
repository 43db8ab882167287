"""The ``notebookops`` command line: run a notebook anywhere notebookops reaches and wait for it.

::

    notebookops run examples/notebooks/hello.ipynb -i name=Ada -i count=2
    notebookops run deepnote:<notebookId> -i day=2026-11-22 --save-handle run.json --json
    notebookops wait run.json
    notebookops list deepnote projects
    notebookops sandbox                     # fake Deepnote, PostHog and Datalore on loopback

Layering: this module parses arguments, calls the library and renders what happens; it never
talks to a vendor itself. Credentials come from environment variables (``--help`` lists them)
and never appear in any output. Ctrl-C (or SIGTERM) cancels the remote run unless ``--detach``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import anyio
import anyio.abc

from ._cli_render import (
    Console,
    ConsoleLogHandler,
    Progress,
    failure_text,
    format_run,
    format_table,
)
from ._cli_targets import (
    ENVIRONMENT,
    Target,
    backend_for_handle,
    deepnote_backend,
    describe_environment,
    make_backend,
    not_resumable_reason,
    parse_inputs,
    parse_parameters,
    parse_target,
    parse_value,
    posthog_backend,
    secret_values,
)
from ._version import __version__
from .backend import NotebookBackend
from .errors import (
    AuthenticationError,
    ConfigurationError,
    NotebookOpsError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResponseDecodeError,
    RunCancelled,
    RunFailed,
    RunTimeout,
    ServerError,
    StartOutcomeUnknown,
    TransportError,
    UnsupportedOperation,
)
from .models import Capability, Run, RunHandle, RunRequest, RunState
from .orchestration import DEFAULT_TIMEOUT, run_and_wait, start_run, wait_for_run
from .policies import PollPolicy
from .store import RunStore, SQLiteRunStore, default_store_path, open_store

__all__ = [
    "EXIT_API_ERROR",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
EXIT_API_ERROR: Final = 4
EXIT_CANCELLED: Final = 5
EXIT_INTERRUPTED: Final = 130

#: Seconds the remote cancel may take after Ctrl-C before we stop waiting for it.
CANCEL_TIMEOUT: Final = 30.0
#: Signals that stop the command (cancelling the remote run unless --detach).
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
#: A third signal exits at once, whatever is still in progress.
_FORCE_EXIT_SIGNALS: Final = 3
_DEFAULT_LIMIT: Final = 100
#: The longest wait between status reads: the library's default.
_POLL_CAP: Final = PollPolicy().maximum

T = TypeVar("T")

_EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}    the run succeeded (or was submitted to a vendor that cannot track it)
  {EXIT_FAILED}    the run failed
  {EXIT_USAGE}    usage or configuration error (bad arguments, missing credentials, ...)
  {EXIT_TIMEOUT}    the run did not finish within --timeout
  {EXIT_API_ERROR}    API or transport error (the vendor refused or was unreachable), or a bug
  {EXIT_CANCELLED}    the run was cancelled (by someone else)
  {EXIT_INTERRUPTED}  interrupted by Ctrl-C or SIGTERM (the run is cancelled unless --detach)"""

_EPILOG = f"""\
targets:
  path/to/notebook.ipynb    run locally (needs: pip install 'notebookops[local]')
  deepnote:<notebookId>     a Deepnote notebook
  posthog:<short_id>        a PostHog notebook
  datalore:<owner/id>       a Datalore notebook (as in .../notebook/<owner>/<id>)

environment:
{describe_environment(ENVIRONMENT)}

{_EXIT_CODES_HELP}

Try every vendor without an account: run `notebookops sandbox` in one terminal and paste the
variables it prints into another, or in a script: eval "$(notebookops sandbox --print-env)"."""


# ==================================================================== argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with our error format: one line, a hint, exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"notebookops: error: {message}\n")
        sys.stderr.write(f"notebookops: hint: see '{self.prog} --help'\n")
        raise SystemExit(EXIT_USAGE)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _timeout(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    return _seconds(text)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _quiet_option(help_text: str) -> _Parser:
    parent = _Parser(add_help=False)
    parent.add_argument("-q", "--quiet", action="store_true", help=help_text)
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (``notebookops --help`` shows it)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="notebookops",
        description="Run notebooks locally or on Deepnote, PostHog and Datalore, and wait "
        "for them.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"notebookops {__version__}")
    parser.add_argument("--debug", action="store_true", dest="debug_global", help=argparse.SUPPRESS)
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show tracebacks and the library's debug log"
    )
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    waiting = _Parser(add_help=False)
    waiting.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g}), or 'none' to wait as "
        "long as the run takes; at the timeout the run is cancelled, unless --detach or the "
        "vendor cannot cancel",
    )
    waiting.add_argument(
        "--detach",
        action="store_true",
        help="leave the remote run going at the timeout or on Ctrl-C instead of cancelling it",
    )
    waiting.add_argument(
        "--poll-interval",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="seconds before the first status read; later reads back off up to "
        f"{_POLL_CAP:g} s (default 1)",
    )
    quiet = _quiet_option("no live progress on stderr")
    quiet_notes = _quiet_option("no notes on stderr (errors still show)")
    handle_file = _Parser(add_help=False)
    handle_file.add_argument(
        "handle_file", metavar="HANDLE_FILE", help="a file written by run --save-handle"
    )

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        parents=[waiting, quiet, as_json, common],
        help="start a notebook run and wait for it",
        description="Start a notebook run, show its progress on stderr and its outcome on stdout.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    run.add_argument("target", metavar="TARGET", help="what to run (see targets below)")
    run.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        dest="inputs",
        metavar="NAME=VALUE",
        help='an input; VALUE is read as JSON when it parses (5, true, ["a"]), else as text '
        "(with a warning when it looks like mistyped JSON)",
    )
    run.add_argument(
        "-s",
        "--string-input",
        action="append",
        default=[],
        dest="string_inputs",
        metavar="NAME=TEXT",
        help="an input passed as text as is (e.g. Deepnote takes numbers as strings)",
    )
    run.add_argument(
        "-f",
        "--parameters",
        metavar="FILE",
        help="inputs from a YAML or JSON file of NAME: VALUE (as papermill's -f); "
        "-i and -s override its values",
    )
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="start the run, print its handle as JSON on stdout and exit",
    )
    run.add_argument(
        "--save-handle",
        metavar="FILE",
        help="write the run's handle to FILE as soon as it starts (for status, wait, cancel)",
    )
    run.add_argument(
        "--key",
        metavar="KEY",
        help="an idempotency key: the run is started once per key, and running the same "
        "command again (after Ctrl-C, a crash, a reboot) follows that run instead of "
        "starting another. Ctrl-C then leaves the run going",
    )
    run.add_argument(
        "--store",
        metavar="URL",
        help="where --key records its run: sqlite:///path.db or redis://host:6379/0 "
        "(default: a SQLite file in your state directory, ~/.local/state/notebookops)",
    )
    run.add_argument(
        "--mode",
        choices=("auto", "kernel", "server"),
        help="PostHog only: auto (default: server-side runs where the server has them, else "
        "the kernel), kernel (run the cells from here) or server (resumable from another "
        "process)",
    )
    run.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="local notebooks only: save the executed notebook to PATH (a file or directory)",
    )
    run.set_defaults(handler=_cmd_run)

    status = commands.add_parser(
        "status",
        parents=[handle_file, quiet_notes, as_json, common],
        help="show a saved run's current state",
        description="Read a saved run's state once. Exits 0 whenever the state was read.",
    )
    status.set_defaults(handler=_cmd_status)

    wait = commands.add_parser(
        "wait",
        parents=[handle_file, waiting, quiet, as_json, common],
        help="wait for a saved run to finish",
        description="Follow a saved run to its end; exit codes as for run.",
        epilog=_EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    wait.set_defaults(handler=_cmd_wait)

    cancel = commands.add_parser(
        "cancel",
        parents=[handle_file, quiet_notes, as_json, common],
        help="cancel a saved run",
        description="Ask the vendor to stop a saved run, then show its state.",
    )
    cancel.set_defaults(handler=_cmd_cancel)

    listing = commands.add_parser(
        "list",
        help="list notebooks, projects or runs where the vendor has a list API",
        description="List what a vendor's API can list.",
    )
    vendors = listing.add_subparsers(dest="vendor", metavar="VENDOR", required=True)
    limit = _Parser(add_help=False)
    limit.add_argument(
        "--limit",
        type=_count,
        default=_DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N rows (default {_DEFAULT_LIMIT})",
    )
    leaf = [limit, as_json, common]

    deepnote = vendors.add_parser(
        "deepnote",
        help="projects, notebooks, runs",
        description="List Deepnote projects, notebooks or a notebook's runs.",
    )
    deepnote_what = deepnote.add_subparsers(dest="what", metavar="WHAT", required=True)
    projects = deepnote_what.add_parser(
        "projects",
        parents=leaf,
        help="the workspace's projects",
        description="List the Deepnote workspace's projects (DEEPNOTE_API_KEY's workspace): "
        "id, name, number of notebooks, last update.",
    )
    projects.add_argument("--name-contains", metavar="TEXT", help="only names containing TEXT")
    projects.set_defaults(handler=_cmd_list_deepnote_projects)
    notebooks = deepnote_what.add_parser(
        "notebooks",
        parents=leaf,
        help="notebooks (with the target to run each)",
        description="List the workspace's Deepnote notebooks, each with the target that runs "
        "it (deepnote:<notebookId>), its project and its last run.",
    )
    notebooks.add_argument("--project", metavar="ID", help="only this project's notebooks")
    notebooks.set_defaults(handler=_cmd_list_deepnote_notebooks)
    runs = deepnote_what.add_parser(
        "runs",
        parents=leaf,
        help="a notebook's runs, newest first",
        description="List a Deepnote notebook's runs, newest first (scheduled and UI runs "
        "too), with their state as `run` reports it and Deepnote's own status.",
    )
    runs.add_argument("notebook", metavar="NOTEBOOK_ID")
    runs.set_defaults(handler=_cmd_list_deepnote_runs)

    posthog = vendors.add_parser(
        "posthog", help="notebooks", description="List the PostHog project's notebooks."
    )
    posthog_what = posthog.add_subparsers(dest="what", metavar="WHAT", required=True)
    ph_notebooks = posthog_what.add_parser(
        "notebooks",
        parents=leaf,
        help="the project's notebooks, recently modified first",
        description="List the PostHog project's notebooks (POSTHOG_PROJECT_ID), recently "
        "modified first, each with the target that runs it (posthog:<short_id>).",
    )
    ph_notebooks.add_argument("--search", metavar="TEXT", help="only notebooks matching TEXT")
    ph_notebooks.set_defaults(handler=_cmd_list_posthog_notebooks)

    datalore = vendors.add_parser(
        "datalore", parents=[common], help="(Datalore's API has nothing to list)"
    )
    datalore.set_defaults(handler=_cmd_list_datalore)

    # The sandbox's options belong to the test kit (notebookops.testing.sandbox parses them):
    # everything after `sandbox` is handed to it, so the kit never needs the command line.
    commands.add_parser(
        "sandbox",
        add_help=False,
        help="serve fake Deepnote, PostHog and Datalore APIs on loopback, to try things out",
    )
    return parser


# ==================================================================== errors and exit codes


def exit_code_for(error: BaseException) -> int:
    """The documented exit code for an error that ended a command."""
    if isinstance(error, RunTimeout):
        return EXIT_TIMEOUT
    if isinstance(error, RunFailed):
        return EXIT_FAILED
    if isinstance(error, RunCancelled):
        return EXIT_CANCELLED
    if isinstance(error, ConfigurationError | UnsupportedOperation):
        return EXIT_USAGE
    return EXIT_API_ERROR


_TOKEN_ENV = {
    "deepnote": "DEEPNOTE_API_KEY",
    "posthog": "POSTHOG_PERSONAL_API_KEY",
    "datalore": "DATALORE_TOKEN",
}
_URL_ENV = {"deepnote": "DEEPNOTE_API_URL", "posthog": "POSTHOG_HOST", "datalore": "DATALORE_URL"}


def hint_for(error: BaseException, command: str = "") -> str | None:
    """What to do about ``error``, in one line (None when the message says it all)."""
    vendor = getattr(error, "vendor", "") or ""
    if isinstance(error, AuthenticationError):
        where = _TOKEN_ENV.get(vendor, "the token variable")
        return f"the {vendor} credentials were refused: check {where}"
    if isinstance(error, PermissionDenied):
        return "the credentials are valid but may not do this: check their access and scopes"
    if isinstance(error, NotFound):
        if vendor in ("deepnote", "posthog"):
            return f"check the id; `notebookops list {vendor} --help` shows what can be listed"
        return "check the id (and that the notebook is shared with the token's account)"
    if isinstance(error, RateLimited):
        return "the vendor is rate limiting this token: wait a little and try again"
    if isinstance(error, ServerError):
        return "the vendor failed; try again later"
    if isinstance(error, TransportError):
        where = f" and {_URL_ENV[vendor]}" if vendor in _URL_ENV else ""
        return f"check the network{where}"
    if isinstance(error, ResponseDecodeError):
        return "the vendor sent something unexpected; rerun with --debug and report it"
    if isinstance(error, StartOutcomeUnknown):
        return "the run may have started: check the vendor's UI before starting it again"
    if isinstance(error, ConfigurationError):
        return f"see 'notebookops {command} --help'".replace("  ", " ")
    if not isinstance(error, NotebookOpsError):
        return "this is a bug in notebookops: rerun with --debug and report the traceback"
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def report_error(console: Console, error: BaseException, *, debug: bool, command: str) -> int:
    """Print ``error`` as one line and a hint (a traceback first with --debug); return its
    exit code."""
    if debug:
        text = "".join(traceback.format_exception(error)).rstrip("\n")
        console.err(text)
    message = _one_line(str(error)) or type(error).__name__
    if not isinstance(error, NotebookOpsError):
        message = f"unexpected {type(error).__name__}: {message}"
    console.err(f"notebookops: error: {message}")
    # Notes added on the way up say more about this case than the generic hint.
    notes: list[str | None] = list(getattr(error, "__notes__", []))
    for hint in notes or [hint_for(error, command)]:
        if hint:
            console.err(f"notebookops: hint: {_one_line(hint)}")
    return exit_code_for(error)


# ==================================================================== signals


class _Session:
    """One command's shared state: the console, a task group, and Ctrl-C handling.

    A stop signal cancels the innermost :meth:`interruptible` scope; the command then decides
    what the interruption means (cancel the remote run, or leave it with --detach). A second
    signal cancels that clean-up; a third exits at once.
    """

    def __init__(self, console: Console, task_group: anyio.abc.TaskGroup) -> None:
        self.console = console
        self.task_group = task_group
        self.signals = 0
        self._scopes: list[anyio.CancelScope] = []

    @contextmanager
    def interruptible(self, *, already: bool = True) -> Iterator[anyio.CancelScope]:
        """A scope the next stop signal cancels (at once if one came already and
        ``already``)."""
        with anyio.CancelScope() as scope:
            if already and self.signals:
                scope.cancel()
            self._scopes.append(scope)
            try:
                yield scope
            finally:
                self._scopes.remove(scope)

    def on_signal(self) -> None:
        self.signals += 1
        if self.signals >= _FORCE_EXIT_SIGNALS:
            self.console.err("notebookops: interrupted three times: exiting now")
            os._exit(EXIT_INTERRUPTED)
        if self.signals > 1:
            self.console.err("notebookops: interrupted again: not waiting any longer")
        if self._scopes:
            self._scopes[-1].cancel()

    async def receive_signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            receiver = anyio.open_signal_receiver(*_STOP_SIGNALS)
            with receiver as signals:
                task_status.started()
                async for _ in signals:
                    self.on_signal()
        except NotImplementedError:
            # No event-loop signal handlers here (Windows): Ctrl-C stays a KeyboardInterrupt.
            task_status.started()


# ==================================================================== helpers


def _read_handle(path: str) -> RunHandle:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the handle file {path!r}: {exc.strerror or exc}"
        ) from None
    return RunHandle.from_json(text)


def _check_handle_path(path: str) -> Path:
    target = Path(path)
    if target.is_dir():
        raise ConfigurationError(f"--save-handle {path!r} is a directory; name a file")
    if not target.absolute().parent.is_dir():
        raise ConfigurationError(
            f"--save-handle {path!r}: directory {str(target.absolute().parent)!r} does not exist"
        )
    return target


def _write_handle(path: Path, handle: RunHandle) -> None:
    """Write atomically, so a reader never sees half a handle."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(handle.to_json() + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _print_run(console: Console, run: Run, *, as_json: bool, elapsed: float | None) -> None:
    if as_json:
        console.print(run.to_json())
    else:
        for line in format_run(run, elapsed=elapsed):
            console.print(line)


def _resume_hint(handle: RunHandle, handle_path: str | None) -> str:
    if handle_path:
        return f"follow it with: notebookops wait {handle_path}"
    return f"its handle: {handle.to_json()}"


def _poll(args: argparse.Namespace) -> PollPolicy:
    interval: float = args.poll_interval
    return PollPolicy(initial=interval, maximum=max(_POLL_CAP, interval))


# ==================================================================== run / wait


class _Follow:
    """What one run-and-wait saw, for the report afterwards."""

    def __init__(self, handle: RunHandle | None) -> None:
        self.handle = handle


async def _follow(
    session: _Session,
    backend: NotebookBackend,
    args: argparse.Namespace,
    *,
    request: RunRequest | None,
    handle: RunHandle | None,
    handle_path: Path | None,
    store: RunStore | None = None,
) -> int:
    """Start (``request``, once per ``args.key`` in ``store``) or resume (``handle``) a run,
    follow it, report it."""
    console = session.console
    progress = Progress(console, enabled=not args.quiet)
    seen = _Follow(handle)
    saved_path = str(handle_path) if handle_path is not None else None

    def on_start(started: RunHandle) -> None:
        # Synchronous on purpose: the handle must be recorded before any checkpoint, where
        # a Ctrl-C could land.
        seen.handle = started
        progress.start(started)
        if handle_path is not None:
            try:
                _write_handle(handle_path, started)
            except OSError as exc:
                console.err(
                    f"notebookops: warning: could not save the handle to {saved_path!r} "
                    f"({exc.strerror or exc}); the run goes on. Handle: {started.to_json()}"
                )

    options: dict[str, Any] = {
        "timeout": args.timeout,
        "poll": _poll(args),
        "on_timeout": "detach" if args.detach else "cancel",
        "raise_on_failure": False,
        "on_update": progress.update,
        # Cancelling on Ctrl-C is done below, where its outcome can be reported.
        "cancel_on_interrupt": False,
    }
    ticker = anyio.CancelScope()

    async def tick() -> None:
        with ticker:
            await progress.tick()

    session.task_group.start_soon(tick)
    run: Run | None = None
    timed_out: RunTimeout | None = None
    try:
        with session.interruptible() as scope:
            try:
                if request is not None:
                    run = await run_and_wait(
                        backend, request, on_start=on_start, key=args.key, store=store, **options
                    )
                else:
                    assert handle is not None
                    progress.start(handle, verb="following")
                    run = await wait_for_run(backend, handle, **options)
            except RunTimeout as error:
                timed_out = error
    finally:
        ticker.cancel()
        progress.finish()
    if scope.cancelled_caught or (run is None and timed_out is None):
        return await _interrupted(session, backend, seen.handle, args, saved_path)
    if timed_out is not None:
        if timed_out.run is not None:
            _print_run(console, timed_out.run, as_json=args.json, elapsed=progress.elapsed)
        console.err(f"notebookops: error: {_one_line(str(timed_out))}")
        if not timed_out.cancelled and timed_out.handle is not None:
            console.err(f"notebookops: hint: {_resume_hint(timed_out.handle, saved_path)}")
        return EXIT_TIMEOUT
    assert run is not None
    # `wait` on a run that had ended before it began: the time it took is not ours to tell.
    ended_before = (
        request is None and progress.first is not None and progress.first.state.is_terminal
    )
    elapsed = None if ended_before else progress.elapsed
    _print_run(console, run, as_json=args.json, elapsed=elapsed)
    return _outcome(console, run)


def _outcome(console: Console, run: Run) -> int:
    """Exit code for a finished run, with one stderr line when it did not succeed."""
    name = f"{run.handle.backend} run {run.run_id}"
    if run.state is RunState.FAILED:
        console.err(f"notebookops: error: {name} failed{failure_text(run.error)}")
        return EXIT_FAILED
    if run.state is RunState.CANCELLED:
        console.err(f"notebookops: error: {name} was cancelled")
        return EXIT_CANCELLED
    if run.state is RunState.SUBMITTED:
        console.err(
            f"notebookops: note: {run.handle.backend} accepted the run but offers no way to "
            "follow it; check its outcome in the vendor's UI"
        )
    return EXIT_OK


async def _interrupted(
    session: _Session,
    backend: NotebookBackend,
    handle: RunHandle | None,
    args: argparse.Namespace,
    handle_path: str | None,
) -> int:
    """Ctrl-C while following a run: cancel it (unless --detach) and say what happened."""
    console = session.console
    if handle is None:
        console.err("notebookops: interrupted before any run started")
        return EXIT_INTERRUPTED
    name = f"{handle.backend} run {handle.run_id}"
    if getattr(args, "key", None) is not None:
        console.err(f"notebookops: interrupted: left {name} running (--key)")
        console.err("notebookops: hint: run the same command again to follow it")
        return EXIT_INTERRUPTED
    if args.detach:
        console.err(f"notebookops: interrupted: left {name} running (--detach)")
        console.err(f"notebookops: hint: {_resume_hint(handle, handle_path)}")
        return EXIT_INTERRUPTED
    if Capability.CANCEL not in backend.capabilities:
        where = f" ({handle.web_url})" if handle.web_url else ""
        console.err(
            f"notebookops: interrupted: the {backend.name} backend cannot cancel runs, so "
            f"{name} is still running{where}"
        )
        if Capability.RESUMABLE in backend.capabilities:
            console.err(f"notebookops: hint: {_resume_hint(handle, handle_path)}")
        return EXIT_INTERRUPTED
    console.err(f"notebookops: interrupted: cancelling {name} (Ctrl-C again to stop waiting)")
    failure: Exception | None = None
    with (
        session.interruptible(already=False) as scope,
        anyio.move_on_after(CANCEL_TIMEOUT) as limit,
    ):
        try:
            await backend.cancel_run(handle)
        except Exception as error:  # reported below; never BaseException (cancellation)
            failure = error
    if scope.cancelled_caught:
        console.err(f"notebookops: stopped waiting for the cancel; {name} may still be running")
    elif limit.cancelled_caught:
        console.err(
            f"notebookops: the cancel did not complete within {CANCEL_TIMEOUT:g}s; "
            f"{name} may still be running"
        )
    elif failure is not None:
        console.err(
            f"notebookops: could not cancel {name} ({_one_line(str(failure))}); "
            "it may still be running"
        )
    else:
        console.err(f"notebookops: interrupted: cancelled {name}")
    return EXIT_INTERRUPTED


async def _cmd_run(args: argparse.Namespace, session: _Session) -> int:
    target = parse_target(args.target)
    inputs = await _read_inputs(args, session.console)
    try:
        return await _start(args, session, target, inputs)
    except ConfigurationError as error:
        if target.backend == "deepnote":
            for note in _text_input_notes(error, args.inputs):
                error.add_note(note)
        raise


async def _read_inputs(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The inputs from ``-f FILE``, overridden by ``-i`` and ``-s``."""
    inputs: dict[str, Any] = {}
    if args.parameters is not None:
        try:
            text = await anyio.Path(args.parameters).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigurationError(
                f"cannot read the parameters file {args.parameters!r}: {reason}"
            ) from None
        inputs = parse_parameters(text, args.parameters)

    def warn(text: str) -> None:
        console.err(f"notebookops: warning: {text}")

    inputs.update(parse_inputs(args.inputs, args.string_inputs, warn=warn))
    return inputs


def _text_input_notes(error: ConfigurationError, pairs: Sequence[str]) -> list[str]:
    """For an input Deepnote refused, the command line that passes it as it wants: text."""
    notes = []
    for pair in pairs:
        name, _, raw = pair.partition("=")
        name = name.strip()
        value = parse_value(raw, name=name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and f"input {name!r}" in str(error):
            notes.append(f"Deepnote takes numbers as text: pass -s {name}={raw}")
    return notes


async def _start(
    args: argparse.Namespace, session: _Session, target: Target, inputs: dict[str, Any]
) -> int:
    console = session.console
    if args.mode is not None and target.backend != "posthog":
        raise ConfigurationError("--mode applies to posthog: targets only")
    options: object | None = None
    if args.output is not None:
        if target.backend != "local":
            raise ConfigurationError("--output applies to local .ipynb targets only")
        from .backends.local import LocalRunOptions

        options = LocalRunOptions(save_to=Path(args.output))
    handle_path = _check_handle_path(args.save_handle) if args.save_handle else None
    request = RunRequest(notebook=target.notebook, inputs=inputs, options=options)
    backend = make_backend(target.backend, posthog_mode=args.mode)
    async with backend:
        if Capability.RESUMABLE not in backend.capabilities:
            reason = not_resumable_reason(target.backend)
            if args.no_wait or args.detach:
                flag = "--no-wait" if args.no_wait else "--detach"
                raise ConfigurationError(f"{flag} would abandon the run: {reason}")
            if handle_path is not None:
                console.err(f"notebookops: note: the handle is saved for reference only; {reason}")
        store = _store_for(args)
        if store is not None:
            async with store:
                return await _run_or_start(session, backend, args, request, handle_path, store)
        return await _run_or_start(session, backend, args, request, handle_path, None)


def _store_for(args: argparse.Namespace) -> RunStore | None:
    """The store ``--key`` records its run in (None without ``--key``)."""
    if args.key is None:
        if args.store is not None:
            raise ConfigurationError("--store goes with --key (the store records keyed runs)")
        return None
    if args.store is not None:
        return open_store(args.store)
    return SQLiteRunStore(default_store_path())


async def _run_or_start(
    session: _Session,
    backend: NotebookBackend,
    args: argparse.Namespace,
    request: RunRequest,
    handle_path: Path | None,
    store: RunStore | None,
) -> int:
    console = session.console
    if args.no_wait:
        with session.interruptible():
            handle = await start_run(backend, request, key=args.key, store=store)
        console.err(f"notebookops: started {handle.backend} run {handle.run_id}")
        if handle_path is not None:
            _write_handle(handle_path, handle)
            console.err(f"notebookops: hint: follow it with: notebookops wait {handle_path}")
        console.print(handle.to_json())
        return EXIT_OK
    return await _follow(
        session,
        backend,
        args,
        request=request,
        handle=None,
        handle_path=handle_path,
        store=store,
    )


async def _cmd_wait(args: argparse.Namespace, session: _Session) -> int:
    handle = _read_handle(args.handle_file)
    backend = await backend_for_handle(handle)
    async with backend:
        return await _follow(
            session, backend, args, request=None, handle=handle, handle_path=Path(args.handle_file)
        )


async def _cmd_status(args: argparse.Namespace, session: _Session) -> int:
    handle = _read_handle(args.handle_file)
    backend = await backend_for_handle(handle)
    async with backend:
        run = await backend.get_run(handle)
    _print_run(session.console, run, as_json=args.json, elapsed=None)
    return EXIT_OK


async def _cmd_cancel(args: argparse.Namespace, session: _Session) -> int:
    console = session.console
    handle = _read_handle(args.handle_file)
    backend = await backend_for_handle(handle)
    async with backend:
        await backend.cancel_run(handle)
        if not args.quiet:
            console.err(f"notebookops: cancel requested for {handle.backend} run {handle.run_id}")
        try:
            run: Run | None = await backend.get_run(handle)
        except NotebookOpsError as error:
            console.err(f"notebookops: warning: could not read the run afterwards: {error}")
            run = None
    if run is not None:
        _print_run(console, run, as_json=args.json, elapsed=None)
    return EXIT_OK


# ==================================================================== list


async def _take(items: AsyncIterator[T], limit: int) -> list[T]:
    """The first ``limit`` items; the iterator is closed early when it can be."""
    taken: list[T] = []
    try:
        async for item in items:
            taken.append(item)
            if len(taken) >= limit:
                break
    finally:
        close: Callable[[], Awaitable[None]] | None = getattr(items, "aclose", None)
        if close is not None:
            await close()
    return taken


def _print_rows(
    console: Console, args: argparse.Namespace, headers: Sequence[str], rows: list[list[Any]]
) -> None:
    if args.json:
        import json

        keys = [header.lower().replace(" ", "_") for header in headers]
        records = [dict(zip(keys, row, strict=True)) for row in rows]
        console.print(json.dumps(records, default=_json_default))
        return
    if not rows:
        console.err("notebookops: nothing to list")
        return
    for line in format_table(headers, rows):
        console.print(line)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


async def _cmd_list_deepnote_projects(args: argparse.Namespace, session: _Session) -> int:
    async with deepnote_backend() as backend:
        projects = await _take(
            backend.client.list_projects(name_contains=args.name_contains), args.limit
        )
    rows = [[p.id, p.name, len(p.notebooks), p.updated_at] for p in projects]
    _print_rows(session.console, args, ["ID", "NAME", "NOTEBOOKS", "UPDATED"], rows)
    return EXIT_OK


async def _cmd_list_deepnote_notebooks(args: argparse.Namespace, session: _Session) -> int:
    async with deepnote_backend() as backend:
        if args.project:
            projects = [await backend.client.get_project(args.project)]
        else:
            projects = await _take(backend.client.list_projects(), args.limit)
    rows = [
        [f"deepnote:{notebook.id}", notebook.name, project.name, notebook.last_run_at]
        for project in projects
        for notebook in project.notebooks
    ][: args.limit]
    _print_rows(session.console, args, ["TARGET", "NAME", "PROJECT", "LAST RUN"], rows)
    return EXIT_OK


async def _cmd_list_deepnote_runs(args: argparse.Namespace, session: _Session) -> int:
    async with deepnote_backend() as backend:
        runs = await _take(backend.client.list_notebook_runs(args.notebook), args.limit)
        rows = [
            [r.run_id, backend.state_of(r.status).value, r.status, r.created_at, r.finished_at]
            for r in runs
        ]
    headers = ["RUN ID", "STATE", "VENDOR STATUS", "CREATED", "FINISHED"]
    _print_rows(session.console, args, headers, rows)
    return EXIT_OK


async def _cmd_list_posthog_notebooks(args: argparse.Namespace, session: _Session) -> int:
    async with posthog_backend() as backend:
        notebooks = await _take(backend.client.list_notebooks(search=args.search), args.limit)
    rows = [[f"posthog:{n.short_id}", n.title, n.last_modified_at] for n in notebooks]
    _print_rows(session.console, args, ["TARGET", "TITLE", "MODIFIED"], rows)
    return EXIT_OK


async def _cmd_list_datalore(args: argparse.Namespace, session: _Session) -> int:
    raise UnsupportedOperation(
        "Datalore's API has no list endpoints: take the notebook id from its URL "
        "(.../notebook/<owner>/<id>) and run datalore:<owner>/<id>"
    )


# ==================================================================== entry point


Handler = Callable[[argparse.Namespace, _Session], Awaitable[int]]


async def _amain(args: argparse.Namespace, console: Console) -> int:
    debug = _debug(args)
    handler: Handler = args.handler
    async with anyio.create_task_group() as group:
        session = _Session(console, group)
        await group.start(session.receive_signals)
        try:
            with session.interruptible() as scope:
                code = await handler(args, session)
            if scope.cancelled_caught:
                console.err("notebookops: interrupted")
                code = EXIT_INTERRUPTED
        except Exception as error:
            code = report_error(console, error, debug=debug, command=args.command)
        finally:
            group.cancel_scope.cancel()
    return code


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False) or args.debug_global)


@contextmanager
def _logging_to(console: Console, debug: bool) -> Iterator[None]:
    """The library's log records on the console while a command runs; the logger is put back
    as it was afterwards (main() may be called in a process that has its own logging)."""
    logger = logging.getLogger("notebookops")
    level = logging.DEBUG if debug else logging.WARNING
    handler = ConsoleLogHandler(console, level)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    # Our handler reports these; the root logger's handlers must not repeat them.
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see ``notebookops --help``)."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        # Ctrl-C before our signal handling was in place (or on a platform without it).
        sys.stderr.write("notebookops: interrupted\n")
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    parser = build_parser()
    if not argv:
        # A usage error like any other (a script that lost its arguments must not pass),
        # but one where the whole help is the useful answer.
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args, unknown = parser.parse_known_args(argv)
    if args.command == "sandbox":
        from .testing.sandbox import main as sandbox_main

        return sandbox_main(unknown, prog=f"{parser.prog} sandbox")
    if unknown:
        # The subcommand's own --help lists the options that do exist.
        words = [args.command, getattr(args, "vendor", None), getattr(args, "what", None)]
        prog = " ".join([parser.prog, *(word for word in words if word)])
        _Parser(prog=prog).error(f"unrecognized arguments: {' '.join(unknown)}")
    console = Console(sys.stdout, sys.stderr, secrets=secret_values())
    with _logging_to(console, _debug(args)):
        return anyio.run(_amain, args, console, backend="asyncio")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
