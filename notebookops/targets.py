"""Targets: the ``<vendor>:<notebook>`` strings the command line and the integrations take.

``deepnote:<notebookId>``, ``posthog:<short_id>``, ``datalore:<owner/id>``, ``local:<path>``
or a path to a ``.ipynb`` file. :func:`parse_target` reads one; :func:`backend_for_target`
builds the backend that runs it, from explicit credentials or (where they are None) the
environment variables each adapter reads itself. Adapters are imported only when a backend is
built, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from typing import Final, Literal

import attrs

from .backend import NotebookBackend
from .errors import ConfigurationError

__all__ = [
    "TARGET_FORMS",
    "VENDORS",
    "Target",
    "backend_for_target",
    "make_backend",
    "parse_target",
]

#: Targets written ``<vendor>:<notebook>``.
VENDORS: Final = ("deepnote", "posthog", "datalore")
#: The forms a target takes, for messages and help texts.
TARGET_FORMS: Final = (
    "a .ipynb path, deepnote:<notebookId>, posthog:<short_id> or datalore:<owner/id>"
)


@attrs.frozen
class Target:
    """What to run: a backend name (``local`` or one of :data:`VENDORS`) and its notebook id."""

    backend: str
    notebook: str


def parse_target(text: str) -> Target:
    """``deepnote:<id>``, ``posthog:<short_id>``, ``datalore:<owner/id>``, ``local:<path>``
    or a path to a ``.ipynb`` file. Anything else is a ConfigurationError saying what works."""
    if not isinstance(text, str):
        raise ConfigurationError(f"a target must be a string, got {type(text).__name__}")
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() in (*VENDORS, "local"):
        if not rest.strip():
            raise ConfigurationError(f"target {text!r} names no notebook; use {TARGET_FORMS}")
        return Target(scheme.lower(), rest.strip())
    if text.lower().endswith(".ipynb") or (text and os.path.isfile(text)):
        return Target("local", text)
    if sep and "/" not in scheme and "\\" not in scheme and len(scheme) > 1:
        raise ConfigurationError(
            f"unknown backend {scheme!r} in target {text!r}; use {TARGET_FORMS}"
        )
    raise ConfigurationError(
        f"{text!r} is neither a .ipynb file nor a known target; use {TARGET_FORMS}"
    )


def backend_for_target(
    target: str | Target,
    *,
    token: str | None = None,
    base_url: str | None = None,
    posthog_mode: Literal["auto", "kernel", "server"] = "auto",
    posthog_project_id: str | None = None,
) -> tuple[NotebookBackend, str]:
    """The backend that runs ``target`` and the notebook id to pass it.

    ``token`` and ``base_url`` are the vendor's API token and origin (PostHog: the personal
    API key and host); each one left None is read by the adapter from its environment
    variable (``DEEPNOTE_API_KEY``, ``POSTHOG_PERSONAL_API_KEY``, ``DATALORE_TOKEN``, ...),
    then its default. Local targets take neither. The caller closes the backend
    (``await backend.aclose()``).
    """
    parsed = target if isinstance(target, Target) else parse_target(target)
    backend = _backend(
        parsed.backend,
        token=token,
        base_url=base_url,
        posthog_mode=posthog_mode,
        posthog_project_id=posthog_project_id,
    )
    return backend, parsed.notebook


def _backend(
    name: str,
    *,
    token: str | None = None,
    base_url: str | None = None,
    posthog_mode: str = "auto",
    posthog_project_id: str | None = None,
) -> NotebookBackend:
    if name == "local":
        if token is not None or base_url is not None:
            raise ConfigurationError("a local target takes no token or base URL")
        from .backends.local import LocalBackend

        return LocalBackend()
    if name == "deepnote":
        from .backends.deepnote import DeepnoteBackend

        return DeepnoteBackend(token, base_url=base_url)
    if name == "posthog":
        from .backends.posthog import PostHogBackend

        if posthog_mode not in ("auto", "kernel", "server"):
            raise ConfigurationError(
                f"the PostHog mode must be auto, kernel or server, got {posthog_mode!r}"
            )
        return PostHogBackend(
            token,
            project_id=posthog_project_id,
            base_url=base_url,
            mode=posthog_mode,  # type: ignore[arg-type]
        )
    if name == "datalore":
        from .backends.datalore import DataloreBackend

        return DataloreBackend(token, base_url=base_url)
    raise ConfigurationError(f"unknown backend {name!r}; known: local, {', '.join(VENDORS)}")


def make_backend(name: str, *, posthog_mode: str | None = None) -> NotebookBackend:
    """The backend called ``name`` (``local`` or one of :data:`VENDORS`), configured from the
    environment variables each adapter reads itself; PostHog in ``posthog_mode`` (default
    auto)."""
    return _backend(name, posthog_mode=posthog_mode or "auto")
