"""In-process, deterministic measurements of the library's own cost per wait.

``bench/run.py`` measures what a user sees: a client process against a server process on
loopback. On a small shared machine its CPU figures move by 10-20% from one run to the next,
too much to tell whether a change saved 3%. This harness takes the network and the clock out:

* the Deepnote API is an in-memory fake giving the same answers as ``bench/server.py``
  (``HttpTransport._send`` is replaced for the library; the floors call the fake directly),
  each answer one event-loop turn away, as a socket's would be;
* the event loop runs on a virtual clock that jumps to the next timer whenever nothing is
  ready, so every run makes the same requests at the same (virtual) times, however fast the
  machine is at the moment, and runs of seconds take milliseconds.

Workloads (``--variant``), N waits started at once on N/100 notebooks, runs of 3 s +/- 20% and
the default PollPolicy, as in scenario 1 of ``bench/run.py``:

* ``lib``: ``run_and_wait`` on a ``DeepnoteBackend`` with its defaults (shared polls);
* ``lib-noshare``: the same with ``share_reads=False``;
* ``shared-floor``: a hand-written shared-poll loop (one runs-list read per notebook for all
  of its waits, one run read per finished run), with no abstraction at all;
* ``transport-floor``: ``shared-floor`` making its requests through the library's transport;
* ``guarded-floor``: ``transport-floor``, each wait also doing by hand the per-run work the
  library's guarantees take (a shielded start task, a deadline, a typed handle and Run with
  outputs): the least a wait keeping them costs;
* ``floor``: a hand-written loop making one read per wait per poll.

Measurements (``MODE``):

``cpu``
    Client CPU per run, the fake's own CPU subtracted, plus requests per run and the cyclic
    GC's share. Still subject to the machine's noise, but with no server competing for it.
``objects``
    GC-tracked objects alive per wait, by type, with every wait asleep (or, ``--when
    starting``, during the burst of starts, most of them queued for a connection): each full
    garbage collection walks all of them, for every wait in flight. Exact.
``instructions``
    Instructions executed per run under valgrind's callgrind (needs ``valgrind``): the
    workload is run with N and with 2N waits and the difference divided by N, which cancels
    start-up and imports. Repeats agree to about 0.5%.
``breakdown``
    ``instructions`` for a set of workloads cut short after one phase of a wait (the
    ``lib-*`` and ``floor-*`` variants), differenced into the instructions per run of each
    phase of a shared wait, the library's against the hand-written shared loop's: where the
    library's extra cost is. Prints a Markdown table, then JSON.
``guarantees``
    ``instructions`` for the shared loop, the same on the library's transport
    (``transport-floor``), then doing by hand the per-run work the library's guarantees take
    (``guarded-floor``, and without each of its pieces: ``guarded-floor-no-shield``,
    ``guarded-floor-no-deadline``, ``guarded-floor-no-typed``), and ``lib``: what
    ``run_and_wait`` adds to the shared loop, in layers, each guarantee priced apart, and how
    much is the library's own code beyond them. Prints a Markdown table, then JSON.

Examples::

    .venv/bin/python bench/inprocess.py instructions --variant lib --n 1000
    .venv/bin/python bench/inprocess.py objects --variant lib-noshare
    .venv/bin/python bench/inprocess.py cpu --variant shared-floor --n 10000
    .venv/bin/python bench/inprocess.py breakdown --n 500
    .venv/bin/python bench/inprocess.py guarantees --n 500

Figures from here are for comparing two versions of the library with each other (run both,
the same way); the targets are judged by ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import random
import selectors
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# bench/client.py's floors and schedule and bench/server.py's runs and answers, in one
# process on the in-memory fake instead of aiohttp and sockets.
from client import GUARANTEES, TERMINAL, SharedPoller, guarded_wait, poll_delay, run_body
from measure import GCTimer
from server import BenchRun, run_duration, runs_page

DURATION, SPREAD = 3.0, 0.2


# --------------------------------------------------------------------------- virtual time


class VirtualClock:
    """The one clock everything reads: the loop, ``time.monotonic`` and the fake."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = VirtualClock()


class _IdleSelector(selectors.SelectSelector):
    """A selector that never waits: asked to wait ``timeout`` seconds for I/O (there is none,
    the fake answers in-process), it moves the clock on by that much instead."""

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("nothing is scheduled and nothing can happen: a wait is stuck")
        if timeout > 0:
            CLOCK.now += timeout
        return []


