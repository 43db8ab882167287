"""Every PostHog endpoint method sends exactly the request PostHog expects (aioresponses)."""

from __future__ import annotations

from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import pytest

from notebookops.backends.posthog import (
    CollabPresence,
    CollabStep,
    CollabStreamError,
    CollabUnknownEvent,
    CollabUpdate,
    ExecutionResult,
    KernelOutput,
)
from notebookops.errors import ConfigurationError, ConnectionLost
from notebookops.transport import AiohttpTransport, Request, Response

from ._mock import BASE, HOST, aioresponses, calls, make_backend, only_call

USER = {"id": 1, "uuid": "u-1", "email": "a@x.io", "first_name": "Ann", "extra": "ignored"}
NOTEBOOK: dict[str, Any] = {
    "id": "0190-uuid",
    "short_id": "aB3dE5fG",
    "title": "My nb",
    "content": {"type": "doc", "content": []},
    "text_content": "",
    "version": 7,
    "deleted": False,
    "created_at": "2025-05-01T10:00:00.123456Z",
    "created_by": USER,
    "last_modified_at": "2025-05-01T10:00:00.123456Z",
    "last_modified_by": USER,
    "user_access_level": "editor",
    "parent_resource": None,
    "brand_new_field": {"tolerated": True},
}
NB = f"{BASE}aB3dE5fG/"
RESULT: dict[str, Any] = {
    "status": "ok",
    "stdout": "hi\n",
    "stderr": "",
    "result": {"text/plain": "2"},
    "media": [{"mime_type": "image/png", "data": "iVBOR"}],
    "execution_count": 3,
    "error_name": None,
    "traceback": [],
    "variables": {"x": {"status": "ok", "type": "int"}},
    "started_at": "2025-05-01T10:00:00Z",
    "completed_at": "2025-05-01T10:00:01Z",
    "kernel_runtime": {"id": "rt", "status": "running", "last_used_at": None, "sandbox_id": "sb"},
}


def minimal(short_id: str) -> dict[str, Any]:
    return {key: NOTEBOOK[key] for key in ("id", "title", "deleted")} | {"short_id": short_id}


# ----------------------------------------------------------------- notebooks


async def test_list_page_sends_every_filter() -> None:
    url = (
        f"{BASE}?contains=python:true,recording:abc&created_by=u-1&last_modified_by=u-2"
        "&date_from=2025-01-01T00:00:00Z&date_to=-7d&user=true&search=churn&order=title"
        "&limit=2&offset=4"
    )
    with aioresponses() as mocked:
        mocked.get(url, payload={"count": 9, "next": None, "previous": None, "results": []})
        async with make_backend() as backend:
            page = await backend.client.list_notebooks_page(
                contains={"python": True, "recording": "abc"},
                created_by="u-1",
                last_modified_by="u-2",
                date_from=datetime(2025, 1, 1, tzinfo=UTC),
                date_to="-7d",
                user=True,
                search="churn",
                order="title",
                limit=2,
                offset=4,
            )
        only_call(mocked, "GET", url, json=None)
    assert page.count == 9


async def test_list_follows_next_links_by_path() -> None:
    # PostHog builds `next` from its own view of the host (here: plain http, internal name).
    first = f"{BASE}?limit=1"
    second = f"{BASE}?limit=1&offset=1"
    with aioresponses() as mocked:
        mocked.get(
            first,
            payload={
                "count": 2,
                "next": "http://internal:8000/api/projects/7/notebooks/?limit=1&offset=1",
                "previous": None,
                "results": [minimal("a1")],
            },
        )
        mocked.get(
            second,
            payload={"count": 2, "next": None, "previous": first, "results": [minimal("b2")]},
        )
        async with make_backend() as backend:
            ids = [nb.short_id async for nb in backend.client.list_notebooks(page_size=1)]
        only_call(mocked, "GET", second)
    assert ids == ["a1", "b2"]


