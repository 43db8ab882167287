"""A fleet of real arq worker processes on a real redis-server, against the fake Deepnote.

The workers are ``python -m arq tests.integrations.fleet_app.WorkerSettings`` subprocesses;
the fake vendor runs in this test's event loop over loopback. Never skipped in CI (see
:func:`~notebookops.testing.stores.require_redis_server`).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Container, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from notebookops.integrations.arq import redis_settings, result, run_notebook
from notebookops.models import RunState
from notebookops.store import RedisRunStore, StoreUnavailable
from notebookops.testing.deepnote import FakeDeepnoteServer, RunScript, fake_deepnote
from notebookops.testing.server import Fault
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
#: How late past that bound a killed wait's result may still be recorded: on a quiet machine
#: it comes within 0.1 s; a loaded CI machine can stall the workers for seconds. A pickup
#: that waited for anything longer (a job timeout, a lease) would be tens of seconds late.
PICKUP_SLACK = 5.0
#: A keyed start holds its notebook's start lease for notebookops._durable.START_LEASE (600 s):
#: a worker killed with its start in flight blocks that notebook's keyed starts until it
#: expires. The workers here shorten it so that the killed starts are settled within the test.
START_LEASE = 20.0


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_redis_server()
    with redis_server() as url:
        yield url


def _start_worker(settings: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m arq SETTINGS`` from the repository root, its output in ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "arq", settings],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


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
            "FLEET_START_LEASE": str(START_LEASE),
        }
        logs = Path(os.environ.get("FLEET_LOGS", self.logs))
        process = _start_worker(
            "tests.integrations.fleet_app.WorkerSettings",
            env,
            logs / f"worker-{len(self.workers)}.log",
        )
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


async def test_kill_9_mid_wait_and_mid_start_loses_and_duplicates_nothing(
    fleet: Fleet, server: FakeDeepnoteServer, pool: Any
) -> None:
    """Seeded trials, each killing (SIGKILL, by PID) the worker that holds a run's wait and
    the worker whose start request of another run is in flight (the fake vendor holds it),
    then starting replacements. Every run is started once, every result is recorded, and a
    killed wait is picked up within a slice plus arq's grace."""
    rng = random.Random(2027)
    for _ in range(4):
        fleet.spawn()
    trials = int(os.environ.get("FLEET_TRIALS", "20"))
    waits = [f"wait-{trial}" for trial in range(trials)]
    starts = [f"start-{trial}" for trial in range(trials)]
    keys = waits + starts
    # One notebook per key: a start killed in flight holds its notebook's start lease.
    notebooks = {
        key: server.add_notebook(
            script=RunScript.succeed(duration=rng.uniform(3 * SLICE, 5 * SLICE))
        )
        for key in keys
    }
    store = RedisRunStore.from_client(pool)
    killed_at: dict[str, float] = {}
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

    async def enqueue(key: str) -> None:
        await pool.enqueue_job("run_notebook", f"deepnote:{notebooks[key].id}", _job_id=key)

    killed_pids: dict[int, float] = {}

    async def kill_holder(key: str) -> None:
        """Kill the worker holding ``key``'s current job (it may be between two links for a
        moment); a worker killed already for another key of the trial counts too."""
        with anyio.move_on_after(2.0):
            while True:
                pid = await _holder(pool, key)
                if pid in killed_pids:
                    killed_at[key] = killed_pids[pid]
                    return
                if pid is not None and any(process.pid == pid for process in fleet.alive):
                    fleet.kill(pid)
                    killed_pids[pid] = killed_at[key] = time.monotonic()
                    # A worker runs several jobs at once: the waits of earlier trials it held
                    # died with it, and are picked up a grace later too. (Read after the kill:
                    # the dead worker takes no more links.)
                    victims = await _keys_held_by(pool, pid, waits, killed_pids)
                    for victim in victims:
                        killed_at[victim] = killed_pids[pid]
                    fleet.spawn()
                    return
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as group:
        group.start_soon(watch_results)
        for wait_key, start_key in zip(waits, starts, strict=True):
            await enqueue(wait_key)
            while (record := await store.get(wait_key)) is None or record.handle is None:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            # The next start request waits at the vendor until its worker is killed.
            held = server.faults.injected["delay"]
            server.faults.add(Fault("delay", delay=1.0, method="POST", path=r"^/v2/runs$", times=1))
            await enqueue(start_key)
            while server.faults.injected["delay"] == held:  # noqa: ASYNC110 (another process)
                await anyio.sleep(0.02)
            await anyio.sleep(rng.uniform(0.05, 0.5))
            await kill_holder(start_key)
            await anyio.sleep(rng.uniform(0.0, SLICE))
            await kill_holder(wait_key)
        with anyio.move_on_after(150):
            while len(recorded_at) < len(keys):  # noqa: ASYNC110 (other processes record)
                await anyio.sleep(0.1)
        group.cancel_scope.cancel()
    assert sorted(recorded_at) == sorted(keys), f"lost results: {set(keys) - set(recorded_at)}"
    assert server.runs_started == len(keys), await _duplicates(server, store, notebooks, killed_at)
    kills = f"killed: {sorted(killed_at)}"
    assert sum(key in killed_at for key in starts) >= trials // 2, f"few kills mid-start; {kills}"
    assert sum(key in killed_at for key in waits) >= trials // 2, f"few kills mid-wait; {kills}"
    for key in keys:
        record = await store.get(key)
        assert record is not None
        assert record.run is not None
        assert record.run.state is RunState.SUCCEEDED
    # Picked up again within a slice plus arq's grace after the kill (or the run's end).
    late: dict[str, float] = {}
    for key in waits:
        if key not in killed_at:
            continue
        handle = (await store.get(key)).handle  # type: ignore[union-attr]
        assert handle is not None
        ended = server.runs[handle.run_id].ended_at()
        assert ended is not None
        past = recorded_at[key] - max(ended, killed_at[key] + SLICE + GRACE)
        if past > PICKUP_SLACK:
            late[key] = round(past, 2)
    assert not late, f"recorded this many seconds past the bound: {late}"


