"""The chaos harness: many concurrent ``run_and_wait`` calls against a vendor fake under a
seeded fault mix, every invariant checked, the figures kept.

``tests/reliability/test_chaos.py`` runs it at a small scale; ``bench/chaos.py`` runs it longer
and prints the figures. One notebook per call, so whatever the fake server started can be tied
to exactly one call:

* every run the server started is accounted for: the call ended with that run (terminal, or an
  error whose ``handle`` names it), or the call said the start's outcome is unknown
  (StartOutcomeUnknown, or a start answer it could not read, which says the run probably began);
* the server saw at most one run start per call (no duplicate from a retry);
* only errors from the notebookops tree come out;
* every call returns by its deadline plus the cancel budget and a scheduling slack;
* afterwards no client session is left open and no task is left pending.

The cancellation scenario cancels callers at chosen points (while the start request is in
flight, while polling, while the transport sleeps before a retry) and checks that the handle
still reached ``on_start``, that the remote run was cancelled where the backend can cancel, and
that nothing leaked.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import aiohttp
import anyio
import attrs

from notebookops import (
    NotebookBackend,
    NotebookOpsError,
    PollPolicy,
    ResponseDecodeError,
    RetryPolicy,
    Run,
    RunCancelled,
    RunFailed,
    RunHandle,
    RunRequest,
    RunTimeout,
    StartOutcomeUnknown,
    run_and_wait,
)
from notebookops.backend import SENT_WORK_GRACE
from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.posthog import PostHogBackend
from notebookops.models import Capability
from notebookops.testing.datalore import fake_datalore_server
from notebookops.testing.deepnote import TERMINAL, RunScript, fake_deepnote
from notebookops.testing.posthog import posthog_server
from notebookops.testing.server import FakeServer, Fault, FaultPlan

__all__ = [
    "TOKEN",
    "Call",
    "VENDORS",
    "CancelPhase",
    "Figures",
    "Settings",
    "cancellation_scenario",
    "chaos_scenario",
    "figures_table",
    "leak_report",
]

#: A distinctive token: the secret-hygiene tests search every repr, log line and error for it.
TOKEN = "nbops-chaos-SECRET-6f2b9d41"
VENDORS = ("deepnote", "datalore", "posthog-server", "posthog-kernel")
Kind = Literal["succeed", "fail", "long"]
CancelPhase = Literal["start", "poll", "retry"]

RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, max_retry_after=0.2)
#: A PostHog cell that runs for a long time in short sleeps, so an interrupt lands quickly.
LONG_CELL = "import time\nfor _ in range(3000):\n    time.sleep(0.01)\n"
_KERNEL_USER = 1  # the fake's id for the token's user: kernel-mode executions run as it


@attrs.frozen
class Settings:
    """Durations of one scenario (seconds). The defaults suit a small CI run."""

    request_timeout: float = 0.4
    slow: float = 0.6  # a "delay" fault: longer than the request timeout
    call_timeout: float = 2.0
    start_timeout: float = 1.5
    cancel_timeout: float = 0.5
    slack: float = 1.0  # scheduling slack on a busy machine
    fault_rate: float = 0.12
    mix: tuple[float, float, float] = (0.65, 0.2, 0.15)  # succeed, fail, long
    poll_maximum: float = 0.05  # longer for big runs, so the loop is not flooded

    @property
    def poll(self) -> PollPolicy:
        return PollPolicy(initial=0.01, multiplier=1.5, maximum=self.poll_maximum, jitter=0.1)

    @property
    def after_deadline(self) -> float:
        """What the library may spend past a deadline or a cancellation (run_and_wait's
        documented bound): a start already sent gets its answer within its request timeout
        (and, on Deepnote, a look for its run within the grace), then on_start and the
        remote cancel with its last read get cancel_timeout each."""
        search = min(self.request_timeout, SENT_WORK_GRACE)
        return self.request_timeout + search + 2 * self.cancel_timeout

    @property
    def bound(self) -> float:
        """The latest a call may return: the deadline (or the start's own bound, if longer),
        what may follow it, and the slack."""
        return max(self.call_timeout, self.start_timeout) + self.after_deadline + self.slack


# --------------------------------------------------------------------------- faults


class ChaosFaultPlan(FaultPlan):
    """A seeded FaultPlan that also counts injected faults by a readable label."""

    def __init__(self, seed: int, rate: float, kinds: Sequence[tuple[str, Fault]]) -> None:
        super().__init__()
        self.labels = {id(fault): label for label, fault in kinds}
        self.by_label: Counter[str] = Counter()
        #: Called with the request path whenever a fault is injected.
        self.on_fault: Callable[[str], None] | None = None
        self.randomize(seed, rate, tuple(fault for _, fault in kinds))

    def take(self, method: str, path: str) -> Fault | None:
        fault = super().take(method, path)
        if fault is not None:
            self.by_label[self.labels.get(id(fault), fault.kind)] += 1
            if self.on_fault is not None:
                self.on_fault(path)
        return fault


_NOT_A_STREAM = r"^(?!.*/stream/$)"
_POSTHOG_THROTTLED = {
    "type": "throttled_error",
    "code": "throttled",
    "detail": "Request was throttled. Expected available in 0 seconds.",
    "attr": None,
}


def fault_mix(vendor: str, settings: Settings) -> list[tuple[str, Fault]]:
    """The faults a scenario draws from, with their labels."""
    mix = [
        (
            "429 + Retry-After",
            Fault("status", status=429, headers={"Retry-After": "0.05"}, body={"message": "slow"}),
        ),
        ("429 without Retry-After", Fault("status", status=429)),
        ("500", Fault("status", status=500, body={"message": "chaos"})),
        ("502", Fault("status", status=502)),
        ("503", Fault("status", status=503)),
        ("504", Fault("status", status=504)),
        ("reset before request", Fault("reset_before")),
        ("reset after request", Fault("reset_after")),
        ("slow past timeout", Fault("delay", delay=settings.slow)),
        ("truncated body", Fault("truncate", path=_NOT_A_STREAM)),
        ("invalid JSON", Fault("invalid_json")),
        ("HTML error page", Fault("html", status=502)),
        ("wrong content type", Fault("wrong_content_type")),
        ("unknown status", Fault("unknown_status")),
        ("missing fields", Fault("missing_fields")),
    ]
    if vendor.startswith("posthog"):
        mix.append(("429 PostHog body", Fault("status", status=429, body=_POSTHOG_THROTTLED)))
    if vendor == "posthog-kernel":
        mix.append(("SSE cut mid-frame", Fault("sse_cut", path=r"/kernel/execute/stream/$")))
    return mix


# --------------------------------------------------------------------------- calls and envs


@attrs.define(eq=False)
class Call:
    """One run_and_wait call and everything observed about it."""

    index: int
    kind: Kind
    request: RunRequest
    notebook: str
    handle: RunHandle | None = None
    scope: anyio.CancelScope | None = None
    result: Run | None = None
    error: BaseException | None = None
    outcome: str = "not run"
    began: float = 0.0
    elapsed: float = 0.0
    updates: int = 0
    cancel_phase: CancelPhase | None = None
    cancel_after_updates: int = 0
    cancelled_at: float | None = None
    #: Set once the handle is known or the call is over, whichever comes first.
    settled: anyio.Event = attrs.field(factory=anyio.Event)

    @property
    def keys(self) -> list[str]:
        """Strings that identify this call in a request URL."""
        keys = [self.notebook]
        if self.handle is not None:
            keys.append(self.handle.run_id)
        return keys

    def known_run_ids(self) -> set[str]:
        ids = set()
        for handle in (
            self.handle,
            self.result.handle if self.result is not None else None,
            getattr(self.error, "handle", None),
        ):
            if isinstance(handle, RunHandle):
                ids.add(handle.run_id)
        return ids


@attrs.define(eq=False)
class ChaosEnv:
    """A vendor fake with one notebook per call, and the backend under test."""

    vendor: str
    backend: NotebookBackend
    servers: list[FakeServer]
    calls: list[Call]
    #: The server-side runs (ids, or executed cells for kernel mode) of a call's notebook.
    started: Callable[[Call], list[str]]
    duplicates: Callable[[Call], int]
    still_running: Callable[[Call], bool]
    #: (method, path regex) of the run-starting request and of the status/progress requests.
    start_route: tuple[str, str]
    status_route: tuple[str, str]
    #: False when handles hold a local id (kernel mode): the server has no run ids.
    tracks_ids: bool = True


def _kinds(rng: random.Random, count: int, mix: tuple[float, float, float]) -> list[Kind]:
    kinds: list[Kind] = ["succeed", "fail", "long"]
    return [rng.choices(kinds, weights=mix)[0] for _ in range(count)]


@asynccontextmanager
async def deepnote_env(
    seed: int, runs: int, settings: Settings, kinds: list[Kind]
) -> AsyncIterator[ChaosEnv]:
    rng = random.Random(seed)
    async with fake_deepnote(token=TOKEN) as server:
        project = server.add_project("chaos")
        calls: list[Call] = []
        for index, kind in enumerate(kinds[:runs]):
            duration = rng.uniform(0.02, 0.15)
            script = {
                "succeed": RunScript.succeed(duration),
                "fail": RunScript.fail(duration),
                "long": RunScript.long(),
            }[kind]
            notebook = server.add_notebook(project, name=f"nb{index:04d}", script=script)
            calls.append(Call(index, kind, RunRequest(notebook.id), notebook.id))
        backend = server.backend(
            timeout=settings.request_timeout,
            retry=RETRY,
            snapshot_wait=0.3,
            reconcile_interval=0.02,
        )

        def started(call: Call) -> list[str]:
            return [run.id for run in server.runs_of(call.notebook)]

        def still_running(call: Call) -> bool:
            now = time.monotonic()
            return any(run.status(now) not in TERMINAL for run in server.runs_of(call.notebook))

        try:
            yield ChaosEnv(
                vendor="deepnote",
                backend=backend,
                servers=[server],
                calls=calls,
                started=started,
                duplicates=lambda call: max(0, len(started(call)) - 1),
                still_running=still_running,
                start_route=("POST", r"^/v2/runs$"),
                status_route=("GET", r"^/v2/runs/"),
            )
        finally:
            await backend.aclose()


@asynccontextmanager
async def datalore_env(
    seed: int, runs: int, settings: Settings, kinds: list[Kind]
) -> AsyncIterator[ChaosEnv]:
    rng = random.Random(seed)
    async with fake_datalore_server(token=TOKEN) as server:
        calls: list[Call] = []
        for index, kind in enumerate(kinds[:runs]):
            notebook_id = f"chaos/nb{index:04d}"
            server.add_notebook(
                notebook_id,
                duration=None if kind == "long" else rng.uniform(0.02, 0.15),
                succeed=kind != "fail",
            )
            calls.append(Call(index, kind, RunRequest(notebook_id), notebook_id))
        backend = DataloreBackend(
            token=TOKEN, base_url=server.url, retry=RETRY, timeout=settings.request_timeout
        )

        def runs_of(call: Call) -> list[Any]:
            return [
                run for run in server.runs.values() if run.notebook.notebook_id == call.notebook
            ]

        try:
            yield ChaosEnv(
                vendor="datalore",
                backend=backend,
                servers=[server],
                calls=calls,
                started=lambda call: [run.run_id for run in runs_of(call)],
                duplicates=lambda call: max(0, len(runs_of(call)) - 1),
                still_running=lambda call: any(not run.finished for run in runs_of(call)),
                start_route=("POST", r"^/api/run/v1/notebook$"),
                status_route=("GET", r"^/api/run/v1/(?!notebook$)"),
            )
        finally:
            await backend.aclose()


def _posthog_cells(kind: Kind, rng: random.Random) -> list[str]:
    pause = f"import time\ntime.sleep({rng.uniform(0.01, 0.08):.3f})"
    if kind == "succeed":
        return ["x = 20", pause, "print(x + 1)"]
    if kind == "fail":
        return ["x = 1", pause, "x / 0"]
    return [LONG_CELL]


@asynccontextmanager
async def posthog_env(
    seed: int,
    runs: int,
    settings: Settings,
    kinds: list[Kind],
    *,
    mode: Literal["server", "kernel"],
) -> AsyncIterator[ChaosEnv]:
    rng = random.Random(seed)
    # Server runs exist on newer PostHog, and run markdown-format notebooks only.
    version: Literal["old", "new"] = "new" if mode == "server" else "old"
    async with posthog_server(token=TOKEN, version=version) as server:
        calls: list[Call] = []
        for index, kind in enumerate(kinds[:runs]):
            short_id = f"nb{index:04d}"
            server.add_notebook(
                short_id, cells=_posthog_cells(kind, rng), markdown=mode == "server"
            )
            calls.append(Call(index, kind, RunRequest(short_id), short_id))
        backend = PostHogBackend(
            TOKEN,
            project_id=server.project_id,
            base_url=server.url,
            mode=mode,
            poll=settings.poll,
            retry=RETRY,
            timeout=settings.request_timeout,
            cancel_timeout=settings.cancel_timeout,
        )

        def server_runs(call: Call) -> list[Any]:
            return [run for run in server.server_runs.values() if run.short_id == call.notebook]

        def executions(call: Call) -> list[Any]:
            return [
                execution
                for execution in server.executions
                if execution.short_id == call.notebook and execution.user_id == _KERNEL_USER
            ]

        def executed_twice(call: Call) -> int:
            counts = Counter(execution.code for execution in executions(call))
            return sum(count - 1 for count in counts.values())

        def executing(call: Call) -> bool:
            return any(
                execution.running
                and not execution.interrupt.is_set()
                and not execution.client_gone()
                for execution in executions(call)
            )

        try:
            if mode == "server":
                yield ChaosEnv(
                    vendor="posthog-server",
                    backend=backend,
                    servers=[server],
                    calls=calls,
                    started=lambda call: [run.run_id for run in server_runs(call)],
                    duplicates=lambda call: max(0, len(server_runs(call)) - 1),
                    still_running=lambda call: any(
                        run.status == "running" for run in server_runs(call)
                    ),
                    start_route=("POST", r"/notebooks/[^/]+/runs/$"),
                    status_route=("GET", r"/notebooks/[^/]+/runs/[^/]+/$"),
                )
            else:
                yield ChaosEnv(
                    vendor="posthog-kernel",
                    backend=backend,
                    servers=[server],
                    calls=calls,
                    started=lambda call: sorted({e.code for e in executions(call)}),
                    duplicates=executed_twice,
                    still_running=executing,
                    start_route=("GET", r"/notebooks/[^/]+/$"),
                    status_route=("POST", r"/kernel/execute/stream/$"),
                    tracks_ids=False,
                )
        finally:
            await backend.aclose()


@asynccontextmanager
async def make_env(
    vendor: str, seed: int, runs: int, settings: Settings, kinds: list[Kind]
) -> AsyncIterator[ChaosEnv]:
    """The environment of ``vendor`` (one of :data:`VENDORS`)."""
    if vendor == "deepnote":
        async with deepnote_env(seed, runs, settings, kinds) as env:
            yield env
    elif vendor == "datalore":
        async with datalore_env(seed, runs, settings, kinds) as env:
            yield env
    elif vendor in ("posthog-server", "posthog-kernel"):
        mode: Literal["server", "kernel"] = "server" if vendor == "posthog-server" else "kernel"
        async with posthog_env(seed, runs, settings, kinds, mode=mode) as env:
            yield env
    else:
        raise ValueError(f"unknown vendor {vendor!r}; choose from {VENDORS}")


# --------------------------------------------------------------------------- figures


@attrs.define
class Figures:
    """What one scenario did and which invariants it broke (``problems``)."""

    scenario: str
    vendor: str
    seed: int
    calls: int = 0
    outcomes: Counter[str] = attrs.field(factory=Counter)
    faults: Counter[str] = attrs.field(factory=Counter)
    requests: int = 0
    server_starts: int = 0
    #: Calls told their start may or may not have happened, and how many of those had not.
    uncertain_starts: int = 0
    uncertain_without_run: int = 0
    duplicates: int = 0
    lost: int = 0
    escapes: int = 0
    overruns: int = 0
    #: Calls that returned later than the deadline plus cancel_timeout (and the slack): a
    #: start already sent, seen through to its answer.
    past_cancel_budget: int = 0
    max_elapsed: float = 0.0
    bound: float = 0.0
    unclosed_sessions: int = 0
    pending_tasks: int = 0
    still_running_after_cancel: int = 0
    #: Cancelled callers whose remote run went on because the backend cannot cancel.
    left_running: int = 0
    seconds: float = 0.0
    problems: list[str] = attrs.field(factory=list)

    @property
    def leaks(self) -> int:
        return self.unclosed_sessions + self.pending_tasks + self.still_running_after_cancel

    @property
    def ok(self) -> bool:
        return not self.problems


def _classify(call: Call) -> str:
    error = call.error
    if call.cancelled_at is not None and call.result is None and error is None:
        return "cancelled by caller"
    if error is None:
        return "succeeded" if call.result is not None else "not run"
    if isinstance(error, RunTimeout):
        return "timeout (remote cancelled)" if error.cancelled else "timeout (left running)"
    if isinstance(error, RunFailed):
        return "failed"
    if isinstance(error, RunCancelled):
        return "cancelled"
    if isinstance(error, StartOutcomeUnknown):
        return "start outcome unknown"
    if isinstance(error, NotebookOpsError):
        phase = "after start" if error.handle is not None else "at start"
        return f"{type(error).__name__} {phase}"
    return f"ESCAPED {type(error).__name__}"


def _start_uncertain(call: Call) -> bool:
    """The call says its run may exist although it has no handle for it."""
    if call.handle is not None:
        return False
    if isinstance(call.error, StartOutcomeUnknown):
        return True
    # A start answer that could not be read: the adapters say the run probably began.
    return isinstance(call.error, ResponseDecodeError)


def _account(env: ChaosEnv, figures: Figures, settings: Settings) -> None:
    for call in env.calls:
        call.outcome = _classify(call)
        figures.outcomes[call.outcome] += 1
        figures.max_elapsed = max(figures.max_elapsed, call.elapsed)
        if call.elapsed > settings.call_timeout + settings.cancel_timeout + settings.slack:
            figures.past_cancel_budget += 1
        where = f"{env.vendor} call {call.index} ({call.kind}, {call.notebook})"
        if call.error is not None and not isinstance(call.error, NotebookOpsError):
            figures.escapes += 1
            figures.problems.append(f"{where}: escaped {type(call.error).__name__}: {call.error}")
        if call.elapsed > settings.bound:
            figures.overruns += 1
            figures.problems.append(
                f"{where}: returned after {call.elapsed:.2f}s (bound {settings.bound:.2f}s)"
            )
        if call.cancelled_at is not None:
            late = call.began + call.elapsed - call.cancelled_at
            limit = settings.after_deadline + settings.slack
            if late > limit:
                figures.overruns += 1
                figures.problems.append(f"{where}: took {late:.2f}s to honour the cancellation")
        started = env.started(call)
        figures.server_starts += 1 if started else 0
        if _start_uncertain(call):
            figures.uncertain_starts += 1
            figures.uncertain_without_run += 0 if started else 1
        duplicates = env.duplicates(call)
        if duplicates:
            figures.duplicates += duplicates
            figures.problems.append(f"{where}: {duplicates} duplicate start(s): {started}")
        error = call.error
        if isinstance(error, NotebookOpsError) and call.handle is not None and not error.handle:
            figures.problems.append(f"{where}: error after start without a handle")
        known = call.known_run_ids()
        if not started:
            continue
        if env.tracks_ids:
            unaccounted = sorted(set(started) - known)
            if len(unaccounted) == 1 and not known and _start_uncertain(call):
                continue  # the one run the call said may have started
        else:
            unaccounted = [] if known or _start_uncertain(call) else started
        if unaccounted:
            figures.lost += len(unaccounted)
            figures.problems.append(
                f"{where}: the server started {unaccounted}, which the call ended "
                f"({call.outcome}) without reporting (it holds {sorted(known) or 'no handle'})"
            )


def leak_report(figures: Figures, *, own_task: asyncio.Task[Any] | None) -> None:
    """Count open client sessions and pending tasks (run after everything was closed)."""
    gc.collect()
    sessions = [
        obj for obj in gc.get_objects() if isinstance(obj, aiohttp.ClientSession) and not obj.closed
    ]
    figures.unclosed_sessions = len(sessions)
    if sessions:
        figures.problems.append(f"{len(sessions)} client session(s) left open")
    pending = [task for task in asyncio.all_tasks() if task is not own_task and not task.done()]
    figures.pending_tasks = len(pending)
    if pending:
        names = ", ".join(sorted(task.get_name() for task in pending)[:5])
        figures.problems.append(f"{len(pending)} task(s) still pending: {names}")


async def _settle_tasks(own: asyncio.Task[Any] | None, limit: float = 2.0) -> None:
    """Give finished work (aiohttp handler tasks of dropped connections...) a moment to end."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not [t for t in asyncio.all_tasks() if t is not own and not t.done()]:
            return
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- running calls


async def _one(env: ChaosEnv, call: Call, settings: Settings) -> None:
    def on_start(handle: RunHandle) -> None:
        call.handle = handle
        call.settled.set()

    def on_update(run: Run) -> None:
        call.updates += 1
        if call.cancel_after_updates and call.updates == call.cancel_after_updates:
            _cancel(call)

    call.began = anyio.current_time()
    with anyio.CancelScope() as scope:
        call.scope = scope
        try:
            call.result = await run_and_wait(
                env.backend,
                call.request,
                timeout=settings.call_timeout,
                poll=settings.poll,
                start_timeout=settings.start_timeout,
                cancel_timeout=settings.cancel_timeout,
                on_start=on_start,
                on_update=on_update,
            )
        except Exception as error:  # never BaseException: the caller's cancellation must pass
            call.error = error
    call.elapsed = anyio.current_time() - call.began
    call.settled.set()


def _cancel(call: Call) -> None:
    if call.scope is not None and call.cancelled_at is None and call.elapsed == 0.0:
        call.cancelled_at = anyio.current_time()
        call.scope.cancel()


async def _run_calls(env: ChaosEnv, settings: Settings, extra: Callable[[], Any] | None) -> None:
    async with anyio.create_task_group() as group:
        for call in env.calls:
            group.start_soon(_one, env, call, settings)
        if extra is not None:
            group.start_soon(extra)


def _install_plan(env: ChaosEnv, plan: FaultPlan) -> None:
    for server in env.servers:
        server.faults = plan


async def chaos_scenario(
    vendor: str,
    *,
    seed: int,
    runs: int,
    settings: Settings | None = None,
    collect: list[Call] | None = None,
    tamper: Callable[[ChaosEnv], None] | None = None,
) -> Figures:
    """``runs`` concurrent run_and_wait calls on ``vendor``'s fake under the seeded fault mix.
    ``collect`` receives the calls (their runs, handles and errors) for further checks;
    ``tamper`` may break the environment on purpose (to prove the checks catch it)."""
    settings = settings or Settings()
    figures = Figures(scenario="chaos", vendor=vendor, seed=seed, bound=settings.bound)
    rng = random.Random(seed)
    kinds = _kinds(rng, runs, settings.mix)
    own = asyncio.current_task()
    began = time.monotonic()
    async with make_env(vendor, seed, runs, settings, kinds) as env:
        plan = ChaosFaultPlan(seed, settings.fault_rate, fault_mix(vendor, settings))
        _install_plan(env, plan)
        if tamper is not None:
            tamper(env)
        await _run_calls(env, settings, None)
        plan.clear()
        figures.calls = len(env.calls)
        figures.faults = Counter(plan.by_label)
        figures.requests = sum(len(server.requests) for server in env.servers)
        _account(env, figures, settings)
        if collect is not None:
            collect.extend(env.calls)
        await _quiesce(env)
    await _settle_tasks(own)
    figures.seconds = time.monotonic() - began
    leak_report(figures, own_task=own)
    return figures


async def _quiesce(env: ChaosEnv) -> None:
    """Let fake-side work of abandoned requests finish before the servers close."""
    await env.backend.aclose()
    await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- cancellation


class _RetryTrigger(logging.Handler):
    """Cancels the call named in a transport "retry N in S" warning: that warning is logged
    just before the transport sleeps, so the cancellation lands in the retry sleep."""

    def __init__(self, calls: Sequence[Call]) -> None:
        super().__init__(logging.WARNING)
        self.calls = [call for call in calls if call.cancel_phase == "retry"]
        self.fired = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "; retry " not in message:
            return
        for call in self.calls:
            if call.cancelled_at is None and any(
                re.search(rf"/{re.escape(key)}(?=[/?\s;]|$)", message) for key in call.keys
            ):
                self.fired += 1
                _cancel(call)
                return


@contextmanager
def _retry_trigger(calls: Sequence[Call]) -> Iterator[_RetryTrigger]:
    handler = _RetryTrigger(calls)
    logger = logging.getLogger("notebookops.http")
    level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)  # the trigger needs the retry warnings emitted
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def cancellation_scenario(
    vendor: str,
    phase: CancelPhase,
    *,
    seed: int,
    runs: int,
    settings: Settings | None = None,
) -> Figures:
    """``runs`` concurrent calls, each cancelled by its caller at ``phase``."""
    settings = settings or Settings()
    figures = Figures(scenario=f"cancel {phase}", vendor=vendor, seed=seed, bound=settings.bound)
    rng = random.Random(seed)
    # Mostly long runs: there must be something running to cancel.
    kinds = _kinds(rng, runs, (0.25, 0.0, 0.75))
    own = asyncio.current_task()
    began = time.monotonic()
    async with make_env(vendor, seed, runs, settings, kinds) as env:
        plan = ChaosFaultPlan(seed, 0.0, [])
        for call in env.calls:
            call.cancel_phase = phase
        if phase == "start":
            method, path = env.start_route
            # Held well under the request timeout (0.4 s): a start that times out on a
            # stalled machine is not cancelled by its caller, which is what this phase tests.
            plan.add(Fault("delay", delay=0.12, method=method, path=path, times=runs))
            plan.labels[id(plan.scripted[-1])] = "slow start (cancel meanwhile)"
        elif phase == "poll":
            # Half at the first update (inside the on_update callback), half a little later.
            for call in env.calls:
                call.cancel_after_updates = rng.choice((0, 1))
        else:
            method, path = env.status_route
            status = 503 if method == "GET" else 429  # a POST is only retried after a 429
            fault = plan.add(
                Fault(
                    "status",
                    status=status,
                    headers={"Retry-After": "0.3"},
                    method=method,
                    path=path,
                    times=runs,
                )
            )
            plan.labels[id(fault)] = f"{status} before a retry (cancel in the sleep)"
            if method == "POST":
                # Kernel mode retries inside its event-stream request, which logs nothing: cancel
                # shortly after the 429 went out, well inside the 0.2 s retry sleep.
                loop = asyncio.get_running_loop()

                def soon(path: str) -> None:
                    for call in env.calls:
                        if re.search(rf"/{re.escape(call.notebook)}/", path):
                            loop.call_later(0.05, _cancel, call)

                plan.on_fault = soon
        _install_plan(env, plan)

        async def cancel_during_start() -> None:
            # Each start request is held 0.12 s by the server: cancel somewhere inside that.
            async def later(call: Call, delay: float) -> None:
                await anyio.sleep(delay)
                _cancel(call)

            async with anyio.create_task_group() as group:
                for call in env.calls:
                    group.start_soon(later, call, rng.uniform(0.0, 0.1))

        async def cancel_while_polling() -> None:
            async def later(call: Call, delay: float) -> None:
                await call.settled.wait()
                await anyio.sleep(delay)
                _cancel(call)

            async with anyio.create_task_group() as group:
                for call in env.calls:
                    if not call.cancel_after_updates:
                        group.start_soon(later, call, rng.uniform(0.01, 0.15))

        canceller = {"start": cancel_during_start, "poll": cancel_while_polling}.get(phase)
        with _retry_trigger(env.calls):
            await _run_calls(env, settings, canceller)
        plan.clear()
        figures.calls = len(env.calls)
        figures.faults = Counter(plan.by_label)
        figures.requests = sum(len(server.requests) for server in env.servers)
        _account(env, figures, settings)
        can_cancel = Capability.CANCEL in env.backend.capabilities
        with anyio.move_on_after(settings.cancel_timeout + settings.slack):
            # The fake's state has no event to wait on: poll it.
            while can_cancel and any(  # noqa: ASYNC110
                call.cancelled_at is not None and env.still_running(call) for call in env.calls
            ):
                await anyio.sleep(0.02)
        for call in env.calls:
            if call.cancelled_at is None:
                continue
            if can_cancel and env.still_running(call):
                figures.still_running_after_cancel += 1
                figures.problems.append(
                    f"{vendor} call {call.index}: remote run still running after the caller "
                    "cancelled"
                )
            if not can_cancel and env.still_running(call):
                figures.left_running += 1
            # A start whose answer never came says the run may exist (StartOutcomeUnknown),
            # which the accounting above already holds to that one run.
            if env.started(call) and call.handle is None and not _start_uncertain(call):
                figures.problems.append(
                    f"{vendor} call {call.index}: cancelled with a started run but no handle"
                )
        await _quiesce(env)
    await _settle_tasks(own)
    figures.seconds = time.monotonic() - began
    leak_report(figures, own_task=own)
    return figures


