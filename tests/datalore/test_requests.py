"""The Datalore request builders and error hints (pure), and how every status document is
read (through DataloreBackend.get_run, against aioresponses)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import attrs
import pytest
from aioresponses import aioresponses

from notebookops import (
    APIError,
    AuthenticationError,
    BadRequest,
    ConfigurationError,
    NotFound,
    PermissionDenied,
    ResponseDecodeError,
    RunHandle,
    RunState,
    ServerError,
)
from notebookops._api_errors import build_api_error
from notebookops.backends.datalore import (
    DATALORE_STATES,
    DataloreBackend,
    DataloreClient,
    DataloreRunOptions,
)
from notebookops.backends.datalore._requests import (
    artifact_url,
    build_computation_body,
    build_parameters,
    build_run_body,
    check_computation,
    parse_notebook_id,
    submitted_run,
)
from notebookops.backends.datalore.client import PROFILE
from notebookops.models import Run
from notebookops.policies import RetryPolicy

from ._mock import add

BASE = "https://datalore.jetbrains.com"
HANDLE = RunHandle(
    backend="datalore",
    run_id="r1",
    notebook_id="own/nb",
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    web_url=f"{BASE}/notebook/own/nb",
)


NO_RETRY = RetryPolicy(max_attempts=1)


async def to_run(body: Any, handle: RunHandle = HANDLE) -> Run:
    """``body`` as the answer of the run's status read, through the backend."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with DataloreBackend("t", base_url=BASE, retry=NO_RETRY) as backend:
        with aioresponses() as mocked:
            add(mocked, "GET", f"{BASE}/api/run/v1/{handle.run_id}", body=raw)
            return await backend.get_run(handle)


# --------------------------------------------------------------------------- notebook ids


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("own/nb", "own/nb"),
        ("  own/nb \n", "own/nb"),
        ("own/nb/", "own/nb"),
        ("a1-_B.c/Xy~9", "a1-_B.c/Xy~9"),
        (f"{BASE}/notebook/own/nb", "own/nb"),
        (f"{BASE}/notebook/own/nb/", "own/nb"),
        (f"{BASE}/notebook/own/nb/artifacts/run1/x.ipynb", "own/nb"),
        (f"{BASE}/notebook/own/nb?tab=1#cell", "own/nb"),
        ("HTTPS://datalore.jetbrains.com/notebook/own/nb", "own/nb"),
        (f"{BASE}/notebook/o%C3%A9/nb", "oé/nb"),
    ],
)
def test_parse_notebook_id_accepts(value: str, expected: str) -> None:
    assert parse_notebook_id(value, base_url=BASE) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "nb",
        "own/nb/extra",
        "/nb",
        "own/",
        "own//nb",
        "o wn/nb",
        "own/n?b",
        "own/n#b",
        "own/..",
        "./nb",
        "own/n\\b",
        "own/n\x00b",
        f"{BASE}/report/own/nb",
        f"{BASE}/notebook/own",
        f"{BASE}/notebook/own/%2E%2E",
        "ftp://datalore.jetbrains.com/notebook/own/nb",
        "datalore.jetbrains.com/notebook/own/nb",
    ],
)
def test_parse_notebook_id_refuses_with_expected_shape(value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_notebook_id(value, base_url=BASE)
    assert "'owner/id'" in str(caught.value)


@pytest.mark.parametrize("value", [None, 12, ["own", "nb"]])
def test_parse_notebook_id_refuses_non_strings(value: object) -> None:
    with pytest.raises(ConfigurationError, match="'owner/id'"):
        parse_notebook_id(value)


def test_parse_notebook_id_refuses_url_of_another_installation() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_notebook_id("https://datalore.corp.example/notebook/own/nb", base_url=BASE)
    message = str(caught.value)
    assert "datalore.corp.example" in message
    assert "datalore.jetbrains.com" in message
    assert "DATALORE_URL" in message
    # Without a base URL to compare with, any host is accepted.
    assert parse_notebook_id("https://datalore.corp.example/notebook/own/nb") == "own/nb"


def test_parse_notebook_id_on_premises_with_port() -> None:
    url = "https://dl.corp.example:8443/notebook/own/nb"
    assert parse_notebook_id(url, base_url="https://DL.corp.example:8443") == "own/nb"


def test_parse_notebook_id_unreadable_url() -> None:
    with pytest.raises(ConfigurationError, match="unreadable URL"):
        parse_notebook_id("https://[::1/notebook/own/nb")


async def test_web_urls_are_encoded() -> None:
    async with DataloreClient("t", base_url=BASE) as client:
        assert client.notebook_url("own/nb") == f"{BASE}/notebook/own/nb"
        assert client.notebook_url("o%/n b") == f"{BASE}/notebook/o%25/n%20b"
        with pytest.raises(ConfigurationError):
            await client.run_status("..")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/notebook/o/n/artifacts/r/x.ipynb", f"{BASE}/notebook/o/n/artifacts/r/x.ipynb"),
        ("notebook/o/n/x.ipynb", f"{BASE}/notebook/o/n/x.ipynb"),
        ("/notebook/o/n/My report.ipynb", f"{BASE}/notebook/o/n/My%20report.ipynb"),
        ("/notebook/o/n/My%20report.ipynb", f"{BASE}/notebook/o/n/My%20report.ipynb"),
        ("https://cdn.example/x.ipynb", "https://cdn.example/x.ipynb"),
    ],
)
def test_artifact_url(path: str, expected: str) -> None:
    assert artifact_url(BASE, path) == expected


