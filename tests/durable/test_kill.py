"""Kill -9 trials (issue 25): a keyed run_and_wait in a real process (``_driver.py``), killed
with SIGKILL by PID at each point of a keyed run, then the same call again in a new process.
The fake vendor runs in this (the test) process, so what it holds survives the kill.

In every trial the fake made at most one run, and the rerun ends with that run's result, or
with StartOutcomeUnknown where the vendor cannot be asked (Datalore, PostHog) and only when
the kill came while the start request was in flight or before its handle was recorded."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from notebookops._durable import SENDING
from notebookops.store import RecordState, open_store
from notebookops.testing.stores import redis_server, require_redis_server

from ._driver import ENV
from ._vendors import VENDORS, Vendor, VendorFake, vendor_fake

DRIVER = Path(__file__).with_name("_driver.py")
KillPoint = Literal[
    "after_reserve", "in_flight", "before_record_start", "mid_wait", "before_record_finish"
]
KILL_POINTS: tuple[KillPoint, ...] = (
    "after_reserve",
    "in_flight",
    "before_record_start",
    "mid_wait",
    "before_record_finish",
)
#: Where a vendor that cannot list a notebook's runs may answer StartOutcomeUnknown.
IN_FLIGHT: frozenset[KillPoint] = frozenset({"in_flight", "before_record_start"})
#: How long one driver may take to get where the test waits for it.
STEP = 30.0


@contextmanager
def store_url(kind: str, directory: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite://{directory / 'runs.db'}"
    else:
        require_redis_server()
        with redis_server() as url:
            yield url


class Driver:
    """One driver process and the JSON lines it prints."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._text = TextReceiveStream(process.stdout)
        self._buffer = ""

    async def line(self) -> dict[str, Any]:
        while "\n" not in self._buffer:
            try:
                self._buffer += await self._text.receive()
            except anyio.EndOfStream:
                stderr = ""
                if self.process.stderr is not None:
                    stderr = (await self.process.stderr.receive(65536)).decode(errors="replace")
                raise AssertionError(f"the driver ended without a line: {stderr}") from None
        line, self._buffer = self._buffer.split("\n", 1)
        event: dict[str, Any] = json.loads(line)
        return event

    async def until(self, *events: str, bound: float = STEP) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []
        with anyio.move_on_after(bound):
            while (event := await self.line())["event"] not in events:
                seen.append(event)
            return event
        raise AssertionError(f"no {' or '.join(events)} from the driver in {bound:g}s: {seen}")

    async def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        with anyio.fail_after(STEP):
            await self.process.wait()
        assert self.process.returncode == -signal.SIGKILL


@asynccontextmanager
async def driver(config: dict[str, Any]) -> AsyncIterator[Driver]:
    environment = {**os.environ, ENV: json.dumps(config)}
    async with await anyio.open_process([sys.executable, str(DRIVER)], env=environment) as process:
        try:
            yield Driver(process)
        finally:
            if process.returncode is None:
                os.kill(process.pid, signal.SIGKILL)
                await process.wait()


async def kill_at(fake: VendorFake, config: dict[str, Any], point: KillPoint) -> None:
    """Run the driver until ``point``, then kill it with SIGKILL."""
    pauses = {"after_reserve", "before_record_start", "before_record_finish"}
    if point == "in_flight":
        fake.hold_starts()
    async with driver({**config, "pause": point if point in pauses else None}) as first:
        if point in pauses:
            assert (await first.until("paused")) == {"event": "paused", "at": point}
        elif point == "in_flight":
            with anyio.fail_after(STEP):
                await fake.held.wait()
        else:
            await first.until("started")
        await first.kill()
    fake.release()


