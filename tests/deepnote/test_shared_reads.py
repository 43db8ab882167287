"""Concurrent reads of one notebook's runs share one runs-list request (the read coalescer
behind ``DeepnoteBackend.get_run``), counted at the fake server, never timed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from notebookops import (
    BackendClosed,
    PermissionDenied,
    PollPolicy,
    ResponseDecodeError,
    Run,
    RunHandle,
    RunRequest,
    RunState,
    ServerError,
    run_and_wait,
)
from notebookops.backends.deepnote import DeepnoteBackend
from notebookops.testing.deepnote import FakeDeepnoteServer, FakeInput, RunScript, fake_deepnote
from notebookops.testing.server import Fault

LIST = r"^/v2/notebooks/[^/]+/runs$"
READ = r"^/v2/runs/"


@pytest.fixture
async def server() -> AsyncIterator[FakeDeepnoteServer]:
    async with fake_deepnote() as fake:
        yield fake


async def start(backend: DeepnoteBackend, notebook: str, count: int) -> list[RunHandle]:
    return [await backend.start_run(RunRequest(notebook)) for _ in range(count)]


async def read_all(backend: DeepnoteBackend, handles: list[RunHandle]) -> list[Run]:
    """``get_run`` of every handle at once, each in a task of its own."""
    runs: dict[int, Run] = {}

    async def read(index: int, handle: RunHandle) -> None:
        runs[index] = await backend.get_run(handle)

    async with anyio.create_task_group() as group:
        for index, handle in enumerate(handles):
            group.start_soon(read, index, handle)
    return [runs[index] for index in range(len(handles))]


def count(server: FakeDeepnoteServer, path: str) -> int:
    return len(server.requests_to("GET", path))


async def test_twenty_concurrent_waits_on_one_notebook_make_one_request(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend() as backend:
        handles = await start(backend, notebook.id, 20)
        server.hold_runs_list = anyio.Event()
        runs: list[Run] = []

        async def first_half() -> None:
            runs.extend(await read_all(backend, handles[:10]))

        async def second_half() -> None:
            runs.extend(await read_all(backend, handles[10:]))

        async with anyio.create_task_group() as group:
            group.start_soon(first_half)
            await anyio.wait_all_tasks_blocked()  # the list request is held at the server
            assert count(server, LIST) == 1
            group.start_soon(second_half)  # these join the request in flight
            await anyio.wait_all_tasks_blocked()
            server.hold_runs_list.set()
        assert count(server, LIST) == 1
        assert count(server, READ) == 0
        assert server.requests_to("GET", LIST)[0].query == {"pageSize": "100"}
        assert {run.state for run in runs} <= {RunState.PENDING, RunState.RUNNING}
        assert sorted(run.run_id for run in runs) == sorted(h.run_id for h in handles)

    async with server.backend(share_reads=False) as alone:
        await read_all(alone, handles)
    assert count(server, READ) == 20  # what the same reads cost without sharing
    assert count(server, LIST) == 1


async def test_a_listed_runs_state_is_what_its_own_read_says(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend() as shared, server.backend(share_reads=False) as alone:
        handles = await start(shared, notebook.id, 3)
        server.stop_run(handles[2].run_id)  # terminal: read on its own
        await anyio.sleep(0.02)  # past the script's pending phase (10 ms)
        listed = await read_all(shared, handles)
        own = [await alone.get_run(handle) for handle in handles]
    assert count(server, LIST) == 1
    assert [(r.state, r.vendor_state) for r in listed] == [(r.state, r.vendor_state) for r in own]
    assert [r.state for r in listed] == [RunState.RUNNING, RunState.RUNNING, RunState.CANCELLED]
    assert listed[0].created_at == own[0].created_at
    assert listed[0].raw["runId"] == handles[0].run_id


async def test_finished_runs_are_read_on_their_own_with_their_outputs(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend() as backend:
        handles = await start(backend, notebook.id, 4)
        for handle in handles[:2]:
            server.finish_run(handle.run_id)
        runs = await read_all(backend, handles)
    assert count(server, LIST) == 1
    assert count(server, READ) == 2  # the two finished runs, for their snapshots
    assert [r.state for r in runs[:2]] == [RunState.SUCCEEDED] * 2
    assert all(len(r.outputs) == 2 for r in runs[:2])
    assert all(r.state in (RunState.PENDING, RunState.RUNNING) for r in runs[2:])


async def test_a_failed_list_request_reaches_every_read_as_its_typed_error(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    server.faults.add(
        Fault("status", status=403, body={"message": "Insufficient permissions"}, path=LIST)
    )
    caught: list[BaseException] = []
    async with server.backend() as backend:
        handles = await start(backend, notebook.id, 5)

        async def read(handle: RunHandle) -> None:
            try:
                await backend.get_run(handle)
            except PermissionDenied as error:
                caught.append(error)

        async with anyio.create_task_group() as group:
            for handle in handles:
                group.start_soon(read, handle)
    assert count(server, LIST) == 1
    assert count(server, READ) == 0
    assert len(caught) == 5
    assert len({id(error) for error in caught}) == 5  # each read its own instance
    assert all("Insufficient permissions" in str(error) for error in caught)


async def test_a_transient_list_failure_is_retried_by_the_client_for_everyone(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    server.faults.add(Fault("status", status=503, body={"message": "busy"}, path=LIST))
    async with server.backend() as backend:
        runs = await read_all(backend, await start(backend, notebook.id, 3))
    assert count(server, LIST) == 2
    assert all(not run.state.is_terminal for run in runs)


async def test_a_list_request_that_gives_up_fails_every_read(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    server.faults.add(Fault("status", status=502, body={"message": "down"}, path=LIST, times=9))
    async with server.backend() as backend:
        handles = await start(backend, notebook.id, 2)
        with pytest.raises(ExceptionGroup) as caught:
            await read_all(backend, handles)
    assert [type(e) for e in caught.value.exceptions] == [ServerError, ServerError]


async def test_a_lone_read_never_lists(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend() as backend:
        (handle,) = await start(backend, notebook.id, 1)
        for _ in range(3):
            await backend.get_run(handle)
    assert count(server, LIST) == 0
    assert count(server, READ) == 3


async def test_share_reads_false_never_lists(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend(share_reads=False) as backend:
        await read_all(backend, await start(backend, notebook.id, 5))
    assert count(server, LIST) == 0
    assert count(server, READ) == 5


async def test_reads_of_different_notebooks_do_not_share(server: FakeDeepnoteServer) -> None:
    first = server.add_notebook(script=RunScript.long())
    second = server.add_notebook(script=RunScript.long())
    async with server.backend() as backend:
        handles = await start(backend, first.id, 2) + await start(backend, second.id, 1)
        await read_all(backend, handles)
    assert count(server, LIST) == 1  # the first notebook's; the second's read was alone
    assert count(server, READ) == 1


async def test_a_run_not_on_the_page_is_read_on_its_own(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend() as backend:
        (oldest,) = await start(backend, notebook.id, 1)
        for _ in range(100):
            server.start_run_directly(notebook.id)  # started from the app, after ours
        newest = await start(backend, notebook.id, 1)
        runs = await read_all(backend, [oldest, *newest])
    assert count(server, LIST) == 1
    assert [r.path for r in server.requests_to("GET", READ)] == [f"/v2/runs/{oldest.run_id}"]
    assert all(not run.state.is_terminal for run in runs)


async def test_a_cancelled_sender_leaves_the_others_reading_on_their_own(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend() as backend:
        handles = await start(backend, notebook.id, 3)
        server.hold_runs_list = anyio.Event()
        sender = anyio.CancelScope()
        runs: list[Run] = []

        async def first() -> None:
            with sender:
                await backend.get_run(handles[0])

        async def other(handle: RunHandle) -> None:
            runs.append(await backend.get_run(handle))

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            for handle in handles[1:]:
                group.start_soon(other, handle)
            await anyio.wait_all_tasks_blocked()  # all three share the list request held
            sender.cancel()
        server.hold_runs_list.set()
    assert count(server, LIST) == 1
    assert count(server, READ) == 2
    assert len(runs) == 2


@pytest.mark.parametrize("fault", ["invalid_json", "missing_fields"])
async def test_a_malformed_list_is_a_decode_error_for_every_read(
    server: FakeDeepnoteServer, fault: str
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    server.faults.add(Fault(fault, path=LIST))  # type: ignore[arg-type]
    async with server.backend() as backend:
        handles = await start(backend, notebook.id, 3)
        with pytest.raises(ExceptionGroup) as caught:
            await read_all(backend, handles)
    assert [type(e) for e in caught.value.exceptions] == [ResponseDecodeError] * 3
    assert count(server, LIST) == 1


async def cancel_shared_reads(
    server: FakeDeepnoteServer, backend: DeepnoteBackend, handles: list[RunHandle]
) -> anyio.Event:
    """Cancel concurrent reads of ``handles`` while their shared runs list is in flight; the
    server holds the list's answer until the returned event is set."""
    server.hold_runs_list = release = anyio.Event()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            for handle in handles:
                group.start_soon(backend.get_run, handle)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    return release


