"""A minimal Deepnote-shaped server for the benchmarks, run as its own process on 127.0.0.1.

It speaks just enough of Deepnote's Public API v2 for ``DeepnoteBackend.start_run`` /
``get_run`` and for a hand-written client to do the same work:

* ``POST /v2/runs`` starts a run (202 ``{runId, status, createdAt}``);
* ``GET /v2/runs/{id}`` answers ``{"run": {...}}``: ``running`` until the run's end, then
  ``success`` with its snapshot already available (one block with one stdout output), so a
  finished run costs exactly one read;
* ``GET /v2/notebooks/{id}/runs`` lists a notebook's runs newest first, 100 a page at most,
  for the shared-poll prototype.

Run lengths come from ``--duration`` (seconds, +/- ``--spread`` as a fraction), or per run from
the string input ``bench_duration`` in the POST body. With ``--rate R`` the API answers 429
(``Retry-After: 1``) beyond R requests/s, enforced by a token bucket holding one second of
requests. Unauthenticated control routes (``GET /_stats``, ``POST /_reset``) report what
happened: requests by kind, 429s, a per-second histogram, per-run status reads and how late
after each run's end its first terminal answer went out (server-side detection lag).

Much lighter than ``notebookops.testing.deepnote`` (no request log, no validation beyond what
the client exercises), so 10,000 concurrent runs do not make the server the bottleneck.

Usage: ``python bench/server.py [--duration S] [--spread F] [--rate R]``; it prints
``PORT <n>`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import resource
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

TOKEN = "bench-token"
TERMINAL_STATUS = "success"
_PAGE_MAX = 100
_SNAPSHOT_BLOCKS = [
    {
        "id": "block-1",
        "type": "code",
        "outputs": [{"output_type": "stream", "name": "stdout", "text": "done\n"}],
        "metadata": {},
    }
]


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BenchRun:
    __slots__ = ("created_iso", "end", "ended_iso", "first_terminal", "id", "notebook", "reads")

    def __init__(self, run_id: str, notebook: str, created: datetime, duration: float) -> None:
        self.id = run_id
        self.notebook = notebook
        self.created_iso = _iso(created)
        self.ended_iso = _iso(created + timedelta(seconds=duration))
        self.end = time.monotonic() + duration
        self.first_terminal: float | None = None
        self.reads = 0

    def started(self) -> dict[str, Any]:
        """The ``POST /v2/runs`` answer."""
        return {"runId": self.id, "status": "pending", "createdAt": self.created_iso}

    def summary(self, now: float) -> dict[str, Any]:
        """The run as the runs list shows it."""
        done = now >= self.end
        return {
            "runId": self.id,
            "notebookId": self.notebook,
            "status": TERMINAL_STATUS if done else "running",
            "createdAt": self.created_iso,
            "completedAt": self.ended_iso if done else None,
        }

    def details(self, now: float) -> dict[str, Any]:
        """The run as ``GET /v2/runs/{id}`` shows it (inside ``{"run": ...}``)."""
        data = self.summary(now)
        done = data["status"] == TERMINAL_STATUS
        data.update(
            {
                "projectId": "project-1",
                "error": None,
                "snapshotStatus": "available" if done else "pending",
                "snapshotContent": None,
                "snapshotDownloadUrl": None,
            }
        )
        if done:
            data["snapshotBlocks"] = _SNAPSHOT_BLOCKS
        return data


def run_duration(inputs: object, duration: float, spread: float, rng: random.Random) -> float:
    """A new run's length: the string input ``bench_duration`` if the POST gave one, else
    ``duration`` +/- ``spread`` (a fraction)."""
    requested = inputs.get("bench_duration") if isinstance(inputs, dict) else None
    if isinstance(requested, str):
        return max(0.0, float(requested))
    return max(0.0, duration * (1 + spread * rng.uniform(-1, 1)))


def runs_page(runs: list[BenchRun], size: int, offset: int, now: float) -> dict[str, Any]:
    """``GET /v2/notebooks/{id}/runs``: ``runs`` (stored oldest first) newest first, one page
    of at most ``size`` (at most 100) from ``offset``; the next offset is the page token."""
    size = min(_PAGE_MAX, max(1, size))
    newest_first = runs[::-1][offset : offset + size]
    more = offset + size < len(runs)
    return {
        "runs": [run.summary(now) for run in newest_first],
        "pagination": {"nextPageToken": str(offset + size) if more else None, "hasMore": more},
    }


class BenchServer:
    """The server state: runs, the token bucket and the counters behind ``/_stats``."""

    def __init__(self, *, duration: float, spread: float, rate: float | None, seed: int) -> None:
        self.duration = duration
        self.spread = spread
        self.rate = rate
        self.rng = random.Random(seed)
        self.reset()

    def reset(self) -> None:
        self.runs: dict[str, BenchRun] = {}
        self.by_notebook: dict[str, list[BenchRun]] = {}
        self.counts: dict[str, int] = {"post": 0, "get": 0, "list": 0}
        self.limited: dict[str, int] = {"post": 0, "get": 0, "list": 0}
        self.first_request: float | None = None
        self.last_request: float | None = None
        self.seconds: dict[int, list[int]] = {}
        self.tokens = self.rate or 0.0
        self.refilled = time.monotonic()
        self.cpu_at_reset = time.process_time()

    # -- accounting and rate limiting

    def _admit(self, kind: str) -> bool:
        now = time.monotonic()
        if self.first_request is None:
            self.first_request = now
        self.last_request = now
        second = self.seconds.setdefault(int(now - self.first_request), [0, 0])
        if self.rate is not None:
            self.tokens = min(self.rate, self.tokens + (now - self.refilled) * self.rate)
            self.refilled = now
            if self.tokens < 1.0:
                self.limited[kind] += 1
                second[1] += 1
                return False
            self.tokens -= 1.0
        self.counts[kind] += 1
        second[0] += 1
        return True

    @staticmethod
    def _too_many() -> web.Response:
        return web.json_response(
            {"message": "Too many requests"}, status=429, headers={"Retry-After": "1"}
        )

    @staticmethod
    def _authorized(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    # -- API routes

    async def post_run(self, request: web.Request) -> web.StreamResponse:
        if not self._admit("post"):
            return self._too_many()
        if not self._authorized(request):
            return web.json_response({"message": "Unauthorized"}, status=401)
        body = await request.json()
        notebook = body.get("notebookId") if isinstance(body, dict) else None
        if not isinstance(notebook, str) or not notebook:
            return web.json_response({"message": "notebookId is required"}, status=400)
        duration = run_duration(body.get("inputs"), self.duration, self.spread, self.rng)
        run = BenchRun(str(uuid.uuid4()), notebook, datetime.now(UTC), duration)
        self.runs[run.id] = run
        self.by_notebook.setdefault(notebook, []).append(run)
        return web.json_response(run.started(), status=202)

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        if not self._admit("get"):
            return self._too_many()
        if not self._authorized(request):
            return web.json_response({"message": "Unauthorized"}, status=401)
        run = self.runs.get(request.match_info["run_id"])
        if run is None:
            return web.json_response({"message": "Run not found"}, status=404)
        now = time.monotonic()
        run.reads += 1
        data = run.details(now)
        if data["status"] == TERMINAL_STATUS and run.first_terminal is None:
            run.first_terminal = now
        return web.json_response({"run": data})

    async def list_runs(self, request: web.Request) -> web.StreamResponse:
        if not self._admit("list"):
            return self._too_many()
        if not self._authorized(request):
            return web.json_response({"message": "Unauthorized"}, status=401)
        runs = self.by_notebook.get(request.match_info["notebook_id"], [])
        size = int(request.query.get("pageSize", "20"))
        offset = int(request.query.get("pageToken", "0"))
        return web.json_response(runs_page(runs, size, offset, time.monotonic()))

    # -- control routes

    async def stats(self, request: web.Request) -> web.StreamResponse:
        lags = [
            run.first_terminal - run.end
            for run in self.runs.values()
            if run.first_terminal is not None
        ]
        reads = [run.reads for run in self.runs.values()]
        window = (
            self.last_request - self.first_request
            if self.first_request is not None and self.last_request is not None
            else 0.0
        )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        per_run = (
            {
                run.id: [
                    run.reads,
                    None if run.first_terminal is None else run.first_terminal - run.end,
                ]
                for run in self.runs.values()
            }
            if request.query.get("runs") == "1"
            else None
        )
        return web.json_response(
            {
                "per_run": per_run,
                "runs": len(self.runs),
                "counts": self.counts,
                "limited": self.limited,
                "window": window,
                "seconds": {str(k): v for k, v in sorted(self.seconds.items())},
                "detection_lags": lags,
                "reads_per_run": reads,
                "cpu": time.process_time() - self.cpu_at_reset,
                "maxrss_kb": usage.ru_maxrss,
            }
        )

    async def reset_route(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/runs", self.post_run)
        app.router.add_get("/v2/runs/{run_id}", self.get_run)
        app.router.add_get("/v2/notebooks/{notebook_id}/runs", self.list_runs)
        app.router.add_get("/_stats", self.stats)
        app.router.add_post("/_reset", self.reset_route)
        return app


async def serve(args: argparse.Namespace) -> None:
    server = BenchServer(
        duration=args.duration,
        spread=args.spread,
        rate=args.rate if args.rate and args.rate > 0 else None,
        seed=args.seed,
    )
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=3.0, help="run length, seconds")
    parser.add_argument("--spread", type=float, default=0.0, help="+/- fraction of --duration")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s allowed (0: no limit)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not math.isfinite(args.duration) or args.duration < 0:
        parser.error("--duration must be >= 0")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
