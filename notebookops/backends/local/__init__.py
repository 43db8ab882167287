"""The local backend: run Jupyter notebooks on this machine (needs ``notebookops[local]``).

::

    from notebookops import run_and_wait
    from notebookops.backends.local import LocalBackend

    async with LocalBackend() as backend:
        run = await run_and_wait(backend, "examples/notebooks/hello.ipynb", inputs={"name": "you"})

Importing this package is cheap and works without the optional dependencies; creating a
:class:`LocalBackend` without them raises :class:`~notebookops.ConfigurationError`.
"""

from __future__ import annotations

from .backend import INJECTED_TAG, LOCAL_STATES, PARAMETERS_TAG, LocalBackend, LocalRunOptions

__all__ = ["INJECTED_TAG", "LOCAL_STATES", "PARAMETERS_TAG", "LocalBackend", "LocalRunOptions"]
