"""Command-line plumbing without I/O: targets, inputs, and backends built from the environment.

Adapters are imported only when a backend is built, so ``notebookops --help`` stays cheap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final

from .backend import NotebookBackend
from .errors import ConfigurationError
from .models import Capability, RunHandle
from .targets import VENDORS, Target, make_backend, parse_target

if TYPE_CHECKING:
    from .backends.deepnote import DeepnoteBackend
    from .backends.posthog import PostHogBackend

__all__ = [
    "DEEPNOTE_URL_ENV",
    "ENVIRONMENT",
    "SECRET_ENV",
    "VENDORS",
    "Target",
    "backend_for_handle",
    "deepnote_backend",
    "describe_environment",
    "make_backend",
    "not_resumable_reason",
    "parse_inputs",
    "parse_parameters",
    "parse_target",
    "parse_value",
    "posthog_backend",
    "secret_values",
    "text_warning",
]

#: The Deepnote API origin for the command line and the examples (the adapter itself takes
#: ``base_url=``); the sandbox sets it to its fake server.
DEEPNOTE_URL_ENV: Final = "DEEPNOTE_API_URL"

#: Every environment variable the command line reads, with what it is for (shown in --help).
ENVIRONMENT: Final[tuple[tuple[str, str], ...]] = (
    ("DEEPNOTE_API_KEY", "Deepnote API key"),
    (DEEPNOTE_URL_ENV, "Deepnote API origin (default https://api.deepnote.com)"),
    ("POSTHOG_PERSONAL_API_KEY", "PostHog personal API key (phx_...)"),
    ("POSTHOG_PROJECT_ID", "PostHog project id"),
    ("POSTHOG_HOST", "PostHog base URL (default https://us.posthog.com)"),
    ("DATALORE_TOKEN", "Datalore API token"),
    ("DATALORE_URL", "Datalore installation (default https://datalore.jetbrains.com)"),
)
#: The variables holding secrets: their values are scrubbed from everything the CLI prints.
SECRET_ENV: Final = ("DEEPNOTE_API_KEY", "POSTHOG_PERSONAL_API_KEY", "DATALORE_TOKEN")
#: Secrets shorter than this are not scrubbed (it would mangle ordinary text).
_MIN_SECRET_LENGTH: Final = 6


def _not_finite(name: str, text: object) -> ConfigurationError:
    # The library's own wording for 1e999 (which JSON reads as inf).
    return ConfigurationError(f"input {name!r} must be a finite number, got {text}")


def parse_value(text: str, *, name: str = "value") -> Any:
    """An input value: JSON when it parses (``5``, ``true``, ``["a", "b"]``, ``"5"``), else
    the text itself. ``NaN``, ``Infinity`` and ``1e999`` are refused (ConfigurationError)
    rather than passed on as text or infinity."""
    try:
        value = json.loads(text)  # NaN, Infinity and 1e999 read as floats, refused below
    except ValueError:
        return text
    return _plain(name, value)


_PYTHON_LITERALS: Final = {"True": "true", "False": "false", "None": "null"}


def text_warning(name: str, text: str) -> str | None:
    """Why ``-i NAME=TEXT``, read as text, was probably meant as JSON (None when it was not):
    it starts like JSON (``[``, ``{``, ``"``) or is a Python literal (``True``)."""
    if text in _PYTHON_LITERALS:
        meant = _PYTHON_LITERALS[text]
        return f"-i {name}={text} is not JSON (did you mean {meant}?); it is passed as text"
    if text.lstrip()[:1] in ("[", "{", '"') and text.strip():
        try:
            json.loads(text)
        except ValueError as error:
            return (
                f"-i {name}={text} is not valid JSON ({error}); it is passed as text "
                f"(-s {name}=... passes text without this warning)"
            )
    return None


def _split(pair: str, option: str) -> tuple[str, str]:
    name, sep, value = pair.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigurationError(f"{option} takes NAME=VALUE, got {pair!r}")
    return name, value


def parse_inputs(
    json_pairs: Iterable[str],
    text_pairs: Iterable[str] = (),
    *,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Inputs from ``-i NAME=VALUE`` (JSON when it parses) and ``-s NAME=TEXT`` (always text).
    A name given twice is an error rather than a silent override. ``warn`` hears about
    ``-i`` values taken as text that look like mistyped JSON."""
    inputs: dict[str, Any] = {}
    pairs = [(pair, "-i", True) for pair in json_pairs]
    pairs += [(pair, "-s", False) for pair in text_pairs]
    for pair, option, as_json in pairs:
        name, raw = _split(pair, option)
        if name in inputs:
            raise ConfigurationError(f"input {name!r} is given twice")
        value = parse_value(raw, name=name) if as_json else raw
        if as_json and warn is not None and isinstance(value, str):
            warning = text_warning(name, raw)
            if warning is not None:
                warn(warning)
        inputs[name] = value
    return inputs


def parse_parameters(text: str, source: str) -> dict[str, Any]:
    """Inputs from a parameters file (papermill's ``-f``): a YAML or JSON mapping of
    ``NAME: VALUE``. Dates and times become ISO text (inputs travel as JSON)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise ConfigurationError(
            f"parameters file {source!r} is not valid YAML or JSON: {reason}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"parameters file {source!r} must hold a mapping of NAME: VALUE, "
            f"got {type(data).__name__}"
        )
    parameters: dict[str, Any] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(
                f"parameters file {source!r}: input names must be text, got {name!r}"
            )
        parameters[name] = _plain(name, value)
    return parameters


def _plain(name: str, value: Any) -> Any:
    """``value`` as JSON-ready data: dates as ISO text; NaN and infinities refused."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise _not_finite(name, value)
    if isinstance(value, list):
        return [_plain(name, item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(name, item) for key, item in value.items()}
    return value


async def backend_for_handle(handle: RunHandle) -> NotebookBackend:
    """The backend that can follow ``handle`` from this process, or a ConfigurationError
    saying why none can (local and PostHog kernel-mode runs live in the process that
    started them)."""
    mode = None
    if handle.backend == "posthog":
        mode = "server" if handle.extra.get("mode") == "server" else "kernel"
    backend = make_backend(handle.backend, posthog_mode=mode)
    if Capability.RESUMABLE not in backend.capabilities:
        await backend.aclose()
        raise ConfigurationError(
            f"{handle.backend} run {handle.run_id} cannot be followed from another process: "
            f"{not_resumable_reason(handle.backend)}"
        )
    return backend


def not_resumable_reason(backend: str) -> str:
    """Why runs of ``backend`` end with the process that started them."""
    if backend == "posthog":
        return (
            "PostHog kernel-mode runs are driven by the process that started them "
            "(use --mode server for resumable server-side runs)"
        )
    return f"{backend} runs live only in the process that started them"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values to scrub from output, longest first (so no prefix survives)."""
    env = os.environ if environ is None else environ
    values = {env.get(name, "").strip() for name in SECRET_ENV}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def describe_environment(names: Sequence[tuple[str, str]] = ENVIRONMENT) -> str:
    """The environment section of ``--help``."""
    width = max(len(name) for name, _ in names)
    return "\n".join(f"  {name:<{width}}  {text}" for name, text in names)


def deepnote_backend() -> DeepnoteBackend:
    """The ``list deepnote ...`` commands' backend, from the environment."""
    from .backends.deepnote import DeepnoteBackend

    return DeepnoteBackend()


def posthog_backend() -> PostHogBackend:
    """The ``list posthog ...`` commands' backend, from the environment."""
    from .backends.posthog import PostHogBackend

    return PostHogBackend()
