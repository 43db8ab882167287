"""Benchmark client workloads. Each invocation is a fresh process that prints one JSON object.

Sub-commands (``bench/run.py`` drives them; run one by hand to debug):

``overhead --variant VARIANT --n N --notebooks K --url URL``
    N concurrent waits on the Deepnote-shaped server (``bench/server.py``):

    * ``lib``: ``notebookops.run_and_wait`` on a ``DeepnoteBackend`` with its defaults (waits on
      the same notebook share status reads through the notebook's runs list);
    * ``lib-noshare``: the same with ``share_polls=False``: one status read per wait per poll,
      exactly the requests the floor makes;
    * ``adapter``: the same requests through ``DeepnoteBackend.start_run`` / ``get_run`` in a
      hand-written loop (no orchestration): the cost of the layers below ``run_and_wait``;
    * ``transport``: the same requests through ``HttpTransport.request`` in a hand-written loop
      (no adapter, no models): the cost of the transport alone;
    * ``floor``: the same requests on the same poll schedule, hand-written with one
      ``aiohttp.ClientSession`` (same connection limit) and no abstraction at all;
    * ``shared``: a hand-written shared-polling loop, the floor for ``lib``: one poller per
      notebook reads ``GET /v2/notebooks/{id}/runs`` for all of that notebook's waits, then
      one ``GET /v2/runs/{id}`` per finished run for its outputs;
    * ``shared-transport``: ``shared`` with every request made by ``HttpTransport.request``;
    * ``shared-guarded``: ``shared-transport``, each wait also doing by hand what the library's
      guarantees take on a run that goes well (:func:`guarded_wait`).

``pollcheck --url URL --cases L:SCALE:REPEATS,...``
    Time-scaled real runs through ``run_and_wait``: a run of L simulated seconds lasts L/SCALE
    real seconds and is polled with the default PollPolicy divided by SCALE.

``ratelimit --n N --url URL [--max-rate R] [--fixed] [--steady] [--start-timeout S]``
    N concurrent ``run_and_wait`` against a server enforcing a request rate (``--fixed``: a
    ``RateLimiter(adaptive=False)``, the limiter before it learnt from 429s;
    ``--start-timeout``: each wait's ``start_timeout``, shorter than the starts take to get
    through the rate limit).

``micro [--loops N]``
    CPU per call of the library's per-request steps with the network stubbed out.

``streaming --backend {posthog,local} [--url URL]``
    Runs a short and a long notebook on a streaming backend and counts ``get_run`` calls and
    HTTP requests: completion must be pushed, not polled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, cast

import aiohttp
from measure import Meter

TOKEN = "bench-token"
TERMINAL = frozenset({"success", "error", "internal_error", "stopped"})
#: The library's PollPolicy defaults, written out so the floor uses the very same schedule.
POLL_INITIAL, POLL_MAXIMUM, POLL_JITTER, POLL_PROPORTION = 1.0, 60.0, 0.1, 0.2
#: HttpTransport's default connection limit: the floors get the same, and queue for it the way
#: the transport does (a FIFO semaphore in front of the pool), so that under a burst bigger
#: than the pool they make the same requests in the same order.
MAX_CONNECTIONS = 100
#: Generous: no wait here should come near it, and both sides use the same one.
WAIT_TIMEOUT = 1800.0


def _quiet_library_logs() -> None:
    # Retry warnings (scenario 3 produces thousands) would otherwise go to stderr through
    # logging's last-resort handler; the records are still created, as for any user.
    library = logging.getLogger("notebookops")
    library.addHandler(logging.NullHandler())
    library.propagate = False


def poll_delay(rng: random.Random, elapsed: float) -> float:
    """PollPolicy's default formula inlined: a fifth of the time waited so far, within 1-60 s,
    +/- jitter, capped again."""
    base = min(POLL_MAXIMUM, max(POLL_INITIAL, POLL_PROPORTION * elapsed))
    return min(POLL_MAXIMUM, base * rng.uniform(1 - POLL_JITTER, 1 + POLL_JITTER))


def _check_schedule() -> None:
    from notebookops import PollPolicy

    expected = PollPolicy(
        initial=POLL_INITIAL, maximum=POLL_MAXIMUM, jitter=POLL_JITTER, proportion=POLL_PROPORTION
    )
    if PollPolicy() != expected:
        raise SystemExit(f"bench/client.py's schedule is stale: PollPolicy() is {PollPolicy()}")


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


# --------------------------------------------------------------------------- scenario 1


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

    The first wait of a process pays one-time costs (lazy imports such as anyio's asyncio
    backend, the first connection, first-call caches) that are no one's per-run cost: with
    N=100 they would be a sizeable share of the CPU per run. Every client warms up the same way,
    inside the same session it then measures with, and the warm-up's CPU is reported on its own
    (``warm_up_cpu``).
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
    # Started with asyncio.gather by every client: a task group costs ~0.1 ms per run more,
    # which is the harness's cost, not the library's.
    async with asyncio.timeout(WAIT_TIMEOUT):
        await asyncio.gather(
            *(tracker.track(one(f"notebook-{i % notebooks}", None)) for i in range(n))
        )
    return {**meter.stop(), **tracker.summary(), "warm_up_cpu": warm_up_cpu}


def run_body(notebook: str, inputs: dict[str, str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"notebookId": notebook, "detached": True}
    if inputs:
        body["inputs"] = inputs
    return body


async def overhead_lib(url: str, n: int, notebooks: int, *, share: bool = True) -> dict[str, Any]:
    from notebookops import RunRequest, RunState, run_and_wait
    from notebookops.backends.deepnote import DeepnoteBackend

    _check_schedule()
    async with DeepnoteBackend(TOKEN, base_url=url, share_polls=share) as backend:

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            request = RunRequest(notebook=notebook, inputs=inputs or {})
            run = await run_and_wait(backend, request, timeout=WAIT_TIMEOUT)
            return run.state is RunState.SUCCEEDED

        return await _measure_waits(url, n, notebooks, one)


async def overhead_adapter(url: str, n: int, notebooks: int) -> dict[str, Any]:
    from notebookops import RunRequest, RunState
    from notebookops.backends.deepnote import DeepnoteBackend

    rng = random.Random()
    loop = asyncio.get_running_loop()
    async with DeepnoteBackend(TOKEN, base_url=url, share_polls=False) as backend:

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            handle = await backend.start_run(RunRequest(notebook=notebook, inputs=inputs or {}))
            began = loop.time()
            while True:
                run = await backend.get_run(handle)
                if run.state.is_terminal:
                    return run.state is RunState.SUCCEEDED
                await asyncio.sleep(poll_delay(rng, loop.time() - began))

        return await _measure_waits(url, n, notebooks, one)


async def overhead_transport(url: str, n: int, notebooks: int) -> dict[str, Any]:
    from notebookops._http import HttpTransport
    from notebookops.backends.deepnote._requests import PROFILE

    rng = random.Random()
    loop = asyncio.get_running_loop()
    transport = HttpTransport(PROFILE, base_url=url, token=TOKEN)
    try:

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            started = await transport.request("POST", "/v2/runs", json=run_body(notebook, inputs))
            path = f"/v2/runs/{started.json()['runId']}"
            began = loop.time()
            while True:
                response = await transport.request(
                    "GET", path, params={"snapshotDelivery": "blocks"}
                )
                run = response.json()["run"]
                if run["status"] in TERMINAL:
                    return bool(run["status"] == "success")
                await asyncio.sleep(poll_delay(rng, loop.time() - began))

        return await _measure_waits(url, n, notebooks, one)
    finally:
        await transport.aclose()


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
        headers={"User-Agent": "bench-floor/1", "Accept": "application/json"},
    )


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    if response.status >= 400:
        raise RuntimeError(f"{response.method} {response.url.path} -> {response.status}")
    return json.loads(await response.read())


async def overhead_floor(url: str, n: int, notebooks: int) -> dict[str, Any]:
    rng = random.Random()
    loop = asyncio.get_running_loop()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    async with _session() as session:

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            body = run_body(notebook, inputs)
            async with slots, session.post(f"{url}/v2/runs", json=body, headers=auth) as response:
                run_id = (await _read_json(response))["runId"]
            status_url = f"{url}/v2/runs/{run_id}?snapshotDelivery=blocks"
            began = loop.time()
            while True:
                async with slots, session.get(status_url, headers=auth) as response:
                    run = (await _read_json(response))["run"]
                if run["status"] in TERMINAL:
                    return bool(run["status"] == "success")
                await asyncio.sleep(poll_delay(rng, loop.time() - began))

        return await _measure_waits(url, n, notebooks, one)


class SharedPoller:
    """One notebook's poller: a single runs-list read observes every wait on that notebook.

    The cadence is PollPolicy's, driven by the youngest wait (a newcomer brings the next read
    forward to at most the policy's first delay). Finished runs get one ``GET /v2/runs/{id}``
    each, for the outputs the list does not carry. ``get_json(url)`` makes one GET and
    returns its decoded body (``bench/inprocess.py`` passes one for its in-memory fake).
    """

    def __init__(
        self,
        get_json: Callable[[str], Awaitable[Any]],
        url: str,
        notebook: str,
        rng: random.Random,
    ) -> None:
        self.get_json = get_json
        self.url = url
        self.notebook = notebook
        self.rng = rng
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.began: dict[str, float] = {}
        self.next_read = 0.0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def wait(self, run_id: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.waiters[run_id] = future
        self.began[run_id] = loop.time()
        first = loop.time() + poll_delay(self.rng, 0.0)
        if self.task is None or self.task.done():
            self.next_read = first
            self.task = asyncio.create_task(self._loop())
        elif first < self.next_read:
            self.next_read = first
            self.wake.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.waiters:
                delay = self.next_read - loop.time()
                if delay > 0:
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), delay)
                    except TimeoutError:
                        pass
                    if self.next_read > loop.time():
                        continue
                finished = await self._read_list()
                now = loop.time()
                youngest = max(self.began.values(), default=now)
                self.next_read = now + poll_delay(self.rng, now - youngest)
                if finished:
                    await asyncio.gather(*(self._finish(run_id) for run_id in finished))
        except Exception as error:
            for future in self.waiters.values():
                if not future.done():
                    future.set_exception(error)
            self.waiters.clear()

    async def _read_list(self) -> list[str]:
        pending = set(self.waiters)
        finished: list[str] = []
        token: str | None = None
        while pending:
            query = "pageSize=100" + (f"&pageToken={token}" if token else "")
            page = await self.get_json(f"{self.url}/v2/notebooks/{self.notebook}/runs?{query}")
            for run in page["runs"]:
                run_id = run["runId"]
                if run_id in pending:
                    pending.discard(run_id)
                    if run["status"] in TERMINAL:
                        finished.append(run_id)
            token = page["pagination"].get("nextPageToken")
            if not page["pagination"].get("hasMore") or not token:
                break
        return finished

    async def _finish(self, run_id: str) -> None:
        run = (await self.get_json(f"{self.url}/v2/runs/{run_id}?snapshotDelivery=blocks"))["run"]
        future = self.waiters.pop(run_id)
        self.began.pop(run_id, None)
        if not future.done():
            future.set_result(run)


async def overhead_shared(url: str, n: int, notebooks: int) -> dict[str, Any]:
    rng = random.Random()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    async with _session() as session:

        async def get_json(target: str) -> Any:
            async with slots, session.get(target, headers=auth) as response:
                return await _read_json(response)

        names = [WARM_UP, *(f"notebook-{k}" for k in range(notebooks))]
        pollers = {name: SharedPoller(get_json, url, name, rng) for name in names}

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            body = run_body(notebook, inputs)
            async with slots, session.post(f"{url}/v2/runs", json=body, headers=auth) as response:
                run_id = (await _read_json(response))["runId"]
            run = await pollers[notebook].wait(run_id)
            return bool(run["status"] == "success")

        return await _measure_waits(url, n, notebooks, one)


#: The pieces of :func:`guarded_wait` that ``bench/inprocess.py guarantees`` leaves out one at a
#: time, to price each.
GUARANTEES = ("shield", "deadline", "typed")


def guarded_wait(leave_out: Collection[str] = ()) -> Callable[..., Awaitable[bool]]:
    """A wait doing by hand the per-run work the library's guarantees take on a run that goes
    well: the start in a task of its own behind ``asyncio.shield`` (a cancellation cannot
    abort it mid-request), a deadline (``asyncio.timeout``), a typed ``RunHandle``, and the
    finished run decoded into a typed ``Run`` with its outputs by the library's own decoders.

    ``wait(notebook, post, finished)``: ``post()`` sends the start and returns its
    ``HttpResponse``; ``finished(run_id)`` returns the finished run's JSON object. Made once
    per client, so that the imports are not part of each wait. ``leave_out`` names pieces of
    :data:`GUARANTEES` not to do (only to measure what each costs)."""
    from notebookops._convert import parse_datetime
    from notebookops.backends.deepnote._requests import DEEPNOTE_STATES, outputs_from_blocks
    from notebookops.backends.deepnote._wire import RunDetails, read_fast
    from notebookops.models import Run, RunHandle, RunState

    unknown = set(leave_out) - set(GUARANTEES)
    if unknown:
        raise ValueError(f"no such piece of guarded_wait: {sorted(unknown)}")
    shield, deadline, typed = (piece not in leave_out for piece in GUARANTEES)

    async def wait(
        notebook: str,
        post: Callable[[], Coroutine[Any, Any, Any]],
        finished: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> bool:
        async with asyncio.timeout(WAIT_TIMEOUT) if deadline else contextlib.nullcontext():
            if shield:
                answer = (await asyncio.shield(asyncio.create_task(post()))).json()
            else:
                answer = (await post()).json()
            if not typed:
                return bool((await finished(answer["runId"]))["status"] == "success")
            handle = RunHandle(
                backend="deepnote",
                run_id=answer["runId"],
                notebook_id=notebook,
                created_at=parse_datetime(answer["createdAt"]),
            )
            raw = await finished(handle.run_id)
            details = read_fast(raw, RunDetails)
            assert details is not None, "an unusual run body: the fast decoder declined it"
            run = Run(
                handle=handle,
                state=DEEPNOTE_STATES.get(details.status, RunState.UNKNOWN),
                vendor_state=details.status,
                created_at=details.created_at,
                finished_at=details.finished_at,
                outputs=tuple(outputs_from_blocks(details.snapshot_blocks or ())),
                raw=raw,
            )
        return run.state is RunState.SUCCEEDED

    return wait


async def overhead_shared_transport(
    url: str, n: int, notebooks: int, *, guarded: bool = False
) -> dict[str, Any]:
    """The hand-written shared-poll loop with every request made by the library's
    ``HttpTransport``: what the transport adds to shared waits, apart from the rest.
    ``guarded``: each wait also doing :func:`guarded_wait`'s per-run work, the least a wait
    keeping the library's guarantees costs, to tell the guarantees' share of
    ``run_and_wait``'s extra CPU from the rest of its code."""
    from notebookops._http import HttpTransport
    from notebookops.backends.deepnote._requests import PROFILE

    rng = random.Random()
    transport = HttpTransport(PROFILE, base_url=url, token=TOKEN)
    guarded_one = guarded_wait()
    try:

        async def get_json(target: str) -> Any:
            return (await transport.request("GET", target)).json()

        names = [WARM_UP, *(f"notebook-{k}" for k in range(notebooks))]
        pollers = {name: SharedPoller(get_json, url, name, rng) for name in names}

        async def one(notebook: str, inputs: dict[str, str] | None) -> bool:
            body = run_body(notebook, inputs)
            if guarded:
                return await guarded_one(
                    notebook,
                    lambda: transport.request("POST", "/v2/runs", json=body),
                    pollers[notebook].wait,
                )
            started = await transport.request("POST", "/v2/runs", json=body)
            run = await pollers[notebook].wait(started.json()["runId"])
            return bool(run["status"] == "success")

        return await _measure_waits(url, n, notebooks, one)
    finally:
        await transport.aclose()


