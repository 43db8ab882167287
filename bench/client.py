"""Benchmark client workloads. Each invocation is a fresh process that prints one JSON object.

Only notebookops' public API is used here (names exported by ``notebookops``,
``notebookops.backends.<vendor>`` and ``notebookops.testing``), so the harness measures any
version of the library that keeps that API, and a refactor of the internals cannot break it.

Sub-commands (``bench/run.py`` drives them; run one by hand to debug):

``overhead --variant VARIANT --n N --notebooks K --url URL``
    N concurrent waits on the Deepnote-shaped server (``bench/server.py``):

    * ``lib``: ``run_and_wait`` on a ``DeepnoteBackend`` with its defaults (concurrent reads
      of one notebook's runs are shared);
    * ``lib-noshare``: the same with read sharing off: one status read per wait per poll;
    * ``floor``: a minimal hand-written aiohttp loop making one status read per wait per poll,
      on the schedule of ``PollPolicy()`` (the library's default), with no abstraction.

``pollcheck --url URL --cases L:SCALE:REPEATS,...``
    Time-scaled real runs through ``run_and_wait``: a run of L simulated seconds lasts L/SCALE
    real seconds and is polled with the default PollPolicy's bounds divided by SCALE.

``ratelimit --n N --url URL [--max-rate R] [--steady]``
    N concurrent ``run_and_wait`` against a server enforcing a request rate.

``streaming --backend {posthog,local} [--url URL]``
    Runs a short and a long notebook on a streaming backend and counts ``get_run`` calls and
    HTTP requests: completion must be pushed, not polled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
from measure import Meter

from notebookops import PollPolicy, RunState, run_and_wait
from notebookops.backends.deepnote import DeepnoteBackend, DeepnoteOptions

TOKEN = "bench-token"
TERMINAL = frozenset({"success", "error", "internal_error", "stopped"})
#: The floor's connection limit: the library's default for one backend.
MAX_CONNECTIONS = 100
#: Generous: no wait here should come near it, and every client uses the same one.
WAIT_TIMEOUT = 1800.0


def quiet_library_logs() -> None:
    """Keep the library's retry warnings (scenario 3 makes thousands) off stderr; the records
    are still made, as for any user."""
    library = logging.getLogger("notebookops")
    library.addHandler(logging.NullHandler())
    library.propagate = False


def deepnote_backend(
    url: str, *, share: bool = True, max_rate: float | None = None
) -> DeepnoteBackend:
    """A ``DeepnoteBackend`` on the benchmark server, its reads shared or not."""
    return DeepnoteBackend(
        TOKEN, base_url=url, options=DeepnoteOptions(share_reads=share), max_rate=max_rate
    )


class Tracker:
    """Counts outcomes, in-flight waits and per-wait latency for one workload."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak_in_flight = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []

    async def track(self, wait: Awaitable[bool]) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        started = time.perf_counter()
        try:
            succeeded = await wait
        except Exception as error:
            self.errors[type(error).__name__] += 1
        else:
            if succeeded:
                self.ok += 1
            else:
                self.errors["not succeeded"] += 1
        finally:
            self.in_flight -= 1
            self.latencies.append(time.perf_counter() - started)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "ok": self.ok,
            "errors": dict(self.errors),
            "peak_in_flight": self.peak_in_flight,
            "latency_median": ordered[len(ordered) // 2] if ordered else None,
            "latency_max": ordered[-1] if ordered else None,
        }


# --------------------------------------------------------------------------- overhead

#: The notebook of each client's warm-up wait, and its inputs (the server ends such a run at
#: once, so the warm-up costs about one poll interval).
WARM_UP = "warm-up"
WARM_UP_INPUTS = {"bench_duration": "0.01"}

#: One wait of a workload: (notebook, inputs or None) -> whether the run succeeded.
Wait = Callable[[str, "dict[str, str] | None"], Awaitable[bool]]


