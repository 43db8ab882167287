"""What a notebook target names (``deepnote:<id>``, a ``.ipynb`` path ...) and the backends
that run it, configured from the environment: shared by the command line and the job-queue
integrations (:mod:`notebookops.integrations.arq`).

Adapters are imported only when a backend is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

import attrs

from .backend import NotebookBackend
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .backends.deepnote import DeepnoteBackend
    from .backends.posthog import PostHogBackend

__all__ = [
    "VENDORS",
    "Target",
    "deepnote_backend",
    "make_backend",
    "parse_target",
    "posthog_backend",
]

#: Targets written ``<vendor>:<notebook>``.
VENDORS: Final = ("deepnote", "posthog", "datalore")
_TARGET_HELP: Final = (
    "a .ipynb path, deepnote:<notebookId>, posthog:<short_id> or datalore:<owner/id>"
)


@attrs.frozen
class Target:
    """What ``notebookops run`` was asked to run: a backend name and its notebook id."""

    backend: str
    notebook: str


def parse_target(text: str) -> Target:
    """``deepnote:<id>``, ``posthog:<short_id>``, ``datalore:<owner/id>``, ``local:<path>``
    or a path to a ``.ipynb`` file. Anything else is a ConfigurationError saying what works."""
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() in (*VENDORS, "local"):
        if not rest.strip():
            raise ConfigurationError(f"target {text!r} names no notebook; use {_TARGET_HELP}")
        return Target(scheme.lower(), rest.strip())
    if text.lower().endswith(".ipynb") or (text and os.path.isfile(text)):
        return Target("local", text)
    if sep and "/" not in scheme and "\\" not in scheme and len(scheme) > 1:
        raise ConfigurationError(
            f"unknown backend {scheme!r} in target {text!r}; use {_TARGET_HELP}"
        )
    raise ConfigurationError(
        f"{text!r} is neither a .ipynb file nor a known target; use {_TARGET_HELP}"
    )


def deepnote_backend() -> DeepnoteBackend:
    """A DeepnoteBackend from ``DEEPNOTE_API_KEY`` and ``DEEPNOTE_API_URL`` (the adapter's
    ``TOKEN_ENV`` and ``URL_ENV``, which it reads itself)."""
    from .backends.deepnote import DeepnoteBackend

    return DeepnoteBackend()


def posthog_backend(mode: str | None = None) -> PostHogBackend:
    """A PostHogBackend from the ``POSTHOG_*`` variables, in ``mode`` (default auto)."""
    from .backends.posthog import PostHogBackend

    if mode is None or mode == "auto":
        return PostHogBackend()
    if mode == "kernel":
        return PostHogBackend(mode="kernel")
    if mode == "server":
        return PostHogBackend(mode="server")
    raise ConfigurationError(f"the PostHog mode must be auto, kernel or server, got {mode!r}")


def make_backend(name: str, *, posthog_mode: str | None = None) -> NotebookBackend:
    """A backend configured from the environment (see :data:`ENVIRONMENT`)."""
    if name == "local":
        from .backends.local import LocalBackend

        return LocalBackend()
    if name == "deepnote":
        return deepnote_backend()
    if name == "posthog":
        return posthog_backend(posthog_mode)
    if name == "datalore":
        from .backends.datalore import DataloreBackend

        return DataloreBackend()
    raise ConfigurationError(
        f"unknown backend {name!r}; this command line knows local, {', '.join(VENDORS)}"
    )
