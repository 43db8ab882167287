"""PostHogBackend as a NotebookBackend, on the loopback fake: kernel mode and server mode."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import anyio
import pytest

from notebookops import run_and_wait, wait_for_run
from notebookops.backends.posthog import (
    KernelRunNotFound,
    NoRunnableCells,
    PostHogBackend,
    PostHogRunOptions,
    ScopedKeyNotAllowed,
)
from notebookops.errors import (
    BackendClosed,
    ConfigurationError,
    ConnectError,
    NotFound,
    PermissionDenied,
    RunFailed,
    ServerError,
    StartOutcomeUnknown,
    UnsupportedOperation,
)
from notebookops.models import Capability, Run, RunHandle, RunRequest, RunState
from notebookops.policies import RetryPolicy
from notebookops.testing.posthog import (
    LONG_CELL,
    PostHogFakeServer,
    hogql_cell,
    markdown_cells,
    markdown_content,
    notebook_content,
    python_cell,
)
from notebookops.testing.server import Fault

from .conftest import FAST_POLL, backend_for


async def settle(backend: PostHogBackend, handle: RunHandle, timeout: float = 10) -> Run:
    with anyio.fail_after(timeout):
        run = await backend.get_run(handle)
        while not run.state.is_terminal:
            await anyio.sleep(0.01)
            run = await backend.get_run(handle)
    return run


async def wait_running(server: PostHogFakeServer, short_id: str) -> None:
    """Poll (the fake has no event to wait on) until a cell of ``short_id`` is executing."""
    with anyio.fail_after(10):
        while True:
            if any(e.short_id == short_id and e.running for e in server.executions):
                return
            await anyio.sleep(0.01)


# ----------------------------------------------------------------- kernel mode


async def test_success_collects_outputs_and_stops_the_kernel(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook(
        "ok",
        cells=[
            "total = sum(range(5))\nprint(greeting, total)",
            "display_media('text/html', '<b>')\ntotal * 2",
        ],
    )
    updates: list[Run] = []
    run = await run_and_wait(
        backend,
        "ok",
        inputs={"greeting": "hi"},
        poll=FAST_POLL,
        timeout=20,
        on_update=updates.append,
    )
    assert run.state is RunState.SUCCEEDED
    assert run.vendor_state == "ok"
    assert run.progress is not None
    assert (run.progress.completed, run.progress.total) == (2, 2)
    stdout = [o for o in run.outputs if o.output_type == "stream"]
    assert [(o.name, o.text, o.cell_id, o.cell_index) for o in stdout] == [
        ("stdout", "hi 10\n", "c0", 0)
    ]
    results = [o for o in run.outputs if o.output_type == "execute_result"]
    assert [(o.plain_text, o.cell_id) for o in results] == [("20", "c1")]
    media = [o for o in run.outputs if o.data.get("text/html")]
    assert media[0].cell_id == "c1"
    variables = [o for o in run.outputs if o.metadata.get("posthog") == "variables"]
    assert variables[0].data["application/vnd.posthog.variables+json"]["total"]["type"] == "int"
    assert run.started_at is not None
    assert run.finished_at is not None
    assert run.url == f"{server.url}/project/1/notebooks/ok"
    assert run.raw["mode"] == "kernel"
    assert len(run.raw["results"]) == 2
    assert server.kernel("ok").status == "stopped"  # stop_kernel_at_end
    assert updates[0].state in (RunState.PENDING, RunState.RUNNING)
    # The inputs cell ran first, without returning variables and without outputs of its own.
    first = server.requests_to("POST", r"/kernel/execute/stream/$")[0]
    assert first.json["code"].startswith("import json as _notebookops_json")
    assert first.json["return_variables"] is False
    assert first.json["timeout"] == 30.0


async def test_output_reaches_watchers_while_the_cell_runs(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook(
        "stream", cells=["import time\nprint('first')\ntime.sleep(0.3)\nprint('second')"]
    )
    handle = await backend.start_run(RunRequest("stream"))
    mid_cell: list[Run] = []
    async with aclosing(backend.watch_run(handle)) as runs:
        async for run in runs:
            texts = [o.text for o in run.outputs if o.output_type == "stream"]
            if texts == ["first\n"] and run.state is RunState.RUNNING:
                mid_cell.append(run)
            if run.state.is_terminal:
                final = run
                break
    assert mid_cell, "stdout should arrive before the cell finishes"
    assert final.state is RunState.SUCCEEDED
    assert [o.text for o in final.outputs if o.output_type == "stream"] == ["first\n", "second\n"]


async def test_python_error_fails_the_run_with_cell_and_traceback(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("bad", cells=["x = 1", "def f():\n    return x / 0\nf()", "print('never')"])
    with pytest.raises(RunFailed) as caught:
        await run_and_wait(backend, "bad", poll=FAST_POLL, timeout=20)
    run = caught.value.run
    assert run is not None
    assert run.error is not None
    assert run.error.message == "cell c1 raised ZeroDivisionError: division by zero"
    assert "\x1b[" not in run.error.message
    assert any("\x1b[0;31mZeroDivisionError" in line for line in run.error.traceback)
    assert (run.error.name, run.error.cell_id, run.error.cell_index) == (
        "ZeroDivisionError",
        "c1",
        1,
    )
    assert run.error.platform is False
    assert run.vendor_state == "error"
    assert run.progress is not None
    assert run.progress.completed == 2
    errors = [o for o in run.outputs if o.output_type == "error"]
    assert (errors[0].ename, errors[0].evalue) == ("ZeroDivisionError", "division by zero")
    assert "in cell 1 (c1)" in str(caught.value)
    assert not any("never" in (o.text or "") for o in run.outputs)


async def test_cell_timeout(server: PostHogFakeServer, backend: PostHogBackend) -> None:
    server.add_notebook("slow", cells=[LONG_CELL])
    options = PostHogRunOptions(cell_timeout=1)
    run = await run_and_wait(
        backend, "slow", options=options, poll=FAST_POLL, timeout=20, raise_on_failure=False
    )
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert run.error.name == "timeout"
    assert "1s" in run.error.message
    assert server.requests_to("POST", r"/kernel/execute/stream/$")[0].json["timeout"] == 1


@pytest.mark.parametrize("bad", [0.2, 0.5, 1.5, 0, 121, True])
def test_cell_timeout_is_whole_seconds(bad: float) -> None:
    # PostHog truncates with int() (0.5 becomes 0) and bounds the cell's whole run with it.
    with pytest.raises(ConfigurationError, match="whole seconds from 1 to 120"):
        PostHogRunOptions(cell_timeout=bad)  # type: ignore[arg-type]


async def test_error_frame_and_http_failures_are_platform_failures(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("infra", cells=["1"])
    server.kernel_stream_errors = 1
    run = await run_and_wait(backend, "infra", poll=FAST_POLL, timeout=20, raise_on_failure=False)
    assert run.error is not None
    assert (run.error.platform, run.error.name) == (True, "KernelStreamError")
    assert "Failed to execute notebook code." in run.error.message
    assert run.vendor_state == "infrastructure_error"
    server.faults.status(
        503, body={"detail": "Failed to execute notebook code."}, path=r"/kernel/execute/stream/$"
    )
    again = await run_and_wait(backend, "infra", poll=FAST_POLL, timeout=20, raise_on_failure=False)
    assert again.error is not None
    assert again.error.platform is True
    assert "Failed to execute notebook code." in again.error.message


async def test_scoped_key_run_says_which_key_is_needed(server: PostHogFakeServer) -> None:
    server.add_notebook("sc", cells=["1"])
    server.add_user("phx_scoped", scoped=True)
    async with backend_for(server, "phx_scoped", mode="kernel") as scoped:
        # Refused before any code ran: a PermissionDenied, never a failed run.
        with pytest.raises(ScopedKeyNotAllowed, match="created without scopes") as refused:
            await run_and_wait(scoped, "sc", poll=FAST_POLL, timeout=20)
    assert isinstance(refused.value, PermissionDenied)
    assert "newer servers refuse every personal API key" in str(refused.value)
    assert not server.executions


async def test_start_validates_before_running(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("v", cells=["1"])
    with pytest.raises(ConfigurationError, match="variable name"):
        await backend.start_run(RunRequest("v", inputs={"not valid": 1}))
    with pytest.raises(ConfigurationError, match="JSON"):
        await backend.start_run(RunRequest("v", inputs={"x": {1, 2}}))
    with pytest.raises(NotFound):
        await backend.start_run(RunRequest("missing"))
    with pytest.raises(ConfigurationError, match="PostHogRunOptions"):
        await backend.start_run(RunRequest("v", options=object()))
    with pytest.raises(ConfigurationError, match="nodeId 'nope'"):
        await backend.start_run(RunRequest("v", blocks=["nope"]))
    assert not server.requests_to("POST", r"/kernel/")


async def test_blocks_and_hogql_cells(server: PostHogFakeServer, backend: PostHogBackend) -> None:
    server.add_notebook(
        "mix",
        content=notebook_content(
            python_cell("print('a')", node_id="p1"),
            hogql_cell("select id from events", node_id="h1"),
            python_cell("print('c')", node_id="p2"),
        ),
    )
    both = PostHogRunOptions(cell_types=("python", "hogql"))
    run = await run_and_wait(backend, "mix", options=both, poll=FAST_POLL, timeout=20)
    assert [o.cell_id for o in run.outputs if o.output_type != "display_data"] == ["p1", "h1", "p2"]
    table = next(o for o in run.outputs if o.cell_id == "h1")
    assert table.data["text/plain"].splitlines()[1] == "1   alpha"
    only = await run_and_wait(backend, "mix", blocks=["p2"], poll=FAST_POLL, timeout=20)
    assert [o.text for o in only.outputs if o.output_type == "stream"] == ["c\n"]
    assert only.progress is not None
    assert only.progress.total == 1
    server.add_notebook("badq", content=notebook_content(hogql_cell("drop table", node_id="hq")))
    failed = await run_and_wait(
        backend, "badq", options=both, poll=FAST_POLL, timeout=20, raise_on_failure=False
    )
    assert failed.error is not None
    assert (failed.error.name, failed.error.cell_id) == ("HogQLError", "hq")
    assert "Syntax error" in failed.error.message
    assert server.kernel("badq").status == "stopped"  # never started: no kernel cell ran


async def test_a_notebook_without_runnable_cells_is_an_error_not_a_success(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("empty")
    with pytest.raises(NoRunnableCells) as empty:
        await run_and_wait(backend, "empty", poll=FAST_POLL, timeout=20)
    for named in ("ph-python", "ph-hogql-sql", "<PythonV2>", "<SQLV2>", "ph-markdown-notebook"):
        assert named in str(empty.value)
    assert empty.value.notebook == "empty"
    assert not server.requests_to("POST", r"/kernel/")


async def test_write_outputs_retries_on_409(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("wb", cells=["print('stored')", "1 + 1"])
    server.faults.status(
        409,
        body={
            "type": "server_error",
            "code": "conflict",
            "detail": "Someone else edited the Notebook",
            "attr": None,
        },
        method="PATCH",
        path=r"/notebooks/wb/$",
    )
    options = PostHogRunOptions(write_outputs=True)
    run = await run_and_wait(backend, "wb", options=options, poll=FAST_POLL, timeout=20)
    assert run.state is RunState.SUCCEEDED
    patches = server.requests_to("PATCH", r"/notebooks/wb/$")
    assert len(patches) == 2
    assert all(p.json["version"] == 0 for p in patches)
    stored = (await backend.client.get_notebook("wb")).content
    assert stored is not None
    first = stored["content"][1]["attrs"]["pythonExecution"]
    second = stored["content"][2]["attrs"]["pythonExecution"]
    assert (first["status"], first["stdout"]) == ("ok", "stored\n")
    assert second["result"] == {"text/plain": "2"}


async def test_write_outputs_failure_fails_the_run(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("wf", cells=["1"])
    server.faults.add(
        Fault(
            "status",
            status=400,
            method="PATCH",
            path=r"/notebooks/wf/$",
            body={
                "type": "validation_error",
                "code": "invalid",
                "detail": "Bad content.",
                "attr": "content",
            },
        )
    )
    options = PostHogRunOptions(write_outputs=True)
    run = await run_and_wait(
        backend, "wf", options=options, poll=FAST_POLL, timeout=20, raise_on_failure=False
    )
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert run.error.platform is True
    assert "writing the outputs back failed" in run.error.message
    assert "Bad content." in run.error.message


async def test_cancel_stops_the_cell_and_the_kernel(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("long", cells=[LONG_CELL, "print('after')"])
    handle = await backend.start_run(RunRequest("long"))
    await wait_running(server, "long")
    await backend.cancel_run(handle)
    run = await backend.get_run(handle)
    assert run.state is RunState.CANCELLED
    assert run.vendor_state == "cancelled"
    assert server.requests_to("POST", r"/notebooks/long/kernel/stop/$")
    assert server.remote_cancelled(handle) is True
    assert all(e.interrupted for e in server.executions if e.short_id == "long")
    assert not any(o.text == "after\n" for o in run.outputs)
    await backend.cancel_run(handle)  # already over: nothing to do


async def test_cancel_reports_a_failed_kernel_stop(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("stuck", cells=[LONG_CELL])
    handle = await backend.start_run(RunRequest("stuck"))
    await wait_running(server, "stuck")
    server.faults.add(
        Fault(
            "status",
            status=503,
            body={"detail": "Failed to stop notebook kernel."},
            path=r"/kernel/stop/$",
            times=10,
        )
    )
    with pytest.raises(ServerError, match="Failed to stop notebook kernel"):
        await backend.cancel_run(handle)
    assert (await backend.get_run(handle)).state is RunState.CANCELLED
    server.faults.clear()
    await backend.client.kernel_stop("stuck")


async def test_runs_of_one_notebook_queue_behind_each_other(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("one", cells=[LONG_CELL])
    first = await backend.start_run(RunRequest("one"))
    second = await backend.start_run(RunRequest("one"))
    await wait_running(server, "one")
    queued = await backend.get_run(second)
    assert (queued.state, queued.vendor_state) == (RunState.PENDING, "queued")
    await backend.cancel_run(second)
    assert (await backend.get_run(second)).state is RunState.CANCELLED
    assert (await backend.get_run(first)).state is RunState.RUNNING
    await backend.cancel_run(first)


async def test_aclose_cancels_in_flight_runs(server: PostHogFakeServer) -> None:
    server.add_notebook("bg", cells=[LONG_CELL])
    backend = backend_for(server)
    handle = await backend.start_run(RunRequest("bg"))
    await wait_running(server, "bg")
    watcher_runs: list[Run] = []

    async def watch() -> None:
        async with aclosing(backend.watch_run(handle)) as runs:
            async for run in runs:
                watcher_runs.append(run)

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        await anyio.sleep(0.05)
        await backend.aclose()
    assert watcher_runs[-1].state is RunState.CANCELLED
    assert server.remote_cancelled(handle) is True
    assert server.requests_to("POST", r"/notebooks/bg/kernel/stop/$")
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert not any(name.startswith("notebookops posthog run") for name in names)
    with pytest.raises(BackendClosed):
        await backend.get_run(handle)
    with pytest.raises(BackendClosed):
        await backend.client.kernel_status("bg")


async def test_kernel_handles_are_not_resumable(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("r", cells=["1"])
    handle = await backend.start_run(RunRequest("r"))
    await settle(backend, handle)
    async with backend_for(server) as fresh:
        assert Capability.RESUMABLE not in fresh.capabilities
        with pytest.raises(KernelRunNotFound, match="cannot be resumed"):
            await fresh.get_run(RunHandle.from_json(handle.to_json()))
        with pytest.raises(KernelRunNotFound):
            await fresh.cancel_run(handle)
        odd = RunHandle(backend="posthog", run_id="x", notebook_id="r", extra={"mode": "cloud"})
        with pytest.raises(ConfigurationError, match="unknown run mode"):
            await fresh.get_run(odd)


async def test_keeping_the_kernel_keeps_variables_between_runs(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook(
        "state", cells=["counter = globals().get('counter', 0) + 1\nprint(counter)"]
    )
    keep = PostHogRunOptions(stop_kernel_at_end=False)
    await run_and_wait(backend, "state", options=keep, poll=FAST_POLL, timeout=20)
    second = await run_and_wait(backend, "state", options=keep, poll=FAST_POLL, timeout=20)
    assert [o.text for o in second.outputs if o.output_type == "stream"] == ["2\n"]
    assert server.kernel("state").status == "running"
    third = await run_and_wait(backend, "state", poll=FAST_POLL, timeout=20)
    assert [o.text for o in third.outputs if o.output_type == "stream"] == ["3\n"]
    assert server.kernel("state").status == "stopped"


async def test_failing_inputs_cell_is_reported_as_such(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("inp", cells=["print(x)"])
    # A kernel left running without builtins cannot even import json for the inputs cell.
    await backend.client.kernel_execute("inp", "__builtins__ = {}")
    request = RunRequest("inp", inputs={"x": 1})
    run = await run_and_wait(backend, request, poll=FAST_POLL, timeout=20, raise_on_failure=False)
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert run.error.message.startswith("assigning the run's inputs failed")
    assert run.error.cell_index is None
    assert run.error.cell_id == "notebookops-inputs"


# ----------------------------------------------------------------- server mode


async def test_server_mode_success_with_outputs_and_resume(new_server: PostHogFakeServer) -> None:
    server = new_server
    server.add_notebook(
        "srv",
        content=markdown_content(
            markdown_cells(
                ("python", "print('hello', who)"), ("sql", "select 1"), node_ids=["p1", "h1"]
            )
        ),
    )
    async with backend_for(server, mode="server") as first:
        assert Capability.RESUMABLE in first.capabilities
        handle = await first.start_run(RunRequest("srv", inputs={"who": "ann"}))
        assert handle.extra == {"mode": "server", "project_id": "1"}
        saved = handle.to_json()
    async with backend_for(server, mode="server") as second:
        run = await wait_for_run(second, RunHandle.from_json(saved), poll=FAST_POLL, timeout=20)
        again = await second.get_run(RunHandle.from_json(saved))  # cached once terminal
    assert run.state is RunState.SUCCEEDED
    assert run.vendor_state == "done"
    assert [(o.output_type, o.cell_id) for o in run.outputs] == [
        ("stream", "p1"),
        ("execute_result", "h1"),
    ]
    assert run.outputs[0].text == "hello ann\n"
    assert run.progress is not None
    assert (run.progress.completed, run.progress.total) == (2, 2)
    assert again.outputs == run.outputs
    assert len(server.requests_to("GET", r"/sql_v2/runs/")) == 2
    [started] = server.requests_to("POST", r"/notebooks/srv/runs/$")
    assert started.json == {"variables": [{"name": "who", "type": "string", "value": "ann"}]}


async def test_server_mode_failure_cancel_and_watch(new_server: PostHogFakeServer) -> None:
    async with backend_for(new_server) as backend:
        await _server_mode_failure_cancel_and_watch(new_server, backend)


async def _server_mode_failure_cancel_and_watch(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("sfail", cells=["1", "raise ValueError('nope')"], markdown=True)
    server_opts = PostHogRunOptions(mode="server")
    failed = await run_and_wait(
        backend, "sfail", options=server_opts, poll=FAST_POLL, timeout=20, raise_on_failure=False
    )
    assert failed.state is RunState.FAILED
    assert failed.error is not None
    assert failed.error.cell_id == "c1"
    assert failed.error.message == "cell c1 failed: ValueError: nope"
    assert any(o.output_type == "error" for o in failed.outputs)

    server.add_notebook("slong", cells=[LONG_CELL], run_status="warming_up", markdown=True)
    handle = await backend.start_run(RunRequest("slong", options=server_opts))
    seen: list[Run] = []
    async with aclosing(backend.watch_run(handle)) as runs:
        async for run in runs:
            seen.append(run)
            if run.state is RunState.UNKNOWN:
                break
    assert seen[-1].vendor_state == "warming_up"
    await backend.cancel_run(handle)
    final = await settle(backend, handle)
    assert (final.state, final.vendor_state) == (RunState.CANCELLED, "interrupted")
    assert server.remote_cancelled(handle) is True


async def test_server_mode_refusals(server: PostHogFakeServer) -> None:
    server.add_notebook("x", cells=["1"])
    async with backend_for(server, mode="server") as backend:
        with pytest.raises(ConfigurationError, match="not resumable"):
            await backend.start_run(RunRequest("x", options=PostHogRunOptions(mode="kernel")))
        with pytest.raises(UnsupportedOperation) as blocks:
            await backend.start_run(RunRequest("x", blocks=["c0"]))
        assert blocks.value.capability == "block_selection"
        with pytest.raises(ConfigurationError, match="write_outputs, stop_kernel_at_end"):
            await backend.start_run(
                RunRequest(
                    "x", options=PostHogRunOptions(write_outputs=True, stop_kernel_at_end=False)
                )
            )
    assert not server.requests_to("POST", r"/runs/$")


async def test_server_mode_lost_start_is_outcome_unknown(new_server: PostHogFakeServer) -> None:
    server = new_server
    server.add_notebook("lost", cells=[LONG_CELL], markdown=True)
    server.faults.add(Fault("reset_after", method="POST", path=r"/notebooks/lost/runs/$"))
    async with backend_for(server, mode="server") as backend:
        with pytest.raises(StartOutcomeUnknown, match="409") as caught:
            await backend.start_run(RunRequest("lost"))
    assert caught.value.notebook == "lost"
    assert len(server.requests_to("POST", r"/runs/$")) == 1  # never repeated blindly
    [run] = server.server_runs.values()
    run.kernel.stop()


async def test_unreachable_start_is_a_plain_connect_error() -> None:
    backend = PostHogBackend(
        "phx_k",
        project_id="1",
        base_url="http://127.0.0.1:9",
        mode="server",
        retry=RetryPolicy(max_attempts=1),
    )
    async with backend:
        with pytest.raises(ConnectError):
            await backend.start_run(RunRequest("x"))
