"""Recorded Deepnote payloads (from the seed OpenAPI and the contract notes) parse into the
models; extra fields are ignored; anything malformed is a ResponseDecodeError."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notebookops import ResponseDecodeError
from notebookops._convert import parse_datetime
from notebookops.backends.deepnote import (
    Me,
    Notebook,
    Project,
    ProjectPage,
    RunDetails,
    RunPage,
    RunStarted,
    Schedule,
)
from notebookops.backends.deepnote._requests import decode
from notebookops.backends.deepnote._wire import ReorderResult
from notebookops.transport import Response

URL = "https://api.deepnote.com/v2/runs/r1?snapshotDelivery=blocks&sig=secret"


def response(data: Any, status: int = 200) -> Response:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return Response(
        status=status,
        headers={"content-type": "application/json"},
        body=body,
        method="GET",
        url=URL,
        vendor="deepnote",
    )


def decode_run(answer: Response) -> RunDetails:
    return decode(answer, RunDetails, envelope="run")


def decode_started(answer: Response) -> RunStarted:
    return decode(answer, RunStarted, envelope="run")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# --------------------------------------------------------------------------- runs


def test_create_run_response_is_flat() -> None:
    started = decode_started(
        response(
            {
                "runId": "2b0c6a0e-8b8f-4a47-9f4e-5d8f0a7c1e11",
                "status": "pending",
                "createdAt": "2026-07-30T08:00:00Z",
            },
            202,
        )
    )
    assert started.run_id == "2b0c6a0e-8b8f-4a47-9f4e-5d8f0a7c1e11"
    assert started.status == "pending"
    assert started.created_at == at("2026-07-30T08:00:00Z")


def test_create_run_response_in_an_envelope_or_with_id() -> None:
    assert decode_started(response({"run": {"runId": "r1", "status": "pending"}})).run_id == "r1"
    assert decode_started(response({"id": "r2", "status": "pending"})).run_id == "r2"


def test_get_run_with_blocks_delivery() -> None:
    payload = {
        "run": {
            "runId": "r1",
            "notebookId": "nb1",
            "projectId": "p1",
            "status": "error",
            "createdAt": "2026-07-30T08:00:00.123456789Z",
            "completedAt": "2026-07-30T08:01:00+00:00",
            "error": None,
            "snapshotStatus": "available",
            "snapshotContent": None,
            "snapshotDownloadUrl": None,
            "snapshotBlocks": [
                {
                    "id": "b1",
                    "type": "code",
                    "outputs": [
                        {"output_type": "stream", "name": "stdout", "text": "hi\n"},
                        {
                            "output_type": "error",
                            "ename": "ValueError",
                            "evalue": "boom",
                            "traceback": ["Traceback...", "ValueError: boom"],
                        },
                    ],
                    "metadata": {"execution_millis": 12},
                    "futureField": True,
                }
            ],
            "someNewField": {"nested": 1},
        },
        "requestId": "abc",
    }
    details = decode_run(response(payload))
    assert details.run_id == "r1"
    assert details.project_id == "p1"
    assert details.finished_at == at("2026-07-30T08:01:00Z")
    assert details.created_at == datetime(2026, 7, 30, 8, 0, 0, 123456, tzinfo=UTC)
    assert details.snapshot_blocks is not None
    assert details.snapshot_blocks[0].outputs[1]["traceback"] == [
        "Traceback...",
        "ValueError: boom",
    ]
    assert details.snapshot_blocks[0].metadata == {"execution_millis": 12}
    assert details.raw["someNewField"] == {"nested": 1}


def test_get_run_seed_shape_uses_finished_at() -> None:
    # The seed OpenAPI: RunEnvelope with Run {runId, notebookId, status, createdAt, finishedAt}.
    details = decode_run(
        response(
            {
                "run": {
                    "runId": "r1",
                    "notebookId": "nb1",
                    "status": "success",
                    "createdAt": "2026-07-30T08:00:00Z",
                    "finishedAt": "2026-07-30T08:02:00Z",
                }
            }
        )
    )
    assert details.finished_at == at("2026-07-30T08:02:00Z")
    assert details.snapshot_status is None


def test_get_run_running_with_nulls() -> None:
    details = decode_run(
        response(
            {
                "run": {
                    "runId": "r1",
                    "status": "running",
                    "completedAt": None,
                    "error": None,
                    "snapshotStatus": "pending",
                }
            }
        )
    )
    assert details.finished_at is None


def test_get_run_nested_snapshot_and_id_fallback() -> None:
    details = decode_run(
        response(
            {
                "id": "r9",
                "status": "success",
                "snapshot": {"snapshotContent": "version: 1.0.0\n", "downloadUrl": "https://s3/x"},
            }
        )
    )
    assert details.run_id == "r9"
    assert details.snapshot_text == "version: 1.0.0\n"
    assert details.download_url == "https://s3/x"


def test_nulls_in_optional_nested_fields_read_as_absent() -> None:
    details = decode_run(
        response(
            {
                "run": {
                    "runId": "r1",
                    "status": "success",
                    "snapshotBlocks": [
                        {"id": "b1", "type": None, "metadata": None, "outputs": None}
                    ],
                }
            }
        )
    )
    assert details.snapshot_blocks is not None
    assert details.snapshot_blocks[0].metadata == {}
    assert details.snapshot_blocks[0].outputs == []


def test_get_run_error_as_object_is_kept() -> None:
    details = decode_run(
        response({"run": {"runId": "r", "status": "error", "error": {"message": "OOM"}}})
    )
    assert details.error == {"message": "OOM"}


def test_notebook_runs_page() -> None:
    page = decode(
        response(
            {
                "runs": [
                    {
                        "runId": "r2",
                        "notebookId": "nb1",
                        "status": "running",
                        "createdAt": "2026-07-30T09:00:00Z",
                        "completedAt": None,
                    },
                    {
                        "runId": "r1",
                        "notebookId": "nb1",
                        "status": "success",
                        "createdAt": "2026-07-30T08:00:00Z",
                        "completedAt": "2026-07-30T08:05:00Z",
                        "triggeredBy": "schedule",
                    },
                ],
                "pagination": {"nextPageToken": "tok", "hasMore": True},
            }
        ),
        RunPage,
    )
    assert [run.run_id for run in page.runs] == ["r2", "r1"]
    assert page.runs[1].finished_at == at("2026-07-30T08:05:00Z")
    assert page.pagination.more
    assert page.pagination.next_page_token == "tok"


# --------------------------------------------------------------------------- notebooks


def test_notebook_with_blocks_and_inputs() -> None:
    payload = {
        "notebook": {
            "id": "0d3a9d1c8a5b4c9e",
            "projectId": "7a1e-uuid",
            "name": "ETL",
            "blocks": [
                {"id": "b1", "type": "input-text", "content": ""},
                {"id": "b2", "type": "code", "content": "print(day)"},
            ],
            "inputs": [
                {"name": "day", "type": "input-date", "value": "2026-01-01", "blockId": "b1"},
                {
                    "name": "regions",
                    "type": "input-select",
                    "value": ["eu"],
                    "options": ["eu", "us"],
                    "multiple": True,
                    "label": "Regions",
                },
                {"name": "n", "type": "input-slider", "value": "5", "min": 0, "max": 10, "step": 1},
            ],
            "lastRun": {"runId": "r1", "status": "success"},
        }
    }
    notebook = decode(response(payload), Notebook, envelope="notebook")
    assert notebook.project_id == "7a1e-uuid"
    assert notebook.blocks is not None
    assert [b.id for b in notebook.blocks] == ["b1", "b2"]
    assert notebook.inputs is not None
    assert notebook.inputs[1].multiple is True
    assert notebook.inputs[0].block_id == "b1"
    assert notebook.raw["lastRun"]["runId"] == "r1"


def test_created_notebook_seed_shape() -> None:
    # The seed: NotebookEnvelope {notebook: {id, name, projectId}}, status 200.
    notebook = decode(
        response({"notebook": {"id": "n", "name": "N", "projectId": "p"}}),
        Notebook,
        envelope="notebook",
    )
    assert notebook.blocks is None


def test_reorder_and_schedule() -> None:
    assert decode(response({"blockIds": ["b2", "b1", "b3"]}), ReorderResult).block_ids == [
        "b2",
        "b1",
        "b3",
    ]
    schedule = decode(
        response(
            {
                "schedule": {
                    "notebookId": "nb1",
                    "cron": "0 9 * * 1-5",
                    "timezone": "America/New_York",
                    "nextRunAt": "2026-08-03T13:00:00Z",
                    "createdAt": "2026-07-30T08:00:00Z",
                    "updatedAt": "2026-07-30T08:00:00Z",
                }
            }
        ),
        Schedule,
        envelope="schedule",
    )
    assert schedule.timezone == "America/New_York"
    assert schedule.next_run_at == at("2026-08-03T13:00:00Z")


# --------------------------------------------------------------------------- projects, me


def test_projects_page_fixture() -> None:
    page = decode(
        response(
            {
                "projects": [
                    {
                        "id": "p1",
                        "name": "Sales",
                        "createdAt": "2026-01-01T00:00:00Z",
                        "updatedAt": "2026-01-02T00:00:00Z",
                        "projectType": "standard",
                        "folder": {
                            "id": "f1",
                            "name": "Team",
                            "path": [{"id": "root", "name": "Root"}],
                            "isPathComplete": True,
                        },
                        "notebooks": [
                            {
                                "id": "n1",
                                "name": "Notebook 1",
                                "isInit": False,
                                "isScheduled": True,
                                "lastRunAt": None,
                            }
                        ],
                    },
                    {"id": "p2", "name": "Other", "folder": None},
                ],
                "pagination": {"pageSize": 50, "nextPageToken": None, "hasMore": False},
            }
        ),
        ProjectPage,
    )
    assert page.projects[0].folder is not None
    assert page.projects[0].folder.path[0].name == "Root"
    assert page.projects[0].notebooks[0].is_scheduled is True
    assert page.projects[1].notebooks == []
    assert page.pagination.page_size == 50
    assert not page.pagination.more


def test_project_in_envelope_and_bare_seed_shape() -> None:
    wrapped = decode(
        response(
            {
                "project": {
                    "id": "p1",
                    "name": "X",
                    "notebooks": [{"id": "n1", "name": "Notebook 1"}],
                    "files": [
                        {"path": "data.csv", "size": 10, "updatedAt": "2026-01-01T00:00:00Z"}
                    ],
                }
            },
            201,
        ),
        Project,
        envelope="project",
    )
    assert wrapped.files[0].size == 10
    bare = decode(
        response({"id": "p1", "name": "X", "projectType": "agent", "folderId": "f1"}),
        Project,
        envelope="project",
    )
    assert bare.folder_id == "f1"


def test_me() -> None:
    me = decode(
        response(
            {
                "apiKey": {"id": "k", "name": "ci"},
                "user": {"id": "u", "email": "a@b.c"},
                "workspace": {"id": "w", "slug": "acme", "name": "Acme"},
                "accessLevel": "editor",
            }
        ),
        Me,
    )
    assert me.workspace.slug == "acme"
    assert me.access_level == "editor"
    assert me.user["email"] == "a@b.c"


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b'{"run": ', b"<html>502</html>"],
)
def test_garbage_json_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(ResponseDecodeError) as caught:
        decode_run(response(body))
    assert "secret" not in str(caught.value)
    assert caught.value.vendor == "deepnote"


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ({"run": {"status": "success"}}, "required field missing @ \\$.run_id"),
        ({"run": {"runId": 5, "status": "success"}}, "expected str"),
        ({"run": {"runId": "r", "status": None}}, "status"),
        ({"run": {"runId": "r", "status": "x", "createdAt": "yesterday"}}, "created_at"),
        ({"run": {"runId": "r", "status": "x", "snapshotBlocks": [{"outputs": []}]}}, "id"),
        ({"run": {"runId": "", "status": "x"}}, "run id is empty"),
        ([1, 2], "expected a JSON object"),
        ("just a string", "expected a JSON object"),
    ],
)
def test_wrong_shapes_are_decode_errors(data: Any, detail: str) -> None:
    with pytest.raises(ResponseDecodeError, match=detail) as caught:
        decode_run(response(data))
    assert caught.value.body
    assert caught.value.status == 200


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        ({"runs": None, "pagination": {}}, RunPage),
        ({"runs": []}, RunPage),
        ({"projects": [{"name": "no id"}], "pagination": {}}, ProjectPage),
        ({"projects": [], "pagination": {"hasMore": "yes"}}, ProjectPage),
        ({"projects": [], "pagination": {"pageSize": True}}, ProjectPage),
        ({"workspace": "w"}, Me),
        ({"notebook": {"id": "n", "inputs": [{"type": "x"}]}}, Notebook),
    ],
)
def test_lists_and_nested_wrong_shapes(data: Any, cls: type[Any]) -> None:
    with pytest.raises(ResponseDecodeError):
        decode(response(data), cls, envelope="notebook" if cls is Notebook else None)


def test_started_without_id_is_a_decode_error() -> None:
    with pytest.raises(ResponseDecodeError, match="run id is empty"):
        decode_started(response({"runId": " ", "status": "pending"}, 202))
    with pytest.raises(ResponseDecodeError, match="run_id"):
        decode_started(response({"status": "pending"}, 202))


# --------------------------------------------------------------------------- timestamps

MOMENTS = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1))


@given(MOMENTS, st.sampled_from([0, 3, 6]))
def test_common_timestamps_read_as_the_moment(moment: datetime, digits: int) -> None:
    if digits == 0:
        moment = moment.replace(microsecond=0)
        text = moment.isoformat() + "Z"
    elif digits == 3:
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        text = moment.isoformat(timespec="milliseconds") + "Z"
    else:
        text = moment.isoformat(timespec="microseconds") + "Z"
    details = decode_run(response({"run": {"runId": "r", "status": "x", "createdAt": text}}))
    assert details.created_at == moment.replace(tzinfo=UTC)
    # The general path (taken once the text is padded) reads it the same way.
    assert parse_datetime(f" {text} ") == parse_datetime(text)


@pytest.mark.parametrize(
    "text", ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00.000Z", "2026-01-01T24:00:00.000000Z"]
)
def test_impossible_timestamps_are_decode_errors(text: str) -> None:
    with pytest.raises(ResponseDecodeError, match="created_at"):
        decode_run(response({"run": {"runId": "r", "status": "x", "createdAt": text}}))
    with pytest.raises(ValueError, match="not an ISO-8601 timestamp"):
        parse_datetime(text)
