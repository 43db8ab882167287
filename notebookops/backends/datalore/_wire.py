"""Datalore Run API payloads, shaped like the vendor's JSON, and :func:`make_converter`.

:class:`RunStatus` and :class:`RunArtifact` are public (what :class:`DataloreClient` returns);
the request bodies are internal. Field names follow
https://www.jetbrains.com/help/datalore/run-api.html (camelCase on the wire, snake_case here).
Everything the responses carry is optional except where the adapter cannot work without it:
the docs leave open whether finished-run fields are ``null`` or absent while a run is in
progress, and extra fields are ignored.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import attrs
import cattrs

from ..._convert import make_converter as base_converter
from ..._convert import parse_datetime, register_camel_case

__all__ = [
    "CONVERTER",
    "ComputationRequestWire",
    "ParameterWire",
    "RunArtifact",
    "RunNotebookRequestWire",
    "RunStartedWire",
    "RunStatus",
    "make_converter",
]


@attrs.frozen
class ParameterWire:
    """One ``{"name", "value"}`` entry of ``parameters``: a value for an interactive control.

    Datalore documents the value as a string, and strict servers accept nothing else.
    """

    name: str
    value: str


@attrs.frozen
class RunNotebookRequestWire:
    """Body of ``POST /api/run/v1/notebook``: ``None`` fields are left out of the JSON.

    Only ``notebookId`` is required; the optional fields are sent only when the caller set
    them, so an older on-premises server that refuses fields it does not know (such as
    ``directFileStorageWrite``, documented from 2026.1) accepts every request that does not
    need them.
    """

    notebook_id: str
    update_report: str | None = None
    direct_file_storage_write: bool | None = None
    parameters: list[ParameterWire] | None = None


@attrs.frozen
class ComputationRequestWire:
    """Body of ``POST /api/computation/v1/notebook``."""

    notebook_id: str


@attrs.frozen
class RunStartedWire:
    """Response of ``POST /api/run/v1/notebook``."""

    run_id: str


@attrs.frozen
class RunArtifact:
    """One entry of a run's ``artifacts``: the run's notebook file (``.ipynb``) and its path."""

    name: str | None = None
    path: str | None = None


@attrs.frozen
class RunStatus:
    """The answer of ``GET /api/run/v1/{runId}`` (every field may be missing).

    ``status`` is documented as present only while the run is in progress; ``end_time`` and
    ``success`` once it has finished. ``raw`` is the JSON document as received.
    """

    run_id: str | None = None
    user_id: str | None = None
    notebook_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    success: bool | None = None
    status: str | None = None
    update_report: str | None = None
    direct_file_storage_write: bool | None = None
    artifacts: list[RunArtifact] | None = None
    read_only: bool | None = None
    raw: Any = attrs.field(default=None, eq=False, repr=False)


def _strict_str(value: Any, _: type[Any]) -> str:
    # cattrs' default is str(value), which would turn {"a": 1} into an id; numbers are
    # accepted because ids that look numeric may arrive unquoted.
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _strict_bool(value: Any, _: type[Any]) -> bool:
    # cattrs' default is bool(value): "false" would become True.
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected true or false, got {type(value).__name__}")


def _timestamp(value: Any, _: type[Any]) -> datetime:
    # Documented as ISO-8601 UTC ("1971-04-26T12:26:06Z"); epoch numbers are accepted too,
    # since the examples are placeholders and JVM servers often emit epoch milliseconds.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"not a timestamp: {value!r}")
        seconds = value / 1000 if abs(value) > 1e11 else value
        return datetime.fromtimestamp(seconds, UTC)
    return parse_datetime(value)


def make_converter() -> cattrs.Converter:
    """The converter for Datalore's JSON: camelCase keys, strict strings and booleans."""
    converter = base_converter()
    # Primitive hooks first: the per-class functions below look them up when generated.
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(datetime, _timestamp)
    register_camel_case(
        converter, ParameterWire, RunNotebookRequestWire, ComputationRequestWire, omit_none=True
    )
    register_camel_case(converter, RunStartedWire, RunArtifact)
    _require_object(converter, RunStartedWire)
    _require_object(converter, RunArtifact)
    artifact = converter.get_structure_hook(RunArtifact)

    def artifacts(value: Any, _: Any) -> list[RunArtifact]:
        # cattrs would iterate a string character by character.
        if not isinstance(value, list):
            raise TypeError(f"expected a list of artifacts, got {type(value).__name__}")
        return [artifact(item, RunArtifact) for item in value]

    converter.register_structure_hook_func(lambda t: t == list[RunArtifact], artifacts)
    register_camel_case(converter, RunStatus)
    _require_object(converter, RunStatus)
    return converter


def _require_object(converter: cattrs.Converter, cls: type[Any]) -> None:
    """Refuse anything but a JSON object for ``cls`` (cattrs would read a string as empty)."""
    inner = converter.get_structure_hook(cls)

    def structure(value: Any, target: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected a JSON object, got {type(value).__name__}")
        return inner(value, target)

    converter.register_structure_hook(cls, structure)


#: The Datalore converter. Never use the global cattrs functions.
CONVERTER = make_converter()