async def test_list_stops_on_a_repeated_next_link() -> None:
    loop_page = {"count": 3, "next": f"{BASE}?offset=1", "results": [minimal("a1")]}
    with aioresponses() as mocked:
        mocked.get(BASE, payload=loop_page)
        mocked.get(f"{BASE}?offset=1", payload=loop_page, repeat=True)
        async with make_backend() as backend:
            ids = [nb.short_id async for nb in backend.client.list_notebooks()]
    assert ids == ["a1", "a1"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"contains": ""}, "contains"),
        ({"contains": {"py thon": True}}, "contains"),
        ({"contains": {"python": "a b"}}, "contains"),
        ({"contains": {}}, "contains"),
        ({"date_from": ""}, "date_from"),
        ({"search": ""}, "search"),
    ],
)
async def test_list_filters_are_validated(kwargs: dict[str, Any], words: str) -> None:
    async with make_backend() as backend:
        with pytest.raises(ConfigurationError, match=words):
            await backend.client.list_notebooks_page(**kwargs)


async def test_create_notebook_posts_fields_and_reads_201() -> None:
    content = {"type": "doc", "content": [{"type": "paragraph"}]}
    with aioresponses() as mocked:
        mocked.post(BASE, status=201, payload=NOTEBOOK)
        async with make_backend() as backend:
            notebook = await backend.client.create_notebook(
                title="My nb",
                content=content,
                text_content="t",
                short_id="aB3dE5fG",
                create_in_folder="Shared",
            )
        only_call(
            mocked,
            "POST",
            BASE,
            json={
                "title": "My nb",
                "content": content,
                "text_content": "t",
                "short_id": "aB3dE5fG",
                "_create_in_folder": "Shared",
            },
        )
    assert notebook.version == 7
    assert notebook.created_by is not None
    assert notebook.created_by.email == "a@x.io"
    assert notebook.created_at == datetime(2025, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize("short_id", ["has space", "x" * 13, "ünï"])
async def test_create_refuses_bad_short_ids(short_id: str) -> None:
    async with make_backend() as backend:
        with pytest.raises(ConfigurationError, match="short_id"):
            await backend.client.create_notebook(short_id=short_id)


async def test_get_notebook_and_path_encoding() -> None:
    with aioresponses() as mocked:
        mocked.get(NB, payload=NOTEBOOK)
        mocked.get(f"{BASE}a%2Fb/", payload=NOTEBOOK | {"short_id": "a/b"})
        async with make_backend() as backend:
            notebook = await backend.client.get_notebook("aB3dE5fG")
            odd = await backend.client.get_notebook("a/b")
            with pytest.raises(ConfigurationError):
                await backend.client.get_notebook("..")
        only_call(mocked, "GET", NB, json=None)
    assert notebook.short_id == "aB3dE5fG"
    assert odd.short_id == "a/b"


async def test_get_if_changed_sends_bare_version_and_handles_304() -> None:
    with aioresponses() as mocked:
        mocked.get(NB, status=304, body=b"")
        mocked.get(NB, payload=NOTEBOOK | {"version": 8})
        async with make_backend() as backend:
            assert await backend.client.get_notebook_if_changed("aB3dE5fG", 7) is None
            changed = await backend.client.get_notebook_if_changed("aB3dE5fG", 7)
            with pytest.raises(ConfigurationError):
                await backend.client.get_notebook_if_changed("aB3dE5fG", "7")  # type: ignore[arg-type]
        sent = calls(mocked, "GET", NB)
    assert [call.kwargs["headers"]["If-None-Match"] for call in sent] == ["7", "7"]
    assert changed is not None
    assert changed.version == 8


async def test_update_notebook_bodies() -> None:
    with aioresponses() as mocked:
        mocked.patch(NB, payload=NOTEBOOK, repeat=True)
        async with make_backend() as backend:
            await backend.client.update_notebook("aB3dE5fG", title=None)
            await backend.client.update_notebook("aB3dE5fG", content={"type": "doc"}, version=7)
            await backend.client.delete_notebook("aB3dE5fG")
            await backend.client.restore_notebook("aB3dE5fG")
            with pytest.raises(ConfigurationError, match="version"):
                await backend.client.update_notebook("aB3dE5fG", content={"type": "doc"})
            with pytest.raises(ConfigurationError, match="nothing to update"):
                await backend.client.update_notebook("aB3dE5fG")
        bodies = [call.kwargs["json"] for call in calls(mocked, "PATCH", NB)]
    assert bodies == [
        {"title": None},
        {"content": {"type": "doc"}, "version": 7},
        {"deleted": True},
        {"deleted": False},
    ]


async def test_update_content_rereads_and_retries_on_409() -> None:
    conflict = {
        "type": "server_error",
        "code": "conflict",
        "detail": "Someone else edited the Notebook",
        "attr": None,
    }
    with aioresponses() as mocked:
        mocked.get(NB, payload=NOTEBOOK | {"version": 3, "content": {"n": 1}})
        mocked.get(NB, payload=NOTEBOOK | {"version": 4, "content": {"n": 2}})
        mocked.patch(NB, status=409, payload=conflict)
        mocked.patch(NB, payload=NOTEBOOK | {"version": 5})
        async with make_backend() as backend:
            result = await backend.client.update_notebook_content(
                "aB3dE5fG", lambda content: {"n": (content or {})["n"] * 10}
            )
        bodies = [call.kwargs["json"] for call in calls(mocked, "PATCH", NB)]
    assert bodies == [{"content": {"n": 10}, "version": 3}, {"content": {"n": 20}, "version": 4}]
    assert result.version == 5


async def test_update_content_no_change_and_bad_attempts() -> None:
    with aioresponses() as mocked:
        mocked.get(NB, payload=NOTEBOOK)
        async with make_backend() as backend:
            same = await backend.client.update_notebook_content("aB3dE5fG", lambda content: None)
            with pytest.raises(ConfigurationError):
                await backend.client.update_notebook_content("x", lambda c: c, max_attempts=0)
        assert not calls(mocked, "PATCH", NB)
    assert same.version == 7


async def test_markdown() -> None:
    with aioresponses() as mocked:
        mocked.get(f"{NB}markdown/", payload={"markdown": "# Hi"})
        async with make_backend() as backend:
            assert await backend.client.get_markdown("aB3dE5fG") == "# Hi"
        only_call(mocked, "GET", f"{NB}markdown/")


async def test_activity_endpoints() -> None:
    entry = {
        "id": "e1",
        "user": {"first_name": "Ann", "email": "a@x.io"},
        "activity": "updated",
        "scope": "Notebook",
        "item_id": "0190",
        "detail": {"changes": [], "short_id": "aB3dE5fG"},
        "created_at": "2025-05-01T10:00:00Z",
    }
    page_two = f"{NB}activity/?limit=1&page=2"
    with aioresponses() as mocked:
        mocked.get(
            f"{NB}activity/?limit=1&page=1",
            payload={"results": [entry], "next": page_two, "previous": None, "total_count": 2},
        )
        mocked.get(f"{NB}activity/?limit=1", payload={"results": [entry], "next": page_two})
        mocked.get(page_two, payload={"results": [entry], "next": None, "total_count": 2})
        mocked.get(f"{BASE}activity/", payload={"results": [], "next": None, "total_count": 0})
        async with make_backend() as backend:
            page = await backend.client.notebook_activity("aB3dE5fG", limit=1, page=1)
            every = [e.activity async for e in backend.client.iter_activity("aB3dE5fG", limit=1)]
            project = await backend.client.project_activity()
            with pytest.raises(ConfigurationError):
                await backend.client.notebook_activity("aB3dE5fG", page=0)
        only_call(mocked, "GET", f"{NB}activity/?limit=1&page=1")
        only_call(mocked, "GET", f"{BASE}activity/")
    assert page.total_count == 2
    assert page.results[0].created_at == datetime(2025, 5, 1, 10, tzinfo=UTC)
    assert every == ["updated", "updated"]
    assert project.results == []


async def test_recording_comments_reads_camel_case() -> None:
    url = f"{BASE}recording_comments/?recording_id=rec-1"
    comment = {
        "timeInRecording": 1500,
        "comment": "look",
        "notebookShortId": "aB3dE5fG",
        "notebookTitle": "My nb",
        "id": "f00",
    }
    with aioresponses() as mocked:
        mocked.get(url, payload={"results": [comment]})
        async with make_backend() as backend:
            comments = await backend.client.recording_comments("rec-1")
            with pytest.raises(ConfigurationError):
                await backend.client.recording_comments("")
        only_call(mocked, "GET", url)
    assert comments[0].notebook_short_id == "aB3dE5fG"
    assert comments[0].time_in_recording == 1500


# ----------------------------------------------------------------- sharing

SHARING = {
    "created_at": None,
    "enabled": True,
    "access_token": "tok-secret",
    "settings": None,
    "password_required": True,
    "share_passwords": [{"id": "p1", "note": "n", "is_active": True}],
}


async def test_sharing_endpoints() -> None:
    sharing = f"{BASE}nb-uuid/sharing/"
    created = {
        "id": "p2",
        "password": "hunter2hunter2",
        "note": "ops",
        "created_at": "2025-05-01T10:00:00Z",
        "created_by_email": "a@x.io",
    }
    with aioresponses() as mocked:
        mocked.get(sharing, payload=SHARING)
        mocked.patch(sharing, payload=SHARING)
        mocked.post(f"{sharing}passwords/", status=201, payload=created)
        mocked.delete(f"{sharing}passwords/p2/", status=204, body=b"")
        mocked.post(f"{sharing}refresh/", payload=SHARING | {"access_token": "new"})
        async with make_backend() as backend:
            config = await backend.client.get_sharing("nb-uuid")
            await backend.client.update_sharing(
                "nb-uuid", enabled=True, settings={"whitelabel": True}, password_required=True
            )
            password = await backend.client.create_sharing_password(
                "nb-uuid", raw_password="hunter2hunter2", note="ops"
            )
            await backend.client.delete_sharing_password("nb-uuid", "p2")
            refreshed = await backend.client.refresh_sharing("nb-uuid")
            with pytest.raises(ConfigurationError):
                await backend.client.update_sharing("nb-uuid")
            with pytest.raises(ConfigurationError, match="8 characters"):
                await backend.client.create_sharing_password("nb-uuid", raw_password="short")
            with pytest.raises(ConfigurationError, match="100"):
                await backend.client.create_sharing_password("nb-uuid", note="x" * 101)
        only_call(mocked, "GET", sharing)
        only_call(
            mocked,
            "PATCH",
            sharing,
            json={"enabled": True, "settings": {"whitelabel": True}, "password_required": True},
        )
        only_call(
            mocked,
            "POST",
            f"{sharing}passwords/",
            json={"raw_password": "hunter2hunter2", "note": "ops"},
        )
        only_call(mocked, "DELETE", f"{sharing}passwords/p2/")
        only_call(mocked, "POST", f"{sharing}refresh/", json=None)
    assert config.share_passwords[0].id == "p1"
    assert "tok-secret" not in repr(config)
    assert "hunter2" not in repr(password)
    assert password.password == "hunter2hunter2"
    assert refreshed.access_token == "new"


# ----------------------------------------------------------------- collaboration


async def test_collab_save_markdown_save_and_presence_bodies() -> None:
    content = {"type": "doc", "content": []}
    md = {"type": "doc", "content": [{"type": "ph-markdown-notebook", "attrs": {"markdown": "x"}}]}
    with aioresponses() as mocked:
        mocked.post(f"{NB}collab/save/", payload=NOTEBOOK)
        mocked.post(f"{NB}collab/markdown_save/", payload=NOTEBOOK)
        mocked.post(f"{NB}collab/presence/", status=204, body=b"")
        async with make_backend() as backend:
            await backend.client.collab_save(
                "aB3dE5fG",
                client_id="c1",
                version=7,
                steps=[{"stepType": "replace"}],
                content=content,
                title="T",
                cursor_head=4,
            )
            await backend.client.collab_markdown_save(
                "aB3dE5fG", client_id="c1", version=7, content=md, cursor={"head": 1}
            )
            await backend.client.collab_presence(
                "aB3dE5fG", client_id="c1", version=8, cursor={"node_index": 2}
            )
            with pytest.raises(ConfigurationError):
                await backend.client.collab_save(
                    "aB3dE5fG", client_id="", version=1, steps=[], content=content
                )
            with pytest.raises(ConfigurationError):
                await backend.client.collab_save(
                    "aB3dE5fG", client_id="c", version=-1, steps=[], content=content
                )
            with pytest.raises(ConfigurationError):
                await backend.client.collab_presence(
                    "aB3dE5fG", client_id="c", version=1, cursor={"bogus": 1}
                )
        only_call(
            mocked,
            "POST",
            f"{NB}collab/save/",
            json={
                "client_id": "c1",
                "version": 7,
                "steps": [{"stepType": "replace"}],
                "content": content,
                "text_content": "",
                "title": "T",
                "cursor_head": 4,
            },
        )
        only_call(
            mocked,
            "POST",
            f"{NB}collab/markdown_save/",
            json={
                "client_id": "c1",
                "version": 7,
                "content": md,
                "text_content": "",
                "cursor": {"head": 1},
            },
        )
        only_call(
            mocked,
            "POST",
            f"{NB}collab/presence/",
            json={"client_id": "c1", "version": 8, "cursor": {"node_index": 2}},
        )


async def test_collab_stream_decodes_and_resumes_with_last_event_id() -> None:
    url = f"{NB}collab/stream/"
    first = (
        b'id: 8-0\nevent: step\ndata: {"step":{"a":1},"client_id":"c2","user_id":1}\n\n'
        b": keepalive\n\n"
        b'event: presence\ndata: {"type":"presence","client_id":"c2","version":8}\n\n'
    )
    second = (
        b'id: 9-1\nevent: update\ndata: {"type":"update","version":9}\n\n'
        b"event: mystery\ndata: raw\n\n"
        b'event: error\ndata: {"error":"stream error"}\n\n'
    )
    with aioresponses() as mocked:
        mocked.get(url, body=first, content_type="text/event-stream")
        mocked.get(url, body=second, content_type="text/event-stream")
        async with make_backend(collab_reconnect_delay=0.001) as backend:
            seen: list[Any] = []
            stream = backend.client.collab_stream("aB3dE5fG", last_event_id="7-0")
            async with aclosing(stream) as events:
                async for event in events:
                    seen.append(event)
                    if len(seen) == 5:
                        break
        sent = calls(mocked, "GET", url)
    assert [call.kwargs["headers"]["Last-Event-ID"] for call in sent] == ["7-0", "8-0"]
    assert sent[0].kwargs["headers"]["Accept"] == "text/event-stream"
    step, presence, update, unknown, error = seen
    assert isinstance(step, CollabStep)
    assert step.step == {"a": 1}
    assert step.id == "8-0"
    assert isinstance(presence, CollabPresence)
    assert presence.client_id == "c2"
    assert isinstance(update, CollabUpdate)
    assert update.version == 9
    assert update.diff is None
    assert isinstance(unknown, CollabUnknownEvent)
    assert unknown.data == "raw"
    assert isinstance(error, CollabStreamError)
    assert error.error == "stream error"


async def test_collab_stream_without_reconnect_ends_with_the_server() -> None:
    url = f"{NB}collab/stream/"
    with aioresponses() as mocked:
        mocked.get(
            url,
            body=b'id: 1-0\nevent: step\ndata: {"step":{}}\n\n',
            content_type="text/event-stream",
        )
        async with make_backend() as backend:
            events = [e async for e in backend.client.collab_stream("aB3dE5fG", reconnect=False)]
            with pytest.raises(ConfigurationError):
                async for _ in backend.client.collab_stream("aB3dE5fG", max_failures=-1):
                    pass
        sent = calls(mocked, "GET", url)
    assert "Last-Event-ID" not in sent[0].kwargs["headers"]
    assert len(events) == 1


# ----------------------------------------------------------------- HogQL and kernel


async def test_hogql_execute() -> None:
    payload = {
        "results": [[1, "a"]],
        "columns": ["id", "name"],
        "types": [["id", "Int64"], ["name", "String"]],
        "hasMore": True,
        "limit": 100,
        "offset": 0,
        "query": "select 1",
        "unexpected": "kept in raw",
    }
    with aioresponses() as mocked:
        mocked.post(f"{NB}hogql/execute/", payload=payload)
        async with make_backend() as backend:
            result = await backend.client.hogql_execute("aB3dE5fG", "select 1")
            with pytest.raises(ConfigurationError):
                await backend.client.hogql_execute("aB3dE5fG", 1)  # type: ignore[arg-type]
        only_call(mocked, "POST", f"{NB}hogql/execute/", json={"query": "select 1"})
    assert result.has_more is True
    assert result.results == [[1, "a"]]
    assert result.raw["unexpected"] == "kept in raw"


async def test_kernel_lifecycle_endpoints() -> None:
    status = {
        "backend": "modal",
        "status": "running",
        "last_used_at": "2025-05-01T10:00:00+00:00",
        "last_error": None,
        "runtime_id": "rt",
        "kernel_id": "k",
        "kernel_pid": 12,
        "sandbox_id": "sb",
        "cpu_cores": 0.5,
        "memory_gb": 2,
        "disk_size_gb": 10,
        "idle_timeout_seconds": 600,
    }
    with aioresponses() as mocked:
        mocked.post(f"{NB}kernel/start/", payload={"id": "rt", "status": "running"})
        mocked.post(f"{NB}kernel/restart/", payload={"id": "rt2", "status": "running"})
        mocked.post(f"{NB}kernel/stop/", payload={"stopped": True})
        mocked.get(f"{NB}kernel/status/", payload=status)
        mocked.post(
            f"{NB}kernel/config/",
            payload={"cpu_cores": 2, "memory_gb": None, "idle_timeout_seconds": 3600},
        )
        async with make_backend() as backend:
            started = await backend.client.kernel_start("aB3dE5fG")
            restarted = await backend.client.kernel_restart("aB3dE5fG")
            stopped = await backend.client.kernel_stop("aB3dE5fG")
            current = await backend.client.kernel_status("aB3dE5fG")
            config = await backend.client.kernel_config(
                "aB3dE5fG", cpu_cores=2, idle_timeout_seconds=3600
            )
        for path in ("start", "restart", "stop"):
            only_call(mocked, "POST", f"{NB}kernel/{path}/", json=None)
        only_call(mocked, "GET", f"{NB}kernel/status/")
        only_call(
            mocked,
            "POST",
            f"{NB}kernel/config/",
            json={"cpu_cores": 2, "idle_timeout_seconds": 3600},
        )
    assert started.id == "rt"
    assert restarted.id == "rt2"
    assert stopped is True
    assert current.cpu_cores == 0.5
    assert current.last_used_at == datetime(2025, 5, 1, 10, tzinfo=UTC)
    assert config.memory_gb is None


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"cpu_cores": 3}, {"memory_gb": 3}, {"idle_timeout_seconds": 60}, {"cpu_cores": True}],
)
async def test_kernel_config_is_validated_locally(kwargs: dict[str, Any]) -> None:
    with aioresponses() as mocked:
        async with make_backend() as backend:
            with pytest.raises(ConfigurationError):
                await backend.client.kernel_config("aB3dE5fG", **kwargs)
        assert not mocked.requests