async def overhead_shared_guarded(url: str, n: int, notebooks: int) -> dict[str, Any]:
    return await overhead_shared_transport(url, n, notebooks, guarded=True)


async def overhead_lib_noshare(url: str, n: int, notebooks: int) -> dict[str, Any]:
    return await overhead_lib(url, n, notebooks, share=False)


OVERHEAD: dict[str, Callable[[str, int, int], Coroutine[Any, Any, dict[str, Any]]]] = {
    "lib": overhead_lib,
    "lib-noshare": overhead_lib_noshare,
    "adapter": overhead_adapter,
    "transport": overhead_transport,
    "floor": overhead_floor,
    "shared": overhead_shared,
    "shared-transport": overhead_shared_transport,
    "shared-guarded": overhead_shared_guarded,
}


# --------------------------------------------------------------------------- scenario 2


async def pollcheck(url: str, cases: list[tuple[float, float, int]], seed: int) -> dict[str, Any]:
    import anyio

    from notebookops import PollPolicy, RunRequest, RunState, run_and_wait
    from notebookops.backends.deepnote import DeepnoteBackend

    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    # This checks one wait's schedule; shared polls would fold the waits' reads together, and
    # their freshness window (real seconds) would not scale with the simulated time.
    async with DeepnoteBackend(TOKEN, base_url=url, share_polls=False) as backend:

        async def one(length: float, scale: float) -> None:
            actual = length * rng.uniform(0.95, 1.05)
            # The proportional term is scale-free: only the bounds need scaling.
            policy = PollPolicy(initial=POLL_INITIAL / scale, maximum=POLL_MAXIMUM / scale)
            request = RunRequest(
                notebook=f"poll-{length:g}", inputs={"bench_duration": repr(actual / scale)}
            )
            started = time.perf_counter()
            run = await run_and_wait(backend, request, poll=policy, timeout=WAIT_TIMEOUT)
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

        async with anyio.create_task_group() as group:
            for length, scale, repeats in cases:
                for _ in range(repeats):
                    group.start_soon(one, length, scale)
    return {"runs": results}


