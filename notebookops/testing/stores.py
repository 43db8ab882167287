"""The conformance suite every run store must pass, and a real Redis server for tests.

It is a pytest mix-in: a store's test module turns it on in one line by naming a target
factory (an async context manager yielding a :class:`StoreTarget`)::

    from notebookops.testing.stores import StoreConformance, sqlite_target

    class TestSQLiteRunStore(StoreConformance):
        target_factory = staticmethod(sqlite_target)

A target opens stores on one shared storage (one SQLite file, one Redis server), so the suite
can check what one store instance sees of another's writes; a target with a ``url`` is also
opened by real subprocesses (:func:`~notebookops.store.open_store`) to check atomicity across
processes.

:func:`redis_server` starts a real ``redis-server`` (Debian package ``redis-server``) on a
free loopback port. When it is not installed, :func:`require_redis_server` fails the test
under CI (the ``CI`` environment variable is set) and skips it elsewhere.
Requires pytest and pytest-asyncio (``asyncio_mode = "auto"``).
"""

from __future__ import annotations

import abc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.to_thread
import pytest

from ..errors import ConfigurationError
from ..models import Artifact, CellOutput, Run, RunErrorInfo, RunHandle, RunProgress, RunState
from ..store import (
    MemoryRunStore,
    RecordConflict,
    RecordState,
    RedisRunStore,
    RunStore,
    SQLiteRunStore,
)

__all__ = [
    "StoreConformance",
    "StoreTarget",
    "memory_target",
    "redis_server",
    "redis_target",
    "require_redis_server",
    "sqlite_target",
]

#: Long enough that nothing in a test expires by accident.
LEASE = 60.0
RETENTION = 3600.0


class StoreTarget(abc.ABC):
    """What the suite needs from a store under test."""

    #: A URL for :func:`~notebookops.store.open_store` naming the same storage, so other
    #: processes can open it; None for an in-process store.
    url: str | None = None

    @abc.abstractmethod
    def open(self) -> RunStore:
        """A store on the target's storage (a new instance where the store allows several on
        one storage). The suite closes what it opens."""


TargetFactory = Callable[[], AbstractAsyncContextManager[StoreTarget]]


class _MemoryTarget(StoreTarget):
    def __init__(self) -> None:
        # One instance: a memory store's storage is the instance.
        self.store = MemoryRunStore()

    def open(self) -> RunStore:
        return self.store


class _SQLiteTarget(StoreTarget):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite://{path}"

    def open(self) -> RunStore:
        return SQLiteRunStore(self.path)


class _RedisTarget(StoreTarget):
    def __init__(self, url: str) -> None:
        self.url = self.server = url

    def open(self) -> RunStore:
        return RedisRunStore(self.server)


@asynccontextmanager
async def memory_target() -> AsyncIterator[StoreTarget]:
    """A :class:`~notebookops.store.MemoryRunStore` as a conformance target."""
    yield _MemoryTarget()


@asynccontextmanager
async def sqlite_target() -> AsyncIterator[StoreTarget]:
    """A :class:`~notebookops.store.SQLiteRunStore` on a file in a new temporary directory."""
    with tempfile.TemporaryDirectory(prefix="notebookops-store-") as directory:
        yield _SQLiteTarget(Path(directory) / "runs.db")


@asynccontextmanager
async def redis_target() -> AsyncIterator[StoreTarget]:
    """A :class:`~notebookops.store.RedisRunStore` on a new real Redis server of its own (see
    :func:`require_redis_server` for a machine without one)."""
    require_redis_server()
    with redis_server() as url:
        yield _RedisTarget(url)


def require_redis_server() -> None:
    """Fail the calling test under CI, or skip it elsewhere, when ``redis-server`` is not
    installed: tests that prove guarantees on Redis must never skip silently in CI."""
    if shutil.which("redis-server") is not None:
        return
    message = "redis-server is not installed (Debian: apt-get install -y redis-server)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it", pytrace=False)
    pytest.skip(message)