async def test_kernel_execute_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    limits: list[float] = []
    real_send = AiohttpTransport.send

    async def recording_send(self: AiohttpTransport, request: Request) -> Response:
        limits.append(request.timeout)
        return await real_send(self, request)

    monkeypatch.setattr(AiohttpTransport, "send", recording_send)
    with aioresponses() as mocked:
        mocked.post(f"{NB}kernel/execute/", payload=RESULT)
        async with make_backend() as backend:
            result = await backend.client.kernel_execute("aB3dE5fG", "1 + 1", timeout=12)
            # Whole seconds: PostHog truncates with int() and bounds the whole run with it.
            for bad in (0.05, 0.5, 12.5, 121, float("nan"), True):
                with pytest.raises(ConfigurationError, match=r"whole seconds from 1 to 120"):
                    await backend.client.kernel_execute("aB3dE5fG", "1", timeout=bad)
        call = only_call(
            mocked,
            "POST",
            f"{NB}kernel/execute/",
            json={"code": "1 + 1", "return_variables": True, "timeout": 12},
        )
    # The HTTP timeout leaves room for the cell's own timeout plus kernel provisioning.
    assert limits[0] > 12.5
    assert call.kwargs["timeout"].total is None
    assert result.status == "ok"
    assert result.variables is not None
    assert result.variables["x"].type == "int"
    assert result.media[0].mime_type == "image/png"
    assert result.kernel_runtime is not None
    assert result.kernel_runtime.sandbox_id == "sb"


