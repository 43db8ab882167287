"""What the command line shows: a scrubbing console, live progress, run summaries, tables.

Results go to stdout; progress, notes and errors to stderr. Every line passes through
:meth:`Console.scrub`, so a secret from the environment never reaches either stream, whatever
a vendor or a notebook put in a message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import anyio

from .models import CellOutput, Run, RunErrorInfo, RunHandle, RunState

__all__ = [
    "Console",
    "ConsoleLogHandler",
    "Progress",
    "failure_text",
    "format_elapsed",
    "format_run",
    "format_table",
    "progress_text",
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: Lines of one output shown in a summary; --json has everything.
MAX_OUTPUT_LINES = 40
_SPINNER = "|/-\\"
_TICK = 0.2


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Console:
    """stdout/stderr with secret scrubbing and one optional "status line" on a terminal.

    The status line is redrawn in place (``\\r`` and erase-line); any other stderr line first
    clears it and then draws it again, so messages never end up glued to it.
    """

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        *,
        secrets: Sequence[str] = (),
        err_is_tty: bool | None = None,
    ) -> None:
        self.out = out
        self.err_stream = err
        self._secrets = [s for s in secrets if s]
        self.err_is_tty = err.isatty() if err_is_tty is None else err_is_tty
        self._status = ""
        self._out_gone = False

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced by ``***``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def print(self, text: str = "") -> None:
        """A result line on stdout (dropped once stdout's reader has gone, as with ``| head``)."""
        if self._out_gone:
            return
        try:
            self.out.write(self.scrub(text) + "\n")
            self.out.flush()
        except BrokenPipeError:
            self._out_gone = True
            # Python flushes stdout once more at exit: point it at nothing, or that flush
            # complains about the same closed pipe.
            with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())

    def err(self, text: str) -> None:
        """A line on stderr (the status line, if any, is kept below it)."""
        status = self._status
        if status:
            self._draw("")
        self.err_stream.write(self.scrub(text) + "\n")
        if status:
            self._draw(status)
        self.err_stream.flush()

    def status(self, text: str) -> None:
        """Show ``text`` as the in-place status line (terminals only)."""
        if self.err_is_tty:
            self._draw(text)
            self.err_stream.flush()

    def clear_status(self) -> None:
        if self._status:
            self._draw("")
            self.err_stream.flush()

    def _draw(self, text: str) -> None:
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        text = self.scrub(text)[:width]
        self.err_stream.write("\r\x1b[2K" + text)
        self._status = text


