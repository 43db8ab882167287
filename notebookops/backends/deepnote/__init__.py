"""Deepnote adapter: Public API v2 (runs, notebooks, projects, schedule, me) and legacy v1.

::

    from notebookops import run_and_wait
    from notebookops.backends.deepnote import DeepnoteBackend, DeepnoteRunOptions

    async with DeepnoteBackend() as deepnote:            # DEEPNOTE_API_KEY
        run = await run_and_wait(deepnote, "notebook-id", inputs={"day": "2026-11-22"})
        for output in run.outputs:
            print(output.cell_id, output.plain_text)

What to know:

* No CANCEL capability: Deepnote's API cannot stop a run, so at a deadline the run is left
  going (``RunTimeout.cancelled`` is False and says why).
* Input values are strings, booleans or lists of strings (numbers as strings, e.g. ``"5"``);
  the names are the notebook's input variables (``await deepnote.get_notebook(id)``).
* Whole-notebook runs are detached by default (as Deepnote's own client does); runs of selected
  ``blocks`` are live, as Deepnote requires.
* v1 mode (``DeepnoteBackend(use_v1=True)`` or ``DeepnoteRunOptions(use_v1=True)``) triggers
  ``/v1/.../execute`` and then tracks the run it started through the v2 runs list; when that
  run cannot be found, the result is a SUBMITTED run and ``run_and_wait`` returns at once.
* A run-starting request is never repeated; an ambiguous failure is settled through the
  notebook's runs list or reported as :class:`~notebookops.StartOutcomeUnknown`.
* The typed endpoint methods (``get_notebook``, ``list_projects``, ``upsert_schedule``...)
  return the attrs models exported here.
"""

from __future__ import annotations

from ._requests import (
    DEEPNOTE_STATES,
    BlockPlacement,
    DeepnoteRunOptions,
    SnapshotYamlError,
    parse_yaml,
)
from ._wire import (
    FolderPathItem,
    Me,
    Notebook,
    NotebookBlock,
    NotebookInput,
    Pagination,
    Project,
    ProjectFile,
    ProjectFolder,
    ProjectNotebook,
    ProjectPage,
    RunDetails,
    RunPage,
    RunStarted,
    RunSummary,
    Schedule,
    SnapshotBlock,
    SnapshotOutput,
    Workspace,
)
from .backend import API_KEY_ENV, DEFAULT_BASE_URL, DeepnoteBackend

__all__ = [
    "API_KEY_ENV",
    "DEEPNOTE_STATES",
    "DEFAULT_BASE_URL",
    "BlockPlacement",
    "DeepnoteBackend",
    "DeepnoteRunOptions",
    "FolderPathItem",
    "Me",
    "Notebook",
    "NotebookBlock",
    "NotebookInput",
    "Pagination",
    "Project",
    "ProjectFile",
    "ProjectFolder",
    "ProjectNotebook",
    "ProjectPage",
    "RunDetails",
    "RunPage",
    "RunStarted",
    "RunSummary",
    "Schedule",
    "SnapshotBlock",
    "SnapshotOutput",
    "SnapshotYamlError",
    "Workspace",
    "parse_yaml",
]