async def test_kernel_execute_stream_yields_chunks_then_result() -> None:
    import json

    body = (
        b'event: stdout\ndata: {"text":"line 1\\n"}\n\n'
        b'event: stderr\r\ndata: {"text":"warn\\n"}\r\n\r\n'
        b"event: result\ndata: " + json.dumps(RESULT).encode() + b"\n\n"
    )
    with aioresponses() as mocked:
        mocked.post(f"{NB}kernel/execute/stream/", body=body, content_type="text/event-stream")
        async with make_backend() as backend:
            events = [
                e
                async for e in backend.client.kernel_execute_stream(
                    "aB3dE5fG", "print('line 1')", return_variables=False
                )
            ]
        call = only_call(
            mocked,
            "POST",
            f"{NB}kernel/execute/stream/",
            json={"code": "print('line 1')", "return_variables": False},
        )
    assert call.kwargs["headers"]["Accept"] == "text/event-stream"
    assert events[:2] == [
        KernelOutput(name="stdout", text="line 1\n"),
        KernelOutput(name="stderr", text="warn\n"),
    ]
    assert isinstance(events[2], ExecutionResult)


async def test_kernel_execute_stream_without_result_is_connection_lost() -> None:
    with aioresponses() as mocked:
        mocked.post(
            f"{NB}kernel/execute/stream/",
            body=b'event: stdout\ndata: {"text":"x"}\n\n',
            content_type="text/event-stream",
        )
        async with make_backend() as backend:
            with pytest.raises(ConnectionLost, match="without a result"):
                async for _ in backend.client.kernel_execute_stream("aB3dE5fG", "x"):
                    pass


