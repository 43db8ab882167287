"""DataloreBackend on the loopback fake Datalore server: real transport, lifecycles, faults."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest

from notebookops import (
    AuthenticationError,
    BadRequest,
    ConfigurationError,
    NotFound,
    PermissionDenied,
    PollPolicy,
    ResponseDecodeError,
    RunFailed,
    RunHandle,
    RunRequest,
    RunState,
    RunTimeout,
    ServerError,
    StartOutcomeUnknown,
    run_and_wait,
    start_run,
    wait_for_run,
)
from notebookops.backends.datalore import DataloreBackend, DataloreRunOptions
from notebookops.testing.datalore import (
    DOCUMENTED_RUN_FIELDS,
    FAST_RETRY,
    FakeDataloreServer,
    fake_datalore_server,
)
from notebookops.testing.server import Fault

POLL = PollPolicy(initial=0.01, maximum=0.05)


@pytest.fixture
async def server() -> AsyncIterator[FakeDataloreServer]:
    async with fake_datalore_server() as server:
        server.add_notebook("team/report", name="Report", controls=("day", "n"), duration=0.05)
        server.add_notebook("team/slow", name="Slow", controls=("day", "n"), duration=0.3)
        server.add_notebook("team/broken", duration=0.02, succeed=False)
        server.add_notebook("team/forever", duration=None, in_progress_status="QUEUED")
        server.add_notebook("team/viewonly", access="view")
        server.add_notebook("team/private", access="none")
        yield server


@pytest.fixture
async def backend(server: FakeDataloreServer) -> AsyncIterator[DataloreBackend]:
    async with DataloreBackend(server.token, base_url=server.url, retry=FAST_RETRY) as backend:
        yield backend


async def test_run_with_parameters_and_artifacts(
    backend: DataloreBackend, server: FakeDataloreServer
) -> None:
    updates: list[RunState] = []
    run = await run_and_wait(
        backend,
        "team/slow",
        inputs={"day": "2026-11-22", "n": 3},
        options=DataloreRunOptions(update_report="on success"),
        poll=POLL,
        timeout=10,
        on_update=lambda r: updates.append(r.state),
    )
    assert run.state is RunState.SUCCEEDED
    assert updates[0] is RunState.RUNNING
    assert updates[-1] is RunState.SUCCEEDED
    assert run.started_at is not None
    assert run.finished_at is not None
    assert run.url == f"{server.url}/notebook/team/slow"
    fake = server.runs[run.run_id]
    # Values travel as the documented strings; the strict fake refuses anything else.
    assert fake.parameters == {"day": "2026-11-22", "n": "3"}
    assert fake.update_report == "on success"
    (artifact,) = run.artifacts
    assert artifact.name == "Slow.ipynb"
    assert artifact.url == f"{server.url}/notebook/team/slow/artifacts/{run.run_id}/Slow.ipynb"
    async with (
        aiohttp.ClientSession() as session,
        session.get(artifact.url, headers={"Authorization": f"Bearer {server.token}"}) as reply,
    ):
        assert reply.status == 200
        notebook = await reply.json()
    assert notebook["nbformat"] == 4
    (post,) = server.requests_to("POST", r"^/api/run/v1/notebook$")
    assert post.json == {
        "notebookId": "team/slow",
        "updateReport": "on success",
        "parameters": [{"name": "day", "value": "2026-11-22"}, {"name": "n", "value": "3"}],
    }
    assert post.headers["Authorization"] == f"Bearer {server.token}"


async def test_notebook_url_is_accepted(
    backend: DataloreBackend, server: FakeDataloreServer
) -> None:
    handle = await backend.start_run(RunRequest(server.notebook_url("team/report") + "/"))
    assert handle.notebook_id == "team/report"
    with pytest.raises(ConfigurationError, match=r"this backend talks to 127\.0\.0\.1"):
        await backend.start_run(RunRequest("https://datalore.jetbrains.com/notebook/team/report"))


async def test_failed_run(backend: DataloreBackend) -> None:
    with pytest.raises(RunFailed) as caught:
        await run_and_wait(backend, "team/broken", poll=POLL, timeout=10)
    run = caught.value.run
    assert run is not None
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert "/notebook/team/broken" in run.error.message


async def test_unknown_parameter_is_a_bad_request(
    backend: DataloreBackend, server: FakeDataloreServer
) -> None:
    with pytest.raises(BadRequest) as caught:
        await backend.start_run(RunRequest("team/report", inputs={"dya": "typo"}))
    assert "Unknown parameter 'dya'" in str(caught.value)
    assert "interactive controls" in str(caught.value)
    assert not server.runs


async def test_access_errors(backend: DataloreBackend) -> None:
    with pytest.raises(PermissionDenied, match="view-only access"):
        await backend.start_run(RunRequest("team/viewonly"))
    with pytest.raises(NotFound, match="not shared"):
        await backend.start_run(RunRequest("team/private"))
    with pytest.raises(NotFound, match="not shared"):
        await backend.start_run(RunRequest("team/missing"))
    with pytest.raises(NotFound, match="no such run"):
        await backend.get_run(RunHandle(backend="datalore", run_id="nope", notebook_id="t/n"))


@pytest.mark.parametrize("error_key", ["error", "message"])
async def test_bad_token(error_key: str) -> None:
    async with fake_datalore_server(error_key=error_key) as server:  # type: ignore[arg-type]
        server.add_notebook("team/report")
        async with DataloreBackend("wrong-SECRET", base_url=server.url) as backend:
            with pytest.raises(AuthenticationError) as caught:
                await backend.start_run(RunRequest("team/report"))
    message = str(caught.value)
    assert "missing or invalid" in message
    assert "DATALORE_TOKEN" in message
    assert "wrong-SECRET" not in message
    assert "wrong-SECRET" not in repr(caught.value)


async def test_unknown_in_progress_status_then_success(server: FakeDataloreServer) -> None:
    server.add_notebook("team/odd", duration=0.3, in_progress_status="WARMING_UP")
    async with DataloreBackend(server.token, base_url=server.url) as backend:
        states: list[tuple[RunState, str | None]] = []
        run = await run_and_wait(
            backend,
            "team/odd",
            poll=POLL,
            timeout=10,
            on_update=lambda r: states.append((r.state, r.vendor_state)),
        )
    assert states[0] == (RunState.UNKNOWN, "WARMING_UP")
    assert run.state is RunState.SUCCEEDED


async def test_null_fields_while_running_and_extra_fields() -> None:
    async with fake_datalore_server(null_fields_while_running=True) as server:
        server.add_notebook("team/report", duration=0.3)
        server.extra_status_fields = {"computationId": "c1", "schedule": None}
        async with DataloreBackend(server.token, base_url=server.url) as backend:
            handle = await backend.start_run(RunRequest("team/report"))
            first = await backend.get_run(handle)
            run = await wait_for_run(backend, handle, poll=POLL, timeout=10)
    assert first.state is RunState.RUNNING
    assert first.raw["success"] is None
    assert run.state is RunState.SUCCEEDED
    assert run.raw["computationId"] == "c1"


async def test_computation_mode(backend: DataloreBackend, server: FakeDataloreServer) -> None:
    options = DataloreRunOptions(mode="computation")
    run = await run_and_wait(backend, "team/report", options=options, poll=POLL, timeout=10)
    assert run.state is RunState.SUBMITTED
    assert server.computations == ["team/report"]
    assert not server.requests_to("GET", "/api/run/")
    with pytest.raises(PermissionDenied):
        await backend.start_run(RunRequest("team/viewonly", options=options))


async def test_timeout_leaves_the_run_running(
    backend: DataloreBackend, server: FakeDataloreServer
) -> None:
    # Long enough for a read of the run before the deadline, on a machine that stalls too.
    with pytest.raises(RunTimeout) as caught:
        await run_and_wait(backend, "team/forever", poll=POLL, timeout=1.0)
    error = caught.value
    assert error.cancelled is False
    assert "cannot cancel" in str(error)
    assert "left running" in str(error)
    assert error.run is not None
    assert error.run.state is RunState.PENDING
    assert error.run.vendor_state == "QUEUED"
    assert error.handle is not None
    assert not server.runs[error.handle.run_id].finished


async def test_resume_from_saved_handle(server: FakeDataloreServer) -> None:
    async with DataloreBackend(server.token, base_url=server.url) as first:
        handle = await start_run(first, RunRequest("team/report", inputs={"day": "x"}))
    saved = handle.to_json()
    async with DataloreBackend(server.token, base_url=server.url) as second:
        run = await wait_for_run(second, RunHandle.from_json(saved), poll=POLL, timeout=10)
    assert run.state is RunState.SUCCEEDED
    assert len(server.requests_to("POST", "/api/run/v1/notebook")) == 1


# --------------------------------------------------------------------------- faults


async def test_lost_start_reply_is_never_retried(
    backend: DataloreBackend, server: FakeDataloreServer
) -> None:
    server.faults.add(Fault("reset_after", method="POST", path="^/api/run/v1/notebook$"))
    with pytest.raises(StartOutcomeUnknown) as caught:
        await backend.start_run(RunRequest("team/report"))
    assert len(server.requests_to("POST", "/api/run/v1/notebook")) == 1
    assert len(server.runs) == 1, "the run did start: that is why it must not be retried"
    assert "/notebook/team/report" in str(caught.value)


async def test_start_rate_limited_then_accepted(
    backend: DataloreBackend, server: FakeDataloreServer
) -> None:
    server.faults.status(429, {"error": "slow down"}, headers={"Retry-After": "0"}, method="POST")
    handle = await backend.start_run(RunRequest("team/report"))
    assert len(server.runs) == 1
    assert handle.run_id in server.runs


async def test_start_garbage_reply(backend: DataloreBackend, server: FakeDataloreServer) -> None:
    server.faults.add(Fault("invalid_json", method="POST"))
    with pytest.raises(StartOutcomeUnknown, match="may be running now") as caught:
        await backend.start_run(RunRequest("team/report"))
    assert "HTTP 200" in caught.value.evidence
    assert isinstance(caught.value.__cause__, ResponseDecodeError)
    assert len(server.requests_to("POST", "/api/run/v1/notebook")) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_start_server_error_is_outcome_unknown(
    backend: DataloreBackend, server: FakeDataloreServer, status: int
) -> None:
    """A 5xx may come after Datalore created the run: never a plain (retryable) ServerError."""
    server.faults.status(status, {"error": "overloaded"}, method="POST")
    with pytest.raises(StartOutcomeUnknown) as caught:
        await backend.start_run(RunRequest("team/report"))
    error = caught.value
    assert error.notebook == "team/report"
    assert f"HTTP {status}" in error.evidence
    assert "overloaded" in error.evidence
    assert "cannot list" in error.evidence
    assert f"{server.url}/notebook/team/report" in str(error)
    # Not a ServerError, which retry wrappers take as transient (a retry could run it twice).
    assert not isinstance(error, ServerError | ResponseDecodeError)
    assert len(server.requests_to("POST", "/api/run/v1/notebook")) == 1


# --------------------------------------------------------------------------- status words


async def test_queued_run_is_pending_then_succeeds(server: FakeDataloreServer) -> None:
    server.add_notebook("team/queued", queued=0.3, duration=0.05)
    async with DataloreBackend(server.token, base_url=server.url) as backend:
        handle = await backend.start_run(RunRequest("team/queued"))
        first = await backend.get_run(handle)
        run = await wait_for_run(backend, handle, poll=POLL, timeout=10)
    assert not {"status", "endTime", "success"} & set(first.raw)
    assert first.state is RunState.PENDING
    assert first.error is None
    assert run.state is RunState.SUCCEEDED


async def test_failure_word_without_end_time_fails_at_once(server: FakeDataloreServer) -> None:
    server.add_notebook("team/crash", duration=0.05, succeed=False, finished_status="FAILED")
    async with DataloreBackend(server.token, base_url=server.url) as backend:
        with anyio.fail_after(5):  # not held until the deadline as an unknown word would be
            with pytest.raises(RunFailed) as caught:
                await run_and_wait(backend, "team/crash", poll=POLL, timeout=60)
    run = caught.value.run
    assert run is not None
    assert "endTime" not in run.raw
    assert (run.state, run.vendor_state) == (RunState.FAILED, "FAILED")
    assert run.error is not None
    assert "reported the run as 'FAILED'" in run.error.message


async def test_stop_word_is_cancelled(server: FakeDataloreServer) -> None:
    server.add_notebook("team/stopped", duration=0.01, finished_status="stopped")
    async with DataloreBackend(server.token, base_url=server.url) as backend:
        run = await run_and_wait(
            backend, "team/stopped", poll=POLL, timeout=10, raise_on_failure=False
        )
    assert (run.state, run.vendor_state) == (RunState.CANCELLED, "stopped")


# --------------------------------------------------------------------------- strict requests


async def test_only_set_fields_reach_an_older_strict_server() -> None:
    """An installation older than 2026.1 does not know directFileStorageWrite: a run that
    does not set it must not send it, and one that does gets the server's refusal."""
    older = DOCUMENTED_RUN_FIELDS - {"directFileStorageWrite"}
    async with fake_datalore_server(run_fields=older) as server:
        server.add_notebook("team/report", controls=("flag", "ratio"), duration=0.01)
        async with DataloreBackend(server.token, base_url=server.url) as backend:
            run = await run_and_wait(
                backend,
                "team/report",
                inputs={"flag": True, "ratio": 0.5},
                options=DataloreRunOptions(update_report="never"),
                poll=POLL,
                timeout=10,
            )
            assert run.state is RunState.SUCCEEDED
            with pytest.raises(BadRequest, match="Unrecognized field 'directFileStorageWrite'"):
                await backend.start_run(
                    RunRequest(
                        "team/report", options=DataloreRunOptions(direct_file_storage_write=False)
                    )
                )
    first = server.requests_to("POST", "/api/run/v1/notebook")[0]
    assert first.json == {
        "notebookId": "team/report",
        "updateReport": "never",
        "parameters": [{"name": "flag", "value": "true"}, {"name": "ratio", "value": "0.5"}],
    }
    assert server.runs[run.run_id].parameters == {"flag": "true", "ratio": "0.5"}


