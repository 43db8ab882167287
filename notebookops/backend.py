"""The NotebookBackend protocol, and what writing an adapter takes.

``BaseBackend`` and ``StateTable`` are defined here; the client layer an HTTP adapter is
built on (``ApiClient``, the ``SSEEvent`` its event streams yield, ``VendorClient``,
``VendorProfile`` with ``rebuild_error`` for its ``refine_error`` hook, and ``protected`` with its
``SENT_WORK_GRACE`` for the part of a start that must survive a cancellation) is re-exported
from here on first use, so that importing the protocol does not import aiohttp.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, TypeVar, runtime_checkable

from .errors import BackendClosed, ConfigurationError, UnsupportedOperation
from .models import Capability, Run, RunHandle, RunRequest, RunState

if TYPE_CHECKING:  # imported on first use at run time, see __getattr__
    from ._api_errors import VendorProfile, rebuild_error
    from ._client import ApiClient, VendorClient
    from ._protect import SENT_WORK_GRACE, protected
    from ._sse import SSEEvent

__all__ = [
    "SENT_WORK_GRACE",
    "ApiClient",
    "BaseBackend",
    "NotebookBackend",
    "RunFinder",
    "SSEEvent",
    "StateTable",
    "StreamingBackend",
    "VendorClient",
    "VendorProfile",
    "protected",
    "rebuild_error",
]

logger = logging.getLogger("notebookops.backend")

_ON_FIRST_USE = {
    "ApiClient": "._client",
    "VendorClient": "._client",
    "VendorProfile": "._api_errors",
    "rebuild_error": "._api_errors",
    "protected": "._protect",
    "SENT_WORK_GRACE": "._protect",
    "SSEEvent": "._sse",
}


def __getattr__(name: str) -> object:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __package__), name)


OptionsT = TypeVar("OptionsT")


@runtime_checkable
class NotebookBackend(Protocol):
    """What every backend (vendor adapter, local runner, fake) provides.

    Backends take and return only :mod:`notebookops.models` types, and raise only errors from
    :mod:`notebookops.errors`. They are async context managers; ``aclose`` is idempotent and any
    call after it raises :class:`~notebookops.BackendClosed`.
    """

    @property
    def name(self) -> str:
        """Short backend name, also stored in every handle (``"deepnote"``, ``"local"``...)."""
        ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    async def start_run(self, request: RunRequest) -> RunHandle:
        """Start a run and return its handle as soon as the vendor accepted it.

        The contract that keeps a started run from being lost to a cancellation: the request
        that may create the run is sent so that it is seen through to its answer (a vendor
        client's non-idempotent request is, see :class:`~notebookops._client.ApiClient`), and
        between that answer and ``return handle`` nothing is awaited unless it runs under
        :func:`~notebookops._protect.protected` (e.g. looking the run up after an ambiguous
        answer). Before that request is sent, a cancellation may abandon the start: nothing
        has reached the vendor. An ambiguous failure raises StartOutcomeUnknown.
        """
        ...

    async def get_run(self, handle: RunHandle) -> Run:
        """Read the run's current state (one status read; no waiting)."""
        ...

    async def cancel_run(self, handle: RunHandle) -> None:
        """Ask the vendor to stop the run. UnsupportedOperation without CANCEL."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class StreamingBackend(NotebookBackend, Protocol):
    """A backend with the STREAMING capability: it pushes updates instead of being polled."""

    def watch_run(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        """Yield a Run each time the run changes; end after a terminal state."""
        ...


@runtime_checkable
class RunFinder(NotebookBackend, Protocol):
    """A backend with the RECONCILE_START capability: it can list the runs of a notebook that
    were created in a window of time (Deepnote's runs list). This is how a keyed start whose
    process died mid-request is settled after a restart (see ``run_and_wait(key=...)``)."""

    async def find_runs(
        self, notebook: str, *, since: datetime, until: datetime
    ) -> list[RunHandle]:
        """The runs of ``notebook`` created from ``since`` to ``until`` (both inclusive)."""
        ...


class StateTable:
    """An explicit vendor-status -> RunState table (a vendor adding a state is a data change).

    Unknown strings map to UNKNOWN and are logged once per table and string.
    """

    def __init__(self, vendor: str, table: Mapping[str, RunState]) -> None:
        self.vendor = vendor
        self._table = {key.lower(): value for key, value in table.items()}
        self._warned: set[str] = set()

    def __call__(self, raw: str | None) -> RunState:
        if raw is None:
            return RunState.UNKNOWN
        state = self._table.get(raw.lower())
        if state is not None:
            return state
        if raw not in self._warned:
            self._warned.add(raw)
            logger.warning(
                "%s reported an unknown run status %r; treating it as still in progress",
                self.vendor,
                raw,
            )
        return RunState.UNKNOWN

    def known(self) -> Mapping[str, RunState]:
        return dict(self._table)


class BaseBackend:
    """Optional base class for adapters: closed-state tracking, context manager, handle checks.

    Subclasses set ``name`` and ``capabilities`` and implement the protocol methods, calling
    :meth:`_ensure_open` and :meth:`_check_handle` first.
    """

    name: str = "base"
    capabilities: frozenset[Capability] = frozenset()
    _closed: bool = False

    async def __aenter__(self) -> Self:
        self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release resources. Idempotent; subclasses extend :meth:`_aclose`."""
        if self._closed:
            return
        self._closed = True
        await self._aclose()

    async def _aclose(self) -> None:
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    def _ensure_open(self) -> None:
        if self._closed:
            raise BackendClosed(f"the {self.name} backend is closed; create a new one")

    def _check_handle(self, handle: RunHandle) -> None:
        self._ensure_open()
        if not isinstance(handle, RunHandle):
            raise ConfigurationError(f"expected a RunHandle, got {type(handle).__name__}")
        if handle.backend != self.name:
            raise ConfigurationError(
                f"this handle belongs to the {handle.backend!r} backend, not {self.name!r}"
            )

    def _require(self, capability: Capability, operation: str) -> None:
        if capability not in self.capabilities:
            raise UnsupportedOperation(
                f"the {self.name} backend cannot {operation} (no {capability.name} capability)",
                capability=capability.value,
            )

    def _options(self, request: RunRequest, expected: type[OptionsT]) -> OptionsT:
        """``request.options``, or ``expected()`` when absent; the wrong type is refused."""
        if request.options is None:
            return expected()
        if not isinstance(request.options, expected):
            raise ConfigurationError(
                f"{self.name} expects options of type {expected.__name__}, "
                f"got {type(request.options).__name__}"
            )
        return request.options

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name} ({state})>"