# --------------------------------------------------------------------------- options


def test_options_defaults_are_unset() -> None:
    options = DataloreRunOptions()
    assert options.update_report is None
    assert options.direct_file_storage_write is None
    assert options.mode == "run"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"update_report": "always"},
        {"update_report": "on_success"},
        {"direct_file_storage_write": 1},
        {"direct_file_storage_write": "yes"},
        {"mode": "interactive"},
    ],
)
def test_options_refuse_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="DataloreRunOptions"):
        DataloreRunOptions(**kwargs)


# --------------------------------------------------------------------------- request bodies


def test_run_body_without_settings_is_only_the_notebook() -> None:
    assert build_run_body("own/nb", {}, DataloreRunOptions()) == {"notebookId": "own/nb"}


@pytest.mark.parametrize(
    ("options", "sent"),
    [
        (DataloreRunOptions(update_report="never"), {"updateReport": "never"}),
        (DataloreRunOptions(direct_file_storage_write=False), {"directFileStorageWrite": False}),
        (
            DataloreRunOptions(update_report="on success", direct_file_storage_write=True),
            {"updateReport": "on success", "directFileStorageWrite": True},
        ),
    ],
)
def test_run_body_sends_exactly_the_settings_given(
    options: DataloreRunOptions, sent: dict[str, Any]
) -> None:
    assert build_run_body("own/nb", {}, options) == {"notebookId": "own/nb", **sent}


def test_run_body_parameters_in_order_as_strings() -> None:
    class Colour(StrEnum):
        RED = "red"

    inputs = {
        "Columns": "revenue",
        "n": 3,
        "ratio": 0.5,
        "big": 1e20,
        "flag": True,
        "off": False,
        "colour": Colour.RED,
        "empty": "",
    }
    assert build_run_body("own/nb", inputs, DataloreRunOptions())["parameters"] == [
        {"name": "Columns", "value": "revenue"},
        {"name": "n", "value": "3"},
        {"name": "ratio", "value": "0.5"},
        {"name": "big", "value": "1e+20"},
        {"name": "flag", "value": "true"},
        {"name": "off", "value": "false"},
        {"name": "colour", "value": "red"},
        {"name": "empty", "value": ""},
    ]


@pytest.mark.parametrize("value", [None, ["a"], {"a": 1}, b"x", datetime(2026, 1, 1)])
def test_parameters_refuse_other_types(value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_parameters({"day": value})
    assert "'day'" in str(caught.value)
    assert "str, int, float or bool" in str(caught.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_parameters_refuse_non_finite_floats(value: float) -> None:
    with pytest.raises(ConfigurationError, match="no value a control accepts"):
        build_parameters({"x": value})


def test_computation_body() -> None:
    assert build_computation_body("own/nb") == {"notebookId": "own/nb"}


def test_computation_refuses_inputs_and_run_settings() -> None:
    check_computation({}, DataloreRunOptions(mode="computation"))
    with pytest.raises(ConfigurationError, match="takes no parameters"):
        check_computation({"x": 1}, DataloreRunOptions(mode="computation"))
    for options in (
        DataloreRunOptions(mode="computation", update_report="never"),
        DataloreRunOptions(mode="computation", direct_file_storage_write=False),
    ):
        with pytest.raises(ConfigurationError, match="Run API only"):
            check_computation({}, options)


# --------------------------------------------------------------------------- status responses


async def test_status_running_known() -> None:
    run = await to_run(
        {
            "runId": "r1",
            "userId": "own",
            "notebookId": "nb",
            "startTime": "2026-01-01T10:00:00Z",
            "status": "RUNNING",
            "updateReport": "never",
            "directFileStorageWrite": False,
            "readOnly": False,
        }
    )
    assert run.state is RunState.RUNNING
    assert run.vendor_state == "RUNNING"
    assert run.started_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert run.finished_at is None
    assert run.error is None
    assert run.url == f"{BASE}/notebook/own/nb"
    assert run.raw["userId"] == "own"


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("running", RunState.RUNNING),
        ("IN_PROGRESS", RunState.RUNNING),
        ("Queued", RunState.PENDING),
        ("STARTING", RunState.PENDING),
        ("WARMING_UP", RunState.UNKNOWN),
        ("example", RunState.UNKNOWN),
    ],
)
async def test_status_strings(status: str, state: RunState) -> None:
    run = await to_run({"runId": "r1", "status": status})
    assert run.state is state
    assert run.vendor_state == status