def run_virtual(main: Awaitable[Any]) -> Any:
    # The loop and the library read time.monotonic (loop.time() is time.monotonic()); the
    # library binds it when called, the rate limiter when built, so patch it before either.
    time.monotonic = CLOCK
    loop = asyncio.SelectorEventLoop(_IdleSelector())
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


# --------------------------------------------------------------------------- the fake API


class FakeDeepnote:
    """bench/server.py's runs and answers, in-process; counts requests and its own CPU."""

    def __init__(self, seed: int = 3) -> None:
        self.rng = random.Random(seed)
        self.runs: dict[str, BenchRun] = {}
        self.by_notebook: dict[str, list[BenchRun]] = {}
        self.cpu = 0.0
        self.requests = 0

    def answer(self, method: str, url: str, body: Any) -> tuple[int, bytes]:
        began = time.process_time()
        try:
            self.requests += 1
            return self._answer(method, url, body)
        finally:
            self.cpu += time.process_time() - began

    def _answer(self, method: str, url: str, body: Any) -> tuple[int, bytes]:
        parts = urlsplit(url)
        now = CLOCK.now
        if method == "POST":
            duration = run_duration(body.get("inputs"), DURATION, SPREAD, self.rng)
            # Ids and times from the seeded generator and the virtual clock: the same every run.
            run_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=now)
            run = BenchRun(run_id, body["notebookId"], created, duration)
            self.runs[run.id] = run
            self.by_notebook.setdefault(run.notebook, []).append(run)
            return 202, json.dumps(run.started()).encode()
        if parts.path.startswith("/v2/runs/"):
            run = self.runs[parts.path.rsplit("/", 1)[1]]
            return 200, json.dumps({"run": run.details(now)}).encode()
        query = parse_qs(parts.query)
        runs = self.by_notebook.get(parts.path.split("/")[3], [])
        size = int(query.get("pageSize", ["20"])[0])
        offset = int(query.get("pageToken", ["0"])[0])
        return 200, json.dumps(runs_page(runs, size, offset, now)).encode()


FAKE = FakeDeepnote()
WARM_UP = ("warm-up", {"bench_duration": "0.01"})


#: The floors' gate in front of their connections, as in bench/client.py (the library's is
#: the transport's own, 100 connections by default).
FLOOR_SLOTS = asyncio.Semaphore(100)


async def _request(method: str, url: str, body: Any = None) -> Any:
    """A floor's request: a connection slot, one loop turn, the fake's answer, json.loads."""
    async with FLOOR_SLOTS:
        await asyncio.sleep(0)
        _status, answer = FAKE.answer(method, url, body)
    return json.loads(answer)


Wait = Callable[[str, "dict[str, str] | None"], Awaitable[bool]]


# --------------------------------------------------------------------------- workloads


def _patch_transport() -> None:
    """Make the library's transport answer from the fake (once per process)."""
    from notebookops import _deadline
    from notebookops._http import HttpResponse, HttpTransport

    headers = {"content-type": "application/json"}

    async def send(self: HttpTransport, method: str, url: str, **options: Any) -> HttpResponse:
        # The transport's FIFO gate in front of its connections, as in the real _send: a
        # burst of starts queues there.
        slots = self._slots
        if slots is not None and not _deadline.take_held(slots):
            await slots.acquire()
        try:
            await asyncio.sleep(0)
            status, body = FAKE.answer(method, url, options.get("json"))
        finally:
            if slots is not None:
                slots.release()
        return HttpResponse(status, headers, body, method, url, "deepnote")

    HttpTransport._send = send  # type: ignore[method-assign]


def _backend(share: bool) -> Any:
    from notebookops.backends.deepnote import DeepnoteBackend, DeepnoteOptions

    _patch_transport()
    return DeepnoteBackend(
        "bench-token",
        base_url="http://127.0.0.1:9",
        allow_http=True,
        options=DeepnoteOptions(share_reads=share),
    )