async def _duplicates(
    server: FakeDeepnoteServer,
    store: RedisRunStore,
    notebooks: dict[str, Any],
    killed_at: dict[str, float],
) -> str:
    """What a failed "one run per key" check saw: each key with more than one run."""
    lines = [f"duplicate runs: {server.runs_started} started for {len(notebooks)} keys"]
    for key, notebook in notebooks.items():
        runs = server.runs_of(notebook.id)
        if len(runs) > 1:
            record = await store.get(key)
            lines.append(
                f"{key}: runs {[(run.id, run.created_at.isoformat()) for run in runs]}; "
                f"killed at {killed_at.get(key)} (monotonic); record {record!r}"
            )
    return "\n".join(lines)


async def _keys_held_by(pool: Any, pid: int, keys: list[str], dead: Container[int]) -> list[str]:
    """The keys among ``keys`` whose current wait link the worker ``pid`` may be running: the
    links in progress it noted as its own, and those no live worker has noted. arq marks a
    job in progress a moment before the worker's ``on_job_start`` notes its PID, and a killed
    job's mark stays until it expires; counting such a link as held by ``pid`` too only moves
    that key's bound later by the time between two kills."""
    holders = {_text(job): int(holder) for job, holder in (await pool.hgetall(PIDS_KEY)).items()}
    held = []
    for mark in await pool.keys("arq:in-progress:*"):
        job = _text(mark).removeprefix("arq:in-progress:")
        key = job.split(":wait:")[0]
        holder = holders.get(job)
        if key in keys and (holder is None or holder == pid or holder in dead):
            held.append(key)
    return held


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _holder(pool: Any, key: str) -> int | None:
    """The PID of the worker running the current link of ``key``'s wait, if any."""
    for job_id in [key, *(f"{key}:wait:{n}" for n in range(1, 20))]:
        if await pool.exists(f"arq:in-progress:{job_id}"):
            pid = await pool.hget(PIDS_KEY, job_id)
            if pid is not None:
                return int(pid)
    return None