# --------------------------------------------------------------------------- reporting


def figures_table(all_figures: Sequence[Figures]) -> str:
    """A markdown table of the figures, then the faults injected by kind."""
    header = (
        "| scenario | vendor | runs | outcomes | requests | faults | server starts | "
        "uncertain starts (no run) | duplicates | lost | escapes | leaks | deadline overruns | "
        "slowest / bound | time |"
    )
    lines = [header, "|" + "---|" * 15]
    for f in all_figures:
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(f.outcomes.items()))
        if f.left_running:
            outcomes += f" ({f.left_running} remote runs went on: no CANCEL)"
        lines.append(
            f"| {f.scenario} | {f.vendor} | {f.calls} | {outcomes} | {f.requests} | "
            f"{sum(f.faults.values())} | {f.server_starts} | "
            f"{f.uncertain_starts} ({f.uncertain_without_run}) | {f.duplicates} | {f.lost} | "
            f"{f.escapes} | {f.leaks} | {f.overruns} | {f.max_elapsed:.2f}s / {f.bound:.2f}s | "
            f"{f.seconds:.1f}s |"
        )
    kinds = sorted({kind for f in all_figures for kind in f.faults})
    if kinds:
        vendors = list(dict.fromkeys(f.vendor for f in all_figures))
        lines += ["", "Faults injected, by kind (all scenarios of each vendor):", ""]
        lines.append("| fault | " + " | ".join(vendors) + " | total |")
        lines.append("|" + "---|" * (len(vendors) + 2))
        for kind in kinds:
            counts = [
                sum(f.faults.get(kind, 0) for f in all_figures if f.vendor == vendor)
                for vendor in vendors
            ]
            lines.append(
                f"| {kind} | " + " | ".join(str(c) for c in counts) + f" | {sum(counts)} |"
            )
    problems = [f"{f.scenario} {f.vendor}: {p}" for f in all_figures for p in f.problems]
    lines += ["", f"Invariant violations: {len(problems)}"]
    lines += [f"- {problem}" for problem in problems[:50]]
    return "\n".join(lines)