async def test_closing_the_backend_during_a_shared_read_leaves_nothing_behind(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    backend = server.backend()
    handles = await start(backend, notebook.id, 3)
    release = await cancel_shared_reads(server, backend, handles)
    await backend.aclose()
    release.set()
    with pytest.raises(BackendClosed):
        await backend.get_run(handles[0])
    assert count(server, LIST) == 1


async def test_a_read_after_cancelled_shared_reads_is_still_answered(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend() as backend:
        handles = await start(backend, notebook.id, 3)
        release = await cancel_shared_reads(server, backend, handles)
        release.set()
        with anyio.fail_after(5):  # never left waiting on the abandoned request
            run = await backend.get_run(handles[0])
    assert run.run_id == handles[0].run_id


async def test_concurrent_waits_ride_out_a_failing_list_and_get_their_own_outputs(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(
        script=RunScript.succeed(0.2), inputs=[FakeInput(name="day", value="")]
    )
    server.faults.add(Fault("status", status=502, body={"message": "down"}, path=LIST, times=6))
    poll = PollPolicy(initial=0.02, multiplier=1.0, maximum=0.02, jitter=0.0)
    runs: dict[str, Run] = {}
    async with server.backend() as backend:

        async def one(day: str) -> None:
            request = RunRequest(notebook.id, inputs={"day": day})
            runs[day] = await run_and_wait(backend, request, poll=poll, timeout=30)

        async with anyio.create_task_group() as group:
            for index in range(5):
                group.start_soon(one, f"day-{index}")
    assert all(run.state is RunState.SUCCEEDED for run in runs.values())
    for day, run in runs.items():  # each wait got its own run's outputs
        assert all(f'"day": "{day}"' in (output.text or "") for output in run.outputs)
    assert server.runs_started == 5
    assert not server.faults.scripted