async def _with_library(share: bool, work: Callable[[Wait], Awaitable[Any]]) -> Any:
    import notebookops.orchestration as orchestration
    from notebookops import RunRequest, RunState, run_and_wait

    orchestration._RNG.seed(2)
    async with _backend(share) as backend:

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            run = await run_and_wait(
                backend, RunRequest(notebook=notebook, inputs=inputs or {}), timeout=1800
            )
            return run.state is RunState.SUCCEEDED

        return await work(one)


async def _with_floor(work: Callable[[Wait], Awaitable[Any]]) -> Any:
    rng = random.Random(4)

    async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
        run_id = (await _request("POST", "http://x/v2/runs", run_body(notebook, inputs)))["runId"]
        began = CLOCK.now
        while True:
            run = (await _request("GET", f"http://x/v2/runs/{run_id}?snapshotDelivery=blocks"))[
                "run"
            ]
            if run["status"] in TERMINAL:
                return bool(run["status"] == "success")
            await asyncio.sleep(poll_delay(rng, CLOCK.now - began))

    return await work(one)


async def _with_shared_floor(work: Callable[[Wait], Awaitable[Any]]) -> Any:
    rng = random.Random(4)
    pollers: dict[str, SharedPoller] = {}

    async def get_json(url: str) -> Any:
        return await _request("GET", url)

    async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
        run_id = (await _request("POST", "http://x/v2/runs", run_body(notebook, inputs)))["runId"]
        poller = pollers.get(notebook)
        if poller is None:
            poller = pollers[notebook] = SharedPoller(get_json, "http://x", notebook, rng)
        run = await poller.wait(run_id)
        return bool(run["status"] == "success")

    return await work(one)


async def _with_transport_floor(
    work: Callable[[Wait], Awaitable[Any]], guarded: bool, leave_out: tuple[str, ...] = ()
) -> Any:
    """The hand-written shared loop on the library's transport (answering from the fake, as
    the library's does); ``guarded``: each wait also doing by hand what the library's
    guarantees take (``bench/client.py``'s ``guarded_wait``, without the pieces named in
    ``leave_out``), the least a wait keeping them costs."""
    from notebookops._http import HttpTransport
    from notebookops.backends.deepnote.client import PROFILE

    _patch_transport()
    rng = random.Random(4)
    base = "http://127.0.0.1:9"
    transport = HttpTransport(PROFILE, base_url=base, token="bench-token", allow_http=True)
    guarded_one = guarded_wait(leave_out)
    pollers: dict[str, SharedPoller] = {}

    async def get_json(url: str) -> Any:
        return (await transport.request("GET", url)).json()

    async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
        body = run_body(notebook, inputs)
        poller = pollers.get(notebook)
        if poller is None:
            poller = pollers[notebook] = SharedPoller(get_json, base, notebook, rng)
        if guarded:
            return bool(
                await guarded_one(
                    notebook, lambda: transport.request("POST", "/v2/runs", json=body), poller.wait
                )
            )
        started = await transport.request("POST", "/v2/runs", json=body)
        run = await poller.wait(started.json()["runId"])
        return bool(run["status"] == "success")

    try:
        return await work(one)
    finally:
        await transport.aclose()


#: How long the phase workloads wait before reading a finished run: longer than any run.
_AFTER_THE_END = DURATION * (1 + SPREAD) + 1.0


async def _with_library_phase(phase: str, work: Callable[[Wait], Awaitable[Any]]) -> Any:
    """The library's side of ``breakdown``: a wait cut short after one of its phases, through
    the backend's own methods (no ``run_and_wait``)."""
    import notebookops.orchestration as orchestration
    from notebookops import RunRequest, RunState

    orchestration._RNG.seed(2)
    # The finished run's read is measured on its own (GET /v2/runs/{id}), so without the
    # shared list in front of it; its start is subtracted in the same configuration.
    share = phase not in ("lib-start-alone", "lib-finished-read")
    async with _backend(share) as backend:

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            handle = await backend.start_run(RunRequest(notebook=notebook, inputs=inputs or {}))
            if phase in ("lib-start", "lib-start-alone"):
                return True
            if phase == "lib-finished-read":
                await asyncio.sleep(_AFTER_THE_END)
                return bool((await backend.get_run(handle)).state is RunState.SUCCEEDED)
            # lib-adapter: the whole wait as a sleep-and-read loop on run_and_wait's poll
            # schedule, without the rest of run_and_wait (shielded start, deadline, tracker).
            schedule = orchestration._Schedule(
                orchestration._default_poll(), orchestration._running_loop()
            )
            while True:
                await asyncio.sleep(schedule())
                run = await backend.get_run(handle)
                if run.state.is_terminal:
                    return bool(run.state is RunState.SUCCEEDED)

        return await work(one)


