"""DeepnoteBackend through the real transport against the loopback fake Deepnote server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from notebookops import (
    AuthenticationError,
    BadRequest,
    ConfigurationError,
    Conflict,
    ConnectError,
    NotFound,
    PermissionDenied,
    PollPolicy,
    ResponseDecodeError,
    RetryPolicy,
    Run,
    RunCancelled,
    RunFailed,
    RunHandle,
    RunRequest,
    RunState,
    RunTimeout,
    StartOutcomeUnknown,
    run_and_wait,
    wait_for_run,
)
from notebookops.backends.deepnote import BlockPlacement, DeepnoteBackend, DeepnoteRunOptions
from notebookops.testing.deepnote import (
    FakeBlock,
    FakeDeepnoteServer,
    FakeInput,
    RunScript,
    fake_deepnote,
)
from notebookops.testing.server import Fault

FAST = PollPolicy(initial=0.01, multiplier=1.5, maximum=0.05)
INPUTS = [
    FakeInput(name="day", type="input-date", value="2026-01-01"),
    FakeInput(name="flag", type="input-checkbox", value=False),
]


@pytest.fixture
async def server() -> AsyncIterator[FakeDeepnoteServer]:
    async with fake_deepnote(second_origin=True) as fake:
        yield fake


@pytest.fixture
async def backend(server: FakeDeepnoteServer) -> AsyncIterator[DeepnoteBackend]:
    async with server.backend() as deepnote:
        yield deepnote


async def drain(items: AsyncIterator[Any], into: list[Any]) -> None:
    async for item in items:
        into.append(item)


async def wait(backend: DeepnoteBackend, notebook: str, **kwargs: Any) -> Run:
    kwargs.setdefault("poll", FAST)
    kwargs.setdefault("timeout", 10)
    return await run_and_wait(backend, notebook, **kwargs)


# --------------------------------------------------------------------------- lifecycles


async def test_success_with_inputs_outputs_and_web_url(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    # Running until an update has shown it running (a timed phase can pass unseen on a
    # stalled machine), then done.
    notebook = server.add_notebook(inputs=INPUTS, script=RunScript.long())
    updates: list[Run] = []

    def update(run: Run) -> None:
        updates.append(run)
        if run.state is RunState.RUNNING:
            server.finish_run(run.run_id)

    run = await wait(
        backend, notebook.id, inputs={"day": "2026-11-22", "flag": True}, on_update=update
    )
    assert run.state is RunState.SUCCEEDED
    assert run.vendor_state == "success"
    assert run.finished_at is not None
    assert run.created_at is not None
    assert run.finished_at >= run.created_at
    code = [b.id for b in notebook.blocks if b.type == "code"]
    assert [o.cell_id for o in run.outputs] == code
    assert all('"day": "2026-11-22", "flag": true' in (o.text or "") for o in run.outputs)
    assert run.outputs[0].cell_index == 2  # after the two input blocks
    assert run.error is None
    # The link Deepnote's own client builds: {slug}-{id}, then "-{project id}".
    assert run.web_url == (
        f"https://deepnote.com/workspace/acme-analytics-{server.workspace['id']}"
        f"/project/-{notebook.project_id}/notebook/{notebook.id}"
    )
    assert {u.state for u in updates} >= {RunState.RUNNING, RunState.SUCCEEDED}
    assert server.runs_started == 1
    posted = server.requests_to("POST", r"^/v2/runs$")
    assert posted[0].json == {
        "notebookId": notebook.id,
        "detached": True,
        "inputs": {"day": "2026-11-22", "flag": True},
    }
    assert posted[0].headers["Authorization"] == "Bearer test-token"
    assert server.requests_to("GET", r"^/v2/runs/")[-1].query == {"snapshotDelivery": "blocks"}


@pytest.mark.parametrize("second_origin", [True, False])
@pytest.mark.parametrize("delivery", ["blocks", "inline", "downloadUrl"])
async def test_every_snapshot_delivery_gives_the_same_outputs(
    delivery: str, second_origin: bool
) -> None:
    async with fake_deepnote(second_origin=second_origin) as server:
        notebook = server.add_notebook(script=RunScript.succeed(0.02))
        async with server.backend(snapshot_delivery=delivery) as backend:
            run = await wait(backend, notebook.id)
        host = server.snapshot_host
    assert run.state is RunState.SUCCEEDED
    assert [o.cell_id for o in run.outputs] == [b.id for b in notebook.blocks]
    assert all(o.output_type == "stream" and o.name == "stdout" for o in run.outputs)
    if delivery == "downloadUrl":
        downloads = (host or server).requests_to("GET", r"^/snapshots/")
        assert downloads, "the snapshot should have been downloaded"
        if second_origin:
            assert all("Authorization" not in r.headers for r in downloads)
        else:
            assert all(r.headers.get("Authorization") == "Bearer test-token" for r in downloads)


@pytest.mark.parametrize("delivery", ["inline", "downloadUrl"])
async def test_yaml_snapshots_give_the_outputs_exactly(delivery: str) -> None:
    text = "line 1\n  indented: yes\n# not a comment\n'quoted' \"x\" \u00fc \U0001f600 \\n\n\n"
    rich = {"text/plain": ["a", "b"], "text/html": "<b>x</b>", "application/json": {"k": [1, None]}}
    async with fake_deepnote(second_origin=True) as server:
        blocks = [
            FakeBlock(
                id="b1",
                outputs=[
                    {"output_type": "stream", "name": "stdout", "text": text},
                    {"output_type": "display_data", "data": rich, "metadata": {}},
                ],
            )
        ]
        notebook = server.add_notebook(blocks=blocks, script=RunScript.succeed(0.01))
        async with server.backend(snapshot_delivery=delivery) as backend:
            run = await wait(backend, notebook.id)
    assert run.state is RunState.SUCCEEDED
    assert [o.text for o in run.outputs] == [text, None]
    assert run.outputs[1].data == rich
    assert run.outputs[1].plain_text == "ab"


@pytest.mark.parametrize("delivery", ["inline", "downloadUrl"])
async def test_a_malformed_snapshot_costs_the_outputs_not_the_run(
    delivery: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with fake_deepnote(second_origin=True) as server:
        server.snapshot_text = "project: [unclosed\n"
        notebook = server.add_notebook(script=RunScript.succeed(0.01))
        async with server.backend(snapshot_delivery=delivery) as backend:
            with caplog.at_level(logging.WARNING, logger="notebookops.deepnote"):
                run = await wait(backend, notebook.id)
    assert run.state is RunState.SUCCEEDED
    assert run.outputs == ()
    assert "could not read the snapshot" in caplog.text
    assert "cannot be read: not YAML" in caplog.text
    assert "X-Amz-Signature=" not in caplog.text.replace("X-Amz-Signature=***", "")


async def test_nulls_in_optional_nested_fields_never_fail_a_succeeded_run(
    server: FakeDeepnoteServer, backend: DeepnoteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 28 item 7: a null in snapshotBlocks[].metadata, outputs[].traceback,
    execution_count or output_type used to fail every status read, and the succeeded run
    was reported as a timeout. Now the run SUCCEEDED, readable outputs are read, and an
    output without a type is kept as it came, with a warning."""
    server.send_nulls = True
    notebook = server.add_notebook(script=RunScript.succeed(0.02))
    with caplog.at_level(logging.WARNING, logger="notebookops.deepnote"):
        run = await wait(backend, notebook.id, timeout=5)
    assert run.state is RunState.SUCCEEDED
    readable = [o for o in run.outputs if "unreadable" not in o.metadata]
    kept = [o for o in run.outputs if "unreadable" in o.metadata]
    assert [o.cell_id for o in readable] == [b.id for b in notebook.blocks]
    assert all(o.traceback == () for o in readable)
    assert [o.output_type for o in kept] == ["unknown", "unknown"]
    assert kept[0].metadata["unreadable"]["output_type"] is None
    assert "2 output(s) could not be read" in caplog.text
    assert server.requests_to("GET", r"^/v2/runs/")[-1].query == {"snapshotDelivery": "blocks"}


