"""SQLiteRunStore beyond the conformance suite: the file, its failures, and durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from notebookops import ConfigurationError
from notebookops.models import RunHandle
from notebookops.store import (
    RecordState,
    SQLiteRunStore,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
    default_store_path,
)


async def test_the_file_is_private_in_wal_mode_with_its_directory_made(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "runs.db"
    async with SQLiteRunStore(path) as store:
        await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
        assert repr(store) == f"SQLiteRunStore({str(path)!r})"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_stores_opening_a_new_file_together_all_open(tmp_path: Path) -> None:
    # SQLite turns WAL on without waiting for its busy timeout: openers racing on a new
    # file used to get "database is locked" at once (a fleet's first start, a CI flake).
    for attempt in range(30):
        path = tmp_path / f"runs-{attempt}.db"
        stores = [SQLiteRunStore(path) for _ in range(8)]
        try:
            async with anyio.create_task_group() as tg:
                for store in stores:
                    tg.start_soon(store.get, "k")
        finally:
            for store in stores:
                await store.aclose()


async def test_a_file_that_is_not_a_database_is_store_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a SQLite database\n" * 200)
    with pytest.raises(StoreCorrupted, match="not a readable SQLite database") as caught:
        async with SQLiteRunStore(path):
            pass
    assert str(path) in str(caught.value)
    store = SQLiteRunStore(path)
    with pytest.raises(StoreCorrupted):
        await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
    await store.aclose()
    # Nothing was written over it.
    assert path.read_bytes().startswith(b"this is not a SQLite database")


async def test_a_truncated_database_is_store_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteRunStore(path) as store:
        for index in range(200):
            await store.reserve(f"k{index}", "fp" * 50, owner="o", lease=1.0, retention=60.0)
    await anyio.to_thread.run_sync(_damage, path)
    store = SQLiteRunStore(path)
    with pytest.raises(StoreCorrupted):
        await store.get("k1")
    await store.aclose()


def _damage(path: Path) -> None:
    """Overwrite all but the header of the closed database file."""
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(StoreCorrupted, match="newer notebookops"):
        async with SQLiteRunStore(path):
            pass


async def test_an_unreadable_record_is_store_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteRunStore(path) as store:
        await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
        await store.reserve("j", "fp", owner="o", lease=1.0, retention=60.0)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE runs SET handle = '{not json' WHERE key = 'k'")
        connection.execute("UPDATE runs SET state = 'exploded' WHERE key = 'j'")
    connection.close()
    async with SQLiteRunStore(path) as store:
        with pytest.raises(StoreCorrupted, match="record of key 'k'"):
            await store.get("k")
        with pytest.raises(StoreCorrupted, match="record of key 'j'"):
            await store.reserve("j", "fp", owner="p", lease=1.0, retention=60.0)


async def test_a_path_that_cannot_be_opened_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for path in (tmp_path, tmp_path / "file" / "runs.db"):
        store = SQLiteRunStore(path)
        with pytest.raises(StoreUnavailable, match="cannot open the run store"):
            await store.get("k")
        await store.aclose()


async def test_a_writer_held_up_too_long_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteRunStore(path) as store:
        await store.get("k")
    # Another process's long write transaction, as it were.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        async with SQLiteRunStore(path, timeout=0.05) as store:
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
            # Reads go on meanwhile (WAL).
            assert await store.get("k") is None
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def test_use_after_close_is_a_store_error(tmp_path: Path) -> None:
    store = SQLiteRunStore(tmp_path / "runs.db")
    await store.get("k")
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.get("k")


def test_bad_timeout_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        SQLiteRunStore(tmp_path / "runs.db", timeout=0)


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_store_path() == tmp_path / "state" / "notebookops" / "runs.db"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unusable in ("", "relative/state"):
        monkeypatch.setenv("XDG_STATE_HOME", unusable)
        expected = tmp_path / "home" / ".local" / "state" / "notebookops" / "runs.db"
        assert default_store_path() == expected
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_store_path() == expected


_KILLED_AFTER_RECORDING = """
import os, sys, time
import anyio
from notebookops.models import RunHandle
from notebookops.store import SQLiteRunStore

async def main(path):
    store = SQLiteRunStore(path)
    await store.reserve("k", "fp", owner="o", lease=60.0, retention=3600.0)
    await store.record_start("k", owner="o", handle=RunHandle("fake", "run-1", "nb"))
    print("recorded", flush=True)
    time.sleep(60)  # killed here, the store never closed

anyio.run(main, sys.argv[1])
"""


def _record_then_get_killed(path: Path) -> None:
    """Run a process that records a start, and SIGKILL it (by PID) once it said so."""
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_AFTER_RECORDING, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "recorded"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


async def test_a_record_survives_kill_9_right_after_the_call(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    await anyio.to_thread.run_sync(_record_then_get_killed, path)
    async with SQLiteRunStore(path) as store:
        record = await store.get("k")
    assert record is not None
    assert record.state is RecordState.STARTED
    assert record.handle == RunHandle("fake", "run-1", "nb")
