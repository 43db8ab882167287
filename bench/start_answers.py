"""How many Deepnote start answers serve their run's first read, in scenario 1's workload.

A shared wait nobody listens to makes no first read of its own when its start's answer (the
run is pending) is at most ``share_window`` seconds old; otherwise it reads its run at once.
With 10,000 waits started together on 100 connections most starts wait for a connection, so
how that age is measured decides how many such reads there are. This runs scenario 1's
``lib`` client (``bench/client.py``) against a ``bench/server.py`` of its own, counting what
``SharedRunPolls.take_start`` answered, and prints JSON::

    .venv/bin/python bench/start_answers.py --n 10000
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/start_answers.py --n 10000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import client  # noqa: E402  (bench/client.py, next to this file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="concurrent waits")
    parser.add_argument("--duration", type=float, default=3.0, help="run length, s (scenario 1's)")
    args = parser.parse_args()

    from notebookops.backends.deepnote import _sharing

    counts: collections.Counter[str] = collections.Counter()
    take_start = _sharing.SharedRunPolls.take_start

    def counting(self: _sharing.SharedRunPolls, handle: Any) -> str | None:
        status = take_start(self, handle)
        counts["served the first read" if status is not None else "too old, or none"] += 1
        return status

    _sharing.SharedRunPolls.take_start = counting  # type: ignore[method-assign]
    server = subprocess.Popen(
        [sys.executable, str(BENCH / "server.py"), "--duration", str(args.duration)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().split()[1]
        result = asyncio.run(
            client.overhead_lib(f"http://127.0.0.1:{port}", args.n, max(1, args.n // 100))
        )
    finally:
        server.terminate()
        server.wait()
    print(json.dumps({"n": args.n, "runs_ok": result["ok"], "start_answers": dict(counts)}))


if __name__ == "__main__":
    main()