def _reset_server(url: str) -> None:
    # The warm-up's requests and lags are not the measured waits': run.py reads /_stats after.
    request = urllib.request.Request(f"{url}/_reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


async def _measure_waits(url: str, n: int, notebooks: int, one: Wait) -> dict[str, Any]:
    """Measure ``n`` concurrent waits of ``one``, after one warm-up wait that is not measured.

    The first wait of a process pays one-time costs (lazy imports, the first connection,
    first-call caches) that are no one's per-run cost. Every client warms up the same way,
    inside the same session it then measures with, and the warm-up's CPU is reported on its
    own (``warm_up_cpu``).
    """
    tracker = Tracker()
    cpu_before = time.process_time()
    async with asyncio.timeout(WAIT_TIMEOUT):
        if not await one(WARM_UP, WARM_UP_INPUTS):
            raise SystemExit("the warm-up run did not succeed")
    warm_up_cpu = time.process_time() - cpu_before
    _reset_server(url)
    meter = Meter()
    meter.start()
    async with asyncio.timeout(WAIT_TIMEOUT):
        await asyncio.gather(
            *(tracker.track(one(f"notebook-{i % notebooks}", None)) for i in range(n))
        )
    return {**meter.stop(), **tracker.summary(), "warm_up_cpu": warm_up_cpu}


async def overhead_lib(url: str, n: int, notebooks: int, *, share: bool = True) -> dict[str, Any]:
    async with deepnote_backend(url, share=share) as backend:

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            run = await run_and_wait(backend, notebook, inputs=inputs, timeout=WAIT_TIMEOUT)
            return run.state is RunState.SUCCEEDED

        return await _measure_waits(url, n, notebooks, one)


async def overhead_lib_noshare(url: str, n: int, notebooks: int) -> dict[str, Any]:
    return await overhead_lib(url, n, notebooks, share=False)


async def overhead_floor(url: str, n: int, notebooks: int) -> dict[str, Any]:
    """The floor: start, then read the run's status once per poll until it ends, on
    ``PollPolicy()``'s schedule, with one aiohttp session and nothing else. Requests queue
    for the session's connections in a FIFO semaphore so that, under a burst larger than
    the pool, they go out in the order they were made."""
    policy = PollPolicy()
    rng = random.Random()
    loop = asyncio.get_running_loop()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
        headers={"User-Agent": "bench-floor/1", "Accept": "application/json"},
    )

    async def read_json(response: aiohttp.ClientResponse) -> Any:
        if response.status >= 400:
            raise RuntimeError(f"{response.method} {response.url.path} -> {response.status}")
        return json.loads(await response.read())

    async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
        body: dict[str, Any] = {"notebookId": notebook, "detached": True}
        if inputs:
            body["inputs"] = inputs
        async with slots, session.post(f"{url}/v2/runs", json=body, headers=auth) as response:
            run_id = (await read_json(response))["runId"]
        status_url = f"{url}/v2/runs/{run_id}?snapshotDelivery=blocks"
        began = loop.time()
        attempt = 0
        while True:
            async with slots, session.get(status_url, headers=auth) as response:
                run = (await read_json(response))["run"]
            if run["status"] in TERMINAL:
                return bool(run["status"] == "success")
            await asyncio.sleep(policy.delay(attempt, rng, elapsed=loop.time() - began))
            attempt += 1

    async with session:
        return await _measure_waits(url, n, notebooks, one)


OVERHEAD: dict[str, Callable[[str, int, int], Coroutine[Any, Any, dict[str, Any]]]] = {
    "lib": overhead_lib,
    "lib-noshare": overhead_lib_noshare,
    "floor": overhead_floor,
}


# --------------------------------------------------------------------------- polling


