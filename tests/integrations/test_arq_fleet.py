"""A fleet of real arq worker processes on a real redis-server, against the fake Deepnote.

The workers are ``python -m arq tests.integrations.fleet_app.WorkerSettings`` subprocesses;
the fake vendor runs in this test's event loop over loopback. Never skipped in CI (see
:func:`~notebookops.testing.stores.require_redis_server`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from notebookops.integrations.arq import redis_settings, result, run_notebook
from notebookops.models import RunState
from notebookops.store import RedisRunStore, StoreUnavailable
from notebookops.testing.deepnote import FakeDeepnoteServer, RunScript, fake_deepnote
from notebookops.testing.stores import redis_server, require_redis_server

#: See tests/integrations/fleet_app.py (not imported: it reads the environment the workers get).
PIDS_KEY = "fleet-test:pids"

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SLICE = 2.0
MARGIN = 3.0
#: arq starts a killed job again once its in-progress mark expires: the job timeout
#: (slice + margin) plus arq's fixed 10 s.
GRACE = MARGIN + 10.0


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_redis_server()
    with redis_server() as url:
        yield url


class Fleet:
    """Worker subprocesses sharing one Redis, killed and replaced by PID."""

    def __init__(self, redis_url: str, server: FakeDeepnoteServer, logs: Path) -> None:
        self.redis_url = redis_url
        self.server = server
        self.logs = logs
        self.workers: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "FLEET_REDIS_URL": self.redis_url,
            "DEEPNOTE_API_URL": self.server.url,
            "DEEPNOTE_API_KEY": self.server.token,
            "FLEET_WORKSPACE": self.server.workspace_segment,
            "FLEET_WAIT_SLICE": str(SLICE),
            "FLEET_START_MARGIN": str(MARGIN),
        }
        logs = Path(os.environ.get("FLEET_LOGS", self.logs))
        log = (logs / f"worker-{len(self.workers)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "arq", "tests.integrations.fleet_app.WorkerSettings"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.workers.append(process)
        return process

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        for process in self.workers:
            if process.pid == pid:
                process.wait()

    @property
    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [process for process in self.workers if process.poll() is None]

    def stop(self) -> None:
        for process in self.alive:
            process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def server() -> AsyncIterator[FakeDeepnoteServer]:
    async with fake_deepnote() as fake:
        yield fake


@pytest.fixture
def fleet(redis_url: str, server: FakeDeepnoteServer, tmp_path: Path) -> Iterator[Fleet]:
    workers = Fleet(redis_url, server, tmp_path)
    try:
        yield workers
    finally:
        workers.stop()


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[Any]:
    from arq import create_pool

    arq_pool = await create_pool(redis_settings(redis_url))
    try:
        yield arq_pool
    finally:
        await arq_pool.aclose()


async def _results(pool: Any, keys: list[str], timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def one(key: str) -> None:
        found[key] = await result(pool, key, timeout=timeout)

    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(one, key)
    return found


async def test_four_workers_run_200_jobs_once_each(
    fleet: Fleet, server: FakeDeepnoteServer, pool: Any
) -> None:
    rng = random.Random(27)
    notebooks = [
        server.add_notebook(script=RunScript.succeed(duration=rng.uniform(0.1, 2.5 * SLICE)))
        for _ in range(10)
    ]
    for _ in range(4):
        fleet.spawn()
    keys = [f"job-{index}" for index in range(200)]
    for index, key in enumerate(keys):
        notebook = notebooks[index % len(notebooks)]
        job = await pool.enqueue_job("run_notebook", f"deepnote:{notebook.id}", _job_id=key)
        assert job is not None
    runs = await _results(pool, keys, timeout=90)
    assert server.runs_started == 200
    assert len({run.run_id for run in runs.values()}) == 200
    assert all(run.state is RunState.SUCCEEDED for run in runs.values())
    assert len(fleet.alive) == 4


async def test_the_same_job_enqueued_twice_while_it_runs_starts_one_run(
    fleet: Fleet, server: FakeDeepnoteServer, pool: Any
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(duration=2 * SLICE))
    target = f"deepnote:{notebook.id}"
    fleet.spawn()
    fleet.spawn()
    assert await pool.enqueue_job("run_notebook", target, _job_id="once") is not None
    while not server.runs_started:  # noqa: ASYNC110 (another process starts it)
        await anyio.sleep(0.05)
    # arq refuses the same job id while it is queued or running...
    assert await pool.enqueue_job("run_notebook", target, _job_id="once") is None
    # ...and another job id with the same idempotency key follows the same run.
    assert await pool.enqueue_job("run_notebook", target, key="once", _job_id="again")
    runs = await _results(pool, ["once"], timeout=30)
    again = await _job_result(pool, "again", timeout=30)
    assert again["state"] in ("finished", "continued")
    assert server.runs_started == 1
    assert runs["once"].state is RunState.SUCCEEDED


async def _job_result(pool: Any, job_id: str, timeout: float) -> Any:
    from arq.jobs import Job

    return await Job(job_id, pool).result(timeout=timeout, poll_delay=0.1)


async def test_a_worker_killed_mid_wait_is_replaced_within_a_slice_plus_grace(
    fleet: Fleet, server: FakeDeepnoteServer, pool: Any
) -> None:
    """Seeded trials: each kills (SIGKILL, by PID) the worker holding a run's wait, and
    starts another. Every run is started once and its result recorded in time."""
    rng = random.Random(2027)
    for _ in range(4):
        fleet.spawn()
    trials = int(os.environ.get("FLEET_TRIALS", "20"))
    notebooks = [
        server.add_notebook(script=RunScript.succeed(duration=rng.uniform(3 * SLICE, 5 * SLICE)))
        for _ in range(trials)
    ]
    store = RedisRunStore.from_client(pool)
    killed_at: dict[str, float] = {}
    keys = [f"trial-{trial}" for trial in range(trials)]
    recorded_at: dict[str, float] = {}

    async def watch_results() -> None:
        # When each result is recorded, seen while the trials go on.
        while len(recorded_at) < len(keys):
            for key in keys:
                if key not in recorded_at:
                    record = await store.get(key)
                    if record is not None and record.run is not None:
                        recorded_at[key] = time.monotonic()
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as group:
        group.start_soon(watch_results)
        await _kill_trials(fleet, pool, store, notebooks, keys, killed_at, rng)
        with anyio.move_on_after(120):
            while len(recorded_at) < len(keys):  # noqa: ASYNC110 (other processes record)
                await anyio.sleep(0.1)
        group.cancel_scope.cancel()
    assert len(killed_at) >= trials // 2, "too few kills landed mid-wait"
    assert sorted(recorded_at) == sorted(keys), "lost results"
    assert server.runs_started == trials  # no duplicate runs
    for key, at in killed_at.items():
        record = await store.get(key)
        assert record is not None
        assert record.handle is not None
        ended = server.runs[record.handle.run_id].ended_at()
        assert ended is not None
        # Picked up again within a slice plus arq's grace after the kill (or the run's end).
        assert recorded_at[key] <= max(ended, at + SLICE + GRACE) + 2.0, key


async def _kill_trials(
    fleet: Fleet,
    pool: Any,
    store: RedisRunStore,
    notebooks: list[Any],
    keys: list[str],
    killed_at: dict[str, float],
    rng: random.Random,
) -> None:
    for key, notebook in zip(keys, notebooks, strict=True):
        await pool.enqueue_job("run_notebook", f"deepnote:{notebook.id}", _job_id=key)
        # Wait until its run is recorded, then kill whichever worker holds its wait now.
        while True:
            record = await store.get(key)
            if record is not None and record.handle is not None:
                break
            await anyio.sleep(0.05)
        await anyio.sleep(rng.uniform(0.1, SLICE))
        pid = await _holder(pool, key)
        if pid is not None and any(p.pid == pid for p in fleet.alive):
            fleet.kill(pid)
            killed_at[key] = time.monotonic()
            fleet.spawn()


async def _holder(pool: Any, key: str) -> int | None:
    """The PID of the worker running the current link of ``key``'s wait, if any."""
    for job_id in [key, *(f"{key}:wait:{n}" for n in range(1, 20))]:
        if await pool.exists(f"arq:in-progress:{job_id}"):
            pid = await pool.hget(PIDS_KEY, job_id)
            if pid is not None:
                return int(pid)
    return None


async def test_an_unreachable_redis_at_start_is_a_typed_error_and_starts_nothing(
    server: FakeDeepnoteServer,
) -> None:
    from notebookops.integrations.arq import _CTX_KEY, _Fleet

    with redis_server() as url:
        pass  # a port where nothing listens now
    from arq.connections import ArqRedis

    client = ArqRedis.from_url(url, socket_connect_timeout=0.5)
    store = RedisRunStore.from_client(client)
    ctx: dict[str, Any] = {
        "job_id": "unreachable",
        _CTX_KEY: _Fleet(
            redis=client,
            store=store,
            backend_factory=lambda name: server.backend(),
            wait_slice=SLICE,
            start_margin=0.5,
            prefix="notebookops:",
            keep=60.0,
        ),
    }
    notebook = server.add_notebook()
    try:
        with pytest.raises(StoreUnavailable):
            await run_notebook(ctx, f"deepnote:{notebook.id}")
        with pytest.raises(StoreUnavailable):
            await result(url, "unreachable", timeout=5)
    finally:
        await ctx[_CTX_KEY].aclose()
        await client.aclose()
    assert server.runs_started == 0