async def _with_floor_phase(phase: str, work: Callable[[Wait], Awaitable[Any]]) -> Any:
    """The hand-written side of ``breakdown``: the floor's start, or its start and one read
    of the finished run."""

    async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
        run_id = (await _request("POST", "http://x/v2/runs", run_body(notebook, inputs)))["runId"]
        if phase == "floor-start":
            return True
        await asyncio.sleep(_AFTER_THE_END)
        run = (await _request("GET", f"http://x/v2/runs/{run_id}?snapshotDelivery=blocks"))["run"]
        return bool(run["status"] == "success")

    return await work(one)


def _uses_library(variant: str) -> bool:
    return variant.startswith(("lib", "guarded-floor")) or variant == "transport-floor"


def _library() -> str:
    """Which checkout of the library is measured (PYTHONPATH picks another one)."""
    import notebookops

    return str(Path(notebookops.__file__).resolve().parent.parent)


def _workload(variant: str, work: Callable[[Wait], Awaitable[Any]]) -> Awaitable[Any]:
    if variant == "lib":
        return _with_library(True, work)
    if variant == "lib-noshare":
        return _with_library(False, work)
    if variant == "shared-floor":
        return _with_shared_floor(work)
    if variant == "transport-floor":
        return _with_transport_floor(work, guarded=False)
    if variant.startswith("guarded-floor"):
        left_out = variant.removeprefix("guarded-floor").removeprefix("-no-")
        return _with_transport_floor(work, guarded=True, leave_out=(left_out,) if left_out else ())
    if variant in PHASES:
        if variant.startswith("lib-"):
            return _with_library_phase(variant, work)
        return _with_floor_phase(variant, work)
    return _with_floor(work)


#: ``guarantees``' workloads: ``guarded-floor`` without one of its pieces each.
GUARDED_WITHOUT = tuple(f"guarded-floor-no-{piece}" for piece in GUARANTEES)

#: ``breakdown``'s workloads: waits cut short after one phase (see measure_breakdown).
PHASES = (
    "lib-start",
    "lib-start-alone",
    "lib-finished-read",
    "lib-adapter",
    "floor-start",
    "floor-finished-read",
)
VARIANTS = (
    "lib",
    "lib-noshare",
    "shared-floor",
    "transport-floor",
    "guarded-floor",
    *GUARDED_WITHOUT,
    "floor",
    *PHASES,
)


def _waits(one: Wait, n: int, notebooks: int) -> Awaitable[list[bool]]:
    return asyncio.gather(*(one(f"notebook-{i % notebooks}", None) for i in range(n)))


# --------------------------------------------------------------------------- measurements