# --------------------------------------------------------------------------- scenario 3


async def ratelimit(
    url: str,
    n: int,
    max_rate: float | None,
    *,
    adaptive: bool = True,
    steady: bool = False,
    start_timeout: float | None = None,
) -> dict[str, Any]:
    import anyio

    from notebookops import PollPolicy, RateLimiter, RunState, run_and_wait
    from notebookops.backends.deepnote import DeepnoteBackend
    from notebookops.orchestration import DEFAULT_START_TIMEOUT

    _quiet_library_logs()
    tracker = Tracker()
    meter = Meter()
    meter.start()
    limiter = RateLimiter(max_rate, adaptive=adaptive)
    # steady: every wait reads about every 1.5 s for the whole run, so demand stays above the
    # server's rate (the default PollPolicy reads ever more rarely as runs go on).
    poll = PollPolicy(initial=1.5, multiplier=1.0, maximum=1.5, proportion=0.0) if steady else None
    async with DeepnoteBackend(TOKEN, base_url=url, rate_limiter=limiter) as backend:

        async def one(index: int) -> bool:
            # One notebook per run: demand stays above R (shared polls would fold it away).
            run = await run_and_wait(
                backend,
                f"notebook-{index}",
                poll=poll,
                timeout=WAIT_TIMEOUT,
                start_timeout=DEFAULT_START_TIMEOUT if start_timeout is None else start_timeout,
            )
            return run.state is RunState.SUCCEEDED

        async with anyio.create_task_group() as group:
            for index in range(n):
                group.start_soon(tracker.track, one(index))
    return {**meter.stop(), **tracker.summary()}


