"""LocalBackend: run a Jupyter ``.ipynb`` on this machine through nbclient and ipykernel.

It implements the same protocol as the vendor adapters, so ``run_and_wait(LocalBackend(),
"path/to/notebook.ipynb", inputs={...})`` behaves like any vendor run:

* the notebook is read from disk when the run starts; ``inputs`` are injected papermill-style
  as a new cell tagged ``injected-parameters`` right after the first cell tagged
  ``parameters`` (at the top when there is none), so notebooks written for papermill work
  unchanged;
* every run gets a fresh kernel, started in the background in a task group the backend owns;
  progress (``completed`` of ``total`` code cells) and outputs are published as each cell
  finishes, pushed to ``watch_run`` (STREAMING) and visible to ``get_run``;
* ``cancel_run`` interrupts the kernel (KeyboardInterrupt in the running cell), kills it if
  it has not stopped after ``interrupt_grace`` seconds, and returns once the run has ended;
  closing the backend kills every kernel it started. A run only reaches a terminal state once
  its kernel process is gone and its notebook saved.

Runs are hosted by :class:`~notebookops.backends._runhost.RunHost`, which also bounds what
finished runs keep (``keep_output_bytes``, ``keep_finished_runs``).

Limits: runs live in this backend instance's memory, so handles are **not resumable** from
another process or instance (``get_run`` there raises :class:`~notebookops.NotFound`); the
backend needs asyncio (nbclient and jupyter_client are asyncio libraries) and stays bound to
the event loop that first started a run.
"""

from __future__ import annotations

import contextlib
import functools
import keyword
import logging
import math
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs

from ..._validate import seconds, seconds_option, utc_now
from ...backend import BaseBackend
from ...errors import ConfigurationError, NotFound
from ...models import (
    Artifact,
    Capability,
    CellOutput,
    Run,
    RunErrorInfo,
    RunHandle,
    RunRequest,
    RunState,
)
from .._runhost import DEFAULT_KEEP_FINISHED_RUNS, DEFAULT_KEEP_OUTPUT_BYTES, HostedRun, RunHost

if TYPE_CHECKING:
    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_client.manager import AsyncKernelManager

__all__ = [
    "INJECTED_TAG",
    "LOCAL_STATES",
    "PARAMETERS_TAG",
    "LocalBackend",
    "LocalRunOptions",
    "parameterize_notebook",
    "read_notebook",
]

logger = logging.getLogger("notebookops.local")

#: nbformat's NotebookNode is untyped; notebooks are handled as plain dict-like values.
Notebook = Any

#: Papermill's tag for the cell holding a notebook's default parameters.
PARAMETERS_TAG = "parameters"
#: Papermill's tag for the cell that assigns the run's inputs.
INJECTED_TAG = "injected-parameters"
#: Cells with this tag are skipped (nbclient's convention).
SKIP_TAG = "skip-execution"

_INSTALL_HINT = "pip install 'notebookops[local]'"