@pytest.mark.parametrize("delivery", ["blocks", "inline", "downloadUrl"])
async def test_failure_reason_comes_from_the_snapshot_when_error_is_null(
    server: FakeDeepnoteServer, delivery: str
) -> None:
    notebook = server.add_notebook(script=RunScript.fail(0.02, ename="KeyError", evalue="'region'"))
    async with server.backend(snapshot_delivery=delivery) as backend:
        with pytest.raises(RunFailed) as caught:
            await wait(backend, notebook.id)
    run = caught.value.run
    assert run is not None
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert run.error.message == "KeyError: 'region'"
    assert run.error.name == "KeyError"
    assert run.error.cell_id == notebook.blocks[-1].id
    assert run.error.traceback[-1] == "KeyError: 'region'"
    assert run.error.platform is False
    assert f"in cell 1 ({notebook.blocks[-1].id})" in str(caught.value)
    assert caught.value.handle is not None


async def test_run_error_field_is_used_when_present(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript.fail(0.02, error="Kernel died"))
    run = await wait(backend, notebook.id, raise_on_failure=False)
    assert run.error is not None
    assert run.error.message == "Kernel died"
    assert run.error.name == "ValueError"


async def test_internal_error_is_a_platform_failure(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript(outcome="internal_error"))
    run = await wait(backend, notebook.id, raise_on_failure=False)
    assert run.state is RunState.FAILED
    assert run.vendor_state == "internal_error"
    assert run.error is not None
    assert run.error.platform is True
    assert run.outputs == ()


