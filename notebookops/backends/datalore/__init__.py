"""JetBrains Datalore: the Run API (tracked runs with parameters) and the Computation API.

::

    from notebookops import run_and_wait
    from notebookops.backends.datalore import DataloreBackend, DataloreRunOptions

    async with DataloreBackend() as backend:          # DATALORE_TOKEN (and DATALORE_URL)
        run = await run_and_wait(backend, "owner/notebook-id", inputs={"Columns": "revenue"})
        for artifact in run.artifacts:
            print(artifact.name, artifact.url)

See :class:`DataloreBackend` for what Datalore can and cannot do (no cancel, no failure
reason, no per-cell outputs).
"""

from __future__ import annotations

from ._requests import (
    DATALORE_IN_PROGRESS_STATES,
    DEFAULT_BASE_URL,
    DataloreRunOptions,
    notebook_web_url,
    parse_notebook_id,
)
from .backend import TOKEN_ENV, URL_ENV, DataloreBackend

__all__ = [
    "DATALORE_IN_PROGRESS_STATES",
    "DEFAULT_BASE_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "DataloreBackend",
    "DataloreRunOptions",
    "notebook_web_url",
    "parse_notebook_id",
]