@contextmanager
def redis_server(*, port: int | None = None, startup_timeout: float = 10.0) -> Iterator[str]:
    """Run a real ``redis-server`` on a free loopback port (or ``port``, e.g. to bring a
    stopped server back), without persistence, and yield its URL
    (``redis://127.0.0.1:PORT/0``); stop it (by its PID) on exit."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise FileNotFoundError("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="notebookops-redis-") as directory:
        log = Path(directory) / "redis.log"
        # The free port is found by binding and closing it; another process may take it in
        # between, which shows as the server exiting: try another port.
        for _ in range(1 if port else 5):
            chosen = port or _free_port()
            command = [
                executable,
                *("--port", str(chosen), "--bind", "127.0.0.1", "--dir", directory),
                *("--save", "", "--appendonly", "no", "--logfile", str(log)),
            ]
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            try:
                if _wait_for_ping(process, chosen, startup_timeout):
                    yield f"redis://127.0.0.1:{chosen}/0"
                    return
            finally:
                _stop(process)
        raise RuntimeError(f"redis-server did not start: {log.read_text(errors='replace')}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_ping(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"redis-server on port {port} did not answer PING in {timeout} s")


def _stop(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: Run by each process of the many-processes test: open the store, say "ready", wait for
#: the start line on stdin, reserve, print whether it created the record, and its owner.
_RESERVER = """
import sys
import anyio
from notebookops.store import open_store

async def main(url, key, owner):
    async with open_store(url) as store:
        await store.get(key)
        print("ready", flush=True)
        sys.stdin.readline()
        claim = await store.reserve(key, "fp", owner=owner, lease=60.0, retention=3600.0)
        print("created" if claim.created else "existing", claim.record.owner, flush=True)

anyio.run(main, *sys.argv[1:])
"""


def _reserve_in_processes(url: str, key: str, count: int) -> list[tuple[str, str]]:
    """Start ``count`` processes, let them reserve ``key`` at once, return (outcome, owner)
    per process."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _RESERVER, url, key, f"process-{index}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        answers = []
        for process in processes:
            out, _ = process.communicate(timeout=60)
            assert process.returncode == 0, out
            outcome, owner = out.split()
            answers.append((outcome, owner))
        return answers
    finally:
        for process in processes:
            _stop(process)


def _handle(run_id: str = "run-1") -> RunHandle:
    return RunHandle(
        backend="fake",
        run_id=run_id,
        notebook_id="nb-1",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        web_url="https://example.invalid/runs/1",
        extra={"project": "p-1"},
    )


def _run(handle: RunHandle, state: RunState = RunState.SUCCEEDED) -> Run:
    when = datetime(2026, 1, 2, 3, 5, tzinfo=UTC)
    return Run(
        handle=handle,
        state=state,
        vendor_state=state.value,
        created_at=when,
        started_at=when,
        finished_at=when,
        outputs=(
            CellOutput("stream", cell_id="c1", cell_index=0, name="stdout", text="hi\n"),
            CellOutput("execute_result", data={"text/plain": "42"}, metadata={"a": [1]}),
            CellOutput("error", ename="ValueError", evalue="bad", traceback=("l1", "l2")),
        ),
        artifacts=(Artifact("out.csv", url="https://example.invalid/out.csv", size=3),),
        error=RunErrorInfo("bad", name="ValueError", traceback=("l1",), cell_index=2),
        progress=RunProgress(completed=3, total=3),
        web_url="https://example.invalid/runs/1/view",
        raw={"vendor": "payload"},
    )


def _key() -> str:
    return f"key-{uuid.uuid4().hex}"