async def test_a_run_stopped_in_the_app_is_cancelled(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript.long())

    async def stop_when_running(run: Run) -> None:
        if run.state is RunState.RUNNING:
            server.stop_run(run.run_id)

    with pytest.raises(RunCancelled):
        await wait(backend, notebook.id, on_update=stop_when_running)


@pytest.mark.parametrize("outcome", ["success", "error"])
async def test_a_run_finished_by_the_test_ends_now_with_its_outcome(
    server: FakeDeepnoteServer, backend: DeepnoteBackend, outcome: str
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    handle = await backend.start_run(RunRequest(notebook=notebook.id))
    assert (await backend.client.get_run(handle.run_id)).status in ("pending", "running")
    server.finish_run(handle.run_id, outcome)
    details = await backend.client.get_run(handle.run_id)
    assert details.status == outcome
    assert details.finished_at is not None
    assert details.created_at is not None
    assert details.finished_at >= details.created_at
    server.finish_run(handle.run_id, "internal_error")  # over already: left as it was
    assert (await backend.client.get_run(handle.run_id)).status == outcome
    with pytest.raises(ValueError, match="stopped"):
        server.finish_run(handle.run_id, "stopped")  # stop_run is for that


async def test_unknown_status_keeps_waiting_and_timeout_detaches(
    server: FakeDeepnoteServer, backend: DeepnoteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    notebook = server.add_notebook(script=RunScript.unknown("provisioning_gpu"))
    with caplog.at_level(logging.WARNING), pytest.raises(RunTimeout) as caught:
        await wait(backend, notebook.id, timeout=0.3)
    assert caught.value.cancelled is False
    assert "cannot cancel" in str(caught.value)
    last = caught.value.run
    assert last is not None
    assert last.state is RunState.UNKNOWN
    assert last.vendor_state == "provisioning_gpu"
    assert "provisioning_gpu" in caplog.text


async def test_snapshot_pending_after_the_end_is_waited_for(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.02, snapshot_delay=0.15))
    handle = await backend.start_run(RunRequest(notebook=notebook.id))
    run = await wait_for_run(backend, handle, poll=FAST, timeout=10)
    assert run.state is RunState.SUCCEEDED
    assert len(run.outputs) == 2
    raw_states = [r.json for r in server.requests_to("GET", r"^/v2/runs/")]
    assert raw_states  # several reads, the last ones waiting for the snapshot
    assert run.raw["snapshotStatus"] == "available"


async def test_snapshot_still_pending_after_the_bounded_wait(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.01, snapshot_delay=30))
    async with server.backend(snapshot_wait=0.1, snapshot_interval=0.03) as backend:
        run = await wait(backend, notebook.id)
    assert run.state is RunState.SUCCEEDED
    assert run.outputs == ()
    assert run.raw["snapshotStatus"] == "pending"


async def test_unavailable_snapshot_gives_no_outputs(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.01, snapshot=False))
    run = await wait(backend, notebook.id)
    assert run.outputs == ()
    assert run.raw["snapshotStatus"] == "unavailable"