def measure_cpu(variant: str, n: int) -> dict[str, Any]:
    notebooks = max(1, n // 100)
    on_gc = GCTimer()

    async def work(one: Wait) -> dict[str, Any]:
        if not await one(*WARM_UP):
            raise SystemExit("the warm-up wait failed")
        FAKE.cpu, FAKE.requests = 0.0, 0
        gc.collect()
        gc.callbacks.append(on_gc)
        cpu = time.process_time()
        results = await _waits(one, n, notebooks)
        cpu = time.process_time() - cpu - FAKE.cpu
        gc.callbacks.remove(on_gc)
        if not all(results):
            raise SystemExit(f"{results.count(False)} runs did not succeed")
        return {
            "variant": variant,
            "n": n,
            "library": _library() if _uses_library(variant) else None,
            "cpu_us_per_run": round(cpu / n * 1e6, 1),
            "of_which_gc_us_per_run": round(sum(on_gc.seconds) / n * 1e6, 1),
            "fake_server_us_per_run": round(FAKE.cpu / n * 1e6, 1),
            "requests_per_run": round(FAKE.requests / n, 3),
        }

    return dict(run_virtual(_workload(variant, work)))


def measure_objects(variant: str, n: int, when: str = "asleep") -> dict[str, Any]:
    """Objects alive per wait, minus those alive before the first wait (modules, the backend,
    the session): ``asleep``, 2 virtual seconds in (every wait asleep, none finished), or
    ``starting``, two loop turns into the burst of starts (all but the first 200 waiting for
    a connection)."""
    notebooks = max(1, n // 100)
    counts: dict[str, int] = {}

    def census() -> collections.Counter[str]:
        gc.collect()
        # The fake's own runs are the server's state, in another process on loopback.
        return collections.Counter(
            type(o).__qualname__ for o in gc.get_objects() if type(o) is not BenchRun
        )

    async def work(one: Wait) -> None:
        if not await one(*WARM_UP):
            raise SystemExit("the warm-up wait failed")
        before = census()

        async def snapshot() -> None:
            if when == "asleep":
                await asyncio.sleep(2.0)
            else:
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            after = census()
            counts.update({k: after[k] - before.get(k, 0) for k in after})

        spy = asyncio.ensure_future(snapshot())
        await _waits(one, n, notebooks)
        await spy

    run_virtual(_workload(variant, work))
    per_wait = {k: round(v / n, 2) for k, v in counts.items() if abs(v) >= n * 0.05}
    return {
        "variant": variant,
        "n": n,
        "library": _library() if _uses_library(variant) else None,
        "when": when,
        "objects_per_wait": round(sum(counts.values()) / n, 1),
        "by_type": dict(sorted(per_wait.items(), key=lambda kv: -kv[1])),
    }


def measure_instructions(variant: str, n: int) -> dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("instructions needs valgrind (apt install valgrind)")

    def start(size: int) -> subprocess.Popen[str]:
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        command += [sys.executable, __file__, "cpu", "--variant", variant, "--n", str(size)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    library = []

    def collected(process: subprocess.Popen[str]) -> int:
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"the workload failed under valgrind:\n{stderr[-2000:]}")
        library.append(json.loads(stdout.strip().splitlines()[-1])["library"])
        for line in stderr.splitlines():
            if "Collected :" in line:
                return int(line.rsplit(":", 1)[1].strip())
        raise SystemExit(f"no instruction count in valgrind's output:\n{stderr[-2000:]}")

    # Side by side: instruction counts do not depend on what else runs.
    once, twice = start(n), start(2 * n)
    once_count, twice_count = collected(once), collected(twice)
    return {
        "variant": variant,
        "n": n,
        "library": library[0],
        "instructions_per_run": round((twice_count - once_count) / n),
    }


def measure_breakdown(_variant: str, n: int) -> dict[str, Any]:
    """Instructions per run of each phase of a shared wait, the library's against the
    hand-written shared loop's, the phases making the same requests on both sides (so the
    fake's share cancels out of the difference). Each phase is the difference of two
    workloads cut short at either end of it."""
    wanted = ("lib", "shared-floor", *PHASES)
    counts = {name: measure_instructions(name, n)["instructions_per_run"] for name in wanted}
    library = _library()
    lib_finished = counts["lib-finished-read"] - counts["lib-start-alone"]
    floor_finished = counts["floor-finished-read"] - counts["floor-start"]
    phases = [
        ("start: POST /v2/runs, answer decoded", counts["lib-start"], counts["floor-start"]),
        ("the finished run's read: GET /v2/runs/{id}, outputs", lib_finished, floor_finished),
        (
            "shared waiting: list reads, sleeping, waking",
            counts["lib-adapter"] - counts["lib-start"] - lib_finished,
            counts["shared-floor"] - counts["floor-finished-read"],
        ),
        (
            "run_and_wait around the backend: shielded start, deadline, schedule",
            counts["lib"] - counts["lib-adapter"],
            0,
        ),
    ]
    rows = [
        {"phase": name, "library": lib, "hand_written": floor, "extra": lib - floor}
        for name, lib, floor in phases
    ]
    total_extra = counts["lib"] - counts["shared-floor"]
    rows.append(
        {
            "phase": "whole wait (run_and_wait vs the hand-written shared loop)",
            "library": counts["lib"],
            "hand_written": counts["shared-floor"],
            "extra": total_extra,
        }
    )
    for row in rows:
        row["share_of_extra"] = round(row["extra"] / total_extra, 3) if total_extra else None
    return {"n": n, "library": library, "workloads": counts, "phases": rows}


def breakdown_table(result: dict[str, Any]) -> str:
    """``measure_breakdown``'s result as a Markdown table."""
    lines = [
        "| phase of a shared wait | library, instructions/run | hand-written | extra | share "
        "of the extra |",
        "|---|---|---|---|---|",
    ]
    for row in result["phases"]:
        share = row["share_of_extra"]
        lines.append(
            f"| {row['phase']} | {row['library']:,} | {row['hand_written']:,} | "
            f"{row['extra']:+,} | {'' if share is None else f'{share:.0%}'} |"
        )
    return "\n".join(lines)


_PIECES = {
    "shield": "the start in a task of its own behind `asyncio.shield`",
    "deadline": "the deadline (`asyncio.timeout`)",
    "typed": "a typed `RunHandle`, and the finished run decoded into a typed `Run` with outputs",
}


def measure_guarantees(_variant: str, n: int) -> dict[str, Any]:
    """Instructions per run of a shared wait over the hand-written shared loop's, in layers:
    the library's transport, each piece of work the library's guarantees take (priced by
    leaving it out of ``guarded-floor``), and the library's own code beyond a hand-written
    wait that does all of that. All these workloads make the same requests."""
    wanted = ("shared-floor", "transport-floor", "guarded-floor", *GUARDED_WITHOUT, "lib")
    counts = {name: measure_instructions(name, n)["instructions_per_run"] for name in wanted}
    guarded = counts["guarded-floor"]
    rows = [("the library's `HttpTransport`", counts["transport-floor"] - counts["shared-floor"])]
    pieces = [(_PIECES[p], guarded - counts[f"guarded-floor-no-{p}"]) for p in GUARANTEES]
    rows += pieces
    rows.append(
        (
            "the rest of the guarded wait (its call, and the pieces' interplay)",
            guarded - counts["transport-floor"] - sum(extra for _, extra in pieces),
        )
    )
    rows.append(
        ("`run_and_wait` beyond the guarded wait: the library's own code", counts["lib"] - guarded)
    )
    total = counts["lib"] - counts["shared-floor"]
    layers = [
        {"layer": name, "extra": extra, "share_of_extra": round(extra / total, 3)}
        for name, extra in rows
    ]
    layers.append(
        {
            "layer": "whole wait: `run_and_wait` over the shared loop",
            "extra": total,
            "share_of_extra": 1.0,
        }
    )
    return {
        "n": n,
        "library": _library(),
        "workloads": counts,
        "layers": layers,
        "ratios": {
            "guarded_vs_shared_floor": round(guarded / counts["shared-floor"], 3),
            "lib_vs_guarded": round(counts["lib"] / guarded, 3),
            "lib_vs_shared_floor": round(counts["lib"] / counts["shared-floor"], 3),
        },
    }


def guarantees_table(result: dict[str, Any]) -> str:
    """``measure_guarantees``' result as a Markdown table."""
    lines = [
        "| what `run_and_wait` adds to the shared loop, instructions/run | extra | share |",
        "|---|---|---|",
    ]
    lines += [
        f"| {row['layer']} | {row['extra']:+,} | {row['share_of_extra']:.0%} |"
        for row in result["layers"]
    ]
    ratios = result["ratios"]
    lines.append("")
    lines.append(
        f"The guarded wait costs {ratios['guarded_vs_shared_floor']:.2f}x the shared loop's "
        f"instructions; `run_and_wait` {ratios['lib_vs_guarded']:.2f}x the guarded wait's "
        f"({ratios['lib_vs_shared_floor']:.2f}x the shared loop's)."
    )
    return "\n".join(lines)


MODES: dict[str, Callable[..., dict[str, Any]]] = {
    "cpu": measure_cpu,
    "objects": measure_objects,
    "instructions": measure_instructions,
    "breakdown": measure_breakdown,
    "guarantees": measure_guarantees,
}
TABLES = {"breakdown": breakdown_table, "guarantees": guarantees_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--variant", choices=VARIANTS, default="lib")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument(
        "--when",
        choices=("asleep", "starting"),
        default="asleep",
        help="objects: count them with every wait asleep, or during the burst of starts",
    )
    args = parser.parse_args()
    extra = {"when": args.when} if args.mode == "objects" else {}
    result = MODES[args.mode](args.variant, args.n, **extra)
    if args.mode in TABLES:
        print(TABLES[args.mode](result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