class ConsoleLogHandler(logging.Handler):
    """Library log records as ``notebookops: warning: ...`` lines on the console."""

    def __init__(self, console: Console, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"notebookops: {record.levelname.lower()}: {record.getMessage()}"
            if record.exc_info and self.level <= logging.DEBUG:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.console.err(text)
        except Exception:
            self.handleError(record)


def format_elapsed(seconds: float) -> str:
    """``4.2s``, ``1m05s``, ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _run_name(handle: RunHandle) -> str:
    return f"{handle.backend} run {handle.run_id}"


def progress_text(
    run: Run | None, handle: RunHandle | None, elapsed: float | None, *, compact: bool = False
) -> str:
    """``deepnote run 1234: running, 3.1s, cell 2 of 5 (load)`` (no time if ``elapsed`` is
    None). ``compact`` puts the run's name last, where a narrow terminal may cut it."""
    source = run.handle if run is not None else handle
    name = _run_name(source) if source is not None else "run"
    state = run.state.value if run is not None else "starting"
    if run is not None and run.state is RunState.UNKNOWN and run.vendor_state:
        state = f"{state} ({run.vendor_state})"
    parts = [state if compact else f"{name}: {state}"]
    if elapsed is not None:
        parts.append(format_elapsed(elapsed))
    progress = run.progress if run is not None else None
    if progress is not None and progress.completed is not None:
        cells = f"cell {progress.completed}"
        if progress.total is not None:
            cells += f" of {progress.total}"
        if progress.current:
            cells += f" ({_one_line(progress.current)})"
        parts.append(cells)
    if compact:
        return ", ".join(parts) + f"  [{name}]"
    return ", ".join(parts)


class Progress:
    """Live progress of one run on stderr: an updating line on a terminal, plain lines
    (one per change) otherwise, nothing when ``enabled`` is False."""

    def __init__(
        self,
        console: Console,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.enabled = enabled
        self.clock = clock
        self.started_at = clock()
        self.handle: RunHandle | None = None
        #: The first state read and the latest one.
        self.first: Run | None = None
        self.last: Run | None = None
        self._active = False
        self._frame = 0
        self._last_line = ""

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def start(self, handle: RunHandle, *, verb: str = "started") -> None:
        """The run exists: say so (always, even when quiet: it is the run's identity)."""
        self.handle = handle
        where = f" ({handle.web_url})" if handle.web_url else ""
        # A backend with more than one way to run (PostHog) says which it took.
        mode = handle.extra.get("mode")
        how = f" in {mode} mode" if mode in ("server", "kernel") else ""
        self.console.err(f"notebookops: {verb} {_run_name(handle)}{how}{where}")
        self._active = True
        self._redraw()

    def update(self, run: Run) -> None:
        if self.first is None:
            self.first = run
        self.last = run
        if not self.enabled:
            return
        if self.console.err_is_tty:
            self._redraw()
            return
        # One line per visible change: a new output alone changes nothing shown here.
        line = progress_text(run, self.handle, None)
        if line != self._last_line:
            self._last_line = line
            self.console.err(f"notebookops: {progress_text(run, self.handle, self.elapsed)}")

    async def tick(self) -> None:
        """Keep the terminal line's clock moving (run it in a task; cancel it when done)."""
        if not (self.enabled and self.console.err_is_tty):
            return
        while True:
            await anyio.sleep(_TICK)
            self._frame += 1
            self._redraw()

    def finish(self) -> None:
        self._active = False
        self.console.clear_status()

    def _redraw(self) -> None:
        if self.enabled and self._active and self.console.err_is_tty:
            spinner = _SPINNER[self._frame % len(_SPINNER)]
            text = progress_text(self.last, self.handle, self.elapsed, compact=True)
            self.console.status(f"{spinner} {text}")


def _output_label(output: CellOutput) -> str:
    if output.cell_index is not None:
        return f"[{output.cell_index}]"
    if output.cell_id:
        return f"[{output.cell_id}]"
    return "[-]"


def _shown(output: CellOutput) -> bool:
    """Vendor-private MIME bundles (e.g. PostHog's variable lists) are for --json only."""
    if output.output_type == "error" or output.plain_text is not None:
        return True
    return not output.data or any(not kind.startswith("application/vnd.") for kind in output.data)


def _output_lines(output: CellOutput) -> list[str]:
    if output.output_type == "error":
        lines = [_ANSI.sub("", line) for line in output.traceback for line in line.splitlines()]
        return lines or [output.plain_text or "error"]
    markdown = output.data.get("text/markdown")
    text = markdown if isinstance(markdown, str) else output.plain_text
    if text is None:
        kinds = ", ".join(sorted(output.data)) or output.output_type
        return [f"<{kinds}>"]
    return _ANSI.sub("", text).rstrip("\n").splitlines() or [""]


def _indent_block(label: str, lines: Sequence[str]) -> list[str]:
    shown = list(lines[:MAX_OUTPUT_LINES])
    if len(lines) > MAX_OUTPUT_LINES:
        shown.append(f"... {len(lines) - MAX_OUTPUT_LINES} more lines (--json shows everything)")
    pad = " " * (len(label) + 1)
    return [f"  {label} {shown[0]}", *(f"  {pad}{line}" for line in shown[1:])]


def failure_text(error: RunErrorInfo | None) -> str:
    """`` in cell 3: ValueError: bad`` (where, then why): one wording for every line that
    reports a failure. The error's type is not repeated when its message starts with it."""
    if error is None:
        return ": no reason given by the vendor"
    where = f" in cell {error.cell}" if error.cell is not None else ""
    reason = _one_line(error.message)
    if error.name and not reason.startswith(error.name):
        reason = f"{error.name}: {reason}"
    return f"{where}: {reason}"


def format_run(run: Run, *, elapsed: float | None = None) -> list[str]:
    """A person-readable summary of a run: state, where to see it, error, outputs."""
    state = run.state.value
    if run.vendor_state and run.vendor_state.lower() != state:
        state += f" ({run.vendor_state})"
    took = f" after {format_elapsed(elapsed)}" if elapsed is not None else ""
    lines = [f"{_run_name(run.handle)}: {state}{took}", f"  notebook: {run.handle.notebook_id}"]
    if run.url:
        lines.append(f"  url: {run.url}")
    if run.progress is not None and run.progress.completed is not None:
        total = f" of {run.progress.total}" if run.progress.total is not None else ""
        lines.append(f"  cells: {run.progress.completed}{total} done")
    if run.error is not None:
        error = run.error
        lines.append(f"  error{failure_text(error)}")
        if error.platform:
            lines.append("  (the platform failed, not the notebook: a retry may work)")
    shown = [output for output in run.outputs if _shown(output)]
    if shown:
        lines.append("  outputs:")
        for output in shown:
            lines.extend(
                "  " + line for line in _indent_block(_output_label(output), _output_lines(output))
            )
    if run.artifacts:
        lines.append("  artifacts:")
        for artifact in run.artifacts:
            lines.append(f"    {artifact.name}  {artifact.url or artifact.path or ''}".rstrip())
    return lines


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return _one_line(str(value))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Left-aligned columns; None shows as ``-``, times in UTC to the second."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(value)) for w, value in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.extend(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
    return lines