async def test_status_running_with_null_finish_fields() -> None:
    run = await to_run({"runId": "r1", "status": "RUNNING", "endTime": None, "success": None})
    assert run.state is RunState.RUNNING


async def test_status_succeeded_with_artifacts_and_unknown_fields() -> None:
    run = await to_run(
        {
            "runId": "r1",
            "startTime": "2026-01-01T10:00:00Z",
            "endTime": "2026-01-01T10:05:30Z",
            "success": True,
            "artifacts": [
                {"name": "report.ipynb", "path": "/notebook/own/nb/artifacts/r1/report.ipynb"},
                {"path": "/notebook/own/nb/artifacts/r1/data.csv", "size": 12},
                {},
            ],
            "brandNewField": {"nested": True},
        }
    )
    assert run.state is RunState.SUCCEEDED
    assert run.error is None
    assert run.finished_at == datetime(2026, 1, 1, 10, 5, 30, tzinfo=UTC)
    assert [(a.name, a.url, a.path) for a in run.artifacts] == [
        (
            "report.ipynb",
            f"{BASE}/notebook/own/nb/artifacts/r1/report.ipynb",
            "/notebook/own/nb/artifacts/r1/report.ipynb",
        ),
        (
            "data.csv",
            f"{BASE}/notebook/own/nb/artifacts/r1/data.csv",
            "/notebook/own/nb/artifacts/r1/data.csv",
        ),
    ]
    assert run.raw["brandNewField"] == {"nested": True}


async def test_status_failed_explains_missing_reason() -> None:
    run = await to_run({"runId": "r1", "endTime": "2026-01-01T10:05:30Z", "success": False})
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert "unsuccessful" in run.error.message
    assert "no failure reason" in run.error.message
    assert f"{BASE}/notebook/own/nb" in run.error.message


async def test_status_finished_without_success_is_failed() -> None:
    run = await to_run({"runId": "r1", "endTime": "2026-01-01T10:05:30Z"})
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert "without saying whether it succeeded" in run.error.message


@pytest.mark.parametrize(
    "body",
    [
        {"runId": "r1"},
        {"runId": "r1", "userId": "own", "notebookId": "nb", "artifacts": [], "readOnly": False},
        {"runId": "r1", "status": None, "endTime": None, "success": None},
    ],
)
async def test_status_with_none_of_status_end_time_success_is_queued(body: Any) -> None:
    run = await to_run(body)
    assert run.state is RunState.PENDING
    assert run.vendor_state is None
    assert run.error is None


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("FAILED", RunState.FAILED),
        ("error", RunState.FAILED),
        ("Crashed", RunState.FAILED),
        ("CANCELLED", RunState.CANCELLED),
        ("stopped", RunState.CANCELLED),
    ],
)
async def test_terminal_words_without_end_time_end_the_run(word: str, state: RunState) -> None:
    run = await to_run({"runId": "r1", "status": word, "startTime": "2026-01-01T10:00:00Z"})
    assert (run.state, run.vendor_state) == (state, word)
    assert run.finished_at is None
    if state is RunState.FAILED:
        assert run.error is not None
        assert f"reported the run as {word!r}" in run.error.message
        assert f"{BASE}/notebook/own/nb" in run.error.message
    else:
        assert run.error is None