#: The local "vendor" states, as reported in ``Run.vendor_state``.
LOCAL_STATES: Mapping[str, RunState] = {
    "queued": RunState.PENDING,
    "starting": RunState.PENDING,
    "running": RunState.RUNNING,
    "cancelling": RunState.RUNNING,
    "succeeded": RunState.SUCCEEDED,
    "failed": RunState.FAILED,
    "cancelled": RunState.CANCELLED,
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_MAX_LITERAL_DEPTH = 100
#: Seconds a cancel waits, beyond ``interrupt_grace``, for the run to end (kernel shutdown,
#: saving the notebook).
_SETTLE_SECONDS = 5.0
#: Characters of kernel stderr quoted when a kernel fails to start.
_STDERR_TAIL = 2000


# -- dependencies ---------------------------------------------------------------------------


def _nbformat() -> Any:
    """nbformat, typed as Any: it ships py.typed but its functions carry no annotations."""
    import nbformat
    import nbformat.reader
    import nbformat.v4

    return nbformat


def _require_dependencies() -> None:
    """Import the optional dependencies once, or say which one is missing and how to install."""
    try:
        import jupyter_client.manager  # noqa: F401
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError as exc:
        missing = f"{exc.name!r} is missing" if exc.name else str(exc)
        raise ConfigurationError(
            f"the local backend needs nbclient, nbformat, jupyter_client and ipykernel, and "
            f"{missing}; install them with: {_INSTALL_HINT}"
        ) from None


# -- pure helpers: inputs, notebooks, outputs ---------------------------------------------


def _literal(value: object, where: str, depth: int = 0) -> str:
    """A Python literal for a JSON-compatible value (subclasses are reduced to their base type,
    so e.g. a StrEnum becomes its string and a numpy float a float)."""
    if depth > _MAX_LITERAL_DEPTH:
        raise ConfigurationError(f"input {where} is nested too deeply")
    if value is None:
        return "None"
    if isinstance(value, bool):
        return repr(bool(value))
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"input {where} must be a finite number, got {value!r}")
        return repr(float(value))
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, list | tuple):
        items = ", ".join(
            _literal(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)
        )
        return f"[{items}]"
    if isinstance(value, Mapping):
        parts = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigurationError(
                    f"input {where} has a non-string key {key!r} (inputs must be JSON-compatible)"
                )
            parts.append(f"{str(key)!r}: {_literal(item, f'{where}[{key!r}]', depth + 1)}")
        return "{" + ", ".join(parts) + "}"
    raise ConfigurationError(
        f"input {where} is a {type(value).__name__}; local inputs must be JSON-compatible "
        "(None, bool, int, float, str, lists and string-keyed dicts of those)"
    )


def parameters_source(inputs: Mapping[str, Any]) -> str:
    """The source of the injected cell: one assignment per input, papermill-style.

    Raises ConfigurationError for names that are not Python identifiers and for values that
    are not JSON-compatible.
    """
    lines = ["# Parameters"]
    for name, value in inputs.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigurationError(
                f"input name {name!r} is not a valid Python identifier, so it cannot be "
                "assigned in the notebook"
            )
        lines.append(f"{name} = {_literal(value, repr(name))}")
    return "\n".join(lines) + "\n"


def _tags(cell: Mapping[str, Any]) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else []


def read_notebook(text: str | bytes, *, source: str = "notebook") -> Notebook:
    """Parse notebook JSON into an nbformat v4.5+ NotebookNode with a unique id on every cell.

    Older notebooks are upgraded (v3 -> v4, ids added) so outputs can name their cell.
    Anything that is not a valid notebook raises ConfigurationError naming ``source``.
    """
    _require_dependencies()
    nbformat = _nbformat()
    try:
        notebook = nbformat.convert(nbformat.reader.reads(text), 4)
        # Ids are repaired here rather than by nbformat.validate, which warns while repairing.
        notebook["nbformat_minor"] = max(int(notebook.get("nbformat_minor", 0)), 5)
        seen: set[str] = set()
        for cell in notebook["cells"]:
            cell_id = cell.get("id")
            if not isinstance(cell_id, str) or not cell_id or cell_id in seen:
                cell_id = uuid.uuid4().hex[:12]
                cell["id"] = cell_id
            seen.add(cell_id)
        nbformat.validate(notebook)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"{source} is not a valid Jupyter notebook: {exc}") from None
    return notebook


def parameterize_notebook(notebook: Notebook, inputs: Mapping[str, Any]) -> Notebook:
    """Inject ``inputs`` the way papermill does, in place, and return the notebook.

    Cells left by an earlier injection (tagged ``injected-parameters``) are removed first; the
    new cell goes right after the first cell tagged ``parameters``, or at the top if there is
    none. Without inputs no cell is added.
    """
    _require_dependencies()
    nbformat = _nbformat()
    source = parameters_source(inputs) if inputs else None
    cells = [cell for cell in notebook["cells"] if INJECTED_TAG not in _tags(cell)]
    if source is not None:
        position = next(
            (index + 1 for index, cell in enumerate(cells) if PARAMETERS_TAG in _tags(cell)), 0
        )
        injected = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
        taken = {cell.get("id") for cell in cells}
        injected["id"] = INJECTED_TAG if INJECTED_TAG not in taken else uuid.uuid4().hex[:12]
        cells.insert(position, injected)
    notebook["cells"] = cells
    return notebook


