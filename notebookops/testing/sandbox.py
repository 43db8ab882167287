"""A sandbox: the fake Deepnote, PostHog and Datalore servers on loopback, with demo notebooks.

It lets anyone try every vendor path of notebookops (the library, the command line, the
examples) without an account::

    $ notebookops sandbox                 # or: python -m notebookops.testing.sandbox
    export DEEPNOTE_API_KEY=sandbox-deepnote-...
    export DEEPNOTE_API_URL=http://127.0.0.1:41234
    ...
    # Press Ctrl-C to stop the sandbox.

Paste the ``export`` lines into another terminal (or write them to a file with
``--env-file FILE`` and ``source FILE``), then e.g. ``notebookops run posthog:hello -i
name=Ada``. In a script, start it in the background and take its variables in one step::

    eval "$(notebookops sandbox --print-env)"     # returns once the servers are ready
    notebookops run posthog:hello -i name=Ada
    kill "$NOTEBOOKOPS_SANDBOX_PID"

Every server binds to 127.0.0.1 only and gets a fresh random token per start.

The fake PostHog kernel really executes the Python it is sent, in the sandbox process: that is
why the sandbox listens on loopback only and checks its token. It is a demo, not a service.

In tests, :func:`sandbox` gives the same servers as an async context manager.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final, TextIO

import anyio
import attrs

from .._validate import seconds
from ..backends.deepnote import TOKEN_ENV as DEEPNOTE_TOKEN_ENV
from ..backends.deepnote import URL_ENV as DEEPNOTE_URL_ENV
from ..errors import ConfigurationError
from .datalore import FakeDataloreServer, fake_datalore_server
from .deepnote import (
    FakeBlock,
    FakeDeepnoteServer,
    FakeInput,
    FakeProject,
    RunScript,
    fake_deepnote,
)
from .posthog import PostHogFakeServer, posthog_server

__all__ = [
    "DATALORE_DEMOS",
    "DEEPNOTE_DEMOS",
    "POSTHOG_DEMOS",
    "Demo",
    "PID_ENV",
    "Sandbox",
    "build_parser",
    "main",
    "sandbox",
    "serve",
    "start_in_background",
]

#: Fixed ids of the Deepnote demo notebooks, so the targets are the same on every start.
DEEPNOTE_DEMOS: Final = {
    "hello": "5a4db0c0000000000000000000000001",
    "fails": "5a4db0c0000000000000000000000002",
    "slow": "5a4db0c0000000000000000000000003",
}
#: Short ids of the PostHog demo notebooks.
POSTHOG_DEMOS: Final = {"hello": "hello", "fails": "fails", "slow": "slow"}
#: Ids (``owner/id``) of the Datalore demo notebooks.
DATALORE_DEMOS: Final = {"hello": "demo/hello", "fails": "demo/fails", "slow": "demo/slow"}

_POSTHOG_PROJECT: Final = "1"
#: A "slow" demo run lasts this long unless cancelled (in short sleeps, so a cancel is quick).
_SLOW_SECONDS: Final = 3600
#: The banner's last line: the servers are up once it is printed.
_READY_LINE: Final = "# Press Ctrl-C to stop the sandbox."
#: The variable ``--print-env`` sets to the background sandbox's process id.
PID_ENV: Final = "NOTEBOOKOPS_SANDBOX_PID"
#: Seconds a background sandbox may take to start.
_START_TIMEOUT: Final = 60.0


@attrs.frozen
class Demo:
    """A demo notebook: the target to pass to ``notebookops run`` and what its run does."""

    target: str
    description: str


@attrs.define
class Sandbox:
    """The three running fake servers and what they hold."""

    deepnote: FakeDeepnoteServer
    posthog: PostHogFakeServer
    datalore: FakeDataloreServer
    duration: float
    demos: list[Demo] = attrs.field(factory=list)

    def environment(self) -> dict[str, str]:
        """The variables that point the command line and the examples at the sandbox."""
        return {
            DEEPNOTE_TOKEN_ENV: self.deepnote.token,
            DEEPNOTE_URL_ENV: self.deepnote.url,
            "POSTHOG_PERSONAL_API_KEY": self.posthog.token,
            "POSTHOG_PROJECT_ID": self.posthog.project_id,
            "POSTHOG_HOST": self.posthog.url,
            "DATALORE_TOKEN": self.datalore.token,
            "DATALORE_URL": self.datalore.url,
            # Read by the examples only: the notebook each one runs.
            "DEEPNOTE_NOTEBOOK_ID": DEEPNOTE_DEMOS["hello"],
            "POSTHOG_NOTEBOOK_ID": POSTHOG_DEMOS["hello"],
            "DATALORE_NOTEBOOK_ID": DATALORE_DEMOS["hello"],
        }

    def exports(self) -> list[str]:
        """``export NAME=value`` lines for a POSIX shell."""
        return [f"export {name}={shlex.quote(value)}" for name, value in self.environment().items()]


# ---------------------------------------------------------------------------- demo content


def _deepnote_notebook(
    server: FakeDeepnoteServer,
    project: FakeProject,
    notebook_id: str,
    *,
    name: str,
    script: RunScript,
) -> None:
    blocks = [
        FakeBlock(id=f"{name}-greet", content='print(f"Hello, {name}!")'),
        FakeBlock(id=f"{name}-summary", content="print(len(name))"),
    ]
    notebook = server.add_notebook(
        project,
        name=name,
        blocks=blocks,
        inputs=[FakeInput(name="name", type="input-text", value="world")],
        script=script,
    )
    # The fake hands out random ids; the demos keep fixed ones.
    del server.notebooks[notebook.id]
    project.notebook_ids[project.notebook_ids.index(notebook.id)] = notebook_id
    notebook.id = notebook_id
    server.notebooks[notebook_id] = notebook


def _add_deepnote_demos(server: FakeDeepnoteServer, duration: float) -> list[Demo]:
    project = server.add_project("Sandbox demos")
    pending = min(0.5, duration / 4)
    _deepnote_notebook(
        server,
        project,
        DEEPNOTE_DEMOS["hello"],
        name="hello",
        script=RunScript.succeed(duration - pending, pending=pending),
    )
    _deepnote_notebook(
        server,
        project,
        DEEPNOTE_DEMOS["fails"],
        name="fails",
        script=RunScript.fail(
            duration - pending,
            pending=pending,
            ename="ValueError",
            evalue="this demo notebook fails on purpose",
        ),
    )
    _deepnote_notebook(
        server, project, DEEPNOTE_DEMOS["slow"], name="slow", script=RunScript.long()
    )
    return [
        Demo(f"deepnote:{DEEPNOTE_DEMOS['hello']}", f"succeeds after ~{duration:g}s (input: name)"),
        Demo(f"deepnote:{DEEPNOTE_DEMOS['fails']}", "fails in its last block"),
        Demo(
            f"deepnote:{DEEPNOTE_DEMOS['slow']}",
            "never ends (Deepnote's API cannot cancel: try --timeout 5)",
        ),
    ]


def _add_posthog_demos(server: PostHogFakeServer, duration: float) -> list[Demo]:
    step = duration / 3
    server.add_notebook(
        POSTHOG_DEMOS["hello"],
        title="Hello",
        cells=[
            # Inputs arrive as variables assigned before the first cell.
            f'import time\nname = globals().get("name", "world")\ntime.sleep({step!r})\n'
            'print(f"Hello, {name}!")',
            f"time.sleep({step!r})\nletters = len(name)\nprint(letters, 'letters')",
            f"time.sleep({step!r})\n{{'name': name, 'letters': letters}}",
        ],
        markdown=True,
    )
    server.add_notebook(
        POSTHOG_DEMOS["fails"],
        title="Fails",
        cells=[
            f'import time\ntime.sleep({duration / 2!r})\nprint("about to fail")',
            'raise ValueError("this demo notebook fails on purpose")',
        ],
        markdown=True,
    )
    slow_steps = int(_SLOW_SECONDS / 0.05)
    server.add_notebook(
        POSTHOG_DEMOS["slow"],
        title="Slow",
        cells=[
            'print("working...")',
            f"import time\nfor _ in range({slow_steps}):\n    time.sleep(0.05)",
        ],
        markdown=True,
    )
    return [
        Demo(f"posthog:{POSTHOG_DEMOS['hello']}", f"3 cells, ~{duration:g}s (input: name)"),
        Demo(f"posthog:{POSTHOG_DEMOS['fails']}", "fails in its second cell"),
        Demo(f"posthog:{POSTHOG_DEMOS['slow']}", "runs for an hour: Ctrl-C cancels it"),
    ]


def _add_datalore_demos(server: FakeDataloreServer, duration: float) -> list[Demo]:
    server.add_notebook(
        DATALORE_DEMOS["hello"], name="Hello", controls=("name",), duration=duration
    )
    server.add_notebook(
        DATALORE_DEMOS["fails"], name="Fails", controls=("name",), duration=duration, succeed=False
    )
    server.add_notebook(DATALORE_DEMOS["slow"], name="Slow", controls=("name",), duration=None)
    return [
        Demo(f"datalore:{DATALORE_DEMOS['hello']}", f"succeeds after ~{duration:g}s (input: name)"),
        Demo(f"datalore:{DATALORE_DEMOS['fails']}", "fails (Datalore gives no reason)"),
        Demo(f"datalore:{DATALORE_DEMOS['slow']}", "never ends (Datalore's API cannot cancel)"),
    ]


@asynccontextmanager
async def sandbox(*, duration: float = 2.0) -> AsyncIterator[Sandbox]:
    """Start the three fake servers with their demo notebooks; stop them on exit.

    ``duration`` is how long the demo runs that finish take, in seconds. Needs asyncio.
    """
    if not duration > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
    async with AsyncExitStack() as stack:
        deepnote = await stack.enter_async_context(
            fake_deepnote(token=f"sandbox-deepnote-{secrets.token_hex(12)}")
        )
        posthog = await stack.enter_async_context(
            # A newer PostHog (server-side runs) whose kernel also accepts the sandbox key,
            # so both --mode server and --mode kernel can be tried.
            posthog_server(
                token=f"phx_sandbox_{secrets.token_hex(12)}",
                project_id=_POSTHOG_PROJECT,
                version="new",
                personal_keys_on_unscoped_actions=True,
            )
        )
        datalore = await stack.enter_async_context(
            fake_datalore_server(token=f"sandbox-datalore-{secrets.token_hex(12)}")
        )
        box = Sandbox(deepnote=deepnote, posthog=posthog, datalore=datalore, duration=duration)
        box.demos.extend(_add_deepnote_demos(deepnote, duration))
        box.demos.extend(_add_posthog_demos(posthog, duration))
        box.demos.extend(_add_datalore_demos(datalore, duration))
        yield box


# ---------------------------------------------------------------------------- serving


def _banner(box: Sandbox, env_file: Path | None) -> list[str]:
    width = max(len(demo.target) for demo in box.demos)
    source = f" (or: source {shlex.quote(str(env_file))})" if env_file else ""
    return [
        "# notebookops sandbox: fake Deepnote, PostHog and Datalore APIs on 127.0.0.1.",
        f"# Paste these lines into another terminal{source}:",
        *box.exports(),
        "",
        "# Then try one of these demo notebooks, e.g. notebookops run posthog:hello -i name=Ada",
        *(f"#   {demo.target:<{width}}  {demo.description}" for demo in box.demos),
        "# or the examples: python examples/deepnote_run.py (see examples/*.py)",
        _READY_LINE,
    ]


def _write_env_file(path: Path, box: Sandbox) -> None:
    # Owner-only: the file holds (sandbox) tokens.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write("\n".join(box.exports()) + "\n")


async def _serve(duration: float, env_file: Path | None, out: TextIO) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with sandbox(duration=duration) as box:
            if env_file is not None:
                await anyio.to_thread.run_sync(_write_env_file, env_file, box)
            try:
                out.write("\n".join(_banner(box, env_file)) + "\n")
                out.flush()
                async for _ in signals:
                    break
            finally:
                if env_file is not None:
                    # Its URLs die with the servers.
                    with anyio.CancelScope(shield=True):
                        await anyio.Path(env_file).unlink(missing_ok=True)
    sys.stderr.write("notebookops: sandbox stopped\n")


def serve(*, duration: float = 2.0, env_file: str | os.PathLike[str] | None = None) -> int:
    """Serve the sandbox until Ctrl-C or SIGTERM; returns the exit code (0)."""
    path = Path(env_file) if env_file is not None else None
    if path is not None and not path.absolute().parent.is_dir():
        sys.stderr.write(
            f"notebookops: error: --env-file {str(path)!r}: its directory does not exist\n"
        )
        return 2
    try:
        anyio.run(_serve, duration, path, sys.stdout, backend="asyncio")
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers were installed.
        sys.stderr.write("notebookops: sandbox stopped\n")
    return 0


_DESCRIPTION: Final = (
    "Serve the fake Deepnote, PostHog and Datalore servers of notebookops.testing on "
    "127.0.0.1 with demo notebooks, and print the environment variables that point the "
    "command line and the examples at them. Ctrl-C stops it. The fake PostHog kernel "
    "executes the cells it is sent in this process: the sandbox is for trying notebookops "
    "out, nothing else."
)


def _duration(text: str) -> float:
    try:
        value = seconds("--duration", float(text))
    except (ValueError, ConfigurationError):
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0, got {text!r}"
        ) from None
    assert value is not None
    return value


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The sandbox's options (``notebookops sandbox --help`` shows them)."""
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION)
    parser.add_argument(
        "--duration",
        type=_duration,
        default=2.0,
        metavar="S",
        help="how long a demo run takes (default 2)",
    )
    parser.add_argument(
        "--env-file",
        metavar="FILE",
        help="also write the `export` lines to FILE (then: source FILE)",
    )
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="start the sandbox in the background and return once it is ready, printing "
        f"only its `export` lines (and {PID_ENV}) on stdout: "
        f'eval "$(notebookops sandbox --print-env)", later kill "${PID_ENV}"',
    )
    return parser