# --------------------------------------------------------------------------- streaming


def _counting(target: Any, name: str, counter: Counter[str]) -> None:
    original: Callable[..., Awaitable[Any]] = getattr(target, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        counter[name] += 1
        return await original(*args, **kwargs)

    setattr(target, name, counted)


def _counting_stream(target: Any, name: str, counter: Counter[str]) -> None:
    original: Callable[..., Any] = getattr(target, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter[name] += 1
        return original(*args, **kwargs)

    setattr(target, name, counted)


async def streaming_posthog(url: str) -> dict[str, Any]:
    from posthog_server import PROJECT_ID
    from posthog_server import TOKEN as POSTHOG_TOKEN

    from notebookops import run_and_wait
    from notebookops.backends.posthog import PostHogBackend

    rows: list[dict[str, Any]] = []
    auth = {"Authorization": f"Bearer {POSTHOG_TOKEN}"}
    async with (
        _session() as session,
        PostHogBackend(
            POSTHOG_TOKEN, project_id=PROJECT_ID, base_url=url, mode="kernel"
        ) as backend,
    ):
        calls: Counter[str] = Counter()
        _counting(backend, "get_run", calls)
        _counting_stream(backend, "watch_run", calls)
        for notebook in ("short", "long"):
            async with session.get(f"{url}/_bench/requests", headers=auth) as response:
                await response.read()
            calls.clear()
            started = time.perf_counter()
            run = await run_and_wait(backend, notebook, timeout=120)
            wall = time.perf_counter() - started
            async with session.get(f"{url}/_bench/requests", headers=auth) as response:
                seen = json.loads(await response.read())
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

    from notebookops import run_and_wait
    from notebookops.backends.local import LocalBackend
    from notebookops.testing.local import write_notebook

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="notebookops-bench-") as directory:
        paths = {}
        for name, seconds in (("short", short), ("long", long)):
            paths[name] = write_notebook(
                Path(directory) / f"{name}.ipynb",
                ["x = 1", f"import time\ntime.sleep({seconds})\nprint(x)"],
            )
        async with LocalBackend() as backend:
            calls: Counter[str] = Counter()
            _counting(backend, "get_run", calls)
            _counting_stream(backend, "watch_run", calls)
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


# --------------------------------------------------------------------------- micro


class _CannedResponse:
    status = 200

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.headers = {"Content-Type": "application/json; charset=utf-8", "Server": "bench"}

    async def read(self) -> bytes:
        return self.body


class _CannedSession:
    """Answers every request at once with the same body (for :func:`micro`)."""

    def __init__(self, body: bytes) -> None:
        self.response = _CannedResponse(body)

    def request(self, *args: Any, **kwargs: Any) -> _CannedSession:
        return self

    async def __aenter__(self) -> _CannedResponse:
        return self.response

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def micro(loops: int) -> dict[str, Any]:
    """Per-call CPU of the library's per-request steps, with the network stubbed out."""
    import timeit

    from notebookops import RunHandle
    from notebookops._http import HttpResponse, HttpTransport, RateLimiter
    from notebookops._redact import redact_url
    from notebookops.backends.deepnote import DeepnoteBackend
    from notebookops.backends.deepnote._requests import PROFILE, decode_run

    base = "http://127.0.0.1:9"
    url = f"{base}/v2/runs/0b6f1c9e-5a1d-4c1e-9a2b-3f4e5d6c7b8a?snapshotDelivery=blocks"
    body = json.dumps(
        {
            "run": {
                "runId": "0b6f1c9e-5a1d-4c1e-9a2b-3f4e5d6c7b8a",
                "notebookId": "notebook-1",
                "status": "running",
                "createdAt": "2026-11-22T03:00:00.000Z",
                "completedAt": None,
                "projectId": "project-1",
                "error": None,
                "snapshotStatus": "pending",
                "snapshotContent": None,
                "snapshotDownloadUrl": None,
            }
        }
    ).encode()
    response = HttpResponse(
        status=200,
        headers={"content-type": "application/json; charset=utf-8"},
        body=body,
        method="GET",
        url=url,
        vendor="deepnote",
    )
    transport = HttpTransport(PROFILE, base_url=base, token=TOKEN)

    def per_call(statement: Callable[[], object]) -> float:
        return min(timeit.repeat(statement, number=loops, repeat=5)) / loops * 1e6

    async def per_await(make: Callable[[], Awaitable[object]]) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(loops):
                await make()
            best = min(best, time.process_time() - started)
        return best / loops * 1e6

    figures = {
        "json.loads(body) (what the floor does per read)": per_call(lambda: json.loads(body)),
        "decode_run(response): cattrs RunDetails": per_call(lambda: decode_run(response)),
        "redact_url(url) (built for a disabled debug log)": per_call(lambda: redact_url(url)),
        "HttpTransport._check_target(url)": per_call(lambda: transport._check_target(url)),
        "HttpTransport._with_params(url, params)": per_call(
            lambda: transport._with_params(f"{base}/v2/runs/x", {"snapshotDelivery": "blocks"})
        ),
        "HttpTransport._headers_for(url)": per_call(lambda: transport._headers_for(url, None)),
    }
    limiter = RateLimiter()
    figures["RateLimiter.acquire() (unlimited)"] = await per_await(limiter.acquire)
    # A stand-in for aiohttp's session: what remains is the library's own per-request work.
    transport._session = cast(aiohttp.ClientSession, _CannedSession(body))
    transport._owns_session = False
    figures["HttpTransport.request(), aiohttp stubbed out"] = await per_await(
        lambda: transport.request("GET", "/v2/runs/x", params={"snapshotDelivery": "blocks"})
    )
    async with DeepnoteBackend(TOKEN, base_url=base) as backend:
        backend._transport._session = cast(aiohttp.ClientSession, _CannedSession(body))
        backend._transport._owns_session = False
        handle = RunHandle(backend="deepnote", run_id="x", notebook_id="notebook-1")
        figures["DeepnoteBackend.get_run() (running run), aiohttp stubbed out"] = await per_await(
            lambda: backend.get_run(handle)
        )
    await transport.aclose()
    return {"loops": loops, "microseconds": figures}


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
    limit.add_argument(
        "--fixed", action="store_true", help="RateLimiter(adaptive=False): no learnt pace"
    )
    limit.add_argument("--steady", action="store_true", help="poll every ~1.5 s throughout")
    limit.add_argument(
        "--start-timeout", type=float, default=None, help="each wait's start_timeout"
    )
    tiny = sub.add_parser("micro")
    tiny.add_argument("--loops", type=int, default=20_000)
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
    elif args.command == "micro":
        result = asyncio.run(micro(args.loops))
    elif args.command == "ratelimit":
        max_rate = args.max_rate if args.max_rate > 0 else None
        result = asyncio.run(
            ratelimit(
                args.url,
                args.n,
                max_rate,
                adaptive=not args.fixed,
                steady=args.steady,
                start_timeout=args.start_timeout,
            )
        )
    elif args.backend == "posthog":
        result = asyncio.run(streaming_posthog(args.url))
    else:
        result = asyncio.run(streaming_local(args.short, args.long))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