def _executable(cell: Mapping[str, Any]) -> bool:
    """Whether nbclient would send this cell to the kernel."""
    return (
        cell.get("cell_type") == "code"
        and bool(str(cell.get("source", "")).strip())
        and SKIP_TAG not in _tags(cell)
    )


def _text(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return str(value)


def cell_outputs(cell: Mapping[str, Any], index: int) -> list[CellOutput]:
    """The outputs of an executed cell as CellOutputs tagged with its index and id."""
    cell_id = cell.get("id") if isinstance(cell.get("id"), str) else None
    converted = []
    for output in cell.get("outputs", []):
        kind = str(output.get("output_type", "unknown"))
        common: dict[str, Any] = {
            "output_type": kind,
            "cell_id": cell_id,
            "cell_index": index,
            "metadata": dict(output.get("metadata", {})),
        }
        if kind == "stream":
            converted.append(
                CellOutput(name=output.get("name"), text=_text(output.get("text", "")), **common)
            )
        elif kind == "error":
            converted.append(
                CellOutput(
                    ename=output.get("ename"),
                    evalue=output.get("evalue"),
                    traceback=tuple(str(line) for line in output.get("traceback", [])),
                    **common,
                )
            )
        else:
            converted.append(CellOutput(data=dict(output.get("data", {})), **common))
    return converted


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


def _error_info(cell: Mapping[str, Any], index: int, fallback: BaseException) -> RunErrorInfo:
    """Why a cell failed, from its error output (ANSI colours removed), else the exception.

    ``message`` is the error's value and ``name`` its type, as every adapter reports them
    (readers print ``name: message``; a message that began with the name too would read
    ``TypeError: TypeError: ...``).
    """
    cell_id = cell.get("id") if isinstance(cell.get("id"), str) else None
    for output in reversed(cell.get("outputs", [])):
        if output.get("output_type") == "error":
            name = str(output.get("ename") or "Error")
            value = _plain(str(output.get("evalue") or ""))
            lines = tuple(_plain(str(line)) for line in output.get("traceback", []))
            return RunErrorInfo(
                message=value or name,
                name=name,
                traceback=lines,
                cell_id=cell_id,
                cell_index=index,
            )
    name = str(getattr(fallback, "ename", "") or type(fallback).__name__)
    value = _plain(str(getattr(fallback, "evalue", "") or fallback))
    return RunErrorInfo(
        message=value or name,
        name=name,
        cell_id=cell_id,
        cell_index=index,
    )


def _write_notebook(notebook: Notebook, target: Path) -> int:
    """Write atomically (a reader never sees half a notebook); returns the size in bytes."""
    text = _nbformat().writes(notebook)
    if not text.endswith("\n"):
        text += "\n"
    data = text.encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return len(data)


# -- options ----------------------------------------------------------------------------------


def _to_path(value: str | os.PathLike[str] | None) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise ConfigurationError(f"expected a file system path, got {value!r}")
    return Path(value).expanduser()


@attrs.frozen
class LocalRunOptions:
    """Per-run options of the local backend (``RunRequest(options=LocalRunOptions(...))``).

    ``save_to``: where to write the executed notebook (outputs included, also when the run
    fails or is cancelled). An existing directory receives ``<stem>-<run id>.ipynb``; otherwise
    it is the file path, whose directory must exist. Without it the backend's ``output_dir``
    applies, and without that nothing is saved.

    ``cell_timeout``: seconds any one cell may run; a slower cell fails the run with
    ``CellTimeoutError``. The whole run's deadline is ``run_and_wait(timeout=...)``.
    """

    save_to: Path | None = attrs.field(default=None, converter=_to_path)
    cell_timeout: float | None = attrs.field(default=None, validator=seconds_option)


# -- the kernel -------------------------------------------------------------------------------


class _KernelStartError(Exception):
    """The kernel did not come up; the message says why."""


class _Kernel:
    """One kernel process and its client. Every method is safe to call in any state."""

    def __init__(self, kernel_name: str, cwd: Path) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.manager: AsyncKernelManager | None = None
        self.client: AsyncKernelClient | None = None
        self.language_info: dict[str, Any] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        provisioner = self.manager.provisioner if self.manager is not None else None
        pid = getattr(provisioner, "pid", None)
        return pid if isinstance(pid, int) else None

    async def launch(self, startup_timeout: float) -> None:
        """Start the process. Shielded: a half-launched process would escape our cleanup."""
        from jupyter_client.manager import AsyncKernelManager

        manager = AsyncKernelManager(
            kernel_name=self.kernel_name, log=logging.getLogger("notebookops.local.kernel")
        )
        self.manager = manager
        # Early kernel stderr goes to a file so a start-up failure can say why; once running,
        # ipykernel forwards the process's own output to the notebook.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by shutdown())
        # An in-memory history keeps runs from contending for ~/.ipython's sqlite file.
        extra = ["--HistoryManager.hist_file=:memory:"] if manager.ipykernel else []
        try:
            with anyio.fail_after(startup_timeout, shield=True):
                await manager.start_kernel(
                    cwd=str(self.cwd),
                    extra_arguments=extra,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=self._stderr,
                )
        except Exception as exc:
            raise _KernelStartError(self._describe(exc)) from exc

    async def connect(self, startup_timeout: float) -> None:
        """Wait until the kernel answers. Cancellable: cleanup kills what was launched."""
        assert self.manager is not None
        client = self.manager.client()
        self.client = client
        try:
            # No heartbeat thread: liveness is read from the process itself.
            client.start_channels(hb=False)
            with anyio.fail_after(startup_timeout):
                await client.wait_for_ready(timeout=startup_timeout)
                reply = await client.kernel_info(reply=True, timeout=startup_timeout)
        except Exception as exc:
            raise _KernelStartError(self._describe(exc)) from exc
        client.allow_stdin = False
        content = reply.get("content", {}) if isinstance(reply, dict) else {}
        info = content.get("language_info")
        self.language_info = info if isinstance(info, dict) else None

    def _describe(self, exc: BaseException) -> str:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError) and not str(exc):
            reason = "it did not answer in time"
        text = f"the {self.kernel_name!r} kernel did not start: {reason}"
        tail = self._stderr_tail()
        return f"{text}\nkernel stderr:\n{tail}" if tail else text

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - _STDERR_TAIL))
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    async def interrupt(self) -> None:
        if self.manager is not None and self.manager.has_kernel:
            await self.manager.interrupt_kernel()

    async def kill(self) -> None:
        """Kill the process now (the running cell then fails with DeadKernelError)."""
        manager = self.manager
        if manager is not None and manager.has_kernel and manager.provisioner is not None:
            try:
                await manager.provisioner.kill()
            except Exception as exc:
                logger.warning("could not kill the local kernel (pid %s): %s", self.pid, exc)

    async def shutdown(self, *, now: bool) -> None:
        """Stop the process (politely unless ``now``), reap it and release every resource."""
        manager, client = self.manager, self.client
        try:
            if manager is not None:
                try:
                    if manager.has_kernel:
                        await manager.shutdown_kernel(now=now)
                    else:
                        await manager.cleanup_resources()
                except Exception as exc:
                    logger.warning("local kernel shutdown failed (%s); killing it", exc)
                    await self.kill()
                    if manager.provisioner is not None:
                        with contextlib.suppress(Exception), anyio.move_on_after(5):
                            await manager.provisioner.wait()
        finally:
            if client is not None:
                client.stop_channels()
            if self._stderr is not None:
                self._stderr.close()
            self.client = None
            self._stderr = None


