"""The local backend as a conformance target, and a tiny notebook writer for tests.

Needs ``notebookops[local]`` (nbclient, ipykernel) and pytest::

    from notebookops.testing.conformance import BackendConformance
    from notebookops.testing.local import local_target

    class TestLocalConformance(BackendConformance):
        target_factory = staticmethod(local_target)

:func:`write_notebook` writes valid ``.ipynb`` files without importing nbformat, so tests can
describe a notebook in a few lines.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import attrs

from ..backend import NotebookBackend
from ..backends.local import PARAMETERS_TAG, LocalBackend
from ..models import RunRequest
from .conformance import ConformanceTarget, Outcome

__all__ = ["Cell", "LocalTarget", "local_target", "write_notebook"]


def _to_tags(tags: Iterable[str]) -> tuple[str, ...]:
    return (tags,) if isinstance(tags, str) else tuple(tags)


@attrs.frozen
class Cell:
    """One cell for :func:`write_notebook` (a bare string is a code cell without tags)."""

    source: str
    tags: tuple[str, ...] = attrs.field(default=(), converter=_to_tags)
    cell_type: str = "code"


def write_notebook(path: Path, cells: Iterable[str | Cell], *, kernel: str = "python3") -> Path:
    """Write an nbformat 4.5 notebook with ``cells`` to ``path`` and return the path.

    Cell ids are ``cell-0``, ``cell-1``... in order, so tests can name cells.
    """
    rendered = []
    for index, item in enumerate(cells):
        cell = item if isinstance(item, Cell) else Cell(item)
        data: dict[str, object] = {
            "cell_type": cell.cell_type,
            "id": f"cell-{index}",
            "metadata": {"tags": list(cell.tags)} if cell.tags else {},
            "source": cell.source,
        }
        if cell.cell_type == "code":
            data["execution_count"] = None
            data["outputs"] = []
        rendered.append(data)
    notebook = {
        "cells": rendered,
        "metadata": {
            "kernelspec": {"display_name": kernel, "language": "python", "name": kernel},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1) + "\n", encoding="utf-8")
    return path


#: What each conformance outcome runs. ``long`` sleeps in short steps, so an interrupt stops
#: it at once, and outlasts any test deadline by far (~30 s).
CONFORMANCE_NOTEBOOKS: dict[str, tuple[str | Cell, ...]] = {
    "succeed": (
        Cell("x = 0", tags=(PARAMETERS_TAG,)),
        'print(f"x = {x}")',
        "x * 2",
    ),
    "fail": (
        Cell("x = 0", tags=(PARAMETERS_TAG,)),
        'print("about to fail")',
        'raise RuntimeError(f"conformance failure (x = {x})")',
    ),
    "long": (
        Cell("x = 0", tags=(PARAMETERS_TAG,)),
        "import time\n\nfor _ in range(300):\n    time.sleep(0.1)",
    ),
}


class LocalTarget(ConformanceTarget):
    """Conformance target: small notebooks in ``directory`` run on a :class:`LocalBackend`."""

    #: Kernel start-up takes a second or two on a busy machine; interrupts are fast.
    settle_timeout = 30.0

    def __init__(self, directory: Path, *, interrupt_grace: float = 2.0) -> None:
        self.directory = directory
        self.interrupt_grace = interrupt_grace
        self.paths = {outcome: directory / f"{outcome}.ipynb" for outcome in CONFORMANCE_NOTEBOOKS}

    def write_notebooks(self) -> None:
        for outcome, cells in CONFORMANCE_NOTEBOOKS.items():
            write_notebook(self.paths[outcome], cells)

    def make_backend(self) -> NotebookBackend:
        return LocalBackend(interrupt_grace=self.interrupt_grace)

    def request(self, outcome: Outcome) -> RunRequest | None:
        if outcome == "unknown_status":
            return None  # the local backend only ever reports states it defines itself
        return RunRequest(notebook=str(self.paths[outcome]), inputs={"x": 1})


@asynccontextmanager
async def local_target() -> AsyncIterator[ConformanceTarget]:
    """A :class:`LocalTarget` over a temporary directory, removed afterwards."""
    directory = await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "notebookops-local-")
    try:
        target = LocalTarget(Path(directory))
        await anyio.to_thread.run_sync(target.write_notebooks)
        yield target
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, directory, True)