def start_in_background(
    *, duration: float = 2.0, env_file: str | os.PathLike[str] | None = None
) -> int:
    """Start the sandbox in a process of its own and print, once its servers are ready, its
    ``export`` lines and ``export NOTEBOOKOPS_SANDBOX_PID=<pid>`` on stdout (for ``eval``);
    returns the exit code (0, or 1 when it did not start)."""
    command = [sys.executable, "-m", __name__, "--duration", repr(duration)]
    if env_file is not None:
        command += ["--env-file", os.fspath(env_file)]
    # Its own session: a Ctrl-C in this terminal is not for it. No stderr: nothing may keep
    # the caller's pipes open (`$(...)` waits for every writer to close them).
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    watchdog = threading.Timer(_START_TIMEOUT, process.kill)
    watchdog.start()
    exports: list[str] = []
    ready = False
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("export "):
                exports.append(line.rstrip("\n"))
            if line.rstrip("\n") == _READY_LINE:
                ready = True
                break
    finally:
        watchdog.cancel()
    if not ready:
        process.kill()
        process.wait()
        sys.stderr.write(
            "notebookops: error: the sandbox did not start; run it in the foreground "
            "(without --print-env) to see why\n"
        )
        return 1
    # It writes nothing more to stdout: closing our end leaves it running on its own.
    process.stdout.close()
    sys.stdout.write("\n".join([*exports, f"export {PID_ENV}={process.pid}"]) + "\n")
    sys.stdout.flush()
    sys.stderr.write(
        f"notebookops: sandbox running in the background; stop it with: kill {process.pid}\n"
    )
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m notebookops.testing.sandbox [--duration S] [--env-file FILE]
    [--print-env]``; the command line's ``notebookops sandbox`` is this function too."""
    args = build_parser(prog).parse_args(argv)
    if args.print_env:
        return start_in_background(duration=args.duration, env_file=args.env_file)
    return serve(duration=args.duration, env_file=args.env_file)


if __name__ == "__main__":
    sys.exit(main())
