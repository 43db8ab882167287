"""Keyed runs in one process: one run per key, on the in-process stores, with FakeBackend and
the vendor fakes (issue 25). The kill -9 trials are in test_kill.py."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from notebookops import (
    ConfigurationError,
    IdempotencyConflict,
    RunFailed,
    RunTimeout,
    StartOutcomeUnknown,
    run_and_wait,
    start_run,
)
from notebookops.models import Capability, RunRequest, RunState
from notebookops.policies import PollPolicy
from notebookops.store import (
    Claim,
    MemoryRunStore,
    RecordState,
    RunStore,
    SQLiteRunStore,
    StoreCorrupted,
    StoreUnavailable,
    open_store,
)
from notebookops.testing.fake import DEFAULT_CAPABILITIES, FakeBackend, FakeScript

from ._vendors import VENDORS, Vendor, vendor_fake

FAST = PollPolicy(initial=0.01, maximum=0.02)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    opened: RunStore = (
        MemoryRunStore() if request.param == "memory" else SQLiteRunStore(tmp_path / "runs.db")
    )
    async with opened:
        yield opened


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


async def keyed(backend: FakeBackend, store: RunStore, key: str = "job-1", **kw: Any) -> Any:
    return await run_and_wait(backend, "etl", key=key, store=store, poll=FAST, **kw)


# --------------------------------------------------------------------------- one run per key


async def test_same_key_twice_is_one_run_and_the_second_call_returns_at_once(
    backend: FakeBackend, store: RunStore
) -> None:
    first = await keyed(backend, store)
    reads = backend.status_reads
    second = await keyed(backend, store)
    assert backend.start_count == 1
    assert second.run_id == first.run_id
    assert second.state is RunState.SUCCEEDED
    assert backend.status_reads == reads  # the recorded end, not another read
    record = await store.get("job-1")
    assert record is not None
    assert record.state is RecordState.FINISHED


async def test_a_failed_run_raises_again_without_another_run(
    backend: FakeBackend, store: RunStore
) -> None:
    backend.program("etl", FakeScript(states=("running", "failed")))
    with pytest.raises(RunFailed) as first:
        await keyed(backend, store)
    with pytest.raises(RunFailed) as second:
        await keyed(backend, store)
    assert second.value.run is not None
    assert first.value.run is not None
    assert second.value.run.run_id == first.value.run.run_id
    run = await keyed(backend, store, raise_on_failure=False)
    assert run.state is RunState.FAILED
    assert backend.start_count == 1


async def test_start_run_with_a_key_returns_the_same_handle(
    backend: FakeBackend, store: RunStore
) -> None:
    first = await start_run(backend, "etl", key="k", store=store)
    second = await start_run(backend, "etl", key="k", store=store)
    assert second.run_id == first.run_id
    assert backend.start_count == 1
    # run_and_wait with the key resumes that run.
    run = await keyed(backend, store, key="k")
    assert run.run_id == first.run_id
    assert backend.start_count == 1


async def test_a_second_call_while_the_first_waits_resumes_the_same_run(
    backend: FakeBackend, store: RunStore
) -> None:
    backend.program("etl", FakeScript(states=("running", "success"), step_seconds=0.3))
    results: list[str] = []
    recorded = anyio.Event()

    async def call() -> None:
        results.append((await keyed(backend, store, on_start=lambda _: recorded.set())).run_id)

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        with anyio.fail_after(5):
            await recorded.wait()  # on_start runs after the handle is recorded
        record = await store.get("job-1")
        assert record is not None
        assert record.state is RecordState.STARTED
        group.start_soon(call)
    assert backend.start_count == 1
    assert len(results) == 2
    assert results[0] == results[1]


async def test_two_live_callers_at_once_share_one_run(store: RunStore) -> None:
    backend = FakeBackend()
    backend.faults.start_latency = 0.1  # both are in the start at the same time
    runs: list[str] = []

    async def call() -> None:
        runs.append((await keyed(backend, store)).run_id)

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(call)
    assert backend.start_count == 1
    assert len(set(runs)) == 1
    assert len(runs) == 5


async def test_a_caller_whose_deadline_passes_while_another_starts_the_run(
    store: RunStore,
) -> None:
    backend = FakeBackend()
    backend.faults.start_latency = 0.5
    first: list[str] = []

    async def call() -> None:
        first.append((await keyed(backend, store)).run_id)

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await anyio.sleep(0.1)  # the first call is in its start
        with pytest.raises(RunTimeout) as raised:
            await keyed(backend, store, timeout=0.1)
    assert raised.value.handle is None
    assert "idempotency key 'job-1'" in str(raised.value)
    assert "call again" in str(raised.value)
    assert backend.start_count == 1
    assert len(first) == 1
    again = await keyed(backend, store)
    assert again.run_id == first[0]


async def test_same_key_with_other_inputs_is_a_conflict(
    backend: FakeBackend, store: RunStore
) -> None:
    await keyed(backend, store, inputs={"day": "mon"})
    with pytest.raises(IdempotencyConflict) as raised:
        await keyed(backend, store, inputs={"day": "tue"})
    assert isinstance(raised.value, ConfigurationError)
    assert "job-1" in str(raised.value)
    with pytest.raises(IdempotencyConflict):
        await keyed(backend, store, blocks=["a"], inputs={"day": "mon"})
    with pytest.raises(IdempotencyConflict):
        await run_and_wait(backend, "other", key="job-1", store=store, poll=FAST)
    assert backend.start_count == 1


@pytest.mark.parametrize("vendor", VENDORS)
async def test_vendor_one_run_per_key_and_conflict(vendor: Vendor, tmp_path: Path) -> None:
    async with (
        vendor_fake(vendor, duration=0.05) as fake,
        SQLiteRunStore(tmp_path / "runs.db") as store,
        fake.backend() as backend,
    ):
        runs = []
        async with anyio.create_task_group() as group:

            async def call() -> None:
                runs.append(
                    await run_and_wait(backend, fake.request(), key="k", store=store, poll=FAST)
                )

            group.start_soon(call)
            group.start_soon(call)
        again = await run_and_wait(backend, fake.request(), key="k", store=store, poll=FAST)
        assert {run.run_id for run in runs} == {again.run_id}
        assert again.state is RunState.SUCCEEDED
        with pytest.raises(IdempotencyConflict):
            await run_and_wait(backend, fake.request(x="2"), key="k", store=store, poll=FAST)
        assert fake.runs() == [again.run_id]
        assert fake.cancels() == 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("key", ["", "k" * 256, 42])
async def test_a_bad_key_is_a_configuration_error_and_starts_nothing(
    backend: FakeBackend, store: RunStore, key: Any
) -> None:
    with pytest.raises(ConfigurationError, match="255 characters"):
        await keyed(backend, store, key=key)
    with pytest.raises(ConfigurationError, match="255 characters"):
        await start_run(backend, "etl", key=key, store=store)
    assert backend.start_count == 0
    await keyed(backend, store, key="k" * 255)  # the longest key is fine
    assert backend.start_count == 1


async def test_key_without_store_or_store_without_key(backend: FakeBackend) -> None:
    with pytest.raises(ConfigurationError, match="store="):
        await run_and_wait(backend, "etl", key="k")
    with pytest.raises(ConfigurationError, match="key"):
        await run_and_wait(backend, "etl", store=MemoryRunStore())
    with pytest.raises(ConfigurationError, match="RunStore"):
        await run_and_wait(backend, "etl", key="k", store="sqlite:runs.db")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="on_ambiguous"):
        await run_and_wait(
            backend,
            "etl",
            key="k",
            store=MemoryRunStore(),
            on_ambiguous="maybe",  # type: ignore[arg-type]
        )
    assert backend.start_count == 0


@pytest.mark.parametrize("url", ["postgres://db/runs", "runs.db", "mem:", "sqlite://host/x.db"])
def test_an_unknown_store_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="sqlite"):
        open_store(url)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("broken", ["unreachable redis", "corrupted sqlite"])
async def test_a_store_that_cannot_be_used_starts_nothing(
    backend: FakeBackend, tmp_path: Path, broken: str
) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a database\n" * 200)
    url = f"redis://127.0.0.1:{_closed_port()}/0" if "redis" in broken else f"sqlite://{path}"
    error = StoreUnavailable if "redis" in broken else StoreCorrupted
    store = open_store(url)
    try:
        with pytest.raises(error):
            await keyed(backend, store)
    finally:
        await store.aclose()
    assert backend.start_count == 0


# --------------------------------------------------------------------------- a dead owner


@pytest.fixture
def dead_pid() -> int:
    """The process id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def _dead_reservation(
    store: RunStore,
    backend: FakeBackend,
    pid: int,
    *,
    sent: bool,
    key: str = "job-1",
    notebook: str = "etl",
) -> None:
    """What a process killed mid-start leaves: its reservation (marked sending or not)."""
    from notebookops._durable import SENDING, fingerprint, retention_for

    owner = f"dead@{socket.gethostname()}:{pid}"
    claim = await store.reserve(
        key,
        fingerprint(backend, RunRequest(notebook=notebook)),
        owner=owner,
        lease=600.0,
        retention=retention_for(3600.0),
    )
    assert claim.created
    if sent:
        await store.take_over(key, expected_owner=owner, owner=SENDING + owner, lease=600.0)