async def pollcheck(url: str, cases: list[tuple[float, float, int]], seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    default = PollPolicy()
    # This checks one wait's schedule: shared reads would fold the waits' reads together.
    async with deepnote_backend(url, share=False) as backend:

        async def one(length: float, scale: float) -> None:
            actual = length * rng.uniform(0.95, 1.05)
            # The proportional term is scale-free: only the bounds need scaling.
            policy = PollPolicy(initial=default.initial / scale, maximum=default.maximum / scale)
            started = time.perf_counter()
            run = await run_and_wait(
                backend,
                f"poll-{length:g}",
                inputs={"bench_duration": repr(actual / scale)},
                poll=policy,
                timeout=WAIT_TIMEOUT,
            )
            results.append(
                {
                    "length": length,
                    "scale": scale,
                    "actual": actual,
                    "run_id": run.run_id,
                    "ok": run.state is RunState.SUCCEEDED,
                    "client_lag": (time.perf_counter() - started) * scale - actual,
                }
            )

        await asyncio.gather(
            *(one(length, scale) for length, scale, repeats in cases for _ in range(repeats))
        )
    return {"runs": results}


# --------------------------------------------------------------------------- rate limits


async def ratelimit(url: str, n: int, max_rate: float | None, *, steady: bool) -> dict[str, Any]:
    quiet_library_logs()
    tracker = Tracker()
    meter = Meter()
    meter.start()
    # steady: every wait reads about every 1.5 s for the whole run, so demand stays above the
    # server's rate (the default PollPolicy reads ever more rarely as runs go on).
    poll = PollPolicy(initial=1.5, multiplier=1.0, maximum=1.5, proportion=0.0) if steady else None
    async with deepnote_backend(url, max_rate=max_rate) as backend:

        async def one(index: int) -> bool:
            # One notebook per run: demand stays above R (shared reads would fold it away).
            run = await run_and_wait(backend, f"notebook-{index}", poll=poll, timeout=WAIT_TIMEOUT)
            return run.state is RunState.SUCCEEDED

        await asyncio.gather(*(tracker.track(one(index)) for index in range(n)))
    return {**meter.stop(), **tracker.summary()}


# --------------------------------------------------------------------------- streaming


def _count_calls(backend: Any, counter: Counter[str]) -> None:
    """Count the backend's ``get_run`` (a status poll) and ``watch_run`` calls, by wrapping
    the two protocol methods on the instance."""
    get_run: Callable[..., Awaitable[Any]] = backend.get_run
    watch_run: Callable[..., Any] = backend.watch_run

    async def counted_get_run(*args: Any, **kwargs: Any) -> Any:
        counter["get_run"] += 1
        return await get_run(*args, **kwargs)

    def counted_watch_run(*args: Any, **kwargs: Any) -> Any:
        counter["watch_run"] += 1
        return watch_run(*args, **kwargs)

    backend.get_run = counted_get_run
    backend.watch_run = counted_watch_run


def posthog_backend(url: str) -> Any:
    """A kernel-mode ``PostHogBackend`` on the PostHog fake."""
    from posthog_server import PROJECT_ID, TOKEN

    from notebookops.backends.posthog import PostHogBackend

    return PostHogBackend(TOKEN, project_id=PROJECT_ID, base_url=url, mode="kernel")


async def streaming_posthog(url: str) -> dict[str, Any]:
    from posthog_server import TOKEN

    rows: list[dict[str, Any]] = []
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def requests_seen(session: aiohttp.ClientSession) -> list[dict[str, str]]:
        async with session.get(f"{url}/_bench/requests", headers=auth) as response:
            seen: list[dict[str, str]] = json.loads(await response.read())
            return seen

    async with aiohttp.ClientSession() as session, posthog_backend(url) as backend:
        calls: Counter[str] = Counter()
        _count_calls(backend, calls)
        for notebook in ("short", "long"):
            await requests_seen(session)
            calls.clear()
            started = time.perf_counter()
            run = await run_and_wait(backend, notebook, timeout=120)
            wall = time.perf_counter() - started
            seen = await requests_seen(session)
            rows.append(
                {
                    "notebook": notebook,
                    "state": run.state.value,
                    "wall": wall,
                    "get_run_calls": calls["get_run"],
                    "watch_run_calls": calls["watch_run"],
                    "http_requests": len(seen),
                    "paths": dict(Counter(f"{r['method']} {r['path']}" for r in seen)),
                }
            )
    return {"rows": rows}


async def streaming_local(short: float, long: float) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    from notebookops.backends.local import LocalBackend
    from notebookops.testing.local import write_notebook

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="notebookops-bench-") as directory:
        paths = {
            name: write_notebook(
                Path(directory) / f"{name}.ipynb",
                ["x = 1", f"import time\ntime.sleep({seconds})\nprint(x)"],
            )
            for name, seconds in (("short", short), ("long", long))
        }
        async with LocalBackend() as backend:
            calls: Counter[str] = Counter()
            _count_calls(backend, calls)
            for name, path in paths.items():
                calls.clear()
                started = time.perf_counter()
                run = await run_and_wait(backend, str(path), timeout=300)
                rows.append(
                    {
                        "notebook": name,
                        "state": run.state.value,
                        "wall": time.perf_counter() - started,
                        "get_run_calls": calls["get_run"],
                        "watch_run_calls": calls["watch_run"],
                        "http_requests": 0,
                        "paths": {},
                    }
                )
    return {"rows": rows}


# --------------------------------------------------------------------------- entry point


def _cases(text: str) -> list[tuple[float, float, int]]:
    cases = []
    for item in text.split(","):
        length, scale, repeats = item.split(":")
        cases.append((float(length), float(scale), int(repeats)))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description="notebookops benchmark client (one workload)")
    sub = parser.add_subparsers(dest="command", required=True)
    over = sub.add_parser("overhead")
    over.add_argument("--variant", choices=tuple(OVERHEAD), required=True)
    over.add_argument("--n", type=int, required=True)
    over.add_argument("--notebooks", type=int, default=1)
    over.add_argument("--url", required=True)
    check = sub.add_parser("pollcheck")
    check.add_argument("--url", required=True)
    check.add_argument("--cases", required=True, help="LENGTH:SCALE:REPEATS,...")
    check.add_argument("--seed", type=int, default=0)
    limit = sub.add_parser("ratelimit")
    limit.add_argument("--url", required=True)
    limit.add_argument("--n", type=int, default=500)
    limit.add_argument("--max-rate", type=float, default=0.0)
    limit.add_argument("--steady", action="store_true", help="poll every ~1.5 s throughout")
    stream = sub.add_parser("streaming")
    stream.add_argument("--backend", choices=("posthog", "local"), required=True)
    stream.add_argument("--url", default="")
    stream.add_argument("--short", type=float, default=0.5)
    stream.add_argument("--long", type=float, default=3.0)
    args = parser.parse_args()

    result: dict[str, Any]
    if args.command == "overhead":
        result = asyncio.run(OVERHEAD[args.variant](args.url, args.n, args.notebooks))
    elif args.command == "pollcheck":
        result = asyncio.run(pollcheck(args.url, _cases(args.cases), args.seed))
    elif args.command == "ratelimit":
        max_rate = args.max_rate if args.max_rate > 0 else None
        result = asyncio.run(ratelimit(args.url, args.n, max_rate, steady=args.steady))
    elif args.backend == "posthog":
        result = asyncio.run(streaming_posthog(args.url))
    else:
        result = asyncio.run(streaming_local(args.short, args.long))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