class StoreConformance:
    """Mix-in test class. Subclasses set ``target_factory``; every test then runs on it."""

    target_factory: ClassVar[TargetFactory]

    @pytest.fixture
    async def target(self) -> AsyncIterator[StoreTarget]:
        async with type(self).target_factory() as target:
            yield target

    @pytest.fixture
    async def store(self, target: StoreTarget) -> AsyncIterator[RunStore]:
        async with target.open() as store:
            yield store

    @pytest.fixture
    async def other(self, target: StoreTarget) -> AsyncIterator[RunStore]:
        """A second store instance on the same storage (another process, as it were)."""
        async with target.open() as store:
            yield store

    async def test_is_a_run_store_and_an_async_context_manager(self, target: StoreTarget) -> None:
        store = target.open()
        assert isinstance(store, RunStore)
        async with store as entered:
            assert entered is store
            assert await store.get(_key()) is None
        await store.aclose()  # closing twice is fine

    async def test_reserve_creates_a_record_then_returns_it(
        self, store: RunStore, other: RunStore
    ) -> None:
        key = _key()
        before = time.time()
        claim = await store.reserve(key, "fp-1", owner="a", lease=LEASE, retention=RETENTION)
        after = time.time()
        assert claim.created
        record = claim.record
        assert (record.key, record.fingerprint, record.owner) == (key, "fp-1", "a")
        assert record.state is RecordState.RESERVED
        assert (record.handle, record.run) == (None, None)
        assert before <= record.reserved_at <= after
        assert record.lease_until == pytest.approx(record.reserved_at + LEASE)
        assert record.expires_at == pytest.approx(record.reserved_at + RETENTION)
        # Another call (here through another instance) finds it, untouched.
        again = await other.reserve(key, "fp-2", owner="b", lease=1.0, retention=1.0)
        assert not again.created
        assert again.record == record
        assert await other.get(key) == record

    async def test_reserve_repeated_by_its_owner_is_its_own(self, store: RunStore) -> None:
        key = _key()
        first = await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        retried = await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        assert retried.created
        assert retried.record == first.record

    async def test_reserve_is_atomic_under_50_concurrent_reservers(
        self, target: StoreTarget
    ) -> None:
        key = _key()
        stores = [target.open() for _ in range(4)]
        claims: dict[str, bool] = {}

        async def reserve(index: int) -> None:
            owner = f"owner-{index}"
            store = stores[index % len(stores)]
            claim = await store.reserve(key, "fp", owner=owner, lease=LEASE, retention=RETENTION)
            claims[owner] = claim.created

        try:
            async with anyio.create_task_group() as tg:
                for index in range(50):
                    tg.start_soon(reserve, index)
            winners = [owner for owner, created in claims.items() if created]
            assert len(claims) == 50
            assert len(winners) == 1
            record = await stores[0].get(key)
            assert record is not None
            assert record.owner == winners[0]
        finally:
            for store in stores:
                await store.aclose()

    async def test_reserve_is_atomic_across_8_processes(self, target: StoreTarget) -> None:
        if target.url is None:
            pytest.skip("an in-process store: no other process can open it")
        key = _key()
        answers = await anyio.to_thread.run_sync(_reserve_in_processes, target.url, key, 8)
        created = [owner for outcome, owner in answers if outcome == "created"]
        assert len(created) == 1, answers
        # Every process saw the one record.
        assert {owner for _, owner in answers} == {created[0]}

    async def test_take_over_is_a_compare_and_set(self, store: RunStore, other: RunStore) -> None:
        key = _key()
        await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        before = time.time()
        taken = await other.take_over(key, expected_owner="a", owner="b", lease=30.0)
        assert taken is not None
        assert taken.owner == "b"
        assert taken.lease_until >= before + 30.0
        assert taken.state is RecordState.RESERVED
        assert await store.get(key) == taken
        # The record changed: a take-over expecting "a" fails and changes nothing.
        assert await store.take_over(key, expected_owner="a", owner="c", lease=30.0) is None
        assert await store.get(key) == taken
        # Repeated by its new owner (a retry), it is that owner's again.
        again = await other.take_over(key, expected_owner="a", owner="b", lease=30.0)
        assert again is not None
        assert again.owner == "b"
        # No record, or a started one: nothing to take over.
        assert await store.take_over(_key(), expected_owner="a", owner="c", lease=1.0) is None
        await other.record_start(key, owner="b", handle=_handle())
        assert await store.take_over(key, expected_owner="b", owner="c", lease=1.0) is None

    async def test_one_of_many_concurrent_take_overs_wins(self, target: StoreTarget) -> None:
        key = _key()
        stores = [target.open() for _ in range(4)]
        try:
            await stores[0].reserve(key, "fp", owner="dead", lease=0.5, retention=RETENTION)
            won: list[str] = []

            async def take(index: int) -> None:
                store = stores[index % len(stores)]
                owner = f"owner-{index}"
                if await store.take_over(key, expected_owner="dead", owner=owner, lease=30.0):
                    won.append(owner)

            async with anyio.create_task_group() as tg:
                for index in range(20):
                    tg.start_soon(take, index)
            assert len(won) == 1
            record = await stores[0].get(key)
            assert record is not None
            assert record.owner == won[0]
        finally:
            for store in stores:
                await store.aclose()

    async def test_record_start_only_by_the_owner(self, store: RunStore, other: RunStore) -> None:
        key = _key()
        reserved = (
            await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        ).record
        handle = _handle()
        with pytest.raises(RecordConflict):
            await other.record_start(key, owner="b", handle=handle)
        assert await store.get(key) == reserved
        await store.record_start(key, owner="a", handle=handle)
        started = await other.get(key)
        assert started is not None
        assert started.state is RecordState.STARTED
        assert started.handle == handle
        assert started.owner == "a"
        assert started.expires_at == reserved.expires_at
        # Recording the same handle again (a retry, by anyone) changes nothing.
        await store.record_start(key, owner="a", handle=handle)
        await other.record_start(key, owner="b", handle=handle)
        assert await store.get(key) == started
        # Another handle is a conflict.
        with pytest.raises(RecordConflict):
            await store.record_start(key, owner="a", handle=_handle("run-2"))
        assert await store.get(key) == started

    async def test_record_start_after_a_take_over_or_without_a_record(
        self, store: RunStore
    ) -> None:
        key = _key()
        await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        await store.take_over(key, expected_owner="a", owner="b", lease=LEASE)
        with pytest.raises(RecordConflict, match="taken over"):
            await store.record_start(key, owner="a", handle=_handle())
        with pytest.raises(RecordConflict, match="no record"):
            await store.record_start(_key(), owner="a", handle=_handle())

    async def test_record_finish_is_idempotent(self, store: RunStore, other: RunStore) -> None:
        key = _key()
        await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        handle = _handle()
        await store.record_start(key, owner="a", handle=handle)
        run = _run(handle)
        await store.record_finish(key, run)
        finished = await other.get(key)
        assert finished is not None
        assert finished.state is RecordState.FINISHED
        assert finished.run == run
        assert finished.handle == handle
        # Again, from anywhere: nothing changes; the first final run stays.
        await other.record_finish(key, run)
        await other.record_finish(key, _run(handle, RunState.FAILED))
        assert await store.get(key) == finished
        # Starting it again is a no-op too (same handle).
        await store.record_start(key, owner="a", handle=handle)
        assert await store.get(key) == finished

    async def test_record_finish_of_another_run_or_no_record(self, store: RunStore) -> None:
        key = _key()
        await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        await store.record_start(key, owner="a", handle=_handle())
        with pytest.raises(RecordConflict):
            await store.record_finish(key, _run(_handle("run-2")))
        record = await store.get(key)
        assert record is not None
        assert record.state is RecordState.STARTED
        with pytest.raises(RecordConflict, match="no record"):
            await store.record_finish(_key(), _run(_handle()))

    async def test_record_finish_of_a_reservation_records_the_handle(self, store: RunStore) -> None:
        # A reservation settled with the vendor (the run found in its runs list) can end
        # straight away.
        key = _key()
        await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        run = _run(_handle())
        await store.record_finish(key, run)
        record = await store.get(key)
        assert record is not None
        assert (record.state, record.handle, record.run) == (
            RecordState.FINISHED,
            run.handle,
            run,
        )

    async def test_round_trip_of_handle_and_final_run(self, target: StoreTarget) -> None:
        key = _key()
        handle = _handle()
        run = _run(handle, RunState.FAILED)
        store = target.open()
        try:
            await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
            await store.record_start(key, owner="a", handle=handle)
            await store.record_finish(key, run)
        finally:
            await store.aclose()
        reopened = target.open()
        try:
            record = await reopened.get(key)
        finally:
            await reopened.aclose()
        assert record is not None
        assert record.handle == handle
        assert record.handle.extra == handle.extra
        assert record.run == run
        assert record.run.outputs == run.outputs
        assert record.run.error == run.error
        assert record.run.raw is None  # stores keep no raw payload

    async def test_release(self, store: RunStore, other: RunStore) -> None:
        key = _key()
        reserved = (
            await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        ).record
        await other.release(key, owner="b")  # not the owner: nothing happens
        assert await store.get(key) == reserved
        await store.release(key, owner="a")
        assert await other.get(key) is None
        await store.release(key, owner="a")  # nothing left: nothing happens
        again = await other.reserve(key, "fp", owner="b", lease=LEASE, retention=RETENTION)
        assert again.created
        # A started record is never released.
        await other.record_start(key, owner="b", handle=_handle())
        await other.release(key, owner="b")
        record = await store.get(key)
        assert record is not None
        assert record.state is RecordState.STARTED

    async def test_leases(self, store: RunStore, other: RunStore) -> None:
        name = f"lease-{uuid.uuid4().hex}"
        assert await store.acquire_lease(name, owner="a", ttl=LEASE)
        assert not await other.acquire_lease(name, owner="b", ttl=LEASE)
        assert await store.acquire_lease(name, owner="a", ttl=LEASE)  # renewed
        await other.release_lease(name, owner="b")  # not the holder: a no-op
        assert not await other.acquire_lease(name, owner="b", ttl=LEASE)
        await store.release_lease(name, owner="a")
        assert await other.acquire_lease(name, owner="b", ttl=LEASE)
        assert not await store.acquire_lease(name, owner="a", ttl=LEASE)
        # Leases are independent of each other.
        assert await store.acquire_lease(name + "-other", owner="a", ttl=LEASE)

    async def test_a_lease_expires_unless_renewed(self, store: RunStore, other: RunStore) -> None:
        # Real time (a Redis lease runs on the server's clock), with margins measured around
        # each call so that a slow machine cannot make the checks wrong.
        name, ttl = f"lease-{uuid.uuid4().hex}", 1.0
        assert await store.acquire_lease(name, owner="a", ttl=ttl)
        first_ends_by = time.monotonic() + ttl
        assert not await other.acquire_lease(name, owner="b", ttl=ttl)
        await anyio.sleep(ttl / 2)
        renewed_from = time.monotonic()
        assert await store.acquire_lease(name, owner="a", ttl=ttl)
        renewed_ends_by = time.monotonic() + ttl
        await anyio.sleep(max(0.0, first_ends_by + 0.02 - time.monotonic()))
        taken = await other.acquire_lease(name, owner="b", ttl=ttl)
        if time.monotonic() < renewed_from + ttl:
            assert not taken  # past the first ttl, within the renewed one
        await anyio.sleep(max(0.0, renewed_ends_by + 0.02 - time.monotonic()))
        assert await other.acquire_lease(name, owner="b", ttl=LEASE)

    async def test_one_of_many_concurrent_lease_takers_wins(self, target: StoreTarget) -> None:
        name = f"lease-{uuid.uuid4().hex}"
        stores = [target.open() for _ in range(4)]
        holders: list[str] = []

        async def acquire(index: int) -> None:
            owner = f"owner-{index}"
            if await stores[index % len(stores)].acquire_lease(name, owner=owner, ttl=LEASE):
                holders.append(owner)

        try:
            async with anyio.create_task_group() as tg:
                for index in range(20):
                    tg.start_soon(acquire, index)
        finally:
            for store in stores:
                await store.aclose()
        assert len(holders) == 1

    async def test_prune_honours_expires_at(self, store: RunStore, other: RunStore) -> None:
        short, long = _key(), _key()
        first = await store.reserve(short, "fp", owner="a", lease=LEASE, retention=100.0)
        await store.reserve(long, "fp", owner="a", lease=LEASE, retention=1000.0)
        await store.record_start(long, owner="a", handle=_handle())
        at = first.record.reserved_at
        assert await other.prune(now=at + 50.0) == 0
        assert await store.get(short) is not None
        assert await other.prune(now=at + 500.0) == 1
        assert await store.get(short) is None
        assert await store.get(long) is not None
        assert await other.prune() == 0  # now: nothing has expired yet
        assert await other.prune(now=at + 5000.0) == 1
        assert await store.get(long) is None
        assert await other.prune(now=at + 5000.0) == 0

    async def test_durations_must_be_positive(self, store: RunStore) -> None:
        key = _key()
        for lease, retention in ((0.0, RETENTION), (LEASE, -1.0), (float("nan"), RETENTION)):
            with pytest.raises(ConfigurationError):
                await store.reserve(key, "fp", owner="a", lease=lease, retention=retention)
        assert await store.get(key) is None
        await store.reserve(key, "fp", owner="a", lease=LEASE, retention=RETENTION)
        with pytest.raises(ConfigurationError):
            await store.take_over(key, expected_owner="a", owner="b", lease=0.0)
        with pytest.raises(ConfigurationError):
            await store.acquire_lease("lease", owner="a", ttl=-1.0)

    async def test_records_are_independent_per_key(self, store: RunStore) -> None:
        keys = [_key() for _ in range(3)]
        for index, key in enumerate(keys):
            await store.reserve(key, f"fp-{index}", owner=f"o{index}", lease=1, retention=60)
        await store.record_start(keys[1], owner="o1", handle=_handle())
        records = [await store.get(key) for key in keys]
        assert [r.state if r else None for r in records] == [
            RecordState.RESERVED,
            RecordState.STARTED,
            RecordState.RESERVED,
        ]
        assert [r.fingerprint if r else None for r in records] == ["fp-0", "fp-1", "fp-2"]
