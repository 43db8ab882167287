"""The caller's deadline is an upper bound on the whole call, give or take a few seconds.

A run started before the deadline: the call returns within ``timeout + cancel_timeout``. A
start whose request was sent is seen through to its answer within the backend's own request
timeout (never cut at the deadline: the vendor could still make the run after a retry found
none), then reported as :class:`StartOutcomeUnknown`; Deepnote's search for the run of an
unanswered start gets ``SENT_WORK_GRACE`` after the deadline. Driven through the transport
seam with servers that never answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from notebookops import (
    PollPolicy,
    RunTimeout,
    StartOutcomeUnknown,
    run_and_wait,
)
from notebookops.backend import SENT_WORK_GRACE, protected
from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.deepnote import DeepnoteBackend
from notebookops.testing import MockTransport, json_response
from notebookops.transport import Request, Response

FAST = PollPolicy(initial=0.01, multiplier=1.5, maximum=0.05, jitter=0)
#: Scheduling slack on a busy test machine.
SLACK = 1.5


async def _never(request: Request) -> Response:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A loopback port whose connections the kernel completes and nobody ever reads: the
    request is sent, and never answered."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_a_sent_start_is_seen_through_to_its_own_timeout(black_hole: str) -> None:
    async with DataloreBackend("tok-bound", base_url=black_hole, timeout=1.0) as backend:
        began = time.monotonic()
        with pytest.raises(StartOutcomeUnknown):
            await run_and_wait(backend, "owner/nb", timeout=0.2, poll=FAST)
        took = time.monotonic() - began
    # Not cut at the 0.2 s deadline (the vendor may yet make the run), nor held longer than
    # the request's own timeout.
    assert 1.0 <= took <= 1.0 + SLACK


async def test_deepnote_looks_for_the_run_of_an_unanswered_start_within_the_grace(
    black_hole: str,
) -> None:
    # The start and every read of the runs list go into the black hole: after the start's own
    # timeout, the search for its run is cut SENT_WORK_GRACE later.
    async with DeepnoteBackend("tok-bound", base_url=black_hole, timeout=0.5) as backend:
        began = time.monotonic()
        with pytest.raises(StartOutcomeUnknown):
            await run_and_wait(backend, "nb", timeout=0.2, poll=FAST)
        took = time.monotonic() - began
    assert 0.5 + SENT_WORK_GRACE - 0.5 <= took <= 0.5 + SENT_WORK_GRACE + SLACK


async def test_status_reads_that_never_answer_end_at_the_deadline() -> None:
    async def handler(request: Request) -> Response:
        if request.method == "POST":
            return json_response({"runId": "run-1"}, 200)
        await anyio.sleep_forever()  # every status read drips forever
        raise AssertionError("unreachable")

    async with DataloreBackend("tok-bound", transport=MockTransport(handler)) as backend:
        began = time.monotonic()
        with pytest.raises(RunTimeout) as caught:
            await run_and_wait(backend, "owner/nb", timeout=0.3, poll=FAST)
        took = time.monotonic() - began
    # Not the backend's 30 s request timeout: the deadline cut the read.
    assert took <= 0.3 + SLACK
    assert caught.value.handle is not None


# --------------------------------------------------------------------------- protected()


async def test_protected_work_gets_only_the_grace_after_the_callers_deadline() -> None:
    finished: list[float] = []

    async def slow() -> str:
        await anyio.sleep(5)
        finished.append(time.monotonic())
        return "done"

    began = time.monotonic()
    with anyio.move_on_after(0.1), pytest.raises(TimeoutError):
        await protected(slow, 30, after_cancel=0.2)
    assert 0.25 <= time.monotonic() - began <= 0.1 + 0.2 + SLACK
    assert not finished


async def test_protected_work_finishing_within_the_grace_returns_then_the_cancel_lands() -> None:
    results: list[str] = []

    async def quick() -> str:
        await anyio.sleep(0.2)
        return "done"

    async def caller() -> None:
        results.append(await protected(quick, 30, after_cancel=1.0))
        await anyio.lowlevel.checkpoint()  # the held-off cancellation lands here
        results.append("not reached")

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert results == ["done"]


async def test_protected_without_a_grace_waits_for_the_work_whatever_the_deadline() -> None:
    async def work() -> int:
        await anyio.sleep(0.3)
        return 7

    outcome: list[Any] = []
    with anyio.move_on_after(0.05):
        outcome.append(await protected(work, 30))
    assert outcome == [7]