async def test_kernel_dataframe_and_row_iteration() -> None:
    first = f"{NB}kernel/dataframe/?variable_name=df&offset=0&limit=2&timeout=5"
    with aioresponses() as mocked:
        mocked.get(first, payload={"columns": ["a"], "rows": [{"a": 1}, {"a": 2}], "row_count": 3})
        mocked.get(
            f"{NB}kernel/dataframe/?variable_name=df&offset=0&limit=2",
            payload={"columns": ["a"], "rows": [{"a": 1}, {"a": 2}], "row_count": 3},
        )
        mocked.get(
            f"{NB}kernel/dataframe/?variable_name=df&offset=2&limit=2",
            payload={"columns": ["a"], "rows": [{"a": 3}], "row_count": 3},
        )
        async with make_backend() as backend:
            page = await backend.client.kernel_dataframe("aB3dE5fG", "df", limit=2, timeout=5)
            rows = [
                r async for r in backend.client.iter_dataframe_rows("aB3dE5fG", "df", page_size=2)
            ]
            for kwargs in ({"variable_name": "1x"}, {"offset": -1}, {"limit": 501}):
                args = {"variable_name": "df"} | kwargs
                with pytest.raises(ConfigurationError):
                    await backend.client.kernel_dataframe("aB3dE5fG", **args)
        only_call(mocked, "GET", first)
    assert page.row_count == 3
    assert rows == [{"a": 1}, {"a": 2}, {"a": 3}]


