"""The endpoint methods against the loopback fake PostHog, through the real transport."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import anyio
import pytest

from notebookops.backends.posthog import (
    CollabConflict,
    CollabPresence,
    CollabStale,
    CollabStep,
    CollabStreamError,
    CollabUpdate,
    ExecutionResult,
    KernelOutput,
    KernelStreamError,
    PostHogBackend,
    ScopedKeyNotAllowed,
    VersionConflict,
)
from notebookops.backends.posthog._requests import notebook_path
from notebookops.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    ConfigurationError,
    Conflict,
    NotFound,
    ServerError,
    TransportError,
)
from notebookops.testing.posthog import (
    PostHogFakeServer,
    markdown_cells,
    markdown_content,
    notebook_content,
    posthog_server,
    python_cell,
    recording_comment,
)
from notebookops.testing.server import Fault

from .conftest import backend_for


async def test_crud_versions_and_soft_delete(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    content = notebook_content(python_cell("x = 1", node_id="n1"))
    created = await backend.client.create_notebook(
        title="Sales", content=content, short_id="sales1"
    )
    assert (created.short_id, created.version, created.title) == ("sales1", 0, "Sales")
    assert created.created_by is not None
    assert created.created_by.email == "ann@example.com"
    assert await backend.client.get_notebook_if_changed("sales1", 0) is None
    bumped = await backend.client.update_notebook("sales1", content=content, version=0)
    assert bumped.version == 1
    with pytest.raises(VersionConflict, match="Someone else edited the Notebook"):
        await backend.client.update_notebook("sales1", content=content, version=0)
    renamed = await backend.client.update_notebook("sales1", title="Sales v2")
    assert (renamed.title, renamed.version) == ("Sales v2", 1)
    changed = await backend.client.get_notebook_if_changed("sales1", 0)
    assert changed is not None
    assert changed.version == 1

    deleted = await backend.client.delete_notebook("sales1")
    assert deleted.deleted is True
    with pytest.raises(NotFound):
        await backend.client.get_notebook("sales1")
    assert [nb.short_id async for nb in backend.client.list_notebooks()] == []
    await backend.client.restore_notebook("sales1")
    assert (await backend.client.get_notebook("sales1")).title == "Sales v2"

    with pytest.raises(APIError) as refused:
        await backend.client.api.request("DELETE", notebook_path(server.project_id, "sales1"))
    assert refused.value.status == 405
    with pytest.raises(BadRequest, match="field: short_id"):
        await backend.client.create_notebook(short_id="sales1")
    markdown = await backend.client.get_markdown("sales1")
    assert markdown is not None
    assert markdown.startswith("# Sales v2")


async def test_list_pagination_and_filters(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    for index in range(5):
        server.add_notebook(f"nb{index}", title=f"Report {index}", cells=["1"] if index % 2 else [])
    every = [nb.short_id async for nb in backend.client.list_notebooks(page_size=2)]
    assert sorted(every) == [f"nb{i}" for i in range(5)]
    assert len(every) == 5
    page = await backend.client.list_notebooks_page(limit=2, offset=4)
    assert page.count == 5
    assert page.next is None
    assert page.previous is not None
    found = [nb.short_id async for nb in backend.client.list_notebooks(search="report 3")]
    assert found == ["nb3"]
    with_python = [
        nb.short_id async for nb in backend.client.list_notebooks(contains={"python": True})
    ]
    assert sorted(with_python) == ["nb1", "nb3"]
    mine = [
        nb.short_id async for nb in backend.client.list_notebooks(user=True, date_from="2000-01-01")
    ]
    assert len(mine) == 5
    assert [nb async for nb in backend.client.list_notebooks(date_to="2000-01-01")] == []


async def test_activity_and_recording_comments(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    content = notebook_content(recording_comment("rec-9", 12.5, "spike here"))
    await backend.client.create_notebook(title="Rec", content=content, short_id="rec1")
    for title in ("a", "b", "c"):
        await backend.client.update_notebook("rec1", title=title)
    page = await backend.client.notebook_activity("rec1", limit=2, page=1)
    assert page.total_count == 4
    assert page.next is not None
    assert [e.activity for e in page.results] == ["updated", "updated"]
    history = [e.activity async for e in backend.client.iter_activity("rec1", limit=3)]
    assert history == ["updated", "updated", "updated", "created"]
    project = [e.item_id async for e in backend.client.iter_activity(limit=10)]
    assert len(project) == 4
    comments = await backend.client.recording_comments("rec-9")
    assert [(c.comment, c.time_in_recording, c.notebook_short_id) for c in comments] == [
        ("spike here", 12500.0, "rec1")
    ]
    with pytest.raises(BadRequest, match="recording_id is required"):
        await backend.client.api.request(
            "GET", f"/api/projects/{server.project_id}/notebooks/recording_comments/"
        )


async def test_sharing_answers_400_as_posthog_does(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    # PostHog routes notebooks/{id}/sharing/ but its sharing view only knows dashboards,
    # insights and recordings: every call is a 400 with these words, in every version read.
    server.add_notebook("shr")
    calls = (
        backend.client.get_sharing("shr"),
        backend.client.update_sharing("shr", enabled=True),
        backend.client.create_sharing_password("shr"),
        backend.client.delete_sharing_password("shr", "pw1"),
        backend.client.refresh_sharing("shr"),
    )
    for call in calls:
        with pytest.raises(BadRequest, match="Either a dashboard, insight or recording") as err:
            await call
        assert "share it from the PostHog app" in str(err.value)


async def test_collab_save_conflict_and_stale(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("col", cells=["x = 1"])
    doc = notebook_content(python_cell("x = 2"))
    saved = await backend.client.collab_save(
        "col", client_id="me", version=0, steps=[{"n": 1}, {"n": 2}], content=doc, title="T"
    )
    assert (saved.version, saved.title, saved.text_content) == (2, "T", "")
    with pytest.raises(CollabConflict) as behind:
        await backend.client.collab_save("col", client_id="other", version=1, steps=[], content=doc)
    assert behind.value.steps == [{"n": 2}]
    assert behind.value.client_ids == ["me"]
    assert behind.value.version == 2
    same = await backend.client.collab_save("col", client_id="me", version=2, steps=[], content=doc)
    assert same.version == 2  # empty steps keep the version
    await backend.client.update_notebook(
        "col", content=doc, version=2
    )  # a PATCH: no steps to replay
    with pytest.raises(CollabStale):
        await backend.client.collab_save(
            "col", client_id="me", version=2, steps=[{"n": 3}], content=doc
        )
    server.trim_collab("col")
    with pytest.raises(CollabStale):
        await backend.client.collab_save("col", client_id="me", version=1, steps=[], content=doc)
    activities = [entry["activity"] for entry in server.activity]
    assert "save_rejected_conflict" in activities
    assert "save_rejected_stale" in activities
    with pytest.raises(BadRequest):
        await backend.client.api.request(
            "POST",
            notebook_path(server.project_id, "col", "collab", "save"),
            json={"client_id": "x"},
        )


async def test_markdown_collab_save(server: PostHogFakeServer, backend: PostHogBackend) -> None:
    server.add_notebook("md", content=markdown_content("hello"))
    saved = await backend.client.collab_markdown_save(
        "md", client_id="a", version=0, content=markdown_content("hello world")
    )
    assert saved.version == 1
    assert await backend.client.get_markdown("md") == "hello world"
    with pytest.raises(CollabConflict) as behind:
        await backend.client.collab_markdown_save(
            "md", client_id="b", version=0, content=markdown_content("x")
        )
    assert behind.value.updates[0]["diff"][0]["text"] == "hello world"
    with pytest.raises(CollabStale):
        await backend.client.collab_markdown_save(
            "md", client_id="b", version=5, content=markdown_content("x")
        )
    with pytest.raises(BadRequest, match="markdown notebook"):
        await backend.client.collab_markdown_save(
            "md", client_id="b", version=1, content=notebook_content()
        )


async def test_collab_stream_live_resume_and_presence(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("live")
    server.collab_stream_lifetime = 0.15
    server.collab_keepalive = 0.03
    doc = notebook_content()
    await backend.client.collab_save(
        "live", client_id="w", version=0, steps=[{"n": 1}], content=doc
    )
    seen: list[Any] = []
    presence_seen = anyio.Event()

    async def writer() -> None:
        version = 1
        for n in range(2, 6):
            await anyio.sleep(0.07)  # some saves land while the stream is reconnecting
            await backend.client.collab_save(
                "live", client_id="w", version=version, steps=[{"n": n}], content=doc
            )
            version += 1
        await backend.client.collab_presence(
            "live", client_id="w", version=version, cursor={"head": 3}
        )
        # Live or replayed on a reconnect, the presence reaches the stream; the update is
        # sent after it, since a reconnect replays the update (which ends the reading) first.
        await presence_seen.wait()
        await backend.client.update_notebook("live", content=doc, version=version)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(writer)
            async with aclosing(
                backend.client.collab_stream("live", last_event_id="0-0")
            ) as events:
                async for event in events:
                    seen.append(event)
                    if isinstance(event, CollabPresence):
                        presence_seen.set()
                    if isinstance(event, CollabUpdate):
                        break
    steps = [event.step["n"] for event in seen if isinstance(event, CollabStep)]
    assert steps == [1, 2, 3, 4, 5]  # replayed, live, across reconnects, never twice
    assert any(isinstance(event, CollabPresence) for event in seen)
    assert isinstance(seen[-1], CollabUpdate)
    assert seen[-1].id == "6-1"
    streams = server.requests_to("GET", r"/collab/stream/$")
    assert len(streams) >= 2
    assert streams[0].headers["Last-Event-ID"] == "0-0"
    assert all(r.headers.get("Last-Event-ID") for r in streams[1:])


async def test_collab_stream_error_event_then_reconnect(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("err")
    server.collab_stream_errors = 1
    doc = notebook_content()
    await backend.client.collab_save("err", client_id="w", version=0, steps=[{"n": 1}], content=doc)
    seen: list[Any] = []
    with anyio.fail_after(10):
        async with aclosing(backend.client.collab_stream("err", last_event_id="0-0")) as events:
            async for event in events:
                seen.append(event)
                if isinstance(event, CollabStreamError):
                    await backend.client.collab_save(
                        "err", client_id="w", version=1, steps=[{"n": 2}], content=doc
                    )
                elif isinstance(event, CollabStep) and event.step["n"] == 2:
                    break
    assert [type(event).__name__ for event in seen] == [
        "CollabStep",
        "CollabStreamError",
        "CollabStep",
    ]
    # The reconnection resumed after the first step: it was not delivered twice.
    streams = server.requests_to("GET", r"/collab/stream/$")
    assert streams[1].headers["Last-Event-ID"] == "1-0"


async def test_collab_stream_gives_up_after_repeated_failures(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("flaky")
    server.faults.add(Fault("reset_before", path=r"/collab/stream/$", times=1000))
    with pytest.raises(ConfigurationError):
        async for _ in backend.client.collab_stream("flaky", max_failures=-1):
            pass

    async def drain() -> None:
        async with aclosing(backend.client.collab_stream("flaky", max_failures=1)) as events:
            async for _ in events:
                pass

    with pytest.raises(TransportError):
        await drain()


async def test_hogql(server: PostHogFakeServer, backend: PostHogBackend) -> None:
    server.add_notebook("q")
    result = await backend.client.hogql_execute("q", "select id, name from events")
    assert result.columns == ["id", "name"]
    assert result.results[0] == [1, "alpha"]
    assert (await backend.client.hogql_execute("scratchpad", "")).results == []
    with pytest.raises(BadRequest, match="Syntax error"):
        await backend.client.hogql_execute("q", "drop everything")


async def test_kernel_keeps_variables_until_stopped(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("k")
    assert (await backend.client.kernel_status("k")).status == "stopped"
    started = await backend.client.kernel_start("k")
    assert started.status == "running"
    first = await backend.client.kernel_execute("k", "import math\nx = 41\ndef f(): return 1")
    assert first.status == "ok"
    assert first.variables is not None
    assert {name: v.type for name, v in first.variables.items()} == {
        "math": "module",
        "x": "int",
        "f": "function",
    }
    second = await backend.client.kernel_execute(
        "k", "print('x is', x)\nx + 1", return_variables=False
    )
    assert (second.stdout, second.result, second.variables) == (
        "x is 41\n",
        {"text/plain": "42"},
        None,
    )
    assert second.execution_count == 2
    media = await backend.client.kernel_execute("k", "display_media('image/png', 'iVBOR')")
    assert media.media[0].data == "iVBOR"
    status = await backend.client.kernel_status("k")
    assert (status.status, status.cpu_cores, status.memory_gb) == ("running", 1, 2)
    config = await backend.client.kernel_config(
        "k", cpu_cores=2, memory_gb=4, idle_timeout_seconds=600
    )
    assert (config.cpu_cores, config.restart_required) == (2, True)
    assert (await backend.client.kernel_status("k")).cpu_cores == 2
    assert await backend.client.kernel_stop("k") is True
    assert await backend.client.kernel_stop("k") is False
    gone = await backend.client.kernel_execute("k", "x")
    assert (gone.status, gone.error_name) == ("error", "NameError")
    assert any("\x1b[0;31mNameError" in line for line in gone.traceback)
    restarted = await backend.client.kernel_restart("k")
    assert restarted.status == "running"
    with pytest.raises(NotFound):
        await backend.client.kernel_execute("missing", "1")


async def test_kernel_timeout_and_errors(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("t")
    slow = await backend.client.kernel_execute(
        "t", "import time\nprint('start')\nwhile True:\n    time.sleep(0.01)", timeout=1
    )
    assert slow.status == "timeout"
    assert slow.stdout == "start\n"
    bad = await backend.client.kernel_execute("t", "def broken(:\n  pass")
    assert (bad.status, bad.error_name) == ("error", "SyntaxError")
    result = await backend.client.kernel_execute("t", "import sys\nprint('oops', file=sys.stderr)")
    assert result.stderr == "oops\n"


async def test_kernel_execute_stream_delivers_chunks_as_they_come(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("s")
    code = "import time\nprint('one')\ntime.sleep(0.1)\nprint('two', end='')\n7"
    arrivals: list[tuple[float, Any]] = []
    async with aclosing(backend.client.kernel_execute_stream("s", code)) as events:
        async for event in events:
            arrivals.append((anyio.current_time(), event))
    kinds = [event for _, event in arrivals]
    assert kinds[0] == KernelOutput(name="stdout", text="one\n")
    assert kinds[1] == KernelOutput(name="stdout", text="two")
    result = kinds[2]
    assert isinstance(result, ExecutionResult)
    assert result.stdout == "one\ntwo"
    assert result.result == {"text/plain": "7"}
    assert arrivals[1][0] - arrivals[0][0] >= 0.05  # the first chunk came before the sleep
    [sent] = server.requests_to("POST", r"/kernel/execute/stream/$")
    assert sent.headers["Accept"] == "text/event-stream"
    assert sent.json == {"code": code, "return_variables": True}


async def test_kernel_stream_error_frame_and_accept_header(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("e")
    server.kernel_stream_errors = 1
    with pytest.raises(KernelStreamError, match="Failed to execute notebook code"):
        async for _ in backend.client.kernel_execute_stream("e", "1"):
            pass
    with pytest.raises(APIError) as refused:
        await backend.client.api.request(
            "POST",
            notebook_path(server.project_id, "e", "kernel", "execute", "stream"),
            json={"code": "1"},
            headers={"Accept": "application/json"},
        )
    assert refused.value.status == 406


async def test_dataframe_paging(server: PostHogFakeServer, backend: PostHogBackend) -> None:
    server.add_notebook("df")
    await backend.client.kernel_execute("df", "frame = hogql_execute('select 1')\nnot_a_frame = 3")
    page = await backend.client.kernel_dataframe("df", "frame", offset=1, limit=1)
    assert (page.columns, page.rows, page.row_count) == (
        ["id", "name"],
        [{"id": 2, "name": "beta"}],
        3,
    )
    rows = [row async for row in backend.client.iter_dataframe_rows("df", "frame", page_size=2)]
    assert [row["id"] for row in rows] == [1, 2, 3]
    with pytest.raises(BadRequest, match="Invalid dataframe request"):
        await backend.client.kernel_dataframe("df", "not_a_frame")
    with pytest.raises(ServerError, match="Failed to fetch dataframe data"):
        await backend.client.kernel_dataframe("df", "undefined_name")


async def test_scoped_key_is_refused_on_kernel_and_hogql(server: PostHogFakeServer) -> None:
    server.add_notebook("sc")
    server.add_user("phx_scoped", scoped=True)
    async with backend_for(server, "phx_scoped") as scoped:
        assert (await scoped.client.get_notebook("sc")).short_id == "sc"
        for call in (
            scoped.client.kernel_start("sc"),
            scoped.client.hogql_execute("sc", "select 1"),
            scoped.client.recording_comments("r"),
            scoped.client.project_activity(),
        ):
            with pytest.raises(ScopedKeyNotAllowed, match="created without scopes"):
                await call
    async with backend_for(server, "phx_unknown") as stranger:
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            await stranger.client.get_notebook("sc")


async def test_throttle_delay_from_the_body_is_honoured(
    server: PostHogFakeServer, backend: PostHogBackend
) -> None:
    server.add_notebook("rl")
    server.faults.status(
        429,
        body={
            "type": "throttled_error",
            "code": "throttled",
            "detail": "Request was throttled. Expected available in 0.05 seconds.",
            "attr": None,
        },
        path=r"/notebooks/rl/$",
    )
    started = anyio.current_time()
    notebook = await backend.client.get_notebook("rl")
    assert notebook.short_id == "rl"
    assert anyio.current_time() - started >= 0.04
    assert len(server.requests_to("GET", r"/notebooks/rl/$")) == 2
    assert backend.client.api.rate_limiter.rate_limited_count == 1


async def test_server_runs_api() -> None:
    async with posthog_server(version="new") as server, backend_for(server) as backend:
        await _server_runs_api(server, backend)


async def _server_runs_api(server: PostHogFakeServer, backend: PostHogBackend) -> None:
    server.add_notebook(
        "sr",
        content=markdown_content(markdown_cells(("python", "print(day)"), ("sql", "select 1"))),
    )
    server.add_notebook("empty", cells=["x = 1"])  # rich text: nothing a server run can run
    started = await backend.client.start_notebook_run("sr", variables={"day": "2025-05-01"})
    assert started.cell_count == 2
    with anyio.fail_after(5):
        status = await backend.client.get_notebook_run("sr", started.run_id)
        while status.status == "running":
            await anyio.sleep(0.01)
            status = await backend.client.get_notebook_run("sr", started.run_id)
    assert status.status == "done"
    # Newer servers replace the notebook's saved variables with the run's.
    assert server.notebooks["sr"].variables == [
        {"name": "day", "type": "string", "value": "2025-05-01"}
    ]
    cell_runs = [
        await backend.client.get_cell_run("sr", cell.run_id or "") for cell in status.cells
    ]
    assert cell_runs[0].result is not None
    assert cell_runs[0].result.stdout == "2025-05-01\n"
    assert cell_runs[1].result is not None
    assert cell_runs[1].result.row_count == 3
    with pytest.raises(BadRequest, match="no cells"):
        await backend.client.start_notebook_run("empty")
    single = await backend.client.run_cell("sr", node_id="x", node_type="python", code="print(2)")
    with anyio.fail_after(5):
        cell = await backend.client.get_cell_run("sr", single.run_id)
        while cell.status == "running":
            await anyio.sleep(0.01)
            cell = await backend.client.get_cell_run("sr", single.run_id)
    assert cell.result is not None
    assert cell.result.stdout == "2\n"
    server.add_notebook(
        "busy", cells=["import time\nwhile True:\n    time.sleep(0.01)"], markdown=True
    )
    running = await backend.client.start_notebook_run("busy")
    with pytest.raises(Conflict) as busy:
        await backend.client.start_notebook_run("busy")
    assert not isinstance(busy.value, VersionConflict)
    interrupted = await backend.client.interrupt_notebook_run("busy", running.run_id)
    assert (interrupted.interrupted, interrupted.status) == (True, "interrupted")
    again = await backend.client.interrupt_notebook_run("busy", running.run_id)
    assert again.interrupted is False
    with pytest.raises(NotFound):
        await backend.client.get_notebook_run("sr", "no-such-run")