async def test_a_dead_owner_that_sent_nothing_is_started_anew(
    backend: FakeBackend, store: RunStore, dead_pid: int
) -> None:
    await _dead_reservation(store, backend, dead_pid, sent=False)
    run = await keyed(backend, store)
    assert run.state is RunState.SUCCEEDED
    assert backend.start_count == 1


async def test_a_dead_owner_that_may_have_sent_is_ambiguous_unless_start_new(
    backend: FakeBackend, store: RunStore, dead_pid: int
) -> None:
    await _dead_reservation(store, backend, dead_pid, sent=True)
    with pytest.raises(StartOutcomeUnknown) as raised:
        await keyed(backend, store)
    assert raised.value.evidence
    assert "on_ambiguous='start_new'" in str(raised.value)
    assert backend.start_count == 0
    run = await keyed(backend, store, on_ambiguous="start_new")
    assert run.state is RunState.SUCCEEDED
    assert backend.start_count == 1
    again = await keyed(backend, store, on_ambiguous="start_new")
    assert again.run_id == run.run_id
    assert backend.start_count == 1


async def test_a_dead_owner_is_settled_with_the_runs_list(store: RunStore, dead_pid: int) -> None:
    backend = FakeBackend(capabilities=DEFAULT_CAPABILITIES | {Capability.RECONCILE_START})

    async def call(notebook: str, **kw: Any) -> Any:
        return await run_and_wait(backend, notebook, key=notebook, store=store, poll=FAST, **kw)

    # Nothing in the window: none was made, so it is started now.
    await _dead_reservation(store, backend, dead_pid, sent=True, key="a", notebook="a")
    first = await call("a")
    assert first.state is RunState.SUCCEEDED
    assert backend.start_count == 1
    # One run in the window (the dead owner's): adopted, not started again.
    await _dead_reservation(store, backend, dead_pid, sent=True, key="b", notebook="b")
    made = await backend.start_run(RunRequest(notebook="b"))
    adopted = await call("b")
    assert adopted.run_id == made.run_id
    assert backend.start_count == 2
    # Two runs in the window: ambiguous, even with start_new (the vendor was asked).
    await _dead_reservation(store, backend, dead_pid, sent=True, key="c", notebook="c")
    await backend.start_run(RunRequest(notebook="c"))
    await backend.start_run(RunRequest(notebook="c"))
    with pytest.raises(StartOutcomeUnknown) as raised:
        await call("c", on_ambiguous="start_new")
    assert "2 runs of the notebook" in str(raised.value.evidence)
    assert "on_ambiguous cannot tell them apart" in str(raised.value)
    assert backend.start_count == 4