# ----------------------------------------------------------------- server-side runs


async def test_server_run_endpoints() -> None:
    status = {
        "run_id": "r1",
        "status": "running",
        "trigger": "mcp",
        "variables": {"d": "2025"},
        "cell_count": 2,
        "current_index": 0,
        "current_node_id": "n1",
        "failed_node_id": None,
        "error": None,
        "cells": [{"node_id": "n1", "cell_type": "python", "run_id": "c1", "status": "running"}],
        "created_at": "2025-05-01T10:00:00Z",
        "finished_at": None,
    }
    cell = {"status": "done", "result": {"status": "ok", "stdout": "hi"}, "error": None}
    with aioresponses() as mocked:
        mocked.post(f"{NB}runs/", payload={"run_id": "r1", "cell_count": 2, "starts_sandbox": True})
        mocked.get(f"{NB}runs/r1/", payload=status)
        mocked.post(
            f"{NB}runs/r1/interrupt/", payload={"interrupted": True, "status": "interrupted"}
        )
        mocked.post(f"{NB}sql_v2/run/", payload={"run_id": "c9"})
        mocked.get(f"{NB}sql_v2/runs/c9/", payload=cell)
        async with make_backend() as backend:
            started = await backend.client.start_notebook_run("aB3dE5fG", variables={"d": "2025"})
            current = await backend.client.get_notebook_run("aB3dE5fG", "r1")
            interrupted = await backend.client.interrupt_notebook_run("aB3dE5fG", "r1")
            cell_run = await backend.client.run_cell(
                "aB3dE5fG",
                node_id="n1",
                node_type="hogql",
                code="select 1",
                output_name="df",
                refs={"x": {"node_id": "n0", "kind": "local"}},
                connection_id="conn",
                send_raw_query=False,
            )
            cell_status = await backend.client.get_cell_run("aB3dE5fG", "c9")
            with pytest.raises(ConfigurationError):
                await backend.client.run_cell(
                    "aB3dE5fG", node_id="n", node_type="python", code="  "
                )
            with pytest.raises(ConfigurationError):
                await backend.client.run_cell(
                    "aB3dE5fG",
                    node_id="n",
                    node_type="sql",  # type: ignore[arg-type]
                    code="x",
                )
            with pytest.raises(ConfigurationError):
                await backend.client.start_notebook_run("aB3dE5fG", variables={"x": object()})
        only_call(
            mocked,
            "POST",
            f"{NB}runs/",
            json={"variables": [{"name": "d", "type": "string", "value": "2025"}]},
        )
        only_call(mocked, "POST", f"{NB}runs/r1/interrupt/", json=None)
        only_call(
            mocked,
            "POST",
            f"{NB}sql_v2/run/",
            json={
                "node_id": "n1",
                "node_type": "hogql",
                "code": "select 1",
                "output_name": "df",
                "refs": {"x": {"node_id": "n0", "kind": "local"}},
                "connection_id": "conn",
                "send_raw_query": False,
            },
        )
    assert started.run_id == "r1"
    assert current.cells[0].run_id == "c1"
    assert interrupted.interrupted is True
    assert cell_run.run_id == "c9"
    assert cell_status.result is not None
    assert cell_status.result.stdout == "hi"


async def test_host_is_used_as_given() -> None:
    with aioresponses() as mocked:
        mocked.get("https://eu.posthog.com/api/projects/7/notebooks/x/", payload=NOTEBOOK)
        async with make_backend(base_url="https://eu.posthog.com/") as backend:
            assert backend.base_url == "https://eu.posthog.com"
            await backend.client.get_notebook("x")
    assert backend.base_url != HOST
