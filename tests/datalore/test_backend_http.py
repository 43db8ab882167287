"""DataloreBackend against aioresponses: exact requests, and every response shape mapped."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from notebookops import (
    AuthenticationError,
    BackendClosed,
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
    ServerError,
    StartOutcomeUnknown,
    UnsupportedOperation,
    run_and_wait,
)
from notebookops.backends.datalore import (
    DataloreBackend,
    DataloreClient,
    DataloreRunOptions,
    RunStatus,
)
from notebookops.models import Capability
from notebookops.policies import RetryPolicy

from ._mock import add, calls

TOKEN = "dl-SECRET-token-123"
BASE = "https://datalore.jetbrains.com"
RUN_URL = f"{BASE}/api/run/v1/notebook"
COMPUTATION_URL = f"{BASE}/api/computation/v1/notebook"
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)
FAST_POLL = PollPolicy(initial=0.01, maximum=0.05)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATALORE_TOKEN", raising=False)
    monkeypatch.delenv("DATALORE_URL", raising=False)


@pytest.fixture
async def backend() -> AsyncIterator[DataloreBackend]:
    async with DataloreBackend(TOKEN, retry=FAST_RETRY) as backend:
        yield backend


def status_url(run_id: str = "r1") -> str:
    return f"{BASE}/api/run/v1/{run_id}"


RUNNING = {
    "runId": "r1",
    "userId": "own",
    "notebookId": "nb",
    "startTime": "2026-01-01T10:00:00Z",
    "status": "RUNNING",
    "updateReport": "never",
    "directFileStorageWrite": False,
    "artifacts": [],
    "readOnly": False,
}
SUCCEEDED = {
    "runId": "r1",
    "userId": "own",
    "notebookId": "nb",
    "startTime": "2026-01-01T10:00:00Z",
    "endTime": "2026-01-01T10:01:00Z",
    "success": True,
    "updateReport": "never",
    "directFileStorageWrite": False,
    "artifacts": [{"name": "nb.ipynb", "path": "/notebook/own/nb/artifacts/r1/nb.ipynb"}],
    "readOnly": False,
}
FAILED = {**SUCCEEDED, "success": False}


# --------------------------------------------------------------------------- construction


async def test_token_and_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATALORE_TOKEN", TOKEN)
    monkeypatch.setenv("DATALORE_URL", "https://datalore.corp.example/")
    async with DataloreBackend() as backend:
        assert backend.base_url == "https://datalore.corp.example"
        with aioresponses() as mocked:
            add(
                mocked,
                "POST",
                "https://datalore.corp.example/api/run/v1/notebook",
                payload={"runId": "r9"},
            )
            handle = await backend.start_run(RunRequest("own/nb"))
        (call,) = calls(mocked, "POST", "https://datalore.corp.example/api/run/v1/notebook")
        assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert handle.web_url == "https://datalore.corp.example/notebook/own/nb"


async def test_explicit_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATALORE_TOKEN", "from-env")
    monkeypatch.setenv("DATALORE_URL", "https://datalore.corp.example")
    async with DataloreBackend("explicit", base_url=BASE) as backend:
        assert backend.base_url == BASE
        with aioresponses() as mocked:
            add(mocked, "GET", status_url(), payload=RUNNING)
            await backend.get_run(RunHandle(backend="datalore", run_id="r1", notebook_id="o/n"))
        (call,) = calls(mocked, "GET", status_url())
        assert call.kwargs["headers"]["Authorization"] == "Bearer explicit"


async def test_default_base_url_when_env_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATALORE_URL", "")
    async with DataloreBackend(TOKEN) as backend:
        assert backend.base_url == BASE


@pytest.mark.parametrize("token", [None, "", "   "])
def test_missing_token_names_the_variable(token: str | None) -> None:
    with pytest.raises(ConfigurationError, match="DATALORE_TOKEN"):
        DataloreBackend(token)


def test_bad_tokens_are_refused_without_echo() -> None:
    with pytest.raises(ConfigurationError) as caught:
        DataloreBackend("abc def-SECRET")
    assert "SECRET" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="must be a string"):
        DataloreBackend(123)  # type: ignore[arg-type]


def test_plain_http_needs_opt_in() -> None:
    with pytest.raises(ConfigurationError, match="plain http"):
        DataloreBackend(TOKEN, base_url="http://datalore.corp.example")
    backend = DataloreBackend(TOKEN, base_url="http://datalore.corp.example", allow_http=True)
    assert backend.base_url == "http://datalore.corp.example"
    with pytest.raises(ConfigurationError):
        DataloreBackend(TOKEN, base_url="not a url")


async def test_repr_and_capabilities_never_show_the_token(backend: DataloreBackend) -> None:
    assert TOKEN not in repr(backend)
    assert BASE in repr(backend)
    assert backend.name == "datalore"
    assert backend.capabilities == {
        Capability.RUN_STATUS,
        Capability.INPUTS,
        Capability.RESUMABLE,
        Capability.ARTIFACTS,
    }


# --------------------------------------------------------------------------- starting runs


async def test_start_run_exact_request(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, payload={"runId": "r1", "somethingNew": 1})
        handle = await backend.start_run(
            RunRequest("own/nb", inputs={"Columns": "revenue", "n": 3, "on": False})
        )
    (call,) = calls(mocked, "POST", RUN_URL)
    # Only the documented fields, the optional ones only when set; values as strings.
    assert call.kwargs["json"] == {
        "notebookId": "own/nb",
        "parameters": [
            {"name": "Columns", "value": "revenue"},
            {"name": "n", "value": "3"},
            {"name": "on", "value": "false"},
        ],
    }
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Accept"] == "application/json"
    assert handle.backend == "datalore"
    assert handle.run_id == "r1"
    assert handle.notebook_id == "own/nb"
    assert handle.web_url == f"{BASE}/notebook/own/nb"
    assert handle.created_at is not None
    assert handle.extra == {"mode": "run", "base_url": BASE}
    assert RunHandle.from_json(handle.to_json()) == handle


async def test_start_run_with_options_and_notebook_url(backend: DataloreBackend) -> None:
    options = DataloreRunOptions(update_report="on success", direct_file_storage_write=True)
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, payload={"runId": "r2"})
        handle = await backend.start_run(RunRequest(f"{BASE}/notebook/own/nb/", options=options))
    (call,) = calls(mocked, "POST", RUN_URL)
    assert call.kwargs["json"] == {
        "notebookId": "own/nb",
        "updateReport": "on success",
        "directFileStorageWrite": True,
    }
    assert handle.notebook_id == "own/nb"


async def test_start_run_refusals_send_nothing(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        with pytest.raises(ConfigurationError, match="'owner/id'"):
            await backend.start_run(RunRequest("just-an-id"))
        with pytest.raises(ConfigurationError, match="str, int, float or bool"):
            await backend.start_run(RunRequest("own/nb", inputs={"x": [1, 2]}))
        with pytest.raises(ConfigurationError, match="DataloreRunOptions"):
            await backend.start_run(RunRequest("own/nb", options=object()))
        with pytest.raises(UnsupportedOperation, match="BLOCK_SELECTION"):
            await backend.start_run(RunRequest("own/nb", blocks=["b1"]))
        with pytest.raises(ConfigurationError, match="RunRequest"):
            await backend.start_run("own/nb")  # type: ignore[arg-type]
    assert not mocked.requests


@pytest.mark.parametrize("key", ["error", "message"])
@pytest.mark.parametrize(
    ("status", "cls", "hint"),
    [
        (400, BadRequest, "interactive controls"),
        (401, AuthenticationError, "DATALORE_TOKEN"),
        (403, PermissionDenied, "edit access"),
        (404, NotFound, "copy 'owner/id' from the notebook's URL"),
    ],
)
async def test_start_errors_tell_what_to_fix(
    backend: DataloreBackend, key: str, status: int, cls: type[Exception], hint: str
) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, status=status, payload={key: "vendor says no"})
        with pytest.raises(cls) as caught:
            await backend.start_run(RunRequest("own/nb"))
    assert len(calls(mocked, "POST", RUN_URL)) == 1
    message = str(caught.value)
    assert "vendor says no" in message
    assert hint in message
    assert TOKEN not in message


async def test_start_error_without_body_still_explains(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, status=403, body="")
        with pytest.raises(PermissionDenied, match="view-only access"):
            await backend.start_run(RunRequest("own/nb"))


@pytest.mark.parametrize(
    "reply",
    [
        {"body": "<html>welcome</html>", "content_type": "text/html"},
        {"payload": {"id": "r1"}},
        {"payload": {"runId": ""}},
        {"payload": {"runId": None}},
        {"payload": [{"runId": "r1"}]},
    ],
)
async def test_start_garbage_response_is_outcome_unknown(
    backend: DataloreBackend, reply: dict[str, Any]
) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, **reply)
        with pytest.raises(StartOutcomeUnknown) as caught:
            await backend.start_run(RunRequest("own/nb"))
    error = caught.value
    assert "may be running now" in str(error)
    assert f"{BASE}/notebook/own/nb" in str(error)
    assert error.notebook == "own/nb"
    assert "HTTP 200" in error.evidence
    decode = error.__cause__
    assert isinstance(decode, ResponseDecodeError)
    assert decode.status == 200
    assert decode.body[:8] in error.evidence


async def test_start_is_not_retried_after_a_server_error(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, status=503, payload={"error": "busy"})
        add(mocked, "POST", RUN_URL, payload={"runId": "r1"})
        with pytest.raises(StartOutcomeUnknown, match="busy") as caught:
            await backend.start_run(RunRequest("own/nb"))
    assert len(calls(mocked, "POST", RUN_URL)) == 1
    assert "HTTP 503" in caught.value.evidence


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_start_gateway_failure_is_outcome_unknown(
    backend: DataloreBackend, status: int
) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, status=status, body="")
        with pytest.raises(StartOutcomeUnknown) as caught:
            await backend.start_run(RunRequest("own/nb"))
    assert len(calls(mocked, "POST", RUN_URL)) == 1
    assert caught.value.notebook == "own/nb"
    assert f"{BASE}/notebook/own/nb" in str(caught.value)
    assert isinstance(caught.value.__cause__, ServerError)


async def test_start_connection_lost_is_outcome_unknown(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, exception=aiohttp.ServerDisconnectedError())
        add(mocked, "POST", RUN_URL, payload={"runId": "r1"})
        with pytest.raises(StartOutcomeUnknown, match="not retried") as caught:
            await backend.start_run(RunRequest("own/nb"))
    assert len(calls(mocked, "POST", RUN_URL)) == 1
    assert "cannot list a notebook's runs" in caught.value.evidence
    assert "answer was lost" in caught.value.evidence


async def test_start_refused_connection_is_retried(backend: DataloreBackend) -> None:
    refused = aiohttp.ClientConnectorError.__new__(aiohttp.ClientConnectorError)
    OSError.__init__(refused, 111, "refused")
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, exception=refused)
        add(mocked, "POST", RUN_URL, payload={"runId": "r1"})
        handle = await backend.start_run(RunRequest("own/nb"))
    assert handle.run_id == "r1"
    assert len(calls(mocked, "POST", RUN_URL)) == 2


async def test_start_rate_limited_is_retried(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, status=429, headers={"Retry-After": "0"}, body="")
        add(mocked, "POST", RUN_URL, payload={"runId": "r1"})
        handle = await backend.start_run(RunRequest("own/nb"))
    assert handle.run_id == "r1"


# --------------------------------------------------------------------------- computation mode


@pytest.mark.parametrize(
    "reply", [{"body": ""}, {"payload": {}}, {"body": "OK", "content_type": "text/plain"}]
)
async def test_computation_mode(backend: DataloreBackend, reply: dict[str, Any]) -> None:
    options = DataloreRunOptions(mode="computation")
    with aioresponses() as mocked:
        add(mocked, "POST", COMPUTATION_URL, **reply)
        handle = await backend.start_run(RunRequest("own/nb", options=options))
        run = await backend.get_run(handle)
    (call,) = calls(mocked, "POST", COMPUTATION_URL)
    assert call.kwargs["json"] == {"notebookId": "own/nb"}
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert list(mocked.requests) == [("POST", URL(COMPUTATION_URL))]
    assert handle.extra["mode"] == "computation"
    assert handle.run_id.startswith("computation-")
    assert run.state is RunState.SUBMITTED
    assert run.url == f"{BASE}/notebook/own/nb"


async def test_computation_run_and_wait_returns_at_once(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", COMPUTATION_URL, body="")
        run = await run_and_wait(
            backend, "own/nb", options=DataloreRunOptions(mode="computation"), timeout=5
        )
    assert run.state is RunState.SUBMITTED
    assert len(mocked.requests) == 1


async def test_computation_errors_and_refusals(backend: DataloreBackend) -> None:
    options = DataloreRunOptions(mode="computation")
    with aioresponses() as mocked:
        add(mocked, "POST", COMPUTATION_URL, status=403, payload={"message": "read only"})
        with pytest.raises(PermissionDenied, match="view-only"):
            await backend.start_run(RunRequest("own/nb", options=options))
        with pytest.raises(ConfigurationError, match="takes no parameters"):
            await backend.start_run(RunRequest("own/nb", inputs={"x": 1}, options=options))
        add(mocked, "POST", COMPUTATION_URL, exception=aiohttp.ServerDisconnectedError())
        with pytest.raises(StartOutcomeUnknown):
            await backend.start_run(RunRequest("own/nb", options=options))


# --------------------------------------------------------------------------- run status


def handle_for(run_id: str = "r1") -> RunHandle:
    return RunHandle(
        backend="datalore",
        run_id=run_id,
        notebook_id="own/nb",
        web_url=f"{BASE}/notebook/own/nb",
        extra={"mode": "run", "base_url": BASE},
    )


async def test_status_running(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "GET", status_url(), payload=RUNNING)
        run = await backend.get_run(handle_for())
    (call,) = calls(mocked, "GET", status_url())
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert call.kwargs["json"] is None
    assert run.state is RunState.RUNNING
    assert run.vendor_state == "RUNNING"
    assert not run.artifacts
    assert run.raw == RUNNING


async def test_status_succeeded(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "GET", status_url(), payload={**SUCCEEDED, "futureField": [1]})
        run = await backend.get_run(handle_for())
    assert run.state is RunState.SUCCEEDED
    assert run.vendor_state is None
    assert run.finished_at is not None
    (artifact,) = run.artifacts
    assert artifact.name == "nb.ipynb"
    assert artifact.url == f"{BASE}/notebook/own/nb/artifacts/r1/nb.ipynb"


async def test_status_failed(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "GET", status_url(), payload=FAILED)
        run = await backend.get_run(handle_for())
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert f"{BASE}/notebook/own/nb" in run.error.message


async def test_status_unknown_string_is_logged_once(
    backend: DataloreBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="notebookops.backend")
    with aioresponses() as mocked:
        add(mocked, "GET", status_url(), payload={**RUNNING, "status": "WARMING_UP"}, repeat=2)
        first = await backend.get_run(handle_for())
        second = await backend.get_run(handle_for())
    assert first.state is second.state is RunState.UNKNOWN
    assert first.vendor_state == "WARMING_UP"
    assert len([r for r in caplog.records if "WARMING_UP" in r.getMessage()]) == 1


async def test_status_run_id_is_path_encoded(backend: DataloreBackend) -> None:
    url = f"{BASE}/api/run/v1/a%2Fb%3Fc"
    with aioresponses() as mocked:
        add(mocked, "GET", url, payload=RUNNING)
        await backend.get_run(handle_for("a/b?c"))
    assert list(mocked.requests) == [("GET", URL(url, encoded=True))]


@pytest.mark.parametrize("key", ["error", "message"])
@pytest.mark.parametrize(
    ("status", "cls", "hint"),
    [
        (400, BadRequest, "check the run id"),
        (401, AuthenticationError, "DATALORE_TOKEN"),
        (403, PermissionDenied, "access to the run's notebook"),
        (404, NotFound, "no such run"),
    ],
)
async def test_status_errors_tell_what_to_fix(
    backend: DataloreBackend, key: str, status: int, cls: type[Exception], hint: str
) -> None:
    with aioresponses() as mocked:
        add(mocked, "GET", status_url(), status=status, payload={key: "vendor says no"})
        with pytest.raises(cls) as caught:
            await backend.get_run(handle_for())
    assert "vendor says no" in str(caught.value)
    assert hint in str(caught.value)
    assert len(calls(mocked, "GET", status_url())) == 1


async def test_status_garbage(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "GET", status_url(), body="<html>maintenance</html>", content_type="text/html")
        with pytest.raises(ResponseDecodeError):
            await backend.get_run(handle_for())
        add(mocked, "GET", status_url(), payload={"success": "yes"})
        with pytest.raises(ResponseDecodeError, match="success"):
            await backend.get_run(handle_for())


async def test_status_read_is_retried(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "GET", status_url(), status=503, body="")
        add(mocked, "GET", status_url(), exception=aiohttp.ServerDisconnectedError())
        add(mocked, "GET", status_url(), payload=SUCCEEDED)
        run = await backend.get_run(handle_for())
    assert run.state is RunState.SUCCEEDED
    assert len(calls(mocked, "GET", status_url())) == 3


async def test_handle_checks(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        other = RunHandle(
            backend="datalore",
            run_id="r1",
            notebook_id="own/nb",
            extra={"mode": "run", "base_url": "https://datalore.corp.example"},
        )
        with pytest.raises(ConfigurationError, match=r"base_url='https://datalore.corp.example'"):
            await backend.get_run(other)
        odd = RunHandle(backend="datalore", run_id="r1", notebook_id="o/n", extra={"mode": "x"})
        with pytest.raises(ConfigurationError, match="mode"):
            await backend.get_run(odd)
        with pytest.raises(ConfigurationError, match="deepnote"):
            await backend.get_run(RunHandle(backend="deepnote", run_id="r1", notebook_id="n"))
    assert not mocked.requests


async def test_cancel_is_unsupported(backend: DataloreBackend) -> None:
    with pytest.raises(UnsupportedOperation) as caught:
        await backend.cancel_run(handle_for())
    assert caught.value.capability == "cancel"
    assert "no cancel endpoint" in str(caught.value)
    assert f"{BASE}/notebook/own/nb" in str(caught.value)
    odd = RunHandle(backend="datalore", run_id="r1", notebook_id="just-an-id")
    with pytest.raises(UnsupportedOperation, match="no cancel endpoint"):
        await backend.cancel_run(odd)


# --------------------------------------------------------------------------- end to end


async def test_run_and_wait_follows_status_to_success(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, payload={"runId": "r1"})
        add(mocked, "GET", status_url(), payload=RUNNING)
        add(mocked, "GET", status_url(), payload={**RUNNING, "endTime": None, "success": None})
        add(mocked, "GET", status_url(), payload=SUCCEEDED)
        run = await run_and_wait(backend, "own/nb", inputs={"Columns": "x"}, poll=FAST_POLL)
    assert run.state is RunState.SUCCEEDED
    assert len(calls(mocked, "GET", status_url())) == 3


async def test_run_and_wait_failure(backend: DataloreBackend) -> None:
    with aioresponses() as mocked:
        add(mocked, "POST", RUN_URL, payload={"runId": "r1"})
        add(mocked, "GET", status_url(), payload=FAILED)
        with pytest.raises(RunFailed) as caught:
            await run_and_wait(backend, "own/nb", poll=FAST_POLL)
    assert "no failure reason" in str(caught.value)
    assert caught.value.handle is not None
    assert caught.value.handle.run_id == "r1"


async def test_closed_backend(backend: DataloreBackend) -> None:
    await backend.aclose()
    await backend.aclose()
    assert "closed" in repr(backend)
    with pytest.raises(BackendClosed):
        await backend.start_run(RunRequest("own/nb"))
    with pytest.raises(BackendClosed):
        await backend.get_run(handle_for())


# --------------------------------------------------------------------------- the client


async def test_client_endpoints_exact_requests() -> None:
    async with DataloreClient(TOKEN, retry=FAST_RETRY) as client:
        assert TOKEN not in repr(client)
        with aioresponses() as mocked:
            add(mocked, "POST", RUN_URL, payload={"runId": "r7"})
            add(mocked, "GET", status_url("r7"), payload={**RUNNING, "runId": "r7"})
            add(mocked, "POST", COMPUTATION_URL, body="")
            run_id = await client.start_run(
                f"{BASE}/notebook/own/nb",
                {"big": 1e20, "ratio": 0.25, "on": True, "n": -3},
                update_report="on success",
                direct_file_storage_write=False,
            )
            status = await client.run_status(run_id)
            await client.start_computation("own/nb")
        (start,) = calls(mocked, "POST", RUN_URL)
        assert start.kwargs["json"] == {
            "notebookId": "own/nb",
            "updateReport": "on success",
            "directFileStorageWrite": False,
            "parameters": [
                {"name": "big", "value": "1e+20"},
                {"name": "ratio", "value": "0.25"},
                {"name": "on", "value": "true"},
                {"name": "n", "value": "-3"},
            ],
        }
        (computation,) = calls(mocked, "POST", COMPUTATION_URL)
        assert computation.kwargs["json"] == {"notebookId": "own/nb"}
    assert run_id == "r7"
    assert isinstance(status, RunStatus)
    assert (status.run_id, status.status, status.success) == ("r7", "RUNNING", None)
    assert status.raw == {**RUNNING, "runId": "r7"}
    assert client.notebook_url("own/nb") == f"{BASE}/notebook/own/nb"


async def test_backend_over_a_given_client() -> None:
    client = DataloreClient(TOKEN, retry=FAST_RETRY)
    async with DataloreBackend(client=client) as backend:
        assert backend.client is client
        with aioresponses() as mocked:
            add(mocked, "POST", RUN_URL, payload={"runId": "r1"})
            handle = await backend.start_run(RunRequest("own/nb"))
        assert handle.extra == {"mode": "run", "base_url": BASE}
    # The caller's client is left open for the caller to close.
    with aioresponses() as mocked:
        add(mocked, "GET", status_url(), payload=RUNNING)
        assert (await client.run_status("r1")).status == "RUNNING"
    await client.aclose()
    with pytest.raises(ConfigurationError, match="not both"):
        DataloreBackend(TOKEN, client=client)
    with pytest.raises(ConfigurationError, match="expected a DataloreClient"):
        DataloreBackend(client=object())  # type: ignore[arg-type]
