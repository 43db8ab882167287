"""Fault injection at a small scale: concurrent run_and_wait calls against every vendor fake
under a seeded fault mix, and callers cancelled at chosen points. See ``_chaos.py`` for the
invariants; ``bench/chaos.py`` runs the same scenarios longer and prints the figures.

``NOTEBOOKOPS_CHAOS_SEED`` picks another seed (the figures printed on failure name it).
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from notebookops import (
    ConnectionLost,
    RunRequest,
    RunState,
    StartOutcomeUnknown,
    run_and_wait,
)
from notebookops.backend import ApiClient, VendorProfile
from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.posthog import PostHogBackend
from notebookops.policies import PollPolicy
from notebookops.testing.datalore import fake_datalore_server
from notebookops.testing.deepnote import FakeInput, RunScript, fake_deepnote
from notebookops.testing.posthog import posthog_server
from notebookops.testing.server import SSE_CUT_PREFIX, UNKNOWN_STATUS, Fault

from ._chaos import (
    TOKEN,
    VENDORS,
    CancelPhase,
    ChaosEnv,
    Figures,
    Settings,
    cancellation_scenario,
    chaos_scenario,
    figures_table,
)

SEED = int(os.environ.get("NOTEBOOKOPS_CHAOS_SEED", "20261122"))
SMALL = Settings(call_timeout=1.5, start_timeout=1.2, fault_rate=0.2)
FAST = PollPolicy(initial=0.01, maximum=0.05)


def _explain(figures: Figures) -> str:
    return f"seed {figures.seed}\n{figures_table([figures])}"


@pytest.mark.parametrize("vendor", VENDORS)
async def test_concurrent_runs_under_faults_keep_every_invariant(vendor: str) -> None:
    figures = await chaos_scenario(vendor, seed=SEED, runs=16, settings=SMALL)
    print(_explain(figures))
    assert figures.ok, _explain(figures)
    assert figures.calls == 16
    assert sum(figures.faults.values()) > 0, "no fault was injected: the mix is not wired"
    assert figures.duplicates == figures.lost == figures.escapes == figures.leaks == 0
    assert figures.overruns == 0
    assert figures.server_starts > 0


@pytest.mark.parametrize("phase", ["start", "poll", "retry"])
@pytest.mark.parametrize("vendor", VENDORS)
async def test_caller_cancellation_leaves_nothing_behind(vendor: str, phase: CancelPhase) -> None:
    figures = await cancellation_scenario(vendor, phase, seed=SEED, runs=5, settings=SMALL)
    print(_explain(figures))
    assert figures.ok, _explain(figures)
    assert figures.outcomes["cancelled by caller"] >= 3, _explain(figures)
    if phase != "poll":
        assert sum(figures.faults.values()) > 0, "the cancellation point was not set up"


# --------------------------------------------------------------------------- the checks bite


def _duplicate_every_start(env: ChaosEnv) -> None:
    backend: Any = env.backend
    original = backend.start_run

    async def twice(request: RunRequest) -> Any:
        await original(request)
        return await original(request)

    backend.start_run = twice


def _escape_status_reads(env: ChaosEnv) -> None:
    backend: Any = env.backend

    async def broken(handle: Any) -> Any:
        raise KeyError("status")

    backend.get_run = broken


async def test_the_harness_catches_duplicates_and_lost_runs() -> None:
    figures = await chaos_scenario(
        "datalore",
        seed=SEED,
        runs=4,
        settings=Settings(fault_rate=0.0, mix=(1.0, 0.0, 0.0)),
        tamper=_duplicate_every_start,
    )
    assert figures.duplicates == 4
    assert figures.lost == 4  # the first run of each pair is held by nobody
    assert not figures.ok


async def test_the_harness_catches_escaping_exceptions() -> None:
    figures = await chaos_scenario(
        "deepnote",
        seed=SEED,
        runs=3,
        settings=Settings(fault_rate=0.0, mix=(1.0, 0.0, 0.0)),
        tamper=_escape_status_reads,
    )
    assert figures.escapes == 3
    assert figures.outcomes["ESCAPED KeyError"] == 3


# --------------------------------------------------------------------------- new fault kinds


async def test_unknown_status_fault_is_ridden_out() -> None:
    async with fake_deepnote(token=TOKEN) as server:
        notebook = server.add_notebook(script=RunScript.succeed(0.05))
        server.faults.add(Fault("unknown_status", method="GET", path=r"^/v2/runs/", times=2))
        seen: list[str | None] = []
        async with server.backend() as backend:
            run = await run_and_wait(
                backend,
                notebook.id,
                poll=FAST,
                timeout=10,
                on_update=lambda r: seen.append(r.vendor_state),
            )
    assert run.state is RunState.SUCCEEDED
    assert seen[0] == UNKNOWN_STATUS
    assert server.faults.injected["unknown_status"] == 2


async def test_missing_fields_fault_runs_the_handler_then_drops_a_field() -> None:
    """Datalore's start answer has one field: dropping it leaves a started run whose id is
    unreadable, which the adapter reports as an unknown start outcome (and never retries)."""
    async with fake_datalore_server(token=TOKEN) as server:
        server.add_notebook("own/nb", duration=None)
        server.faults.add(Fault("missing_fields", method="POST"))
        async with DataloreBackend(token=TOKEN, base_url=server.url) as backend:
            with pytest.raises(StartOutcomeUnknown, match="may be running now"):
                await backend.start_run(RunRequest("own/nb"))
    assert len(server.runs) == 1
    assert len(server.requests_to("POST", r"/notebook$")) == 1


async def test_sse_cut_fault_breaks_the_stream_mid_frame() -> None:
    async with posthog_server(token=TOKEN) as server:
        server.add_notebook("nb", cells=["x = 1"])
        stream = r"/kernel/execute/stream/$"
        server.faults.add(Fault("sse_cut", path=stream))
        transport = ApiClient(VendorProfile("posthog"), base_url=server.url, token=TOKEN)
        try:
            with pytest.raises(ConnectionLost) as caught:
                async with transport.sse(
                    "POST", "/api/projects/1/notebooks/nb/kernel/execute/stream/", json={}
                ) as events:
                    [event async for event in events]
        finally:
            await transport.aclose()
        assert caught.value.partial_event is True
        assert b"event: stdout" in SSE_CUT_PREFIX
        # Through the kernel-mode adapter: the run fails as a platform problem, with a reason.
        server.faults.add(Fault("sse_cut", path=stream))
        async with PostHogBackend(
            TOKEN, project_id=server.project_id, base_url=server.url, poll=FAST
        ) as backend:
            run = await run_and_wait(backend, "nb", poll=FAST, timeout=10, raise_on_failure=False)
        assert run.state is RunState.FAILED
        assert run.error is not None
        assert run.error.platform is True
        assert "ConnectionLost" in (run.error.name or "")
        assert not server.executions  # the cut came before the kernel saw the code


async def test_a_lost_start_answer_is_reported_never_repeated() -> None:
    """The reset-after fault on each vendor's run-starting request: the run exists, the answer
    is lost; the caller hears so (or the run is found again), and nothing is started twice."""
    async with fake_deepnote(token=TOKEN) as dn:
        notebook = dn.add_notebook(script=RunScript.succeed(0.02))
        dn.faults.add(Fault("reset_after", method="POST", path=r"^/v2/runs$"))
        async with dn.backend() as backend:
            run = await run_and_wait(backend, notebook.id, poll=FAST, timeout=10)
        assert [r.id for r in dn.runs_of(notebook.id)] == [run.run_id]  # reconciled
    async with posthog_server(token=TOKEN, version="new") as ph:
        ph.add_notebook("nb", cells=["x = 1"], markdown=True)
        ph.faults.add(Fault("reset_after", method="POST", path=r"/runs/$"))
        async with PostHogBackend(
            TOKEN, project_id=ph.project_id, base_url=ph.url, mode="server"
        ) as backend:
            with pytest.raises(StartOutcomeUnknown):
                await run_and_wait(backend, "nb", poll=FAST, timeout=10)
        assert len(ph.server_runs) == 1


@pytest.mark.parametrize("seed", [SEED, SEED + 1, SEED + 2])
async def test_deepnote_never_adopts_another_callers_run(seed: int) -> None:
    """Concurrent starts of one notebook with different inputs, some answered 502 or lost:
    reconciliation must not hand a caller the run another call of the same backend started
    (regression: it adopted "the only run created since the attempt", which was a sibling's,
    and the caller got a success for inputs that never ran)."""
    async with fake_deepnote(token=TOKEN) as server:
        notebook = server.add_notebook(
            script=RunScript.succeed(0.05), inputs=[FakeInput(name="day")]
        )
        server.faults.randomize(
            seed,
            0.4,
            (
                Fault("status", status=502, method="POST", path=r"^/v2/runs$"),
                Fault("reset_after", method="POST", path=r"^/v2/runs$"),
            ),
        )
        days = [f"day-{index}" for index in range(8)]
        held: dict[str, str] = {}

        async def one(day: str) -> None:
            try:
                run = await run_and_wait(
                    backend, RunRequest(notebook.id, inputs={"day": day}), poll=FAST, timeout=10
                )
            except StartOutcomeUnknown:
                return
            held[day] = run.run_id

        async with server.backend(reconcile_attempts=2) as backend, anyio.create_task_group() as tg:
            for day in days:
                tg.start_soon(one, day)
    assert sum(server.faults.injected.values()) > 0
    assert len(set(held.values())) == len(held), f"two callers hold one run: {held}"
    for day, run_id in held.items():
        assert server.runs[run_id].inputs == {"day": day}
