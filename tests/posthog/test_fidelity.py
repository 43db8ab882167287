"""PostHog as its server really behaves (issue 28): both notebook formats, which run modes a
server has, permission errors, and the smaller request rules, each against the corrected fake
(and, for request shapes, the exact request)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from notebookops import run_and_wait
from notebookops.backends.posthog import (
    MissingScope,
    ModeUnavailable,
    NoRunnableCells,
    PostHogRunOptions,
    ScopedKeyNotAllowed,
)
from notebookops.backends.posthog._cells import (
    component_props,
    extract_cells,
    server_run_progress,
)
from notebookops.backends.posthog._requests import (
    run_variables_body,
)
from notebookops.backends.posthog._wire import NotebookRunCell, NotebookRunStatus
from notebookops.errors import BadRequest, ConfigurationError, NotFound, PermissionDenied
from notebookops.models import RunRequest, RunState
from notebookops.testing.posthog import (
    PostHogFakeServer,
    hogql_cell,
    markdown_cells,
    markdown_content,
    notebook_content,
    posthog_server,
)

from ._mock import BASE, aioresponses, make_backend, only_call
from .conftest import FAST_POLL, backend_for

NB = f"{BASE}aB3dE5fG/"

# --------------------------------------------------------------------------- 1: formats

MARKDOWN = "\n".join(
    [
        "# Report",
        "",
        '<PythonV2 nodeId="p1" title="Load" code="x = 1\\nprint(\\"x\\", x)" />',
        "",
        "```",
        '<PythonV2 nodeId="fenced" code="not a cell" />',
        "```",
        "",
        '<SQLV2 nodeId="s1" code={"select 1"} returnVariable="df" />',
        '<PythonV2 code="no node id: PostHog skips it" />',
        "<Image src='a.png' />",
        '<PythonV2 nodeId="p2"',
        "  code='y = 2'",
        "/>",
    ]
)


def test_markdown_notebook_cells_are_read() -> None:
    cells = extract_cells(markdown_content(MARKDOWN))
    assert [(c.kind, c.node_id, c.code) for c in cells] == [
        ("python", "p1", 'x = 1\nprint("x", x)'),
        ("hogql", "s1", "select 1"),
        ("python", "p2", "y = 2"),
    ]
    assert cells[0].title == "Load"
    assert all(cell.markdown for cell in cells)
    assert [cell.index for cell in cells] == [0, 1, 2]


def test_component_props_forms() -> None:
    props = component_props('<SQLV2 nodeId="a" flag height={300} query={{"kind": "X"}} raw=w />')
    assert props == {"nodeId": "a", "flag": True, "height": 300, "query": {"kind": "X"}, "raw": "w"}


async def test_kernel_mode_runs_a_markdown_notebook(server: PostHogFakeServer) -> None:
    server.add_notebook("md", cells=["total = 2", "print(total * 21)"], markdown=True)
    async with backend_for(server) as backend:
        run = await run_and_wait(backend, "md", poll=FAST_POLL, timeout=20)
    assert run.state is RunState.SUCCEEDED
    assert run.handle.extra["mode"] == "kernel"  # the old server has no runs/
    assert [o.text for o in run.outputs if o.output_type == "stream"] == ["42\n"]
    assert [o.cell_id for o in run.outputs if o.output_type == "stream"] == ["c1"]


async def test_server_mode_refuses_a_rich_text_notebook_naming_the_formats(
    new_server: PostHogFakeServer,
) -> None:
    new_server.add_notebook("rich", cells=["x = 1"])
    async with backend_for(new_server, mode="server") as backend:
        with pytest.raises(NoRunnableCells, match="<PythonV2>") as refused:
            await backend.start_run(RunRequest("rich"))
    assert "ph-python" in str(refused.value)
    assert "mode='kernel'" in str(refused.value)
    assert not new_server.requests_to("POST", r"/runs/$")


async def test_a_notebook_of_hogql_only_is_no_python_run(server: PostHogFakeServer) -> None:
    server.add_notebook("q", content=notebook_content(hogql_cell("select 1", node_id="h")))
    async with backend_for(server) as backend:
        with pytest.raises(NoRunnableCells, match="no python cell"):
            await backend.start_run(RunRequest("q"))
        hogql = PostHogRunOptions(cell_types=("hogql",))
        run = await run_and_wait(backend, "q", options=hogql, poll=FAST_POLL, timeout=20)
    assert run.state is RunState.SUCCEEDED


# --------------------------------------------------------------------------- 2: variables


def test_run_variables_body_shapes() -> None:
    assert run_variables_body(None) == {}
    assert run_variables_body({"d": "2025", "n": 7, "f": 1.5, "b": False, "none": None}) == {
        "variables": [
            {"name": "d", "type": "string", "value": "2025"},
            {"name": "n", "type": "number", "value": 7},
            {"name": "f", "type": "number", "value": 1.5},
            {"name": "b", "type": "boolean", "value": False},
            {"name": "none", "type": "string", "value": None},
        ]
    }
    given = [{"name": "day", "type": "date", "value": "-7d"}]
    assert run_variables_body(given) == {"variables": given}


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({f"v{i}": i for i in range(11)}, "at most 10"),
        ({"not valid": 1}, "not an identifier"),
        ({"class": 1}, "not an identifier"),
        ({"x": [1]}, "must be a scalar"),
        ({"x": float("nan")}, "must be a scalar"),
        ([{"name": "x"}, {"name": "x"}], "unique"),
        (["x"], "{'name', 'type', 'value'}"),
        ("x=1", "mapping or a list"),
    ],
)
async def test_run_variables_are_refused_before_sending(variables: Any, words: str) -> None:
    with aioresponses() as mocked:
        async with make_backend() as backend:
            with pytest.raises(ConfigurationError, match=words.replace("{", r"\{")):
                await backend.client.start_notebook_run("aB3dE5fG", variables=variables)
        assert not mocked.requests


async def test_server_run_sends_inputs_as_list_variables_and_they_replace_saved_ones(
    new_server: PostHogFakeServer,
) -> None:
    new_server.add_notebook("v", content=markdown_content(markdown_cells(("python", "print(who)"))))
    new_server.notebooks["v"].variables = [{"name": "old", "type": "string", "value": "x"}]
    async with backend_for(new_server) as backend:
        run = await run_and_wait(backend, "v", inputs={"who": "ann"}, poll=FAST_POLL, timeout=20)
    assert run.outputs[0].text == "ann\n"
    [sent] = new_server.requests_to("POST", r"/notebooks/v/runs/$")
    assert sent.json == {"variables": [{"name": "who", "type": "string", "value": "ann"}]}
    assert new_server.notebooks["v"].variables == sent.json["variables"]


async def test_the_fake_refuses_object_shaped_variables(new_server: PostHogFakeServer) -> None:
    new_server.add_notebook("v", cells=["1"], markdown=True)
    async with backend_for(new_server) as backend:
        with pytest.raises(BadRequest, match="Expected a list of items"):
            await backend.client.api.request(
                "POST", "/api/projects/1/notebooks/v/runs/", json={"variables": {"x": 1}}
            )


# --------------------------------------------------------------------------- 3: modes


async def test_auto_uses_server_runs_where_they_exist(new_server: PostHogFakeServer) -> None:
    new_server.add_notebook("a", cells=["print(1)"], markdown=True)
    async with backend_for(new_server) as backend:
        assert backend.mode == "auto"
        run = await run_and_wait(backend, "a", poll=FAST_POLL, timeout=20)
        again = await run_and_wait(backend, "a", poll=FAST_POLL, timeout=20)
        assert backend.server_runs_available is True
    assert run.handle.extra["mode"] == "server"
    assert again.handle.extra["mode"] == "server"
    assert len(new_server.requests_to("POST", r"/runs/$")) == 2
    assert not new_server.requests_to("POST", r"/kernel/")


async def test_auto_probes_once_and_falls_back_to_the_kernel_stream(
    server: PostHogFakeServer,
) -> None:
    server.add_notebook("a", cells=["print(1)"], markdown=True)
    async with backend_for(server) as backend:
        first = await run_and_wait(backend, "a", poll=FAST_POLL, timeout=20)
        second = await run_and_wait(backend, "a", poll=FAST_POLL, timeout=20)
    assert (first.handle.extra["mode"], second.handle.extra["mode"]) == ("kernel", "kernel")
    assert first.raw["kernel_api"] == "stream"
    assert len(server.requests_to("POST", r"/runs/$")) == 1  # the 404 is remembered


async def test_auto_without_stream_runs_cell_by_cell_and_remembers() -> None:
    async with posthog_server(
        version="new", runs_flag=False, personal_keys_on_unscoped_actions=True
    ) as server:
        server.add_notebook("a", cells=["x = 41", "print(x + 1)"], markdown=True)
        async with backend_for(server) as backend:
            first = await run_and_wait(backend, "a", poll=FAST_POLL, timeout=20)
            second = await run_and_wait(backend, "a", poll=FAST_POLL, timeout=20)
        assert first.raw["kernel_api"] == second.raw["kernel_api"] == "execute"
        assert [o.text for o in second.outputs if o.output_type == "stream"] == ["42\n"]
        assert len(server.requests_to("POST", r"/runs/$")) == 1
        assert len(server.requests_to("POST", r"/kernel/execute/stream/$")) == 1
        assert len(server.requests_to("POST", r"/kernel/execute/$")) == 4


async def test_explicit_server_mode_on_a_server_without_runs(server: PostHogFakeServer) -> None:
    server.add_notebook("a", cells=["1"], markdown=True)
    async with backend_for(server, mode="server") as backend:
        with pytest.raises(ModeUnavailable) as missing:
            await backend.start_run(RunRequest("a"))
    assert missing.value.mode == "server"
    assert missing.value.answer == "404 Not found."
    assert "mode='server'" in str(missing.value)
    assert "revamped-py-notebooks" in str(missing.value)


async def test_flag_off_is_a_404_for_runs(new_server: PostHogFakeServer) -> None:
    new_server.runs_flag = False
    new_server.add_notebook("a", cells=["1"], markdown=True)
    async with backend_for(new_server) as backend:
        with pytest.raises(NotFound):
            await backend.client.start_notebook_run("a")
        with pytest.raises(NotFound):
            await backend.client.get_cell_run("a", "r")


async def test_explicit_kernel_mode_on_a_server_without_kernel() -> None:
    with aioresponses() as mocked:
        mocked.get(
            NB,
            payload={
                "id": "u",
                "short_id": "aB3dE5fG",
                "content": markdown_content(markdown_cells(("python", "1"))),
            },
        )
        mocked.post(f"{NB}kernel/start/", status=404, payload={"detail": "Not found."})
        async with make_backend(mode="kernel") as backend:
            with pytest.raises(ModeUnavailable, match="mode='kernel'") as missing:
                await backend.start_run(RunRequest("aB3dE5fG"))
    assert missing.value.answer == "404 Not found."


# --------------------------------------------------------------------------- 4: permissions


async def test_newer_servers_refuse_personal_keys_on_the_kernel(
    new_server: PostHogFakeServer,
) -> None:
    new_server.add_notebook("k", cells=["1"], markdown=True)
    async with backend_for(new_server, mode="kernel") as backend:
        with pytest.raises(ScopedKeyNotAllowed, match="newer servers refuse every personal"):
            await backend.start_run(RunRequest("k"))
    assert not new_server.executions  # nothing ran, and no failed run was reported


async def test_missing_run_scopes_are_named(new_server: PostHogFakeServer) -> None:
    new_server.add_notebook("s", cells=["1"], markdown=True)
    new_server.add_user("phx_read", scopes=("notebook:read",))
    async with backend_for(new_server, "phx_read", mode="server") as backend:
        with pytest.raises(MissingScope, match="notebook:write and query:read") as missing:
            await backend.start_run(RunRequest("s"))
    assert missing.value.scope == "notebook:write"
    assert isinstance(missing.value, PermissionDenied)


async def test_a_refusal_mid_run_before_any_code_ran_is_raised(server: PostHogFakeServer) -> None:
    # HogQL-only runs do not start the kernel; the first request is refused.
    server.add_notebook("q", content=notebook_content(hogql_cell("select 1", node_id="h")))
    server.add_user("phx_scoped", scoped=True)
    hogql = PostHogRunOptions(cell_types=("hogql",))
    async with backend_for(server, "phx_scoped", mode="kernel") as backend:
        handle = await backend.start_run(RunRequest("q", options=hogql))
        with pytest.raises(ScopedKeyNotAllowed) as refused:
            await run_and_wait(backend, "q", options=hogql, poll=FAST_POLL, timeout=20)
        with pytest.raises(ScopedKeyNotAllowed):
            await backend.get_run(handle)
    assert refused.value.handle is not None


async def test_scopes_per_route(server: PostHogFakeServer) -> None:
    server.add_notebook("n", cells=["1"])
    server.add_user("phx_r", scopes=("notebook:read",))
    server.add_user("phx_w", scopes=("notebook:write",))
    async with backend_for(server, "phx_r") as reader, backend_for(server, "phx_w") as writer:
        assert (await reader.client.get_notebook("n")).short_id == "n"
        assert (await writer.client.get_notebook("n")).short_id == "n"  # write covers read
        with pytest.raises(MissingScope, match="'notebook:write'"):
            await reader.client.update_notebook("n", title="x")
        with pytest.raises(MissingScope, match="'activity_log:read'"):
            await writer.client.notebook_activity("n")
        assert (await reader.client.kernel_status("n")).status == "stopped"
        with pytest.raises(ScopedKeyNotAllowed):
            await writer.client.kernel_execute("n", "1")


# --------------------------------------------------------------------------- 5: smaller rules


async def test_presence_requires_a_cursor() -> None:
    with aioresponses() as mocked:
        mocked.post(f"{NB}collab/presence/", status=204)
        async with make_backend() as backend:
            with pytest.raises(ConfigurationError, match="cursor is required"):
                await backend.client.collab_presence(
                    "aB3dE5fG",
                    client_id="c",
                    version=1,
                    cursor=None,  # type: ignore[arg-type]
                )
            await backend.client.collab_presence("aB3dE5fG", client_id="c", version=1, cursor={})
        only_call(
            mocked,
            "POST",
            f"{NB}collab/presence/",
            json={"client_id": "c", "version": 1, "cursor": {}},
        )


async def test_the_fake_refuses_presence_without_cursor(server: PostHogFakeServer) -> None:
    server.add_notebook("p", cells=["1"])
    async with backend_for(server) as backend:
        with pytest.raises(BadRequest, match="field: cursor"):
            await backend.client.api.request(
                "POST",
                "/api/projects/1/notebooks/p/collab/presence/",
                json={"client_id": "c", "version": 0},
            )


async def test_version_is_sent_only_with_content() -> None:
    doc = {"type": "doc", "content": []}
    with aioresponses() as mocked:
        mocked.patch(NB, payload={"id": "u", "short_id": "aB3dE5fG", "version": 4})
        async with make_backend() as backend:
            with pytest.raises(ConfigurationError, match="only sent together with content"):
                await backend.client.update_notebook("aB3dE5fG", title="t", version=3)
            await backend.client.update_notebook("aB3dE5fG", content=doc, version=3)
        only_call(mocked, "PATCH", NB, json={"content": doc, "version": 3})


async def test_the_fake_writes_a_version_sent_without_content(server: PostHogFakeServer) -> None:
    server.add_notebook("v", cells=["1"])
    async with backend_for(server) as backend:
        await backend.client.api.request(
            "PATCH", "/api/projects/1/notebooks/v/", json={"version": 9}
        )
        assert (await backend.client.get_notebook("v")).version == 9


async def test_markdown_may_be_null(new_server: PostHogFakeServer) -> None:
    new_server.add_notebook("rich", cells=["1"])
    new_server.add_notebook("md", cells=["1"], markdown=True)
    async with backend_for(new_server) as backend:
        assert await backend.client.get_markdown("rich") is None
        text = await backend.client.get_markdown("md")
    assert text is not None
    assert "<PythonV2" in text


async def test_a_failed_sql_cell_error_comes_from_error(new_server: PostHogFakeServer) -> None:
    new_server.add_notebook(
        "sq", content=markdown_content(markdown_cells(("sql", "selec nothing")))
    )
    async with backend_for(new_server) as backend:
        run = await run_and_wait(backend, "sq", poll=FAST_POLL, timeout=20, raise_on_failure=False)
        [cell] = run.raw.cells
        cell_run = await backend.client.get_cell_run("sq", cell.run_id)
    assert cell_run.result is None
    assert run.state is RunState.FAILED
    [error] = [o for o in run.outputs if o.output_type == "error"]
    assert error.evalue == "HogQL syntax error"
    assert run.error is not None
    assert "HogQL syntax error" in run.error.message


async def test_cell_statuses_are_null_before_their_turn(new_server: PostHogFakeServer) -> None:
    new_server.add_notebook(
        "n", cells=["import time\nwhile True:\n    time.sleep(0.01)", "1"], markdown=True
    )
    async with backend_for(new_server) as backend:
        started = await backend.client.start_notebook_run("n")
        status = await backend.client.get_notebook_run("n", started.run_id)
        assert [cell.status for cell in status.cells][1] is None
        await backend.client.interrupt_notebook_run("n", started.run_id)
    progress = server_run_progress(status)
    assert (progress.completed, progress.total) == (0, 2)


def test_progress_reads_null_statuses() -> None:
    status = NotebookRunStatus(
        run_id="r",
        status="running",
        cell_count=3,
        cells=[
            NotebookRunCell(node_id="a", status="done"),
            NotebookRunCell(node_id="b", status="running"),
            NotebookRunCell(node_id="c", status=None),
        ],
    )
    progress = server_run_progress(status)
    assert (progress.completed, progress.total) == (1, 3)


async def test_sharing_400_keeps_posthogs_words() -> None:
    body = {
        "type": "validation_error",
        "code": "invalid_input",
        "detail": "Either a dashboard, insight or recording must be specified",
        "attr": None,
    }
    with aioresponses() as mocked:
        mocked.get(f"{NB}sharing/", status=400, body=json.dumps(body))
        async with make_backend() as backend:
            with pytest.raises(BadRequest) as refused:
                await backend.client.get_sharing("aB3dE5fG")
    assert "Either a dashboard, insight or recording must be specified" in str(refused.value)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("answer", "evidence"),
    [
        ({"status": 200, "body": "{not json"}, "could not be read"),
        ({"status": 200, "payload": {"run_id": None}}, "could not be read"),
        ({"status": 502, "body": "bad gateway"}, "502 from a gateway"),
    ],
)
async def test_an_ambiguous_server_start_is_outcome_unknown(
    answer: dict[str, Any], evidence: str
) -> None:
    from notebookops.errors import StartOutcomeUnknown

    content = markdown_content(markdown_cells(("python", "1")))
    with aioresponses() as mocked:
        mocked.get(NB, payload={"id": "u", "short_id": "aB3dE5fG", "content": content})
        mocked.post(f"{NB}runs/", **answer)
        async with make_backend(mode="server", retry=None) as backend:
            with pytest.raises(StartOutcomeUnknown) as unknown:
                await backend.start_run(RunRequest("aB3dE5fG"))
    assert evidence in unknown.value.evidence
    assert unknown.value.notebook == "aB3dE5fG"


async def test_posthogs_own_503_on_start_is_a_plain_server_error() -> None:
    from notebookops.errors import ServerError

    content = markdown_content(markdown_cells(("python", "1")))
    with aioresponses() as mocked:
        mocked.get(NB, payload={"id": "u", "short_id": "aB3dE5fG", "content": content})
        mocked.post(f"{NB}runs/", status=503, payload={"detail": "Failed to start run."})
        async with make_backend(mode="server") as backend:
            with pytest.raises(ServerError, match="Failed to start run"):
                await backend.start_run(RunRequest("aB3dE5fG"))


async def test_write_outputs_is_for_rich_text_notebooks(server: PostHogFakeServer) -> None:
    server.add_notebook("md", cells=["1"], markdown=True)
    async with backend_for(server) as backend:
        with pytest.raises(ConfigurationError, match="rich-text"):
            await backend.start_run(RunRequest("md", options=PostHogRunOptions(write_outputs=True)))
    assert not server.requests_to("POST", r"/kernel/")
