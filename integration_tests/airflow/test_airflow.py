"""The Airflow operator and trigger, with Airflow installed, against the fake vendor servers."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.exceptions import AirflowException, TaskDeferred
from airflow.models.baseoperator import ExecutorSafeguard
from airflow.models.trigger import Trigger

from notebookops import start_run
from notebookops.backends.deepnote import DeepnoteBackend
from notebookops.backends.posthog import PostHogBackend
from notebookops.integrations.airflow import (
    NotebookRunOperator,
    NotebookRunTrigger,
    run_key,
)
from notebookops.models import RunHandle, RunRequest
from notebookops.store import RecordState, open_store
from notebookops.testing.deepnote import FakeDeepnoteServer, RunScript, fake_deepnote
from notebookops.testing.posthog import PostHogFakeServer, posthog_server

FAST_POLL = {"initial": 0.05, "multiplier": 1.0, "maximum": 0.2, "jitter": 0.1, "proportion": 0.0}
CONN_ID = "notebookops_test"


def _connection(monkeypatch: pytest.MonkeyPatch, url: str, token: str, **extra: str) -> None:
    conn = {"conn_type": "notebookops", "host": url, "password": token, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))


@pytest.fixture
async def deepnote(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDeepnoteServer]:
    async with fake_deepnote() as server:
        _connection(monkeypatch, server.url, server.token)
        yield server


@pytest.fixture
async def posthog(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PostHogFakeServer]:
    async with posthog_server(version="new") as server:  # server runs exist on newer servers
        _connection(monkeypatch, server.url, server.token, project_id=server.project_id)
        yield server


async def _deepnote_run(server: FakeDeepnoteServer, script: RunScript) -> tuple[str, RunHandle]:
    notebook = server.add_notebook(script=script)
    async with DeepnoteBackend(server.token, base_url=server.url) as backend:
        handle = await start_run(backend, RunRequest(notebook=notebook.id))
    return f"deepnote:{notebook.id}", handle


def _trigger(target: str, handle: RunHandle, **kwargs: Any) -> NotebookRunTrigger:
    return NotebookRunTrigger(
        handle.to_json(), target, conn_id=CONN_ID, poll=FAST_POLL, start_spread=0, **kwargs
    )


def _cancels(server: PostHogFakeServer) -> list[str]:
    """PostHog's cancels (server mode sends ``interrupt``)."""
    return [r.path for r in server.requests if r.method == "POST" and "interrupt" in r.path]