class RestartableRedis:
    """A redis-server with an append-only file (fsync always), stopped and started again on
    the same port: it comes back with everything it had."""

    def __init__(self, directory: Path) -> None:
        require_redis_server()
        self.directory = directory
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable is not None
        self.process = subprocess.Popen(
            [
                executable,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.directory), "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always"),
                *("--logfile", str(self.directory / "redis.log")),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # kill -9: the append-only file has every write
            self.process.wait()

    def pause(self) -> None:
        """Stop answering (SIGSTOP): connections hang, as in a partition or a stalled server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("outage", ["stalled", "restarted"])
async def test_redis_going_away_mid_wait_loses_nothing(
    server: FakeDeepnoteServer, tmp_path: Path, outage: str
) -> None:
    """Redis goes away for 3 s while every run is being waited on: stalled (SIGSTOP), or
    killed and started again (same port and data). Nothing is lost and no run is started
    twice. While it is stalled the waits keep reading the vendor. A restart makes arq 0.28's
    own worker loop exit (its next Redis command cannot connect), so here, as under systemd or
    Kubernetes, a supervisor starts workers again; their jobs are taken up after arq's grace.
    """
    from arq import create_pool

    redis = RestartableRedis(tmp_path)
    redis.start()
    workers = Fleet(redis.url, server, tmp_path)
    supervising = True

    async def supervise() -> None:
        while supervising:
            if len(workers.alive) < 2:
                workers.spawn()
            await anyio.sleep(0.5)

    try:
        pool = await create_pool(redis_settings(redis.url))
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(supervise)
                keys = [f"outage-{index}" for index in range(6)]
                for key in keys:
                    notebook = server.add_notebook(script=RunScript.succeed(duration=3.5 * SLICE))
                    await pool.enqueue_job("run_notebook", f"deepnote:{notebook.id}", _job_id=key)
                store = RedisRunStore.from_client(pool)
                for key in keys:
                    while (record := await store.get(key)) is None or record.handle is None:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                    # Its wait has begun (a start still finishing its bookkeeping in Redis is
                    # not a wait yet).
                    status = rf"^/v2/runs/{record.handle.run_id}$"
                    while not server.requests_to("GET", status):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                reads = len(server.requests_to("GET", r"^/v2/runs/"))
                if outage == "stalled":
                    redis.pause()
                    await anyio.sleep(3.0)
                    reads_while_away = len(server.requests_to("GET", r"^/v2/runs/")) - reads
                    redis.resume()
                else:
                    redis.stop()
                    await anyio.sleep(3.0)
                    redis.start()
                runs = await _results(pool, keys, timeout=60)
                supervising = False
        finally:
            await pool.aclose()
    finally:
        workers.stop()
        redis.stop()
    if outage == "stalled":
        assert reads_while_away > 0, "the waits stopped reading the vendor while Redis was away"
    assert all(run.state is RunState.SUCCEEDED for run in runs.values()), runs
    assert server.runs_started == len(keys)


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


async def test_the_example_worker_runs_a_notebook_enqueued_by_the_example(
    redis_url: str, server: FakeDeepnoteServer, tmp_path: Path
) -> None:
    """examples/arq_worker.py: a worker started with ``arq examples.arq_worker.WorkerSettings``
    runs what ``python examples/arq_worker.py TARGET JOB_ID`` enqueues, and prints it."""
    notebook = server.add_notebook(script=RunScript.succeed(duration=0.2))
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DEEPNOTE_API_KEY": server.token,
        "DEEPNOTE_API_URL": server.url,
    }
    worker = _start_worker(
        "examples.arq_worker.WorkerSettings", env, tmp_path / "example-worker.log"
    )
    example = ROOT / "examples" / "arq_worker.py"
    try:
        enqueuer = await anyio.run_process(
            [sys.executable, str(example), f"deepnote:{notebook.id}", "job-1"],
            cwd=ROOT,
            env=env,
            check=False,
        )
    finally:
        worker.terminate()
        worker.wait(timeout=10)
    assert enqueuer.returncode == 0, enqueuer.stderr.decode()
    assert enqueuer.stdout.decode().startswith("succeeded")
    assert server.runs_started == 1
    assert server.token not in enqueuer.stdout.decode() + enqueuer.stderr.decode()
