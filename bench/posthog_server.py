"""The PostHog fake (``notebookops.testing.posthog``) as its own loopback process, for the
streaming check.

It serves two notebooks whose single cell sleeps for a short and a long time (``--short`` and
``--long`` seconds), and adds one route, ``GET /_bench/requests``, that returns the requests
received since the last call (method and path) and forgets them. It prints ``PORT <n>`` once
listening. The fake executes the Python it receives, so it only ever binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

from notebookops.testing.posthog import PostHogFakeServer

TOKEN = "phx_bench-token"
PROJECT_ID = "1"


class BenchPostHogServer(PostHogFakeServer):
    """The fake, plus a route reporting (and clearing) its request log."""

    def setup_routes(self, app: web.Application) -> None:
        super().setup_routes(app)
        app.router.add_get("/_bench/requests", self._bench_requests)

    async def _bench_requests(self, request: web.Request) -> web.StreamResponse:
        seen = [
            {"method": r.method, "path": r.path}
            for r in self.requests
            if not r.path.startswith("/_bench/")
        ]
        self.requests.clear()
        return web.json_response(seen)


async def serve(short: float, long: float) -> None:
    server = BenchPostHogServer(token=TOKEN, project_id=PROJECT_ID)
    server.add_notebook("short", cells=["x = 1", f"import time\ntime.sleep({short})\nprint(x)"])
    server.add_notebook("long", cells=["x = 1", f"import time\ntime.sleep({long})\nprint(x)"])
    url = await server.start()
    print(f"PORT {url.rsplit(':', 1)[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--short", type=float, default=0.5)
    parser.add_argument("--long", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(serve(args.short, args.long))


if __name__ == "__main__":
    main()