async def _assert_left_at(url: str, key: str, point: KillPoint) -> None:
    """The store holds what a process killed at ``point`` leaves (so the kill was there)."""
    async with open_store(url) as store:
        record = await store.get(key)
    assert record is not None
    if point in ("mid_wait", "before_record_finish"):
        assert record.state is RecordState.STARTED
        return
    assert record.state is RecordState.RESERVED
    assert record.owner.startswith(SENDING) == (point != "after_reserve")


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.parametrize("vendor", VENDORS)
async def test_kill_then_rerun(
    vendor: Vendor, store: str, point: KillPoint, tmp_path: Path
) -> None:
    with store_url(store, tmp_path) as url:
        async with vendor_fake(vendor, duration=0.5 if point == "mid_wait" else 0.1) as fake:
            config = {**fake.config, "store": url, "key": f"trial-{point}"}
            await kill_at(fake, config, point)
            made = fake.runs()
            assert len(made) <= 1
            if point != "after_reserve":
                assert len(made) == 1  # the kill came after the vendor made the run
            await _assert_left_at(url, config["key"], point)
            lists = len(fake.server.requests_to("GET", r"/v2/notebooks/[^/]+/runs$"))
            async with driver(config) as rerun:
                calling = (await rerun.until("calling"))["at"]
                outcome = await rerun.until("result", "error")
            lists = len(fake.server.requests_to("GET", r"/v2/notebooks/[^/]+/runs$")) - lists
            if vendor == "deepnote" and point in IN_FLIGHT:
                assert lists >= 1, "Deepnote's in-flight kills are settled by the runs list"
            if point == "after_reserve":
                assert lists == 0, "a start never sent needs no settling with the vendor"
            assert len(fake.runs()) == 1, "at most one vendor run per key"
            (run_id,) = fake.runs()
            if vendor != "deepnote" and point in IN_FLIGHT:
                assert outcome["event"] == "error"
                assert outcome["type"] == "StartOutcomeUnknown"
                assert len(fake.runs()) == len(made) == 1
            else:
                assert outcome == {"event": "result", "run_id": run_id, "state": "succeeded"}
            if point == "mid_wait":
                # Resume after kill -9 mid-wait: from the call to its first status read of the
                # run (the process's own start-up on a loaded machine is not the library's).
                reached = fake.first_read_of(run_id, after=calling)
                assert reached is not None
                assert reached - calling < 5.0, f"the rerun took {reached - calling:.1f}s"
            assert fake.cancels() == 0, "a restart never cancels the remote run"


@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.parametrize("vendor", ["datalore", "deepnote"])
async def test_eight_processes_one_key_one_run(vendor: Vendor, store: str, tmp_path: Path) -> None:
    with store_url(store, tmp_path) as url:
        async with vendor_fake(vendor, duration=0.3) as fake:
            config = {**fake.config, "store": url, "key": "many", "wait_for_go": True}
            async with (
                driver(config) as d0,
                driver(config) as d1,
                driver(config) as d2,
                driver(config) as d3,
                driver(config) as d4,
                driver(config) as d5,
                driver(config) as d6,
                driver(config) as d7,
            ):
                drivers = [d0, d1, d2, d3, d4, d5, d6, d7]
                # Eight interpreters starting on two (busy) cores: a generous bound.
                for each in drivers:
                    await each.until("ready", bound=4 * STEP)
                for each in drivers:
                    assert each.process.stdin is not None
                    await each.process.stdin.send(b"go\n")
                outcomes = [await each.until("result", "error", bound=2 * STEP) for each in drivers]
            (run_id,) = fake.runs()
            assert outcomes == [{"event": "result", "run_id": run_id, "state": "succeeded"}] * 8


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_a_settler_killed_before_recording_the_run_it_adopted(
    store: str, tmp_path: Path
) -> None:
    """Regression (seen in the arq fleet's kill trials): a process killed with its start in
    flight; a second one settles the key, finds the run and takes the reservation over, and is
    killed before recording it; the third must adopt that run too, not start another."""
    with store_url(store, tmp_path) as url:
        async with vendor_fake("deepnote", duration=0.1) as fake:
            config = {**fake.config, "store": url, "key": "settled-twice"}
            await kill_at(fake, config, "in_flight")
            assert len(fake.runs()) == 1
            await kill_at(fake, config, "before_record_start")  # the settler, adopting it
            async with open_store(url) as opened:
                record = await opened.get("settled-twice")
            assert record is not None
            assert record.owner.startswith(SENDING)
            async with driver(config) as third:
                outcome = await third.until("result", "error")
            (run_id,) = fake.runs()
            assert outcome == {"event": "result", "run_id": run_id, "state": "succeeded"}