async def test_older_server_without_blocks_delivery(
    server: FakeDeepnoteServer, backend: DeepnoteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    server.blocks_delivery = False
    notebook = server.add_notebook(script=RunScript.succeed(0.01))
    with caplog.at_level(logging.WARNING):
        run = await wait(backend, notebook.id)
    assert len(run.outputs) == 2
    deliveries = [r.query["snapshotDelivery"] for r in server.requests_to("GET", r"^/v2/runs/")]
    assert deliveries[:2] == ["blocks", "downloadUrl"]
    assert set(deliveries[2:]) <= {"downloadUrl"}
    assert "blocks" in caplog.text


async def test_seed_style_finished_at(server: FakeDeepnoteServer, backend: DeepnoteBackend) -> None:
    server.completion_field = "finishedAt"
    notebook = server.add_notebook(script=RunScript.succeed(0.01))
    run = await wait(backend, notebook.id)
    assert run.finished_at is not None


async def test_expired_download_url_costs_outputs_not_the_run(
    server: FakeDeepnoteServer, caplog: pytest.LogCaptureFixture
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.01))
    host = server.snapshot_host
    assert host is not None
    host.faults.add(Fault("status", status=403, body="<Error>Expired</Error>", times=100))
    async with server.backend(snapshot_delivery="downloadUrl") as backend:
        with caplog.at_level(logging.WARNING):
            run = await wait(backend, notebook.id)
    assert run.state is RunState.SUCCEEDED
    assert run.outputs == ()
    assert "could not read the snapshot" in caplog.text
    assert host.files
    for signature, _ in host.files.values():
        assert signature not in caplog.text


# --------------------------------------------------------------------------- validation


