"""Vendor-neutral models: what every backend takes and returns.

These are plain attrs classes with validation but no wire format; JSON for handles and runs goes
through a dedicated converter (see :meth:`RunHandle.to_json`).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._convert import make_converter
from .errors import ConfigurationError

if TYPE_CHECKING:
    import cattrs

__all__ = [
    "Artifact",
    "Capability",
    "CellOutput",
    "Run",
    "RunErrorInfo",
    "RunHandle",
    "RunProgress",
    "RunRequest",
    "RunState",
]


class RunState(enum.StrEnum):
    """The normalised state of a run, whatever the vendor calls it."""

    PENDING = "pending"
    """Accepted, not running yet (queued, machine starting)."""
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUBMITTED = "submitted"
    """Accepted, but the vendor offers no way to follow it (e.g. Deepnote v1 without v2 access,
    Datalore's Computation API). Nothing more can be learnt, so it counts as terminal."""
    UNKNOWN = "unknown"
    """The vendor reported a status this version does not know. Not terminal: waits go on,
    and the raw string is kept in ``Run.vendor_state``."""

    @property
    def is_terminal(self) -> bool:
        """True when no further state change can be observed."""
        return self in _TERMINAL

    @property
    def is_success(self) -> bool:
        return self is RunState.SUCCEEDED


_TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.SUBMITTED})


class Capability(enum.StrEnum):
    """What a backend can do; orchestration adapts to these, never to a backend's name."""

    RUN_STATUS = "run_status"
    """``get_run`` reports real progress (without it, runs are SUBMITTED)."""
    CANCEL = "cancel"
    """``cancel_run`` stops a remote run."""
    OUTPUTS = "outputs"
    """Finished runs carry cell outputs."""
    INPUTS = "inputs"
    """``RunRequest.inputs`` are passed to the notebook."""
    BLOCK_SELECTION = "block_selection"
    """``RunRequest.blocks`` runs a subset of cells/blocks."""
    STREAMING = "streaming"
    """``watch_run`` pushes updates, so waiting needs no polling."""
    RESUMABLE = "resumable"
    """A saved handle can be waited on from another process or backend instance."""
    ARTIFACTS = "artifacts"
    """Finished runs list downloadable artifacts."""
    RECONCILE_START = "reconcile_start"
    """After an ambiguous start failure the backend can find out whether a run began."""


def _non_empty_str(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a non-empty string, got {value!r}"
        )


def _to_inputs(value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"inputs must be a mapping of name -> value, got {value!r}")
    for key in value:
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"input names must be non-empty strings, got {key!r}")
    return dict(value)