async def test_words_of_success_alone_do_not_end_the_run() -> None:
    """Only ``success: true`` says a run worked; a word alone is followed until it says."""
    run = await to_run({"runId": "r1", "status": "SUCCEEDED"})
    assert run.state is RunState.UNKNOWN


def test_state_table_has_no_word_of_success() -> None:
    assert RunState.SUCCEEDED not in DATALORE_STATES.values()
    assert all(key == key.lower() for key in DATALORE_STATES)


async def test_status_null_counts_as_absent() -> None:
    run = await to_run({"runId": "r1", "status": None, "success": True})
    assert run.state is RunState.SUCCEEDED


async def test_end_time_wins_over_a_lingering_status() -> None:
    run = await to_run({"runId": "r1", "status": "DONE", "endTime": "2026-01-01T10:00:00Z"})
    assert run.state is RunState.FAILED
    assert run.vendor_state == "DONE"
    run = await to_run(
        {"runId": "r1", "status": "DONE", "endTime": "2026-01-01T10:00:00Z", "success": True}
    )
    assert run.state is RunState.SUCCEEDED


async def test_numeric_ids_are_read_as_strings() -> None:
    run = await to_run({"runId": 42, "userId": 7, "status": 3})
    assert run.state is RunState.UNKNOWN
    assert run.vendor_state == "3"


async def test_epoch_timestamps_are_read() -> None:
    run = await to_run({"startTime": 1767261600000, "endTime": 1767261900, "success": True})
    assert run.started_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert run.finished_at == datetime(2026, 1, 1, 10, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"<html><body>502</body></html>",
        [],
        "RUNNING",
        {"success": "true"},
        {"status": {"name": "RUNNING"}},
        {"startTime": "yesterday"},
        {"startTime": True},
        {"artifacts": "report.ipynb"},
        {"artifacts": ["report.ipynb"]},
        {"artifacts": [{"name": ["x"]}]},
        {"runId": 1.5},
        {"readOnly": "no"},
    ],
)
async def test_status_garbage_is_a_decode_error(body: Any) -> None:
    with pytest.raises(ResponseDecodeError) as caught:
        await to_run(body)
    error = caught.value
    assert error.vendor == "datalore"
    assert error.status == 200
    assert error.url == f"{BASE}/api/run/v1/r1"
    assert error.body


async def test_hand_made_handle_with_odd_notebook_id() -> None:
    handle = RunHandle(backend="datalore", run_id="r1", notebook_id="just-an-id")
    run = await to_run({"success": False}, handle)
    assert run.url is None
    assert run.error is not None
    assert "the notebook just-an-id in Datalore" in run.error.message
    with_url = attrs.evolve(handle, notebook_id="own/nb")
    assert (await to_run({"success": False}, with_url)).url == f"{BASE}/notebook/own/nb"


def test_submitted_run() -> None:
    run = submitted_run(HANDLE)
    assert run.state is RunState.SUBMITTED
    assert run.state.is_terminal
    assert run.url == HANDLE.web_url


# --------------------------------------------------------------------------- error hints


def api_error(status: int, body: Any, method: str = "POST") -> APIError:
    return build_api_error(
        PROFILE,
        status=status,
        method=method,
        url=f"{BASE}/api/run/v1/notebook",
        headers={},
        body=json.dumps(body).encode(),
    )


@pytest.mark.parametrize("key", ["error", "message"])
@pytest.mark.parametrize(
    ("status", "method", "cls", "hint"),
    [
        (400, "POST", BadRequest, "interactive controls"),
        (400, "GET", BadRequest, "check the run id"),
        (401, "POST", AuthenticationError, "DATALORE_TOKEN"),
        (401, "GET", AuthenticationError, "Account settings > API tokens"),
        (403, "POST", PermissionDenied, "view-only access"),
        (403, "GET", PermissionDenied, "access to the run's notebook"),
        (404, "POST", NotFound, "not shared with the token's account"),
        (404, "GET", NotFound, "no such run"),
    ],
)
def test_error_hints(key: str, status: int, method: str, cls: type[Exception], hint: str) -> None:
    error = api_error(status, {key: "the vendor's own words"}, method)
    assert type(error) is cls
    assert error.status == status
    assert error.vendor == "datalore"
    assert "the vendor's own words" in str(error)
    assert hint in str(error)
    assert error.data == {key: "the vendor's own words"}


def test_other_statuses_are_left_alone() -> None:
    error = api_error(500, {"error": "boom"})
    assert type(error) is ServerError
    assert str(error).endswith("returned 500: boom")
