"""JetBrains Datalore: the Run API (tracked runs with parameters) and the Computation API.

::

    from notebookops import run_and_wait
    from notebookops.backends.datalore import DataloreBackend, DataloreRunOptions

    async with DataloreBackend() as backend:          # DATALORE_TOKEN (and DATALORE_URL)
        run = await run_and_wait(backend, "owner/notebook-id", inputs={"Columns": "revenue"})
        for artifact in run.artifacts:
            print(artifact.name, artifact.url)

:class:`DataloreBackend` implements the notebookops protocol over :class:`DataloreClient`,
which has one method per Datalore endpoint. See :class:`DataloreBackend` for what Datalore
can and cannot do (no cancel, no failure reason, no per-cell outputs), and
:data:`DATALORE_STATES` for how a run's status document is read.
"""

from __future__ import annotations

from ._requests import DATALORE_STATES, DataloreRunOptions
from ._wire import RunArtifact, RunStatus
from .backend import DataloreBackend
from .client import DEFAULT_BASE_URL, TOKEN_ENV, URL_ENV, DataloreClient

__all__ = [
    "DATALORE_STATES",
    "DEFAULT_BASE_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "DataloreBackend",
    "DataloreClient",
    "DataloreRunOptions",
    "RunArtifact",
    "RunStatus",
]
