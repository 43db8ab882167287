"""1,000 Airflow triggers in one event loop, as a triggerer runs them (issue #26's scale test).

Each trigger is a :class:`~notebookops.integrations.airflow.NotebookRunTrigger` waiting for
its own run on a fake Deepnote server (in a process of its own, so that its work does not
count against the triggers' loop). The runs last ``--duration`` seconds (30); the triggers
poll with the default schedule (PollPolicy()), each with its own backend (a triggerer builds
one per trigger, from its serialised kwargs). Measured in the triggers' process:

* event-loop lag: a probe sleeps 50 ms over and over; the lag is how late it wakes;
* peak RSS (``VmHWM``) of the process.

Targets: lag p99 <= 100 ms, RSS <= 300 MB. Run it in the Airflow virtualenv::

    .ci/airflow.sh --collect-only -q >/dev/null   # once: builds .venv-airflow
    .venv-airflow/bin/python bench/airflow_triggers.py [--triggers 1000] [--duration 30]

Prints the figures; the exit status is 1 when a target is missed or a trigger did not end
with ``succeeded``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any

LAG_TARGET = 0.100
RSS_TARGET_MB = 300.0
PROBE_INTERVAL = 0.05

_SERVER = """
import asyncio, sys
from notebookops.testing.deepnote import RunScript, fake_deepnote

async def main():
    async with fake_deepnote() as server:
        notebook = server.add_notebook(script=RunScript.succeed(float(sys.argv[1])))
        print(server.url, server.token, notebook.id, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _probe(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(PROBE_INTERVAL)
        lags.append(loop.time() - before - PROBE_INTERVAL)


async def _bench(url: str, token: str, notebook: str, count: int) -> dict[str, Any]:
    from notebookops import RunRequest, start_run
    from notebookops.backends.deepnote import DeepnoteBackend
    from notebookops.integrations.airflow import NotebookRunTrigger

    os.environ["DEEPNOTE_API_KEY"] = token
    os.environ["DEEPNOTE_API_URL"] = url
    began = time.monotonic()
    async with DeepnoteBackend() as backend:
        handles = await asyncio.gather(
            *(start_run(backend, RunRequest(notebook=notebook)) for _ in range(count))
        )
    started = time.monotonic() - began
    triggers = [NotebookRunTrigger(h.to_json(), f"deepnote:{notebook}") for h in handles]

    async def one(trigger: NotebookRunTrigger) -> str:
        statuses = [event.payload["status"] async for event in trigger.run()]
        return ",".join(statuses)

    lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(lags, stop))
    began = time.monotonic()
    statuses = await asyncio.gather(*(one(trigger) for trigger in triggers))
    waited = time.monotonic() - began
    stop.set()
    await probe
    lags.sort()
    return {
        "triggers": count,
        "start_seconds": started,
        "wait_seconds": waited,
        "succeeded": statuses.count("succeeded"),
        "lag_p50_ms": 1000 * statistics.median(lags),
        "lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))],
        "lag_max_ms": 1000 * lags[-1],
        "peak_rss_mb": _peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds a run lasts")
    args = parser.parse_args(argv)
    logging.getLogger("notebookops").setLevel(logging.WARNING)  # a line per run otherwise
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(args.duration)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url, token, notebook = server.stdout.readline().split()
        result = asyncio.run(_bench(url, token, notebook, args.triggers))
    finally:
        server.terminate()
        server.wait()
    for name, value in result.items():
        print(f"{name:>14}: {value:.1f}" if isinstance(value, float) else f"{name:>14}: {value}")
    ok = (
        result["succeeded"] == args.triggers
        and result["lag_p99_ms"] <= 1000 * LAG_TARGET
        and result["peak_rss_mb"] <= RSS_TARGET_MB
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
