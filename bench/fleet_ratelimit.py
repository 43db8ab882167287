"""A fleet of processes sharing one vendor rate limit through RedisRateLimiter (issue #27).

A fake vendor (in this process, on loopback) lets ``--rate`` requests per second through per
API key (a token bucket holding ``--burst`` tokens) and answers 429 with ``Retry-After: 1``
beyond. ``--workers`` processes, each with ``--concurrency`` callers sending status reads as
fast as their limiter lets them for ``--seconds``, share one
:class:`notebookops.ratelimit_redis.RedisRateLimiter` (``rate`` = ``--share`` x the vendor's)
on a real ``redis-server`` started here. The client retries 429s as usual; a request that
still fails is a failed run.

Run from the repository root::

    .venv/bin/python bench/fleet_ratelimit.py --rate 200 --seconds 10

Prints a Markdown table; exits 1 when the fleet gets less than 90% of the vendor's rate, more
than 1% of requests answered 429 after the first second, or any failed request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

ROOT = str(Path(__file__).resolve().parents[1])


class Vendor:
    """A token bucket per API key; 429 beyond it."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens: dict[str, float] = {}
        self.stamp: dict[str, float] = {}
        self.answers: list[tuple[float, int]] = []

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "")
        now = time.monotonic()
        tokens = min(
            self.burst,
            self.tokens.get(key, self.burst) + (now - self.stamp.get(key, now)) * self.rate,
        )
        self.stamp[key] = now
        if tokens >= 1:
            self.tokens[key] = tokens - 1
            self.answers.append((now, 200))
            return web.json_response({"status": "running"})
        self.tokens[key] = tokens
        self.answers.append((now, 429))
        return web.json_response(
            {"message": "rate limited"}, status=429, headers={"Retry-After": "1"}
        )


async def worker(args: argparse.Namespace) -> None:
    from notebookops.backend import ApiClient, VendorProfile
    from notebookops.policies import RetryPolicy
    from notebookops.ratelimit_redis import RedisRateLimiter

    limiter = RedisRateLimiter(
        args.redis, key="bench-credential", rate=args.rate * args.share, burst=args.client_burst
    )
    client = ApiClient(
        VendorProfile("bench"),
        base_url=args.server,
        token="bench-token",
        rate_limiter=limiter,
        retry=RetryPolicy(max_attempts=20),
    )
    ok = failed = 0
    stop_at = float(args.start_at) + args.seconds

    async def caller() -> None:
        nonlocal ok, failed
        while time.time() < stop_at:
            try:
                await client.request("GET", "/v2/runs/r", idempotent=True)
                ok += 1
            except Exception:
                failed += 1

    async with limiter:
        await anyio.sleep(max(0.0, float(args.start_at) - time.time()))
        async with anyio.create_task_group() as group:
            for _ in range(args.concurrency):
                group.start_soon(caller)
        await client.aclose()
    print(json.dumps({"ok": ok, "failed": failed}))


async def main(args: argparse.Namespace) -> int:
    from notebookops.testing.stores import redis_server

    vendor = Vendor(args.rate, args.burst)
    app = web.Application()
    app.router.add_get("/v2/runs/{run_id}", vendor.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with redis_server() as redis_url:
        start_at = time.time() + 3.0  # every worker up and connected first
        began = time.monotonic() + (start_at - time.time())
        processes = [
            await anyio.open_process(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    *("--redis", redis_url, "--server", f"http://127.0.0.1:{port}"),
                    *("--rate", str(args.rate), "--share", str(args.share)),
                    *("--seconds", str(args.seconds), "--concurrency", str(args.concurrency)),
                    *("--start-at", repr(start_at), "--client-burst", str(args.client_burst)),
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": ROOT},
            )
            for _ in range(args.workers)
        ]
        reports: list[dict[str, Any]] = []
        for process in processes:
            assert process.stdout is not None
            output = b""
            async for chunk in process.stdout:
                output += chunk
            await process.wait()
            reports.append(json.loads(output.decode().strip().splitlines()[-1]))
    await runner.cleanup()
    window = [(at - began, status) for at, status in vendor.answers if at >= began]
    accepted = sum(1 for at, status in window if status == 200 and at <= args.seconds)
    achieved = accepted / args.seconds
    late = [status for at, status in window if at >= 1.0]
    refused_late = sum(1 for status in late if status == 429) / max(1, len(late))
    failed = sum(report["failed"] for report in reports)
    share = achieved / args.rate
    print(
        "| workers | vendor rate R (req/s) | fleet achieved (req/s) | share of R "
        "| 429s after 1 s | failed |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.workers} x {args.concurrency} callers | {args.rate:g} | {achieved:.1f} | "
        f"{share:.1%} | {refused_late:.2%} ({late.count(429)} of {len(late)}) | {failed} |"
    )
    return 0 if share >= 0.9 and refused_late <= 0.01 and failed == 0 else 1


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--burst", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.95)
    parser.add_argument("--client-burst", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.worker:
        anyio.run(worker, arguments)
    else:
        sys.exit(anyio.run(main, arguments))
