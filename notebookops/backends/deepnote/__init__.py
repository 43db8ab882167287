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
  the names are the notebook's input variables (``await deepnote.client.get_notebook(id)``).
* Whole-notebook runs are detached by default (as Deepnote's own client does); runs of selected
  ``blocks`` are live, as Deepnote requires.
* v1 mode (``DeepnoteOptions(use_v1=True)`` or ``DeepnoteRunOptions(use_v1=True)``) triggers
  ``/v1/.../execute`` and then tracks the run it started through the v2 runs list; when that
  run cannot be found, the result is a SUBMITTED run and ``run_and_wait`` returns at once.
* A run-starting request is never repeated; an ambiguous failure is settled through the
  notebook's runs list or reported as :class:`~notebookops.StartOutcomeUnknown`.
* Concurrent waits on runs of one notebook share its runs list (``DeepnoteOptions.share_reads``).
* :class:`DeepnoteClient` (also ``DeepnoteBackend.client``) has every endpoint as a typed
  method (``get_notebook``, ``list_projects``, ``upsert_schedule``, ``delete_schedule``...)
  returning the attrs models exported here.
"""

from __future__ import annotations

from ._requests import BlockPlacement, DeepnoteRunOptions
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
from .backend import DeepnoteBackend, DeepnoteOptions
from .client import DEFAULT_BASE_URL, TOKEN_ENV, URL_ENV, DeepnoteClient

__all__ = [
    "DEFAULT_BASE_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "BlockPlacement",
    "DeepnoteBackend",
    "DeepnoteClient",
    "DeepnoteOptions",
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
    "Workspace",
]