async def test_status_faults_are_ridden_out(
    backend: DataloreBackend, server: FakeDataloreServer
) -> None:
    for fault in (
        Fault("status", status=503, method="GET"),
        Fault("reset_before", method="GET"),
        Fault("invalid_json", method="GET"),
        Fault("html", status=502, method="GET"),
        Fault("truncate", method="GET"),
        Fault("wrong_content_type", method="GET"),
    ):
        server.faults.add(fault)
    run = await run_and_wait(backend, "team/report", poll=POLL, timeout=10)
    assert run.state is RunState.SUCCEEDED
    assert not server.faults.scripted


async def test_random_faults_on_status_reads(
    backend: DataloreBackend, server: FakeDataloreServer
) -> None:
    server.faults.randomize(
        seed=7,
        rate=0.5,
        kinds=(
            Fault("status", status=503, method="GET"),
            Fault("status", status=429, headers={"Retry-After": "0"}, method="GET"),
            Fault("delay", delay=0.01, method="GET"),
        ),
    )
    run = await run_and_wait(backend, "team/report", poll=POLL, timeout=10)
    assert run.state is RunState.SUCCEEDED
    assert len(server.requests_to("POST", "/api/run/v1/notebook")) == 1


async def test_fake_server_validates_requests(server: FakeDataloreServer) -> None:
    """The fake rejects what Datalore documents as malformed (checked without the adapter)."""
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/run/v1/notebook"
    bad_bodies: list[object] = [
        [],
        {"notebookId": "team/report", "unknownSetting": 1},
        {"notebookId": "team/report", "parameters": [{"name": "day", "value": 1}]},
        {"notebookId": "team/report", "parameters": [{"name": "day", "value": True}]},
        {"notebookId": "no-slash"},
        {"notebookId": "team/report", "updateReport": "always"},
        {"notebookId": "team/report", "directFileStorageWrite": "yes"},
        {"notebookId": "team/report", "parameters": {"day": 1}},
        {"notebookId": "team/report", "parameters": [{"name": "day"}]},
        {"notebookId": "team/report", "parameters": [{"name": "day", "value": [1]}]},
        {
            "notebookId": "team/report",
            "parameters": [{"name": "day", "value": "a"}, {"name": "day", "value": "b"}],
        },
    ]
    async with aiohttp.ClientSession() as session:
        for body in bad_bodies:
            async with session.post(url, json=body, headers=headers) as reply:
                assert reply.status == 400, body
                assert "error" in await reply.json()
        async with session.post(url, data=b"{", headers=headers) as reply:
            assert reply.status == 400
        computation = f"{server.url}/api/computation/v1/notebook"
        body = {"notebookId": "team/report", "updateReport": "never"}
        async with session.post(computation, json=body, headers=headers) as reply:
            assert reply.status == 400
            assert "Unrecognized field 'updateReport'" in (await reply.json())["error"]
        artifact = f"{server.url}/notebook/team/report/artifacts/run9999/Report.ipynb"
        async with session.get(artifact, headers=headers) as reply:
            assert reply.status == 404
    assert not server.runs
    with pytest.raises(ValueError, match="owner/id"):
        server.add_notebook("no-slash")
