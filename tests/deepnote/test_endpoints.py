"""Every DeepnoteClient endpoint with aioresponses: exact method, URL (query included), headers
and JSON body; each error status mapped to the tree with the vendor's message; the backend's
start at the HTTP level; configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from aioresponses import aioresponses
from aioresponses.compat import normalize_url

from notebookops import (
    APIError,
    AuthenticationError,
    BackendClosed,
    BadRequest,
    ConfigurationError,
    Conflict,
    ConnectError,
    ConnectionLost,
    NotFound,
    PermissionDenied,
    RateLimited,
    RateLimiter,
    ResponseDecodeError,
    RetryPolicy,
    RunRequest,
    ServerError,
    StartOutcomeUnknown,
    UnsupportedOperation,
)
from notebookops.backends.deepnote import (
    DEFAULT_BASE_URL,
    TOKEN_ENV,
    URL_ENV,
    BlockPlacement,
    DeepnoteBackend,
    DeepnoteClient,
    DeepnoteOptions,
    DeepnoteRunOptions,
)

API = "https://api.deepnote.com"
KEY = "dn_live_0123456789abcdef"
NOW = "2026-07-30T08:00:00Z"


def make(**kwargs: Any) -> DeepnoteClient:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=1))
    return DeepnoteClient(KEY, **kwargs)


def make_backend(**options: Any) -> DeepnoteBackend:
    return DeepnoteBackend(
        KEY, retry=RetryPolicy(max_attempts=1), options=DeepnoteOptions(**options)
    )


def single_call(mocked: aioresponses, method: str, url: str) -> dict[str, Any]:
    """The kwargs of the one request made to ``method url`` (query must match exactly)."""
    calls = mocked.requests.get((method, normalize_url(url)), [])
    assert len(calls) == 1, (
        f"expected one {method} {url}, got {len(calls)}: {list(mocked.requests)}"
    )
    kwargs: dict[str, Any] = calls[0].kwargs
    return kwargs


def assert_headers(kwargs: dict[str, Any], *, auth: bool = True) -> None:
    headers = kwargs["headers"]
    assert headers["Accept"]
    assert headers["User-Agent"].startswith("notebookops/")
    if auth:
        assert headers["Authorization"] == f"Bearer {KEY}"
    else:
        assert "Authorization" not in headers


async def drain(items: AsyncIterator[Any], into: list[Any]) -> None:
    async for item in items:
        into.append(item)


def total_requests(mocked: aioresponses) -> int:
    return sum(len(calls) for calls in mocked.requests.values())


# --------------------------------------------------------------------------- runs


async def test_create_run_whole_notebook() -> None:
    with aioresponses() as mocked:
        mocked.post(
            f"{API}/v2/runs",
            status=202,
            payload={"runId": "r1", "status": "pending", "createdAt": NOW},
        )
        async with make() as backend:
            started = await backend.create_run(
                "nb1",
                inputs={"day": "2026-01-01", "flag": True},
                options=DeepnoteRunOptions(detached_run_storage_mode="readonly"),
            )
        kwargs = single_call(mocked, "POST", f"{API}/v2/runs")
    assert started.run_id == "r1"
    assert_headers(kwargs)
    assert kwargs["json"] == {
        "notebookId": "nb1",
        "detached": True,
        "detachedRunStorageMode": "readonly",
        "inputs": {"day": "2026-01-01", "flag": True},
    }


async def test_create_run_selected_blocks() -> None:
    with aioresponses() as mocked:
        mocked.post(f"{API}/v2/runs", status=202, payload={"runId": "r1", "status": "pending"})
        async with make() as backend:
            await backend.create_run(
                "nb1",
                blocks=["b2", "b1"],
                options=DeepnoteRunOptions(run_dependent_blocks=False),
            )
        kwargs = single_call(mocked, "POST", f"{API}/v2/runs")
    assert kwargs["json"] == {
        "notebookId": "nb1",
        "blockIds": ["b2", "b1"],
        "detached": False,
        "runDependentBlocks": False,
    }


async def test_create_run_is_never_retried_on_a_server_error() -> None:
    with aioresponses() as mocked:
        mocked.post(f"{API}/v2/runs", status=502, payload={"message": "Bad gateway"}, repeat=True)
        async with make(retry=RetryPolicy(max_attempts=5, initial_backoff=0.01)) as backend:
            with pytest.raises(ServerError, match="Bad gateway"):
                await backend.create_run("nb1")
        single_call(mocked, "POST", f"{API}/v2/runs")


async def test_create_run_is_retried_after_429() -> None:
    with aioresponses() as mocked:
        mocked.post(
            f"{API}/v2/runs",
            status=429,
            payload={"message": "Rate limit exceeded"},
            headers={"Retry-After": "0"},
        )
        mocked.post(f"{API}/v2/runs", status=202, payload={"runId": "r1", "status": "pending"})
        async with make(retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as backend:
            started = await backend.create_run("nb1")
        assert started.run_id == "r1"
        assert len(mocked.requests[("POST", normalize_url(f"{API}/v2/runs"))]) == 2


@pytest.mark.parametrize("delivery", ["blocks", "inline", "downloadUrl"])
async def test_get_run(delivery: Any) -> None:
    url = f"{API}/v2/runs/r1?snapshotDelivery={delivery}"
    with aioresponses() as mocked:
        mocked.get(url, payload={"run": {"runId": "r1", "status": "running"}})
        async with make() as backend:
            details = await backend.get_run("r1", snapshot_delivery=delivery)
        assert_headers(single_call(mocked, "GET", url))
    assert details.status == "running"


async def test_get_run_asks_for_blocks_by_default_and_refuses_unknown_deliveries() -> None:
    url = f"{API}/v2/runs/r1?snapshotDelivery=blocks"
    with aioresponses() as mocked:
        mocked.get(url, payload={"run": {"runId": "r1", "status": "running"}})
        async with make() as backend:
            await backend.get_run("r1")
            with pytest.raises(ConfigurationError, match="snapshot_delivery"):
                await backend.get_run("r1", snapshot_delivery="zip")  # type: ignore[arg-type]
        single_call(mocked, "GET", url)


async def test_identifiers_are_path_encoded() -> None:
    url = f"{API}/v2/runs/a%2Fb%3Fc?snapshotDelivery=blocks"
    with aioresponses() as mocked:
        mocked.get(url, payload={"run": {"runId": "a/b?c", "status": "running"}})
        async with make() as backend:
            await backend.get_run("a/b?c")
            with pytest.raises(ConfigurationError, match="run id"):
                await backend.get_run("..")
            with pytest.raises(ConfigurationError, match="notebook id"):
                await backend.get_notebook("")
        single_call(mocked, "GET", url)


async def test_fetch_snapshot_cross_origin_has_no_authorization() -> None:
    url = "https://deepnote-snapshots.s3.amazonaws.com/r1.snapshot.deepnote?X-Amz-Signature=s3cr3t"
    with aioresponses() as mocked:
        mocked.get(url, body="version: 1.0.0\n", content_type="application/x-yaml")
        async with make() as backend:
            text = await backend.fetch_snapshot(url)
        kwargs = single_call(mocked, "GET", url)
    assert text == "version: 1.0.0\n"
    assert_headers(kwargs, auth=False)


async def test_fetch_snapshot_same_origin_keeps_authorization() -> None:
    url = f"{API}/v2/snapshots/r1"
    with aioresponses() as mocked:
        mocked.get(url, body="version: 1.0.0\n")
        async with make() as backend:
            await backend.fetch_snapshot(url)
        assert_headers(single_call(mocked, "GET", url))


async def test_fetch_snapshot_errors() -> None:
    url = "https://s3.example.com/x?X-Amz-Signature=secret"
    with aioresponses() as mocked:
        mocked.get(url, body=b"\xff\xfe", content_type="application/octet-stream")
        mocked.get(url, status=403, body="<Error>Expired</Error>")
        async with make() as backend:
            with pytest.raises(ResponseDecodeError, match="not UTF-8") as decode_error:
                await backend.fetch_snapshot(url)
            with pytest.raises(PermissionDenied) as denied:
                await backend.fetch_snapshot(url)
            with pytest.raises(ConfigurationError):
                await backend.fetch_snapshot("")
            with pytest.raises(ConfigurationError, match="only https"):
                await backend.fetch_snapshot("http://s3.example.com/x")
    for error in (decode_error.value, denied.value):
        assert "secret" not in str(error)


# --------------------------------------------------------------------------- notebook runs


async def test_list_notebook_runs_follows_pages() -> None:
    first = f"{API}/v2/notebooks/nb1/runs?pageSize=2"
    second = f"{API}/v2/notebooks/nb1/runs?pageSize=2&pageToken=t%2B1"
    run = {"notebookId": "nb1", "status": "success", "createdAt": NOW, "completedAt": NOW}
    with aioresponses() as mocked:
        mocked.get(
            first,
            payload={
                "runs": [{**run, "runId": "r3"}, {**run, "runId": "r2"}],
                "pagination": {"nextPageToken": "t+1", "hasMore": True},
            },
        )
        mocked.get(
            second,
            payload={
                "runs": [{**run, "runId": "r1"}],
                "pagination": {"nextPageToken": None, "hasMore": False},
            },
        )
        async with make() as backend:
            ids = [
                summary.run_id async for summary in backend.list_notebook_runs("nb1", page_size=2)
            ]
        assert_headers(single_call(mocked, "GET", first))
        single_call(mocked, "GET", second)
    assert ids == ["r3", "r2", "r1"]


async def test_list_notebook_runs_page() -> None:
    url = f"{API}/v2/notebooks/nb1/runs?pageSize=100&pageToken=abc"
    with aioresponses() as mocked:
        mocked.get(url, payload={"runs": [], "pagination": {"hasMore": False}})
        async with make() as backend:
            page = await backend.list_notebook_runs_page("nb1", page_size=100, page_token="abc")
        single_call(mocked, "GET", url)
    assert page.runs == []


async def test_repeated_page_token_stops_iteration() -> None:
    url = f"{API}/v2/projects?pageSize=50"
    again = f"{API}/v2/projects?pageSize=50&pageToken=same"
    page = {"projects": [{"id": "p1"}], "pagination": {"nextPageToken": "same", "hasMore": True}}
    with aioresponses() as mocked:
        mocked.get(url, payload=page)
        mocked.get(again, payload=page, repeat=True)
        async with make() as backend:
            seen: list[Any] = []
            with pytest.raises(ResponseDecodeError, match="already returned"):
                await drain(backend.list_projects(), seen)
        single_call(mocked, "GET", again)
    assert [project.id for project in seen] == ["p1"]


async def test_page_size_validated_before_any_request() -> None:
    with aioresponses() as mocked:
        async with make() as backend:
            with pytest.raises(ConfigurationError, match="page_size"):
                backend.list_notebook_runs("nb1", page_size=101)
            with pytest.raises(ConfigurationError, match="page_size"):
                backend.list_projects(page_size=0)
            with pytest.raises(ConfigurationError, match="page_size"):
                await backend.list_projects_page(page_size=500)
            with pytest.raises(ConfigurationError, match="name_contains"):
                backend.list_projects(name_contains=5)  # type: ignore[arg-type]
        assert total_requests(mocked) == 0


# --------------------------------------------------------------------------- notebooks


@pytest.mark.parametrize("status", [201, 200])
async def test_create_notebook_accepts_201_and_200(status: int) -> None:
    with aioresponses() as mocked:
        mocked.post(
            f"{API}/v2/notebooks",
            status=status,
            payload={"notebook": {"id": "n1", "projectId": "p1", "name": "ETL"}},
        )
        async with make() as backend:
            notebook = await backend.create_notebook("p1", "ETL")
        kwargs = single_call(mocked, "POST", f"{API}/v2/notebooks")
    assert_headers(kwargs)
    assert kwargs["json"] == {"projectId": "p1", "name": "ETL"}
    assert notebook.id == "n1"


async def test_get_and_delete_notebook() -> None:
    url = f"{API}/v2/notebooks/nb1"
    with aioresponses() as mocked:
        mocked.get(url, payload={"notebook": {"id": "nb1", "blocks": [], "inputs": []}})
        mocked.delete(url, status=204)
        async with make() as backend:
            notebook = await backend.get_notebook("nb1")
            await backend.delete_notebook("nb1")
        assert_headers(single_call(mocked, "GET", url))
        assert_headers(single_call(mocked, "DELETE", url))
    assert notebook.inputs == []


async def test_reorder_blocks() -> None:
    url = f"{API}/v2/notebooks/nb1/reorder-blocks"
    with aioresponses() as mocked:
        mocked.post(url, payload={"blockIds": ["b1", "b3", "b2"]})
        async with make() as backend:
            order = await backend.reorder_blocks("nb1", ["b3"], BlockPlacement.after("b1"))
        kwargs = single_call(mocked, "POST", url)
    assert kwargs["json"] == {"blockIds": ["b3"], "placement": {"type": "after", "blockId": "b1"}}
    assert order == ["b1", "b3", "b2"]


async def test_upsert_schedule() -> None:
    url = f"{API}/v2/notebooks/nb1/schedule"
    schedule = {
        "notebookId": "nb1",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Prague",
        "nextRunAt": NOW,
        "createdAt": NOW,
        "updatedAt": NOW,
    }
    with aioresponses() as mocked:
        mocked.post(url, payload={"schedule": schedule})
        async with make() as backend:
            result = await backend.upsert_schedule("nb1", "0 9 * * 1-5", "Europe/Prague")
            with pytest.raises(ConfigurationError, match="unknown timezone"):
                await backend.upsert_schedule("nb1", "0 9 * * *", "Europe/Atlantis")
        kwargs = single_call(mocked, "POST", url)
    assert kwargs["json"] == {"cron": "0 9 * * 1-5", "timezone": "Europe/Prague"}
    assert result.cron == "0 9 * * 1-5"


async def test_schedule_bare_403_says_scheduling_is_off() -> None:
    with aioresponses() as mocked:
        mocked.post(f"{API}/v2/notebooks/nb1/schedule", status=403, body="")
        async with make() as backend:
            with pytest.raises(PermissionDenied, match="scheduling is not enabled"):
                await backend.upsert_schedule("nb1", "0 9 * * *")


async def test_delete_schedule() -> None:
    url = f"{API}/v2/notebooks/nb%2F1/schedule"
    with aioresponses() as mocked:
        mocked.delete(url, status=204)
        mocked.delete(url, status=404, payload={"message": "Notebook has no schedule"})
        async with make() as client:
            assert await client.delete_schedule("nb/1") is True
            assert await client.delete_schedule("nb/1") is False
            with pytest.raises(ConfigurationError, match="notebook id"):
                await client.delete_schedule("")
        calls = mocked.requests[("DELETE", normalize_url(url))]
    assert len(calls) == 2
    assert_headers(calls[0].kwargs)
    assert calls[0].kwargs.get("json") is None


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (403, "", PermissionDenied, "returned 403"),
        (403, {"message": "Insufficient permissions"}, PermissionDenied, "Insufficient"),
        (409, {"message": "Project is suspended"}, Conflict, "Project is suspended"),
        (401, {"message": "Unauthorized"}, AuthenticationError, "Unauthorized"),
    ],
)
async def test_delete_schedule_errors_are_not_blamed_on_the_plan(
    status: int, body: Any, cls: type[APIError], message: str
) -> None:
    url = f"{API}/v2/notebooks/nb1/schedule"
    with aioresponses() as mocked:
        if isinstance(body, dict):
            mocked.delete(url, status=status, payload=body)
        else:
            mocked.delete(url, status=status, body=body)
        async with make() as client:
            with pytest.raises(cls, match=message) as caught:
                await client.delete_schedule("nb1")
    assert "scheduling is not enabled" not in str(caught.value)


async def test_delete_schedule_is_retried_after_a_5xx() -> None:
    url = f"{API}/v2/notebooks/nb1/schedule"
    with aioresponses() as mocked:
        mocked.delete(url, status=503, payload={"message": "busy"})
        mocked.delete(url, status=204)
        async with make(retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as client:
            assert await client.delete_schedule("nb1") is True


# --------------------------------------------------------------------------- projects, me


async def test_list_projects_with_filter() -> None:
    url = f"{API}/v2/projects?pageSize=10&nameContains=Sales+Q1"
    with aioresponses() as mocked:
        mocked.get(
            url,
            payload={
                "projects": [{"id": "p1", "name": "Sales Q1"}],
                "pagination": {"pageSize": 10, "nextPageToken": None, "hasMore": False},
            },
        )
        async with make() as backend:
            projects = [
                p async for p in backend.list_projects(name_contains="Sales Q1", page_size=10)
            ]
        assert_headers(single_call(mocked, "GET", url))
    assert [p.name for p in projects] == ["Sales Q1"]


async def test_list_projects_page() -> None:
    url = f"{API}/v2/projects?pageSize=50&pageToken=tok"
    with aioresponses() as mocked:
        mocked.get(url, payload={"projects": [], "pagination": {"nextPageToken": None}})
        async with make() as backend:
            page = await backend.list_projects_page(page_token="tok", name_contains="")
        single_call(mocked, "GET", url)
    assert not page.pagination.more


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (201, {"project": {"id": "p1", "name": "New", "notebooks": [{"id": "n1"}]}}),
        (200, {"id": "p1", "name": "New", "projectType": "standard"}),
    ],
)
async def test_create_project(status: int, payload: dict[str, Any]) -> None:
    with aioresponses() as mocked:
        mocked.post(f"{API}/v2/projects", status=status, payload=payload)
        async with make() as backend:
            project = await backend.create_project("New", folder_id="f1", project_type="standard")
        kwargs = single_call(mocked, "POST", f"{API}/v2/projects")
    assert kwargs["json"] == {"name": "New", "folderId": "f1", "projectType": "standard"}
    assert project.id == "p1"


async def test_get_and_delete_project() -> None:
    url = f"{API}/v2/projects/p-1"
    with aioresponses() as mocked:
        mocked.get(url, payload={"project": {"id": "p-1", "files": [{"path": "a.csv"}]}})
        mocked.delete(url, status=204)
        async with make() as backend:
            project = await backend.get_project("p-1")
            await backend.delete_project("p-1")
        single_call(mocked, "GET", url)
        assert_headers(single_call(mocked, "DELETE", url))
    assert project.files[0].path == "a.csv"


async def test_me() -> None:
    with aioresponses() as mocked:
        mocked.get(
            f"{API}/v2/me",
            payload={
                "apiKey": {},
                "user": {},
                "workspace": {"id": "w1", "slug": "acme"},
                "accessLevel": "viewer",
            },
        )
        async with make() as backend:
            me = await backend.me()
        assert_headers(single_call(mocked, "GET", f"{API}/v2/me"))
    assert me.access_level == "viewer"


async def test_execute_v1() -> None:
    url = f"{API}/v1/projects/5f2c-uuid/notebooks/0d3a9d1c/execute"
    with aioresponses() as mocked:
        mocked.post(url, status=202, body="")
        async with make() as backend:
            await backend.execute_v1("5f2c-uuid", "0d3a9d1c")
        kwargs = single_call(mocked, "POST", url)
    assert_headers(kwargs)
    assert kwargs.get("json") is None


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("status", "cls", "message"),
    [
        (400, BadRequest, "Validation error or project is suspended"),
        (401, AuthenticationError, "Unauthorized"),
        (403, PermissionDenied, "Insufficient permissions"),
        (404, NotFound, "Notebook not found"),
        (409, Conflict, "Project is suspended"),
        (429, RateLimited, "Rate limit exceeded"),
        (500, ServerError, "Hardware unable to start"),
        (503, ServerError, "Service unavailable"),
    ],
)
async def test_error_statuses_carry_the_vendor_message(
    status: int, cls: type[APIError], message: str
) -> None:
    headers = {"Retry-After": "7", "X-Request-Id": "req-42"} if status == 429 else {}
    with aioresponses() as mocked:
        mocked.get(
            f"{API}/v2/notebooks/nb1", status=status, payload={"message": message}, headers=headers
        )
        async with make() as backend:
            with pytest.raises(cls) as caught:
                await backend.get_notebook("nb1")
    error = caught.value
    assert type(error) is cls
    assert error.status == status
    assert message in str(error)
    assert error.vendor == "deepnote"
    assert KEY not in str(error) + repr(error) + error.body
    if isinstance(error, RateLimited):
        assert error.retry_after == 7
        assert error.request_id == "req-42"


async def test_conflict_on_duplicate_notebook_name() -> None:
    with aioresponses() as mocked:
        mocked.post(
            f"{API}/v2/notebooks",
            status=409,
            payload={"message": "A notebook named 'ETL' already exists in this project"},
        )
        async with make() as backend:
            with pytest.raises(Conflict, match="already exists"):
                await backend.create_notebook("p1", "ETL")


async def test_legacy_error_body_and_html_pages() -> None:
    url = f"{API}/v1/projects/p/notebooks/n/execute"
    with aioresponses() as mocked:
        mocked.post(url, status=401, payload={"error": "Workspace is not on a required plan"})
        mocked.get(f"{API}/v2/me", status=502, body="<html>Bad Gateway</html>")
        async with make() as backend:
            with pytest.raises(AuthenticationError, match="not on a required plan"):
                await backend.execute_v1("p", "n")
            with pytest.raises(ServerError, match="HTML error page"):
                await backend.me()


async def test_garbage_body_is_a_decode_error() -> None:
    with aioresponses() as mocked:
        mocked.get(f"{API}/v2/me", body="{not json", content_type="application/json")
        mocked.get(f"{API}/v2/projects/p1", payload=["not", "an", "object"])
        async with make() as backend:
            with pytest.raises(ResponseDecodeError, match="not JSON"):
                await backend.me()
            with pytest.raises(ResponseDecodeError, match="expected a JSON object"):
                await backend.get_project("p1")


async def test_reads_are_retried_after_5xx() -> None:
    url = f"{API}/v2/notebooks/nb1"
    with aioresponses() as mocked:
        mocked.get(url, status=503, payload={"message": "busy"})
        mocked.get(url, payload={"notebook": {"id": "nb1"}})
        async with make(retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as backend:
            notebook = await backend.get_notebook("nb1")
    assert notebook.id == "nb1"


# --------------------------------------------------------------------------- start_run


def _runs_page(*runs: dict[str, Any]) -> dict[str, Any]:
    return {"runs": list(runs), "pagination": {"nextPageToken": None, "hasMore": False}}


async def test_start_run_reconciles_a_5xx_through_the_runs_list() -> None:
    created = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    older = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    runs_url = f"{API}/v2/notebooks/nb1/runs?pageSize=20"
    with aioresponses() as mocked:
        mocked.post(f"{API}/v2/runs", status=500, payload={"message": "upstream timeout"})
        mocked.get(
            runs_url,
            payload=_runs_page(
                {"runId": "mine", "status": "pending", "createdAt": created},
                {"runId": "old", "status": "success", "createdAt": older},
            ),
        )
        async with make_backend(reconcile_interval=0.01) as backend:
            handle = await backend.start_run(RunRequest(notebook="nb1"))
        single_call(mocked, "POST", f"{API}/v2/runs")
        assert_headers(single_call(mocked, "GET", runs_url))
    assert handle.run_id == "mine"


async def test_start_run_reconciles_an_unreadable_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    created = datetime.now(UTC).isoformat()
    runs_url = f"{API}/v2/notebooks/nb1/runs?pageSize=20"
    with aioresponses() as mocked:
        mocked.post(f"{API}/v2/runs", status=202, body="<html>accepted</html>")
        mocked.get(
            runs_url, payload=_runs_page({"runId": "r7", "status": "running", "createdAt": created})
        )
        async with make_backend() as backend:
            with caplog.at_level("DEBUG"):
                handle = await backend.start_run(
                    RunRequest(notebook="nb1", options=DeepnoteRunOptions(project_id="p1"))
                )
        single_call(mocked, "POST", f"{API}/v2/runs")
    assert handle.run_id == "r7"
    assert handle.extra == {"project_id": "p1"}
    assert "adopted run r7" in caplog.text
    assert KEY not in caplog.text


async def test_start_run_unknown_outcome_after_transport_failure() -> None:
    runs_url = f"{API}/v2/notebooks/nb1/runs?pageSize=20"
    with aioresponses() as mocked:
        mocked.post(f"{API}/v2/runs", exception=ConnectionResetError("reset"))
        mocked.get(runs_url, payload=_runs_page(), repeat=True)
        async with make_backend(reconcile_attempts=2, reconcile_interval=0.01) as backend:
            with pytest.raises(StartOutcomeUnknown) as caught:
                await backend.start_run(RunRequest(notebook="nb1"))
        single_call(mocked, "POST", f"{API}/v2/runs")
        assert len(mocked.requests[("GET", normalize_url(runs_url))]) == 2
    error = caught.value
    assert error.notebook == "nb1"
    assert "read 2: no run created since" in error.evidence
    assert isinstance(error.__cause__, ConnectionLost)


async def test_a_start_that_never_left_is_raised_and_does_not_hold_up_later_ones() -> None:
    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey

    key = ConnectionKey("api.deepnote.com", 443, True, True, None, None, None)
    created = datetime.now(UTC).isoformat()
    runs_url = f"{API}/v2/notebooks/nb1/runs?pageSize=20"
    with aioresponses() as mocked:
        mocked.post(
            f"{API}/v2/runs",
            exception=aiohttp.ClientConnectorError(key, OSError(111, "refused")),
        )
        mocked.post(f"{API}/v2/runs", status=502, payload={"message": "Bad gateway"})
        mocked.get(
            runs_url, payload=_runs_page({"runId": "r2", "status": "pending", "createdAt": created})
        )
        async with make_backend(reconcile_interval=0.01) as backend:
            with pytest.raises(ConnectError) as caught:
                await backend.start_run(RunRequest(notebook="nb1"))
            assert caught.value.request_sent is False
            # The unsent start no longer counts as in flight: this reconciliation goes ahead.
            with anyio.fail_after(5):
                handle = await backend.start_run(RunRequest(notebook="nb1"))
    assert handle.run_id == "r2"


async def test_cancel_is_unsupported() -> None:
    from notebookops import RunHandle

    async with make_backend() as backend:
        handle = RunHandle(backend="deepnote", run_id="r1", notebook_id="nb1")
        with pytest.raises(UnsupportedOperation, match="no endpoint to stop a run") as caught:
            await backend.cancel_run(handle)
    assert caught.value.capability == "cancel"


# --------------------------------------------------------------------------- configuration


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "  from-env  ")
    backend = DeepnoteBackend()
    assert "from-env" not in repr(backend)
    assert "from-env" not in repr(backend.client)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_api_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    monkeypatch.delenv("DEEPNOTE_API_KEY", raising=False)
    if value is not None:
        monkeypatch.setenv("DEEPNOTE_API_KEY", value)
    with pytest.raises(ConfigurationError, match="DEEPNOTE_API_KEY"):
        DeepnoteBackend()
    with pytest.raises(ConfigurationError, match="DEEPNOTE_API_KEY"):
        DeepnoteClient()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": 5}, "must be a string"),
        ({"token": "a\nb"}, "control characters"),
        ({"base_url": "https://api.deepnote.com/v2"}, "adds /v1 and /v2 itself"),
        ({"base_url": "http://api.deepnote.com"}, "refusing plain http"),
        ({"base_url": "ftp://x"}, "https://host"),
        ({"timeout": 0}, "timeout"),
        ({"max_rate": -1}, "max_rate"),
        ({"rate_limiter": object()}, "rate_limiter must be a notebookops.RateLimiter"),
        ({"rate_limiter": RateLimiter(), "max_rate": 5}, "not to the client as well"),
    ],
)
def test_connection_settings_are_validated(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("token", KEY)
    with pytest.raises(ConfigurationError, match=message):
        DeepnoteClient(**kwargs)
    with pytest.raises(ConfigurationError, match=message):
        DeepnoteBackend(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workspace": ""}, "workspace"),
        ({"workspace": "acme-analytics"}, "slug}-{id}"),
        ({"snapshot_delivery": "zip"}, "snapshot_delivery"),
        ({"snapshot_wait": -1}, "snapshot_wait"),
        ({"snapshot_interval": 0}, "snapshot_interval"),
        ({"v1_discovery_interval": float("inf")}, "v1_discovery_interval"),
        ({"reconcile_attempts": 0}, "reconcile_attempts"),
        ({"clock_skew": True}, "clock_skew"),
        ({"use_v1": "yes"}, "use_v1"),
        ({"share_reads": 1}, "share_reads"),
    ],
)
def test_options_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DeepnoteOptions(**kwargs)


def test_backend_takes_options_and_a_client_but_not_both_connections() -> None:
    with pytest.raises(ConfigurationError, match="DeepnoteOptions"):
        DeepnoteBackend(KEY, options={"use_v1": True})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="DeepnoteClient"):
        DeepnoteBackend(client="client")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not to the backend as well"):
        DeepnoteBackend(KEY, client=make())
    with pytest.raises(ConfigurationError, match="refusing plain http"):
        DeepnoteBackend(KEY, options=DeepnoteOptions(web_base_url="http://deepnote.example.com"))


async def test_a_client_passed_in_is_used_and_left_open() -> None:
    client = make()
    async with DeepnoteBackend(client=client) as backend:
        assert backend.client is client
    assert not client.api.closed
    await client.aclose()


async def test_one_rate_limiter_can_serve_several_clients() -> None:
    limiter = RateLimiter(max_rate=50)
    first, second = make(rate_limiter=limiter), make(rate_limiter=limiter)
    try:
        assert first.rate_limiter is limiter
        assert second.rate_limiter is limiter
    finally:
        await first.aclose()
        await second.aclose()
    async with make(max_rate=7) as own:
        assert own.rate_limiter.max_rate == 7
        assert own.rate_limiter.adaptive


async def test_closed_backend_refuses_every_call() -> None:
    backend = make_backend()
    await backend.aclose()
    with pytest.raises(BackendClosed):
        await backend.client.me()
    with pytest.raises(BackendClosed):
        await anext(backend.client.list_projects())
    with pytest.raises(BackendClosed):
        await backend.start_run(RunRequest(notebook="nb1"))


async def test_wrong_options_type_is_refused() -> None:
    async with make_backend() as backend:
        with pytest.raises(ConfigurationError, match="DeepnoteRunOptions"):
            await backend.start_run(RunRequest(notebook="nb1", options={"detached": True}))
        with pytest.raises(ConfigurationError, match="RunRequest"):
            await backend.start_run("nb1")  # type: ignore[arg-type]


def test_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9999")
    assert DeepnoteBackend("key").base_url.startswith("http://127.0.0.1:9999")
    monkeypatch.delenv(URL_ENV)
    assert DeepnoteBackend("key").base_url.startswith(DEFAULT_BASE_URL)
    monkeypatch.setenv(URL_ENV, "http://example.com")
    with pytest.raises(ConfigurationError, match="allow_http"):
        DeepnoteBackend("key")