async def _events(trigger: NotebookRunTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


# --------------------------------------------------------------------------- serialisation


def test_serialize_round_trips_through_airflow() -> None:
    handle = RunHandle(backend="deepnote", run_id="r1", notebook_id="n1")
    trigger = NotebookRunTrigger(
        handle.to_json(), "deepnote:n1", conn_id="c", deadline=123.5, poll=FAST_POLL
    )
    classpath, kwargs = trigger.serialize()
    json.dumps(kwargs)  # plain JSON only
    module, _, name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert cls is NotebookRunTrigger
    # Through Airflow's own trigger row (its kwargs serialisation) and back.
    row = Trigger.from_object(trigger)
    rebuilt = cls(**row.kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_bad_handle_is_refused_when_the_trigger_is_built() -> None:
    with pytest.raises(Exception, match="handle"):
        NotebookRunTrigger("{not json", "deepnote:n1")


# --------------------------------------------------------------------------- the trigger


async def test_trigger_reports_success(deepnote: FakeDeepnoteServer) -> None:
    target, handle = await _deepnote_run(deepnote, RunScript.succeed(0.2))
    (event,) = await _events(_trigger(target, handle))
    assert event["status"] == "succeeded"
    assert RunHandle.from_json(event["handle"]) == handle
    assert event["error"] is None
    assert "url" in event


async def test_trigger_reports_failure(deepnote: FakeDeepnoteServer) -> None:
    target, handle = await _deepnote_run(deepnote, RunScript.fail(0.1))
    (event,) = await _events(_trigger(target, handle))
    assert event["status"] == "failed"
    assert event["error"]


async def test_trigger_times_out_and_cancels_where_the_vendor_can(
    posthog: PostHogFakeServer,
) -> None:
    posthog.add_notebook(
        "slow", cells=["import time\nfor _ in range(2000):\n    time.sleep(0.01)"], markdown=True
    )
    async with PostHogBackend(
        posthog.token, project_id=posthog.project_id, base_url=posthog.url, mode="server"
    ) as backend:
        handle = await start_run(backend, RunRequest(notebook="slow"))
    trigger = _trigger("posthog:slow", handle, deadline=time.time() + 0.5)
    (event,) = await _events(trigger)
    assert event["status"] == "timeout"
    assert event["cancelled"] is True
    assert "cancelled" in event["error"]


async def test_trigger_times_out_and_detaches_when_asked(deepnote: FakeDeepnoteServer) -> None:
    target, handle = await _deepnote_run(deepnote, RunScript.long())
    trigger = _trigger(target, handle, deadline=time.time() + 0.3, on_timeout="detach")
    (event,) = await _events(trigger)
    assert event["status"] == "timeout"
    assert event["cancelled"] is False
    assert "left running" in event["error"]


@pytest.mark.parametrize("status", [500, 429])
async def test_transient_errors_during_the_wait_do_not_fail_it(
    deepnote: FakeDeepnoteServer, status: int
) -> None:
    target, handle = await _deepnote_run(deepnote, RunScript.succeed(0.5))
    # More than the client's own retries: the wait itself must ride them out.
    deepnote.faults.status(status, method="GET", path=r"^/v2/runs/", times=6)
    (event,) = await _events(_trigger(target, handle))
    assert event["status"] == "succeeded"
    assert deepnote.faults.injected[str(status)] == 6


async def test_restart_mid_wait_waits_on_the_same_run(posthog: PostHogFakeServer) -> None:
    posthog.add_notebook(
        "nb", cells=["import time\ntime.sleep(1.0)", "print('done')"], markdown=True
    )
    async with PostHogBackend(
        posthog.token, project_id=posthog.project_id, base_url=posthog.url, mode="server"
    ) as backend:
        handle = await start_run(backend, RunRequest(notebook="nb"))
    trigger = _trigger("posthog:nb", handle)
    reads_before = len(posthog.requests_to("GET", r"/runs/"))
    first = asyncio.create_task(_events(trigger))
    while len(posthog.requests_to("GET", r"/runs/")) < reads_before + 2:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    first.cancel()  # the triggerer stops (a restart, a move to another triggerer)
    with pytest.raises(asyncio.CancelledError):
        await first
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    (event,) = await _events(rebuilt)
    assert event["status"] == "succeeded"
    assert RunHandle.from_json(event["handle"]).run_id == handle.run_id
    starts = [r for r in posthog.requests if r.method == "POST" and r.path.endswith("/runs/")]
    assert len(starts) == 1
    assert not _cancels(posthog)


# --------------------------------------------------------------------------- the operator


def _context(run_id: str = "manual__1", map_index: int = -1) -> dict[str, Any]:
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(
        dag_id="reports",
        task_id="refresh",
        map_index=map_index,
        start_date=None,
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
        pushed=pushed,
    )
    return {"ti": ti, "run_id": run_id}


def _operator(target: str, store_url: str, **kwargs: Any) -> NotebookRunOperator:
    return NotebookRunOperator(
        task_id="refresh", target=target, conn_id=CONN_ID, store_url=store_url, **kwargs
    )


def _in_thread(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """Call an operator method in a thread: it runs an event loop of its own, and the fake
    servers run in this test's loop."""

    def call() -> Any:
        # Airflow's guard against calling execute() by hand keeps its state per thread.
        ExecutorSafeguard._sentinel.callers = {}
        return function(*args)

    return asyncio.to_thread(call)


def _deferred(operator: NotebookRunOperator, context: dict[str, Any]) -> NotebookRunTrigger:
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, NotebookRunTrigger)
    assert deferred.value.method_name == "execute_complete"
    return trigger


def _starts(server: FakeDeepnoteServer) -> int:
    return len(server.requests_to("POST", r"^/v2/runs$"))


async def test_a_retry_before_deferring_resumes_the_run(
    deepnote: FakeDeepnoteServer, store_url: str
) -> None:
    notebook = deepnote.add_notebook(script=RunScript.succeed(0.2))
    target = f"deepnote:{notebook.id}"
    context = _context()
    # Two tries of one task instance (the first one's worker died before deferring).
    first = await _in_thread(_deferred, _operator(target, store_url), context)
    second = await _in_thread(_deferred, _operator(target, store_url), context)
    assert first.handle == second.handle
    assert _starts(deepnote) == 1


async def test_completion_pushes_the_run_and_a_later_try_starts_anew(
    deepnote: FakeDeepnoteServer, store_url: str
) -> None:
    notebook = deepnote.add_notebook(script=RunScript.fail(0.1))
    target = f"deepnote:{notebook.id}"
    context = _context()
    operator = _operator(target, store_url, poll=None)
    trigger = await _in_thread(_deferred, operator, context)
    trigger.poll, trigger.start_spread = FAST_POLL, 0
    (event,) = await _events(trigger)
    key = run_key("reports", "refresh", "manual__1", -1, 1)
    with pytest.raises(AirflowException, match="failed"):
        await _in_thread(operator.execute_complete, context, event)
    assert context["ti"].pushed["run"]["state"] == "failed"
    async with open_store(store_url) as store:
        record = await store.get(key)
    assert record is not None
    assert record.state is RecordState.FINISHED
    # The retry after a recorded failure runs the notebook again (generation 2).
    retry = await _in_thread(_deferred, _operator(target, store_url), context)
    assert retry.handle != trigger.handle
    assert _starts(deepnote) == 2


async def test_success_returns_the_summary(deepnote: FakeDeepnoteServer, store_url: str) -> None:
    notebook = deepnote.add_notebook(script=RunScript.succeed(0.1))
    operator = _operator(f"deepnote:{notebook.id}", store_url)
    context = _context()
    trigger = await _in_thread(_deferred, operator, context)
    trigger.poll, trigger.start_spread = FAST_POLL, 0
    (event,) = await _events(trigger)
    summary = await _in_thread(operator.execute_complete, context, event)
    assert summary["state"] == "succeeded"
    assert "url" in summary
    json.dumps(summary)


async def test_execution_timeout_sets_the_triggers_deadline(
    deepnote: FakeDeepnoteServer, store_url: str
) -> None:
    notebook = deepnote.add_notebook(script=RunScript.long())
    operator = _operator(
        f"deepnote:{notebook.id}", store_url, execution_timeout=timedelta(seconds=100)
    )
    context = _context()
    context["ti"].start_date = datetime.now().astimezone()
    trigger = await _in_thread(_deferred, operator, context)
    assert trigger.deadline is not None
    # Ten seconds (a tenth) before Airflow's own limit, so the task can say why.
    assert 85 < trigger.deadline - time.time() <= 90
    timed = _operator(f"deepnote:{notebook.id}", store_url, timeout=5)
    trigger = await _in_thread(_deferred, timed, _context(run_id="manual__2"))
    assert trigger.deadline is not None
    assert trigger.deadline - time.time() <= 5


async def test_timeout_fails_the_task_with_the_reason(
    deepnote: FakeDeepnoteServer, store_url: str
) -> None:
    notebook = deepnote.add_notebook(script=RunScript.long())
    operator = _operator(f"deepnote:{notebook.id}", store_url, timeout=0.3)
    context = _context()
    trigger = await _in_thread(_deferred, operator, context)
    trigger.poll, trigger.start_spread = FAST_POLL, 0
    (event,) = await _events(trigger)
    assert event["key"] == run_key("reports", "refresh", "manual__1", -1, 1)
    with pytest.raises(AirflowException, match=r"timeout.*cannot cancel"):
        await _in_thread(operator.execute_complete, context, event)


async def test_on_kill_cancels_only_a_run_the_task_still_owns(
    posthog: PostHogFakeServer, store_url: str
) -> None:
    posthog.add_notebook(
        "slow", cells=["import time\nfor _ in range(2000):\n    time.sleep(0.01)"], markdown=True
    )
    operator = _operator("posthog:slow", store_url)
    context = _context()
    await _in_thread(_deferred, operator, context)
    key = run_key("reports", "refresh", "manual__1", -1, 1)
    # Another owner's run now stands under the key (e.g. the record was settled elsewhere).
    stranger = _operator("posthog:slow", store_url)
    assert operator._started is not None
    stranger._started = (key, RunHandle(backend="posthog", run_id="other", notebook_id="slow"))
    await _in_thread(stranger.on_kill)
    assert not _cancels(posthog)
    await _in_thread(operator.on_kill)
    assert _cancels(posthog)


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def sandbox_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The sandbox in a process of its own (dag.test() blocks this thread), its variables
    set here."""
    command = [sys.executable, "-m", "notebookops.testing.sandbox", "--duration", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        env = {}
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("# Press Ctrl-C"):  # the banner's last line: it is ready
                break
            name, sep, value = line.removeprefix("export ").strip().partition("=")
            if sep and not line.startswith("#"):
                env[name] = value.strip("'")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield env
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_example_dag_runs_end_to_end(
    airflow_db: object, sandbox_env: dict[str, str], state_home: object
) -> None:
    example = importlib.import_module("airflow_dag")
    run = example.dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == dict.fromkeys(("deepnote", "posthog", "datalore"), "success"), states