# -- runs -----------------------------------------------------------------------------------


@attrs.define(eq=False)
class _LocalRun:
    """What the local backend knows about one run beyond its :class:`HostedRun`."""

    path: Path
    cwd: Path
    kernel_name: str
    notebook: Notebook
    options: LocalRunOptions
    save_to: Path | None
    kernel: _Kernel | None = None
    executing: bool = False
    startup_scope: anyio.CancelScope | None = None
    artifacts: tuple[Artifact, ...] = ()


@attrs.frozen
class _Outcome:
    vendor_state: str
    error: RunErrorInfo | None = None
    #: Whether the kernel is idle (then it is shut down politely, else killed).
    idle: bool = False


class _NbclientLog(logging.LoggerAdapter[logging.Logger]):
    """nbclient's logger for one run. Once the run is being stopped, the errors nbclient logs
    about the kernel we interrupted or killed on purpose are expected, so they become debug
    messages."""

    def __init__(self, run: HostedRun) -> None:
        super().__init__(logging.getLogger("notebookops.local.nbclient"), {})
        self.run = run

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.run.stop_requested() and level > logging.DEBUG:
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


class LocalBackend(BaseBackend):
    """Runs Jupyter notebooks on this machine, one fresh kernel per run.

    ``notebook`` in a request is a path to an ``.ipynb`` file (relative paths are taken from
    the current directory when the run starts).

    :param kernel_name: the Jupyter kernel to use; ``None`` takes the notebook's own
        ``kernelspec`` (``python3`` if it names none). ``python3`` is ipykernel in this
        Python environment.
    :param working_dir: the kernel's current directory; default: the notebook's directory,
        as in Jupyter, so relative paths in the notebook work unchanged.
    :param output_dir: save every executed notebook here as ``<stem>-<run id>.ipynb`` unless
        the run's :class:`LocalRunOptions` say ``save_to``.
    :param startup_timeout: seconds a kernel may take to start and answer.
    :param interrupt_grace: seconds a cancelled run's kernel gets to stop after the interrupt
        before it is killed.
    :param keep_output_bytes: how much output of finished runs is kept for late readers
        (default 64 MiB); beyond it the oldest finished runs' outputs are released, their
        state kept (the snapshot's ``raw`` says ``"outputs_released": True``).
    :param keep_finished_runs: how many finished runs are remembered at all (default 1,000);
        ``get_run`` on an older one raises :class:`~notebookops.NotFound`.

    Runs are kept in memory by this instance: not resumable from another process (no
    RESUMABLE capability). Requires asyncio, and stays bound to the event loop that first
    started a run.
    """

    name = "local"
    capabilities = frozenset(
        {
            Capability.RUN_STATUS,
            Capability.CANCEL,
            Capability.OUTPUTS,
            Capability.INPUTS,
            Capability.STREAMING,
        }
    )

    def __init__(
        self,
        *,
        kernel_name: str | None = "python3",
        working_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        interrupt_grace: float = 5.0,
        keep_output_bytes: int = DEFAULT_KEEP_OUTPUT_BYTES,
        keep_finished_runs: int = DEFAULT_KEEP_FINISHED_RUNS,
    ) -> None:
        _require_dependencies()
        if kernel_name is not None and (not isinstance(kernel_name, str) or not kernel_name):
            raise ConfigurationError(f"kernel_name must be a non-empty string, got {kernel_name!r}")
        self.kernel_name = kernel_name
        self.working_dir = _to_path(working_dir)
        self.output_dir = _to_path(output_dir)
        self.startup_timeout = float(seconds("startup_timeout", startup_timeout) or 0)
        self.interrupt_grace = float(seconds("interrupt_grace", interrupt_grace) or 0)
        self._host = RunHost(
            self.name,
            keep_output_bytes=keep_output_bytes,
            keep_finished_runs=keep_finished_runs,
        )
        self._known_kernels: set[str] = set()

    # -- protocol

    async def start_run(self, request: RunRequest) -> RunHandle:
        """Read the notebook, inject the inputs and start it in the background.

        Problems with the request (missing or invalid notebook, bad inputs or options, unknown
        kernel) raise ConfigurationError here, before any run exists.
        """
        self._ensure_open()
        if not isinstance(request, RunRequest):
            raise ConfigurationError(f"expected a RunRequest, got {type(request).__name__}")
        if request.blocks is not None:
            self._require(Capability.BLOCK_SELECTION, "run a subset of cells")
        options = self._options(request, LocalRunOptions)
        notebook, path = await anyio.to_thread.run_sync(
            self._load, request.notebook, request.inputs
        )
        kernel_name = self.kernel_name or _notebook_kernel(notebook)
        await self._check_kernel(kernel_name)
        cwd = self.working_dir or path.parent
        if not await anyio.Path(cwd).is_dir():
            raise ConfigurationError(f"working directory {str(cwd)!r} does not exist")
        run_id = str(uuid.uuid4())
        save_to = await self._save_target(options, path, run_id)
        self._ensure_open()
        handle = RunHandle(
            backend=self.name,
            run_id=run_id,
            notebook_id=request.notebook,
            created_at=utc_now(),
            extra={"path": str(path)},
        )
        local = _LocalRun(
            path=path,
            cwd=cwd,
            kernel_name=kernel_name,
            notebook=notebook,
            options=options,
            save_to=save_to,
        )
        await self._host.start(
            handle,
            functools.partial(self._execute, local),
            total=sum(1 for cell in notebook["cells"] if _executable(cell)),
            raw={
                "path": str(path),
                "cwd": str(cwd),
                "kernel_name": kernel_name,
                "kernel_pid": None,
                "saved_to": str(save_to) if save_to else None,
                "cancel_reason": None,
            },
            on_cancel=functools.partial(self._stop, local),
        )
        logger.info("started local run %s of %s", run_id, path)
        return handle

    async def get_run(self, handle: RunHandle) -> Run:
        """The run's current state (no I/O: it is kept up to date by the run itself)."""
        self._check_handle(handle)
        await anyio.lowlevel.checkpoint()
        self._ensure_open()
        return self._host.snapshot(self._hosted(handle))

    async def cancel_run(self, handle: RunHandle) -> None:
        """Stop the run: interrupt its kernel (KeyboardInterrupt in the running cell), kill the
        kernel if it has not stopped within ``interrupt_grace`` seconds, and return once the
        run has ended (CANCELLED), at most ``interrupt_grace`` plus a few seconds after the
        call. Finished runs are left as they are."""
        self._check_handle(handle)
        self._require(Capability.CANCEL, "cancel runs")
        run = self._hosted(handle)
        await self._host.cancel(run, "cancel requested")
        # A reader right after the cancel (run_and_wait's final read) sees the run ended.
        await self._host.wait_finished(run, self.interrupt_grace + _SETTLE_SECONDS)

    async def watch_run(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        """Yield the run now and after every change (state, each finished cell), ending after
        a terminal state."""
        self._check_handle(handle)
        hosted = self._hosted(handle)
        async for run in self._host.watch(hosted):
            yield self._host.snapshot(run)

    # -- lifecycle

    async def _aclose(self) -> None:
        """Kill every kernel this backend started and wait until each run has settled."""
        await self._host.aclose(
            "the backend was closed", timeout=self.interrupt_grace + self.startup_timeout
        )

    # -- starting

    def _load(self, notebook: str, inputs: Mapping[str, Any]) -> tuple[Notebook, Path]:
        """Read and parameterize the notebook (runs in a worker thread)."""
        path = Path(notebook).expanduser()
        try:
            resolved = path.resolve(strict=True)
            if not resolved.is_file():
                raise ConfigurationError(f"notebook {str(path)!r} is not a file")
            text = resolved.read_bytes()
        except FileNotFoundError:
            raise ConfigurationError(
                f"notebook file {str(path)!r} not found (the local backend runs .ipynb files "
                f"on this machine; the current directory is {os.getcwd()!r})"
            ) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read notebook {str(path)!r}: {exc}") from None
        notebook = read_notebook(text, source=f"notebook {str(path)!r}")
        return parameterize_notebook(notebook, inputs), resolved

    async def _check_kernel(self, kernel_name: str) -> None:
        if kernel_name in self._known_kernels:
            return

        def lookup() -> list[str] | None:
            from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

            manager = KernelSpecManager()
            try:
                manager.get_kernel_spec(kernel_name)
            except NoSuchKernel:
                return sorted(manager.find_kernel_specs())
            return None

        available = await anyio.to_thread.run_sync(lookup)
        if available is not None:
            hint = f"installed kernels: {', '.join(available)}" if available else "none installed"
            raise ConfigurationError(
                f"no Jupyter kernel named {kernel_name!r} ({hint}); for python3, {_INSTALL_HINT}"
            )
        self._known_kernels.add(kernel_name)

    async def _save_target(self, options: LocalRunOptions, path: Path, run_id: str) -> Path | None:
        default_name = f"{path.stem}-{run_id}.ipynb"
        if options.save_to is not None:
            target = anyio.Path(options.save_to)
            if await target.is_dir():
                return Path(target / default_name)
            if not await target.parent.is_dir():
                raise ConfigurationError(
                    f"cannot save the executed notebook to {str(options.save_to)!r}: "
                    f"directory {str(options.save_to.parent)!r} does not exist"
                )
            return options.save_to
        if self.output_dir is not None:
            return self.output_dir / default_name
        return None

    # -- running

    async def _execute(self, local: _LocalRun, run: HostedRun) -> None:
        """The body of one run (see RunHost). Ends the run itself; never raises except to
        propagate cancellation."""
        outcome = _Outcome("cancelled")
        kernel: _Kernel | None = None
        try:
            if run.stop_requested():
                return
            kernel = _Kernel(local.kernel_name, local.cwd)
            local.kernel = kernel
            outcome = await self._run_cells(local, run, kernel)
        except _KernelStartError as exc:
            outcome = _Outcome("failed", RunErrorInfo(str(exc), "KernelStartError", platform=True))
            if run.stop_requested():
                outcome = _Outcome("cancelled")
        except Exception as exc:
            logger.exception("local run %s failed unexpectedly", run.handle.run_id)
            outcome = _Outcome(
                "failed",
                RunErrorInfo(f"the local backend failed: {exc!r}", type(exc).__name__),
            )
        finally:
            with anyio.CancelScope(shield=True):
                if kernel is not None:
                    await kernel.shutdown(now=not outcome.idle)
                outcome = await self._save(local, run, outcome)
                local.kernel = None
                local.executing = False
                run.finish(
                    LOCAL_STATES[outcome.vendor_state],
                    vendor_state=outcome.vendor_state,
                    error=outcome.error,
                    artifacts=local.artifacts,
                )
                if outcome.vendor_state == "cancelled":
                    logger.info("local run %s cancelled (%s)", run.handle.run_id, run.cancel_reason)

    def _progress(self, run: HostedRun, vendor_state: str, **changes: Any) -> None:
        """Move the run to ``vendor_state`` (its state from LOCAL_STATES), unless it is being
        stopped: then it stays "cancelling" until it ends."""
        if run.stop_requested() and vendor_state in ("starting", "running"):
            run.update(**changes)
        else:
            run.update(state=LOCAL_STATES[vendor_state], vendor_state=vendor_state, **changes)

    async def _run_cells(self, local: _LocalRun, run: HostedRun, kernel: _Kernel) -> _Outcome:
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        self._progress(run, "starting")
        with anyio.CancelScope() as startup:
            local.startup_scope = startup
            try:
                await kernel.launch(self.startup_timeout)
                run.raw["kernel_pid"] = kernel.pid
                run.update()
                await kernel.connect(self.startup_timeout)
            finally:
                local.startup_scope = None
        if startup.cancelled_caught or run.stop_requested():
            return _Outcome("cancelled")
        notebook = local.notebook
        if kernel.language_info is not None:
            notebook["metadata"]["language_info"] = kernel.language_info
        cell_timeout = local.options.cell_timeout
        client = NotebookClient(
            notebook,
            km=kernel.manager,
            timeout_func=(lambda cell: cell_timeout) if cell_timeout is not None else None,
            log=_NbclientLog(run),
        )
        client.kc = kernel.client
        self._progress(run, "running", started_at=utc_now())
        for index, cell in enumerate(notebook["cells"]):
            if not _executable(cell):
                continue
            if run.stop_requested():
                return _Outcome("cancelled", idle=True)
            run.update(current=cell.get("id") or f"cell {index}")
            failure: BaseException | None = None
            idle = True
            local.executing = True
            try:
                # nbclient must never see a cancellation mid-cell (it would turn it into
                # DeadKernelError and leave helper tasks behind): runs are stopped through
                # the kernel instead (interrupt, kill), which ends the cell promptly.
                with anyio.CancelScope(shield=True):
                    await client.async_execute_cell(
                        cell, index, execution_count=client.code_cells_executed + 1
                    )
            except CellTimeoutError as exc:
                failure, idle = exc, False
            except DeadKernelError as exc:
                failure, idle = exc, False
            except CellExecutionError as exc:
                failure = exc
            finally:
                local.executing = False
            run.add_outputs(cell_outputs(cell, index))
            run.update(completed=run.completed + 1)
            if failure is not None:
                if run.stop_requested():
                    return _Outcome("cancelled", idle=idle)
                error = _cell_error(cell, index, failure, cell_timeout)
                return _Outcome("failed", error, idle=idle)
        return _Outcome("succeeded", idle=True)

    async def _save(self, local: _LocalRun, run: HostedRun, outcome: _Outcome) -> _Outcome:
        target = local.save_to
        if target is None:
            return outcome
        try:
            size = await anyio.to_thread.run_sync(_write_notebook, local.notebook, target)
        except Exception as exc:
            message = f"could not save the executed notebook to {str(target)!r}: {exc}"
            if outcome.vendor_state == "succeeded":
                return _Outcome("failed", RunErrorInfo(message, type(exc).__name__))
            logger.warning("local run %s: %s", run.handle.run_id, message)
            return outcome
        local.artifacts = (
            Artifact(
                name=target.name,
                path=str(target),
                mime_type="application/x-ipynb+json",
                size=size,
            ),
        )
        return outcome

    async def _stop(self, local: _LocalRun, run: HostedRun, closing: bool) -> None:
        """How a local run is stopped (RunHost's ``on_cancel``): never by cancelling nbclient
        mid-cell, always through the kernel. Closing kills the kernel at once."""
        if closing:
            if local.kernel is not None:
                await local.kernel.kill()
            return
        if run.started_at is not None:
            run.update(vendor_state="cancelling")
        if local.startup_scope is not None:
            local.startup_scope.cancel()
            return
        kernel = local.kernel
        if kernel is None or not local.executing:
            return  # the run stops at its next step
        try:
            await kernel.interrupt()
        except Exception as exc:
            logger.warning("could not interrupt local run %s (%s)", run.handle.run_id, exc)
            await kernel.kill()
            return
        self._host.spawn(
            self._escalate, local, run, kernel, name=f"notebookops local kill {run.handle.run_id}"
        )

    async def _escalate(self, local: _LocalRun, run: HostedRun, kernel: _Kernel) -> None:
        """Kill a kernel that ignored the interrupt (e.g. stuck in native code)."""
        await anyio.sleep(self.interrupt_grace)
        if not run.finished and local.executing and local.kernel is kernel:
            logger.warning(
                "local run %s did not stop %gs after the interrupt; killing its kernel",
                run.handle.run_id,
                self.interrupt_grace,
            )
            await kernel.kill()

    # -- state

    def _hosted(self, handle: RunHandle) -> HostedRun:
        run = self._host.get(handle.run_id)
        if run is None:
            raise NotFound(
                f"local run {handle.run_id} not found: local runs are known only to the "
                "LocalBackend instance that started them (not resumable across processes), "
                f"which remembers its latest {self._host.keep_finished_runs} finished runs",
                status=404,
                vendor=self.name,
                method="GET",
                url=f"local://runs/{handle.run_id}",
            )
        return run


def _cell_error(
    cell: Notebook, index: int, failure: BaseException, cell_timeout: float | None
) -> RunErrorInfo:
    """Why ``cell`` failed. The cell is named by ``cell_id`` and ``cell_index``, not in the
    message, so a reader that names it (``failed in cell ...``) does not name it twice."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    cell_id = cell.get("id")
    if isinstance(failure, CellTimeoutError):
        return RunErrorInfo(
            f"the cell did not finish within its cell_timeout of {cell_timeout:g}s",
            "CellTimeoutError",
            cell_id=cell_id,
            cell_index=index,
        )
    if isinstance(failure, DeadKernelError):
        return RunErrorInfo(
            "the kernel died while the cell ran",
            "DeadKernelError",
            cell_id=cell_id,
            cell_index=index,
        )
    return _error_info(cell, index, failure)


def _notebook_kernel(notebook: Notebook) -> str:
    spec = notebook.get("metadata", {}).get("kernelspec", {})
    name = spec.get("name") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) and name else "python3"
