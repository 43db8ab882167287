"""The ``notebookops`` command's entry point: loads the command line, then runs it.

Separate from :mod:`notebookops.cli` so that a Ctrl-C while the command line is still loading
ends it quietly (exit 130) instead of with a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    """``notebookops ARGS``: the exit code of :func:`notebookops.cli.main`."""
    try:
        from .cli import main as run_command_line
    except KeyboardInterrupt:
        sys.stderr.write("notebookops: interrupted\n")
        return 130
    return run_command_line()