async def test_server_validates_inputs_against_the_notebook(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(inputs=INPUTS)
    with pytest.raises(BadRequest, match="unknown input 'nope'"):
        await backend.start_run(RunRequest(notebook=notebook.id, inputs={"nope": "x"}))
    with pytest.raises(BadRequest, match="wrong type for input-checkbox"):
        await backend.start_run(RunRequest(notebook=notebook.id, inputs={"flag": "true"}))
    with pytest.raises(ConfigurationError, match="got int"):
        await backend.start_run(RunRequest(notebook=notebook.id, inputs={"day": 5}))
    with pytest.raises(NotFound, match="Notebook not found"):
        await backend.start_run(RunRequest(notebook="missing"))
    assert server.runs_started == 0


async def test_selected_blocks_run_live(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(
        blocks=[FakeBlock(content="a"), FakeBlock(content="b"), FakeBlock(content="c")],
        script=RunScript.succeed(0.01),
    )
    first, second, third = (b.id for b in notebook.blocks)
    run = await wait(backend, notebook.id, blocks=[second])
    assert [o.cell_id for o in run.outputs] == [second]
    dependent = await wait(
        backend,
        notebook.id,
        blocks=[second],
        options=DeepnoteRunOptions(run_dependent_blocks=True),
    )
    assert [o.cell_id for o in dependent.outputs] == [second, third]
    with pytest.raises(BadRequest, match="unknown blockId"):
        await backend.start_run(RunRequest(notebook=notebook.id, blocks=["zzz"]))
    with pytest.raises(ConfigurationError, match="detached"):
        await backend.start_run(
            RunRequest(
                notebook=notebook.id, blocks=[first], options=DeepnoteRunOptions(detached=True)
            )
        )


async def test_suspended_project_is_a_conflict(server: FakeDeepnoteServer) -> None:
    project = server.add_project(suspended=True)
    notebook = server.add_notebook(project)
    async with server.backend() as backend:
        with pytest.raises(Conflict, match="Project is suspended"):
            await backend.start_run(RunRequest(notebook=notebook.id))


async def test_wrong_token_is_an_authentication_error(server: FakeDeepnoteServer) -> None:
    async with server.backend(token="wrong-key") as backend:
        with pytest.raises(AuthenticationError, match="Unauthorized") as caught:
            await backend.client.me()
    assert "wrong-key" not in str(caught.value) + repr(caught.value)


# --------------------------------------------------------------------------- pagination


async def test_notebook_runs_are_paginated_newest_first(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.01))
    started = [server.start_run_directly(notebook.id).id for _ in range(23)]
    seen = [run.run_id async for run in backend.client.list_notebook_runs(notebook.id, page_size=5)]
    assert seen == list(reversed(started))
    pages = server.requests_to("GET", rf"^/v2/notebooks/{notebook.id}/runs$")
    assert len(pages) == 5
    assert [p.query.get("pageSize") for p in pages] == ["5"] * 5
    assert "pageToken" not in pages[0].query
    assert all("pageToken" in p.query for p in pages[1:])


async def test_projects_are_paginated_and_filtered(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    for index in range(7):
        server.add_project(f"Sales {index}")
    server.add_project("Marketing")
    names = [p.name async for p in backend.client.list_projects(name_contains="sales", page_size=3)]
    assert names == [f"Sales {index}" for index in range(7)]
    everything = [p async for p in backend.client.list_projects()]
    assert len(everything) == 8


async def test_a_server_repeating_its_page_token_is_stopped(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    server.repeat_page_token = True
    notebook = server.add_notebook()
    for _ in range(6):
        server.start_run_directly(notebook.id)
    seen: list[Any] = []
    with pytest.raises(ResponseDecodeError, match="already returned"):
        await drain(backend.client.list_notebook_runs(notebook.id, page_size=2), seen)
    # Page 2 answered with page 1's token again: it is not trusted, and nothing is re-asked.
    assert len(seen) == 2
    assert len(server.requests_to("GET", r"/runs$")) == 2


async def test_invalid_page_token_is_a_bad_request(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    with pytest.raises(BadRequest, match="invalid pageToken"):
        await backend.client.list_projects_page(page_token="forged")


# --------------------------------------------------------------------------- v1


async def test_v1_mode_finds_and_tracks_its_run(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    server.v1_start_delay = 0.1  # the machine takes a moment to start
    notebook = server.add_notebook(script=RunScript.succeed(0.02))
    older = server.start_run_directly(notebook.id)
    await anyio.sleep(0.06)  # finished: a running notebook would ignore the v1 trigger
    run = await wait(backend, notebook.id, options=DeepnoteRunOptions(use_v1=True))
    assert run.state is RunState.SUCCEEDED
    assert run.run_id != older.id
    assert run.run_id == server.runs_of(notebook.id)[-1].id
    assert server.v1_triggers == 1
    assert not server.requests_to("POST", r"^/v2/runs$")
    execute = server.requests_to("POST", r"/execute$")
    assert execute[0].path == f"/v1/projects/{notebook.project_id}/notebooks/{notebook.id}/execute"
    assert run.handle.extra["project_id"] == notebook.project_id
    assert len(run.outputs) == 2


async def test_v1_backend_flag_with_known_project(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.01))
    async with server.backend(use_v1=True) as backend:
        options = DeepnoteRunOptions(project_id=notebook.project_id)
        run = await wait(backend, notebook.id, options=options)
    assert run.state is RunState.SUCCEEDED
    assert not server.requests_to("GET", rf"^/v2/notebooks/{notebook.id}$")


async def test_v1_without_v2_access_is_submitted(server: FakeDeepnoteServer) -> None:
    server.v2_enabled = False
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend(use_v1=True) as backend:
        options = DeepnoteRunOptions(project_id=notebook.project_id)
        run = await wait(backend, notebook.id, options=options, timeout=5)
        assert run.state is RunState.SUBMITTED
        assert run.handle.extra["mode"] == "v1-submitted"
        again = await backend.get_run(RunHandle.from_json(run.handle.to_json()))
        assert again.state is RunState.SUBMITTED
        with pytest.raises(ConfigurationError, match="project_id"):
            await backend.start_run(RunRequest(notebook=notebook.id))
    assert server.v1_triggers == 1
    assert server.runs_started == 1


async def test_v1_on_a_running_notebook_has_no_effect_and_is_submitted(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    server.start_run_directly(notebook.id)
    async with server.backend(use_v1=True, v1_discovery_timeout=0.15) as backend:
        run = await wait(backend, notebook.id)
    assert run.state is RunState.SUBMITTED
    assert server.runs_started == 1


async def test_v1_refuses_inputs_and_v2_options(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(inputs=INPUTS)
    v1 = DeepnoteRunOptions(use_v1=True)
    with pytest.raises(ConfigurationError, match="no inputs"):
        await backend.start_run(RunRequest(notebook=notebook.id, inputs={"day": "x"}, options=v1))
    with pytest.raises(ConfigurationError, match="v2 options"):
        await backend.start_run(
            RunRequest(notebook=notebook.id, options=DeepnoteRunOptions(use_v1=True, detached=True))
        )
    assert server.v1_triggers == 0


async def test_v1_ambiguous_trigger_is_reconciled(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.01))
    server.faults.add(Fault("reset_after", method="POST", path=r"/execute$"))
    async with server.backend(use_v1=True) as backend:
        options = DeepnoteRunOptions(project_id=notebook.project_id)
        run = await wait(backend, notebook.id, options=options)
    assert run.state is RunState.SUCCEEDED
    assert server.v1_triggers == 1


async def test_v1_ambiguous_trigger_without_v2_is_unknown(server: FakeDeepnoteServer) -> None:
    server.v2_enabled = False
    notebook = server.add_notebook()
    server.faults.add(Fault("reset_after", method="POST", path=r"/execute$"))
    async with server.backend(use_v1=True) as backend:
        options = DeepnoteRunOptions(project_id=notebook.project_id)
        with pytest.raises(StartOutcomeUnknown) as caught:
            await backend.start_run(RunRequest(notebook=notebook.id, options=options))
    assert caught.value.evidence == "no v2 runs list to check"
    assert server.v1_triggers == 1


# --------------------------------------------------------------------------- ambiguous starts


async def test_lost_response_is_reconciled_without_a_second_run(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.02))
    server.faults.add(Fault("reset_after", method="POST", path=r"^/v2/runs$"))
    run = await wait(backend, notebook.id)
    assert run.state is RunState.SUCCEEDED
    assert server.runs_started == 1
    assert len(server.requests_to("POST", r"^/v2/runs$")) == 1
    assert run.run_id == server.runs_of(notebook.id)[0].id


async def test_timed_out_start_is_reconciled_when_the_run_appears(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.01))
    server.faults.add(Fault("delay", delay=0.4, method="POST", path=r"^/v2/runs$"))
    async with server.backend(timeout=0.2, reconcile_attempts=30, reconcile_interval=0.05) as bk:
        handle = await bk.start_run(RunRequest(notebook=notebook.id))
        run = await wait_for_run(bk, handle, poll=FAST, timeout=10)
    assert run.state is RunState.SUCCEEDED
    assert server.runs_started == 1
    assert len(server.requests_to("POST", r"^/v2/runs$")) == 1


async def test_server_error_without_a_run_is_outcome_unknown(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook()
    server.faults.status(500, {"message": "Hardware unable to start"}, method="POST")
    with pytest.raises(StartOutcomeUnknown) as caught:
        await backend.start_run(RunRequest(notebook=notebook.id))
    error = caught.value
    assert error.notebook == notebook.id
    assert "Hardware unable to start" in str(error.__cause__)
    assert "read 3: no run created since" in error.evidence
    assert server.runs_started == 0
    assert len(server.requests_to("POST", r"^/v2/runs$")) == 1
    assert len(server.requests_to("GET", r"/runs$")) == 3


async def test_two_candidate_runs_cannot_be_settled(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript.long())
    server.start_run_directly(notebook.id)  # someone clicked "Run" in the app just now
    server.faults.add(Fault("reset_after", method="POST", path=r"^/v2/runs$"))
    with pytest.raises(StartOutcomeUnknown, match="failed ambiguously") as caught:
        await backend.start_run(RunRequest(notebook=notebook.id))
    assert "2 runs were created since the attempt" in caught.value.evidence
    assert server.runs_started == 2
    assert len(server.requests_to("POST", r"^/v2/runs$")) == 1


@pytest.mark.parametrize(("skew", "adopted"), [(5.0, True), (0.5, False)])
async def test_clock_skew_allowance(server: FakeDeepnoteServer, skew: float, adopted: bool) -> None:
    server.clock_offset = -2.0  # Deepnote's clock runs two seconds behind ours
    notebook = server.add_notebook(script=RunScript.long())
    server.faults.add(Fault("reset_after", method="POST", path=r"^/v2/runs$"))
    async with server.backend(clock_skew=skew, reconcile_attempts=2) as backend:
        if adopted:
            handle = await backend.start_run(RunRequest(notebook=notebook.id))
            assert handle.run_id == server.runs_of(notebook.id)[0].id
        else:
            with pytest.raises(StartOutcomeUnknown):
                await backend.start_run(RunRequest(notebook=notebook.id))
    assert server.runs_started == 1


async def test_unreadable_runs_list_is_outcome_unknown(
    server: FakeDeepnoteServer,
) -> None:
    notebook = server.add_notebook()
    server.faults.add(Fault("reset_after", method="POST", path=r"^/v2/runs$"))
    server.faults.add(
        Fault(
            "status",
            status=403,
            body={"message": "Insufficient permissions"},
            method="GET",
            path=r"/runs$",
            times=10,
        )
    )
    async with server.backend(reconcile_attempts=3) as backend:
        with pytest.raises(StartOutcomeUnknown) as caught:
            await backend.start_run(RunRequest(notebook=notebook.id))
    assert "reading the notebook's runs failed" in caught.value.evidence
    assert "Insufficient permissions" in caught.value.evidence
    assert len(server.requests_to("GET", r"/runs$")) == 1  # a 403 is not worth asking again


async def test_connect_error_is_raised_as_is() -> None:
    async with fake_deepnote() as server:
        url = server.url
    backend = DeepnoteBackend(
        "k", base_url=url, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)
    )
    async with backend:
        with pytest.raises(ConnectError):
            await backend.start_run(RunRequest(notebook="nb1"))


# --------------------------------------------------------------------------- faults while waiting


async def test_wait_rides_out_read_faults(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    # The run goes on until every fault has met a read (however slow the machine), then ends.
    notebook = server.add_notebook(script=RunScript.long())
    for fault in (
        Fault(
            "status",
            status=429,
            body={"message": "Rate limit exceeded"},
            headers={"Retry-After": "0.05"},
            method="GET",
        ),
        Fault("status", status=503, body={"message": "unavailable"}, method="GET"),
        Fault("reset_before", method="GET", path=r"^/v2/runs/"),
        Fault("delay", delay=0.05, method="GET"),
        Fault("invalid_json", method="GET", path=r"^/v2/runs/"),
    ):
        server.faults.add(fault)
    async with anyio.create_task_group() as group:

        async def end_once_the_faults_are_spent() -> None:
            while server.faults.scripted or not server.runs:  # noqa: ASYNC110 - the fake sets no event
                await anyio.sleep(0.01)
            for run_id in server.runs:
                server.finish_run(run_id)

        group.start_soon(end_once_the_faults_are_spent)
        run = await wait(backend, notebook.id)
    assert run.state is RunState.SUCCEEDED
    assert server.runs_started == 1
    assert not server.faults.scripted


async def test_handle_resumes_on_another_backend(server: FakeDeepnoteServer) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.05))
    async with server.backend() as first:
        saved = (await first.start_run(RunRequest(notebook=notebook.id))).to_json()
    async with server.backend() as second:
        run = await wait_for_run(second, RunHandle.from_json(saved), poll=FAST, timeout=10)
    assert run.state is RunState.SUCCEEDED
    assert server.runs_started == 1


# --------------------------------------------------------------------------- management


async def test_projects_notebooks_blocks_and_schedules(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    project = await backend.client.create_project("Reporting")
    assert [n.name for n in project.notebooks] == ["Notebook 1"]
    notebook = await backend.client.create_notebook(project.id, "ETL")
    assert notebook.project_id == project.id
    with pytest.raises(Conflict, match="already exists"):
        await backend.client.create_notebook(project.id, "ETL")
    with pytest.raises(NotFound, match="Folder not found"):
        await backend.client.create_project("X", folder_id="nope")

    fake = server.notebooks[notebook.id]
    fake.blocks = [FakeBlock(id=f"b{i}") for i in range(1, 5)]
    order = await backend.client.reorder_blocks(
        notebook.id, ["b4", "b1"], BlockPlacement.after("b2")
    )
    assert order == ["b2", "b4", "b1", "b3"]
    assert await backend.client.reorder_blocks(notebook.id, ["b3"], BlockPlacement.start()) == [
        "b3",
        "b2",
        "b4",
        "b1",
    ]
    with pytest.raises(BadRequest, match="unknown blockId"):
        await backend.client.reorder_blocks(notebook.id, ["zz"], BlockPlacement.end())
    fetched = await backend.client.get_notebook(notebook.id)
    assert fetched.blocks is not None
    assert [b.id for b in fetched.blocks] == ["b3", "b2", "b4", "b1"]

    schedule = await backend.client.upsert_schedule(notebook.id, "0 9 * * 1-5", "Europe/Prague")
    assert schedule.timezone == "Europe/Prague"
    assert schedule.notebook_id == notebook.id
    utc = await backend.client.upsert_schedule(notebook.id, "30 6 * * *")
    assert utc.timezone == "UTC"
    assert utc.created_at == schedule.created_at
    with pytest.raises(BadRequest, match="Invalid cron expression"):
        await backend.client.upsert_schedule(notebook.id, "every day")
    assert {n.id: n.is_scheduled for n in (await backend.client.get_project(project.id)).notebooks}[
        notebook.id
    ]
    # One scheduled notebook per project: removing it through another notebook finds nothing.
    other = project.notebooks[0].id
    assert await backend.client.delete_schedule(other) is False
    assert await backend.client.delete_schedule(notebook.id) is True
    assert await backend.client.delete_schedule(notebook.id) is False
    assert not any(n.is_scheduled for n in (await backend.client.get_project(project.id)).notebooks)
    server.scheduling_enabled = False
    with pytest.raises(PermissionDenied, match="scheduling is not enabled"):
        await backend.client.upsert_schedule(notebook.id, "0 9 * * *")
    assert await backend.client.delete_schedule(notebook.id) is False  # not plan-gated

    full = await backend.client.get_project(project.id)
    assert {n.name for n in full.notebooks} == {"Notebook 1", "ETL"}
    assert full.files
    me = await backend.client.me()
    assert me.workspace.slug == "acme-analytics"
    assert me.access_level == "admin"

    await backend.client.delete_notebook(notebook.id)
    with pytest.raises(NotFound, match="Notebook not found"):
        await backend.client.get_notebook(notebook.id)
    await backend.client.delete_project(project.id)
    with pytest.raises(NotFound, match="Project not found"):
        await backend.client.get_project(project.id)


async def test_web_urls_route_as_deepnotes_own_links(server: FakeDeepnoteServer) -> None:
    """Issue 28 item 9: the workspace segment is {slug}-{id} (a slug alone does not route),
    the project segment "-{id}", the notebook segment its id, as Deepnote's client builds."""
    notebook = server.add_notebook(script=RunScript.long())
    async with server.backend(workspace=None) as plain:
        me = await plain.client.me()
        handle = await plain.start_run(RunRequest(notebook.id))
        assert handle.web_url is None  # no workspace: no guessed link
        assert (await plain.get_run(handle)).web_url is None
    expected = (
        f"https://deepnote.com/workspace/{me.workspace.slug}-{me.workspace.id}"
        f"/project/-{notebook.project_id}/notebook/{notebook.id}"
    )
    for workspace in (f"{me.workspace.slug}-{me.workspace.id}", me.workspace.id):
        async with server.backend(workspace=workspace) as backend:
            # Unknown at the start (no project id given), known from the run's own read.
            assert handle.web_url is None
            run = await backend.get_run(handle)
            assert run.web_url == expected.replace(
                f"{me.workspace.slug}-{me.workspace.id}", workspace
            )
            # A listed read of the notebook's runs, after one read named the project.
            other = await backend.start_run(RunRequest(notebook.id))
            listed = await read_together(backend, [handle, other])
            assert all(r.web_url == run.web_url for r in listed)
            with_project = await backend.start_run(
                RunRequest(notebook.id, options=DeepnoteRunOptions(project_id="a/b"))
            )
            assert with_project.web_url is not None
            assert with_project.web_url.endswith(f"/project/-a%2Fb/notebook/{notebook.id}")
    assert len(server.requests_to("GET", r"/runs$")) == 2


async def read_together(backend: DeepnoteBackend, handles: list[RunHandle]) -> list[Run]:
    runs: list[Run] = []

    async def read(handle: RunHandle) -> None:
        runs.append(await backend.get_run(handle))

    async with anyio.create_task_group() as group:
        for handle in handles:
            group.start_soon(read, handle)
    return runs


async def test_v1_execute_endpoint_starts_a_listed_run(
    server: FakeDeepnoteServer, backend: DeepnoteBackend
) -> None:
    notebook = server.add_notebook(script=RunScript.succeed(0.01))
    await backend.client.execute_v1(notebook.project_id, notebook.id)
    runs = [run async for run in backend.client.list_notebook_runs(notebook.id)]
    assert len(runs) == 1
    assert server.runs_started == 1
    with pytest.raises(NotFound):
        await backend.client.execute_v1(notebook.project_id, "other")