def _to_blocks(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigurationError("blocks must be a sequence of block ids, not a single string")
    blocks = tuple(value)
    for block in blocks:
        if not isinstance(block, str) or not block:
            raise ConfigurationError(f"block ids must be non-empty strings, got {block!r}")
    return blocks


@attrs.frozen
class RunRequest:
    """What to run: a notebook id, its inputs, optionally some blocks, and vendor options.

    ``options`` is a backend-specific attrs object (e.g. ``DeepnoteRunOptions``); a backend
    rejects options meant for another with :class:`~notebookops.ConfigurationError`.
    """

    notebook: str = attrs.field(validator=_non_empty_str)
    inputs: dict[str, Any] = attrs.field(factory=dict, converter=_to_inputs, hash=False)
    blocks: tuple[str, ...] | None = attrs.field(default=None, converter=_to_blocks)
    options: object | None = attrs.field(default=None, hash=False)


@attrs.frozen
class RunHandle:
    """A small, serialisable reference to a started run.

    Save it (``handle.to_json()``) before waiting: another process can then resume the wait
    with ``wait_for_run(backend, RunHandle.from_json(text))`` instead of starting a second run.
    """

    backend: str = attrs.field(validator=_non_empty_str)
    run_id: str = attrs.field(validator=_non_empty_str)
    notebook_id: str = attrs.field(validator=_non_empty_str)
    created_at: datetime | None = None
    web_url: str | None = None
    #: Vendor details needed to resume (e.g. a project id); strings only so it stays JSON.
    extra: dict[str, str] = attrs.field(factory=dict, hash=False)

    def to_json(self) -> str:
        """Serialise to a compact JSON string."""
        return json.dumps(_converter().unstructure(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunHandle:
        """Parse a handle saved by :meth:`to_json`. Bad input raises ConfigurationError."""
        converter = _converter()
        import cattrs  # loaded by _converter(); kept out of this module's import

        try:
            data = json.loads(text)
            return converter.structure(data, cls)
        except cattrs.BaseValidationError as exc:
            # cattrs' own words name each field ("required field missing @ $.run_id").
            problems = "; ".join(cattrs.transform_error(exc, path="handle"))
            raise ConfigurationError(f"not a valid notebookops run handle: {problems}") from None
        except (ValueError, TypeError, RecursionError, ConfigurationError) as exc:
            raise ConfigurationError(f"not a valid notebookops run handle: {exc}") from None


@attrs.frozen
class CellOutput:
    """One output of one cell/block, shaped like a Jupyter output.

    ``output_type`` is ``"stream"`` (``name`` = stdout/stderr, ``text``), ``"execute_result"`` /
    ``"display_data"`` (``data`` = MIME bundle) or ``"error"`` (``ename``, ``evalue``,
    ``traceback``).
    """

    output_type: str
    cell_id: str | None = None
    cell_index: int | None = None
    name: str | None = None
    text: str | None = None
    data: dict[str, Any] = attrs.field(factory=dict, hash=False)
    ename: str | None = None
    evalue: str | None = None
    traceback: tuple[str, ...] = ()
    metadata: dict[str, Any] = attrs.field(factory=dict, hash=False)

    @property
    def plain_text(self) -> str | None:
        """The output as plain text, whichever form it came in.

        A rich display (Markdown, say) whose ``text/plain`` is only its object's repr
        (``<IPython.core.display.Markdown object>``) reads as its Markdown source instead.
        """
        if self.text is not None:
            return self.text
        plain = _joined(self.data.get("text/plain"))
        markdown = _joined(self.data.get("text/markdown"))
        if markdown is not None and (plain is None or _OBJECT_REPR.fullmatch(plain.strip())):
            return markdown
        if plain is not None:
            return plain
        if self.output_type == "error":
            return f"{self.ename or 'Error'}: {self.evalue or ''}".rstrip(": ")
        return None


#: What IPython puts in ``text/plain`` for an object with no text form of its own.
_OBJECT_REPR = re.compile(r"<[\w.]+ object(?: at 0x[0-9a-f]+)?>")


def _joined(value: object) -> str | None:
    """A MIME bundle's value as text (notebooks store multi-line text as a list of lines)."""
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return None if value is None else str(value)


@attrs.frozen
class Artifact:
    """A file a run produced. ``url`` is absolute where the vendor allows building one."""

    name: str
    url: str | None = None
    path: str | None = None
    mime_type: str | None = None
    size: int | None = None


@attrs.frozen
class RunErrorInfo:
    """Why a run failed.

    ``platform`` is True when the vendor's infrastructure failed rather than the notebook's code
    (e.g. Deepnote ``internal_error``): such runs are often worth retrying.
    """

    message: str
    name: str | None = None
    traceback: tuple[str, ...] = ()
    cell_id: str | None = None
    cell_index: int | None = None
    platform: bool = False

    @property
    def cell(self) -> str | None:
        """The failing cell as every message names it: ``"3 (cell-id)"``, or whichever of
        index and id is known (None when neither is)."""
        if self.cell_index is not None and self.cell_id:
            return f"{self.cell_index} ({self.cell_id})"
        if self.cell_index is not None:
            return str(self.cell_index)
        return self.cell_id or None


@attrs.frozen
class RunProgress:
    """How far a run has got, where the backend can tell (``completed`` of ``total`` cells)."""

    completed: int | None = None
    total: int | None = None
    current: str | None = None


@attrs.frozen
class Run:
    """A snapshot of a run's state as last read from the backend."""

    handle: RunHandle
    state: RunState
    vendor_state: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outputs: tuple[CellOutput, ...] = ()
    artifacts: tuple[Artifact, ...] = ()
    error: RunErrorInfo | None = None
    progress: RunProgress | None = None
    web_url: str | None = None
    #: The vendor's payload this Run was built from, for anything not normalised.
    raw: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def run_id(self) -> str:
        return self.handle.run_id

    @property
    def url(self) -> str | None:
        """A page a person can open for this run or its notebook, where known."""
        return self.web_url or self.handle.web_url

    def to_dict(self, *, include_raw: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO-8601 strings)."""
        data: dict[str, Any] = _converter().unstructure(self)
        if not include_raw:
            data.pop("raw", None)
        return data

    def to_json(self, *, include_raw: bool = False) -> str:
        """Serialise :meth:`to_dict` to a JSON string; :meth:`from_json` reads it back."""
        return json.dumps(self.to_dict(include_raw=include_raw), default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Run:
        """Rebuild a run from :meth:`to_dict`'s output. Bad input raises ConfigurationError."""
        return _structure(cls, data, "run")

    @classmethod
    def from_json(cls, text: str | bytes) -> Run:
        """Parse a run saved by :meth:`to_json`. Bad input raises ConfigurationError."""
        return _from_json(cls, text, "run")


_T = TypeVar("_T")


def _from_json(cls: type[_T], text: str | bytes, what: str) -> _T:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigurationError(f"not a valid notebookops {what}: {exc}") from None
    return _structure(cls, data, what)


def _structure(cls: type[_T], data: object, what: str) -> _T:
    converter = _converter()
    import cattrs  # loaded by _converter(); kept out of this module's import

    try:
        return converter.structure(data, cls)
    except cattrs.BaseValidationError as exc:
        # cattrs' own words name each field ("required field missing @ $.handle.run_id").
        problems = "; ".join(cattrs.transform_error(exc, path=what.split()[-1]))
        raise ConfigurationError(f"not a valid notebookops {what}: {problems}") from None
    except (ValueError, TypeError, RecursionError, ConfigurationError) as exc:
        raise ConfigurationError(f"not a valid notebookops {what}: {exc}") from None


_CONVERTER: cattrs.Converter | None = None


def _converter() -> cattrs.Converter:
    # Built on first use: importing the models (every backend does) should not pay for
    # cattrs until a handle or run is serialised.
    global _CONVERTER
    if _CONVERTER is None:
        _CONVERTER = make_converter()
    return _CONVERTER