async def test_a_dead_owner_s_start_lease_is_freed_at_once(store: RunStore, dead_pid: int) -> None:
    backend = FakeBackend(capabilities=DEFAULT_CAPABILITIES | {Capability.RECONCILE_START})
    await _dead_reservation(store, backend, dead_pid, sent=True)
    dead = f"dead@{socket.gethostname()}:{dead_pid}"
    # Killed mid-start, it held the notebook's start lease (for far longer than this test).
    assert await store.acquire_lease("start:fake:etl", owner=dead, ttl=600.0)
    with anyio.fail_after(3):
        run = await keyed(backend, store)
    assert run.state is RunState.SUCCEEDED
    assert backend.start_count == 1


class LeaseLosingStore(MemoryRunStore):
    """A store that fails to give leases back (it went away after the start)."""

    async def release_lease(self, name: str, *, owner: str) -> None:
        raise StoreUnavailable("the store went away")


async def test_a_lease_not_given_back_does_not_hide_the_run() -> None:
    backend = FakeBackend(capabilities=DEFAULT_CAPABILITIES | {Capability.RECONCILE_START})
    store = LeaseLosingStore()
    run = await keyed(backend, store)
    assert run.state is RunState.SUCCEEDED
    assert backend.start_count == 1


async def test_a_failed_ambiguous_start_is_settled_at_once_in_the_same_process(
    store: RunStore,
) -> None:
    backend = FakeBackend()
    backend.faults.lost_start_responses = 1  # the run is made, its answer lost
    with anyio.fail_after(5), pytest.raises(StartOutcomeUnknown):
        await keyed(backend, store)
    # A retry in the same (live) process does not wait for the reservation's lease.
    with anyio.fail_after(5), pytest.raises(StartOutcomeUnknown):
        await keyed(backend, store)
    assert backend.start_count == 1


class SlowReserveStore(MemoryRunStore):
    """A store whose reserve takes a while after its write (as a remote one may)."""

    async def reserve(
        self, key: str, fingerprint: str, *, owner: str, lease: float, retention: float
    ) -> Claim:
        claim = await super().reserve(
            key, fingerprint, owner=owner, lease=lease, retention=retention
        )
        await anyio.sleep(0.2)
        return claim


async def test_a_call_cancelled_while_reserving_gives_the_key_back(backend: FakeBackend) -> None:
    store = SlowReserveStore()
    with anyio.move_on_after(0.05) as scope:
        await keyed(backend, store)
    assert scope.cancelled_caught
    assert await store.get("job-1") is None
    assert backend.start_count == 0
    with anyio.fail_after(5):
        run = await keyed(backend, store)
    assert run.state is RunState.SUCCEEDED
    assert backend.start_count == 1


# --------------------------------------------------------------------------- restarts


async def test_a_resumed_wait_never_cancels_the_run(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.program("etl", FakeScript(states=("running", "success"), step_seconds=0.3))
    path = tmp_path / "runs.db"
    async with SQLiteRunStore(path) as store:
        handle = await start_run(backend, "etl", key="k", store=store)
    # "After a restart": a new store on the same file, a new call with the same key.
    async with SQLiteRunStore(path) as store:
        run = await run_and_wait(backend, "etl", key="k", store=store, poll=FAST)
    assert run.run_id == handle.run_id
    assert run.state is RunState.SUCCEEDED
    assert backend.cancel_calls == 0
