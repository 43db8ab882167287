"""``PostHogBackend``: the NotebookBackend protocol over :class:`PostHogClient`.

Which run modes a PostHog server offers depends on its version (read from PostHog's source;
which version a deployment runs is not announced, so the backend finds out):

=============================  ==========================================================
older servers                  ``kernel/execute/stream/``, ``kernel/execute/``,
                               ``hogql/execute/``; no ``runs/``. Kernel mode, streamed.
                               Needs a personal API key created **without** scopes (the
                               kernel and HogQL actions declare none, so scoped keys, even
                               ``*``, get 403).
newer servers, flag on         ``runs/`` (the ``revamped-py-notebooks`` feature flag).
                               Server mode: PostHog runs a **markdown-format** notebook's
                               ``<PythonV2>``/``<SQLV2>`` cells itself; resumable from any
                               process. Needs the ``notebook:write`` and ``query:read``
                               scopes. Run inputs become the notebook's variables and
                               **replace its saved ones**.
newer servers, flag off        ``runs/`` answers 404; no stream, no HogQL execute; only
                               ``kernel/execute/`` (cell by cell), which newer servers
                               refuse to every personal API key.
=============================  ==========================================================

* ``mode="auto"`` (default) picks per run: server runs where the server has them (the first
  start finds out; a 404 is remembered for the backend's life) and the notebook is in the
  markdown format, without block selection or kernel-only options; otherwise the kernel,
  streamed where the server streams, else cell by cell.
* ``mode="server"`` / ``mode="kernel"`` force one; a mode the server lacks is
  :class:`ModeUnavailable` (with what the server answered).

The mode a run got is ``handle.extra["mode"]`` (``"server"`` or ``"kernel"``); a kernel run's
``Run.raw["kernel_api"]`` says ``"stream"`` or ``"execute"``. A notebook with nothing to run
is :class:`NoRunnableCells` at the start, and a key PostHog refuses before any code ran is a
:class:`~notebookops.PermissionDenied` (raised), never a failed run.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any, Final, Literal

import aiohttp
import anyio
import attrs

from ..._validate import count, seconds
from ...backend import BaseBackend
from ...errors import ConfigurationError, UnsupportedOperation
from ...models import Capability, Run, RunHandle, RunRequest
from ...policies import PollPolicy, RetryPolicy
from ...ratelimit import RateLimiter
from ...transport import Transport
from .._runhost import DEFAULT_KEEP_FINISHED_RUNS, DEFAULT_KEEP_OUTPUT_BYTES
from ._cells import (
    CELL_KINDS,
    LOOKED_FOR,
    Cell,
    extract_cells,
    select_cells,
)
from ._errors import ModeUnavailable, NoRunnableCells
from ._kernel_runs import STREAM_OUTPUT_MAX_BYTES, KernelRuns
from ._requests import (
    validate_cell_timeout,
)
from ._server_runs import ServerRuns
from .client import PostHogClient

__all__ = ["PostHogBackend", "PostHogRunOptions", "RunMode"]

logger = logging.getLogger("notebookops.posthog")

RunMode = Literal["auto", "kernel", "server"]
_MODES: Final = ("auto", "kernel", "server")

_KERNEL_CAPABILITIES: Final = frozenset(
    {
        Capability.RUN_STATUS,
        Capability.CANCEL,
        Capability.OUTPUTS,
        Capability.INPUTS,
        Capability.BLOCK_SELECTION,
        Capability.STREAMING,
    }
)
_SERVER_CAPABILITIES: Final = frozenset(
    {
        Capability.RUN_STATUS,
        Capability.CANCEL,
        Capability.OUTPUTS,
        Capability.INPUTS,
        Capability.RESUMABLE,
    }
)


def _mode(value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in _MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(_MODES)}, got {value!r}")


def _optional_mode(instance: object, attribute: object, value: object) -> None:
    _mode(value, allow_none=True)


def _timeout_option(instance: object, attribute: object, value: object) -> None:
    validate_cell_timeout(value, "cell_timeout")  # type: ignore[arg-type]


def _cell_types(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence | frozenset | set):
        raise ConfigurationError(
            f"cell_types must be a sequence such as ('python', 'hogql'), got {value!r}"
        )
    kinds = tuple(value)
    unknown = [kind for kind in kinds if kind not in CELL_KINDS]
    if not kinds or unknown:
        raise ConfigurationError(
            f"cell_types must be a non-empty selection of {sorted(CELL_KINDS)}, got {value!r}"
        )
    return kinds


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{attribute.name} must be True or False, got {value!r}")


@attrs.frozen
class PostHogRunOptions:
    """PostHog-specific run options (``RunRequest.options``).

    * ``mode``: ``None`` uses the backend's mode. ``"kernel"`` or ``"server"`` forces one for
      this run (a server-mode backend refuses ``"kernel"``: its handles are RESUMABLE and
      kernel runs are not).
    * ``cell_timeout``: whole seconds (1-120) each cell may run in all; PostHog truncates
      fractions and makes it the sandbox's limit on the cell's whole run.
    * ``cell_types``: which cells run, in document order: ``"python"`` (``ph-python`` nodes
      and ``<PythonV2>`` tags, through the kernel) and/or ``"hogql"`` (``ph-hogql-sql`` and
      ``<SQLV2>``, through HogQL execute).
    * ``write_outputs``: store each Python cell's output in a rich-text notebook
      (``pythonExecution``, as the UI does) with a versioned PATCH, re-reading and retrying
      on 409. If that fails, the run is FAILED (``platform=True``) although its cells ran.
    * ``stop_kernel_at_end``: stop the kernel once the run is over (it bills while idle).
    * ``return_variables``: ask the kernel to describe the variables each cell defines.

    All but ``mode`` are kernel-mode settings: server runs refuse non-default values, and
    ``mode="auto"`` runs such a request in the kernel.
    """

    mode: RunMode | None = attrs.field(default=None, validator=_optional_mode)
    cell_timeout: int = attrs.field(default=30, validator=_timeout_option)
    cell_types: tuple[str, ...] = attrs.field(default=("python",), converter=_cell_types)
    write_outputs: bool = attrs.field(default=False, validator=_flag)
    stop_kernel_at_end: bool = attrs.field(default=True, validator=_flag)
    return_variables: bool = attrs.field(default=True, validator=_flag)

    def kernel_settings(self) -> list[str]:
        """The kernel-only settings changed from their defaults."""
        defaults = _DEFAULT_OPTIONS
        return [
            field.name
            for field in attrs.fields(PostHogRunOptions)
            if field.name != "mode" and getattr(self, field.name) != getattr(defaults, field.name)
        ]


_DEFAULT_OPTIONS: Final = PostHogRunOptions()


class PostHogBackend(BaseBackend):
    """Runs PostHog notebooks (see the module docstring for the modes).

    ``personal_api_key``, ``project_id`` and ``base_url`` fall back to
    ``POSTHOG_PERSONAL_API_KEY``, ``POSTHOG_PROJECT_ID`` and ``POSTHOG_HOST`` (default
    ``https://us.posthog.com``). ``client`` (a :class:`PostHogClient`) replaces all the
    connection settings; ``backend.client`` gives every other PostHog endpoint.

    Capabilities follow ``mode``: ``"server"`` declares RESUMABLE; ``"kernel"`` and
    ``"auto"`` declare STREAMING and BLOCK_SELECTION (a server run in ``auto`` is watched by
    polling with ``poll``).

    Finished runs are kept in memory for late readers within two bounds, as in every
    in-process backend: ``keep_output_bytes`` (default 64 MiB) for their outputs together and
    ``keep_finished_runs`` (default 1,000) for how many are remembered at all. Past the first,
    the oldest finished kernel runs' outputs are released (their state stays; ``Run.raw`` says
    ``"outputs_released": True``); a kernel run past the second raises
    :class:`KernelRunNotFound`. Finished server runs are re-read from PostHog once forgotten.
    ``stream_output_max_bytes`` (default 16 MiB) bounds one kernel cell's streamed output,
    past which one marker output says the rest was not kept.
    """

    name = "posthog"

    def __init__(
        self,
        personal_api_key: str | None = None,
        *,
        project_id: str | int | None = None,
        base_url: str | None = None,
        mode: RunMode = "auto",
        client: PostHogClient | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        max_rate: float | None = None,
        allow_http: bool = False,
        transport: Transport | None = None,
        poll: PollPolicy | None = None,
        cancel_timeout: float = 10.0,
        stream_idle_timeout: float = 60.0,
        collab_reconnect_delay: float = 1.0,
        keep_output_bytes: int = DEFAULT_KEEP_OUTPUT_BYTES,
        keep_finished_runs: int = DEFAULT_KEEP_FINISHED_RUNS,
        stream_output_max_bytes: int = STREAM_OUTPUT_MAX_BYTES,
    ) -> None:
        _mode(mode)
        seconds("cancel_timeout", cancel_timeout)
        count("stream_output_max_bytes", stream_output_max_bytes)
        if client is None:
            client = PostHogClient(
                personal_api_key,
                project_id=project_id,
                base_url=base_url,
                session=session,
                timeout=timeout,
                retry=retry,
                rate_limiter=rate_limiter,
                max_rate=max_rate,
                allow_http=allow_http,
                transport=transport,
                stream_idle_timeout=stream_idle_timeout,
                collab_reconnect_delay=collab_reconnect_delay,
            )
        self.client = client
        self.mode: RunMode = mode
        self.capabilities = _SERVER_CAPABILITIES if mode == "server" else _KERNEL_CAPABILITIES
        self._kernel = KernelRuns(
            client,
            cancel_timeout=float(cancel_timeout),
            keep_output_bytes=keep_output_bytes,
            keep_finished_runs=keep_finished_runs,
            stream_output_max_bytes=stream_output_max_bytes,
        )
        self._server = ServerRuns(
            client,
            poll=poll or PollPolicy(),
            keep_output_bytes=keep_output_bytes,
            keep_finished_runs=keep_finished_runs,
        )
        #: Whether this server has ``runs/`` (None until a start finds out).
        self.server_runs_available: bool | None = None
        self._probe_lock = anyio.Lock()

    @property
    def project_id(self) -> str:
        return self.client.project_id

    @property
    def base_url(self) -> str:
        return self.client.base_url

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<PostHogBackend {self.base_url} project {self.project_id} mode={self.mode} ({state})>"
        )

    # ------------------------------------------------------------------ NotebookBackend

    async def start_run(self, request: RunRequest) -> RunHandle:
        """Start a run of ``request.notebook`` (a short_id).

        The notebook is read first, so a missing notebook, an unknown block id or a notebook
        without a runnable cell (:class:`NoRunnableCells`) fails here, before anything runs.
        An explicit mode the server lacks raises :class:`ModeUnavailable`.
        """
        self._ensure_open()
        options = self._options(request, PostHogRunOptions)
        mode = options.mode or self.mode
        if mode == "kernel" and self.mode == "server":
            raise ConfigurationError(
                "this backend was created with mode='server' and declares resumable runs; "
                "kernel-mode runs are not resumable: use PostHogBackend(mode='kernel' or 'auto')"
            )
        short_id = request.notebook
        notebook = await self.client.get_notebook(short_id)
        cells = extract_cells(notebook.content)
        if mode == "server":
            self._check_server_request(request, options, cells)
            return await self._server.start(request, short_id)
        if mode == "auto" and self._may_run_on_server(request, options, cells):
            handle = await self._try_server(request, short_id)
            if handle is not None:
                return handle
        selected = select_cells(cells, options.cell_types, request.blocks)
        if options.write_outputs and any(cell.markdown for cell in selected):
            raise ConfigurationError(
                "write_outputs stores each cell's output in a rich-text notebook's ph-python "
                "node; a markdown-format notebook has no such node (PostHog keeps its "
                "results with its server-side runs)"
            )
        if not selected:
            raise NoRunnableCells(
                f"posthog notebook {short_id!r} has no {'/'.join(options.cell_types)} cell to "
                f"run in the kernel; looked for {LOOKED_FOR}",
                notebook=short_id,
                looked_for=LOOKED_FOR,
            )
        return await self._kernel.start(request, short_id, selected, options)

    @staticmethod
    def _may_run_on_server(
        request: RunRequest, options: PostHogRunOptions, cells: list[Cell]
    ) -> bool:
        return (
            request.blocks is None
            and not options.kernel_settings()
            and any(cell.markdown for cell in cells)
        )

    def _check_server_request(
        self, request: RunRequest, options: PostHogRunOptions, cells: list[Cell]
    ) -> None:
        if request.blocks is not None:
            raise UnsupportedOperation(
                "server-side PostHog runs always run the whole notebook; selecting blocks "
                "needs mode='kernel'",
                capability=Capability.BLOCK_SELECTION.value,
            )
        changed = options.kernel_settings()
        if changed:
            raise ConfigurationError(
                f"{', '.join(changed)} only apply to kernel-mode runs; server-side runs "
                "manage cells, timeouts and outputs themselves"
            )
        if not any(cell.markdown for cell in cells):
            found = f"{len(cells)} rich-text cell(s)" if cells else "no cell"
            raise NoRunnableCells(
                f"posthog notebook {request.notebook!r}: server-side runs only run a "
                f"markdown-format notebook's <PythonV2> / <SQLV2> cells, and this one has "
                f"{found} (looked for {LOOKED_FOR}); use mode='kernel' for rich-text notebooks",
                notebook=request.notebook,
                looked_for=LOOKED_FOR,
            )

    async def _try_server(self, request: RunRequest, short_id: str) -> RunHandle | None:
        """A server run where the server has them, else None. The first start finds out
        (a 404 from ``POST runs/`` means none) and later ones reuse the answer; starts made
        while it is being found out wait for it instead of all probing."""
        if self.server_runs_available is None:
            async with self._probe_lock:
                if self.server_runs_available is None:
                    return await self._start_on_server(request, short_id)
        if not self.server_runs_available:
            return None
        return await self._start_on_server(request, short_id)

    async def _start_on_server(self, request: RunRequest, short_id: str) -> RunHandle | None:
        try:
            handle = await self._server.start(request, short_id)
        except ModeUnavailable as error:
            logger.info(
                "posthog server has no server-side runs (%s); using the kernel", error.answer
            )
            self.server_runs_available = False
            return None
        self.server_runs_available = True
        return handle

    async def get_run(self, handle: RunHandle) -> Run:
        """The run's current state: from memory (kernel mode) or ``GET runs/{id}/``."""
        self._check_handle(handle)
        return await self._strategy(handle).get(handle)

    async def cancel_run(self, handle: RunHandle) -> None:
        """Stop the run: kernel mode cancels the current cell, stops the kernel and waits
        (bounded by ``cancel_timeout``) for CANCELLED; server mode sends ``interrupt``."""
        self._check_handle(handle)
        self._require(Capability.CANCEL, "cancel runs")
        await self._strategy(handle).cancel(handle)

    async def watch_run(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        """Yield the run whenever it changes, ending after a terminal state. Server-mode
        handles are polled with the backend's ``poll``."""
        self._check_handle(handle)
        async with aclosing(self._strategy(handle).watch(handle)) as runs:
            async for run in runs:
                yield run

    def _strategy(self, handle: RunHandle) -> ServerRuns | KernelRuns:
        mode = handle.extra.get("mode", "kernel")
        if mode == "server":
            return self._server
        if mode == "kernel":
            return self._kernel
        raise ConfigurationError(f"this PostHog handle has an unknown run mode {mode!r}")

    async def _aclose(self) -> None:
        try:
            await self._kernel.aclose()
        finally:
            await self.client.aclose()
