"""Identifiers never change a request's path or query.

For every endpoint method that takes an identifier, an identifier holding ``/``, ``..``, ``?``,
``#``, ``%``, spaces, control characters or unencodable text is either refused before anything
is sent (ConfigurationError) or travels as exactly one percent-encoded path segment (or one
query value): the recorded requests are those of a harmless identifier with that segment
swapped in, nothing else. A loopback server then checks what really reaches the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notebookops import ConfigurationError, NotebookOpsError, RunHandle, RunRequest
from notebookops._urls import path_segment
from notebookops.backend import ApiClient, VendorProfile
from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.deepnote import BlockPlacement, DeepnoteBackend, DeepnoteOptions
from notebookops.backends.posthog import PostHogBackend
from notebookops.testing.server import FakeServer

from ._stub import install

SAFE = "SAFEID"
NASTY_SAMPLES = [
    "/",
    ".",
    "..",
    "a/b",
    "../admin",
    "..%2Fadmin",
    "%2e%2e",
    "?x=1",
    "a?b=c&d=e",
    "#frag",
    "%",
    "%25",
    "%2F",
    "a b",
    " ",
    "\t",
    "\n",
    "\x00",
    "\x7f",
    "a\r\nHost: evil.example",
    "\\",
    ";x",
    "@evil",
    "a:b",
    "&x=1",
    "+",
    "\u2028",
    "é/ü",
    "\ud800",
    "x" * 300,
]
NASTY = st.one_of(
    st.sampled_from(NASTY_SAMPLES),
    st.text(
        st.sampled_from("/.?#% \t\n\r\x00\x7f\\&=;:@+aZ0é\u2028\ud800"), min_size=1, max_size=10
    ),
    st.text(st.characters(exclude_categories=()), min_size=1, max_size=10),
)
IDS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Target = Callable[[Any, str], Awaitable[Any]]


async def _drain(generator: Any) -> None:
    async with aclosing(generator) as items:
        async for _ in items:
            pass


async def _record(make: Callable[[], Any], target: Target, ident: str) -> list[str] | None:
    """The URLs ``target`` requested with ``ident`` (None: refused with nothing sent)."""
    try:
        backend = make()
    except ConfigurationError:
        return None
    stub = install(backend)
    async with backend:
        try:
            await target(backend, ident)
        except ConfigurationError as error:
            if not stub.requests:
                return None
            raise AssertionError(f"refused after sending requests: {error}") from error
        except NotebookOpsError:
            pass  # the stub's "{}" is not every endpoint's answer: only the requests matter
    return [request.url for request in stub.requests]


def check_target(
    make_for: Callable[[str], Callable[[], Any]], target: Target, ident: str, *, sent: str = ""
) -> None:
    """``sent``: the identifier as the backend normalises it (default: unchanged)."""
    safe = asyncio.run(_record(make_for(SAFE), target, SAFE))
    assert safe, "the harmless identifier must produce requests"
    got = asyncio.run(_record(make_for(ident), target, ident))
    if got is None:
        return
    ident = sent or ident
    assert len(got) == len(safe)
    for url, reference in zip(got, safe, strict=True):
        parts, ref = urlsplit(url), urlsplit(reference)
        assert (parts.scheme, parts.netloc) == (ref.scheme, ref.netloc)
        assert parts.path == ref.path.replace(SAFE, quote(ident, safe=""))
        assert not parts.fragment
        expected_query = {
            key: [value.replace(SAFE, ident) for value in values]
            for key, values in parse_qs(ref.query, keep_blank_values=True).items()
        }
        assert parse_qs(parts.query, keep_blank_values=True) == expected_query


def fixed(make: Callable[[], Any]) -> Callable[[str], Callable[[], Any]]:
    return lambda _ident: make


# --------------------------------------------------------------------------- Deepnote


def deepnote() -> DeepnoteBackend:
    return DeepnoteBackend(
        "dn-key", base_url="https://api.deepnote.test", options=DeepnoteOptions(snapshot_wait=0)
    )


def dn_handle(run_id: str) -> RunHandle:
    return RunHandle(backend="deepnote", run_id=run_id, notebook_id="nb")


DEEPNOTE: dict[str, Target] = {
    "client.get_run": lambda b, x: b.client.get_run(x),
    "get_run": lambda b, x: b.get_run(dn_handle(x)),
    "list_notebook_runs_page": lambda b, x: b.client.list_notebook_runs_page(x),
    "list_notebook_runs": lambda b, x: _drain(b.client.list_notebook_runs(x)),
    "list_notebook_runs_page token": lambda b, x: b.client.list_notebook_runs_page(
        "nb", page_token=x
    ),
    "get_notebook": lambda b, x: b.client.get_notebook(x),
    "delete_notebook": lambda b, x: b.client.delete_notebook(x),
    "reorder_blocks": lambda b, x: b.client.reorder_blocks(x, ["b1"], BlockPlacement.start()),
    "upsert_schedule": lambda b, x: b.client.upsert_schedule(x, "0 * * * *"),
    "delete_schedule": lambda b, x: b.client.delete_schedule(x),
    "get_project": lambda b, x: b.client.get_project(x),
    "delete_project": lambda b, x: b.client.delete_project(x),
    "list_projects_page name": lambda b, x: b.client.list_projects_page(name_contains=x),
    "list_projects_page token": lambda b, x: b.client.list_projects_page(page_token=x),
    "execute_v1 project": lambda b, x: b.client.execute_v1(x, "nb"),
    "execute_v1 notebook": lambda b, x: b.client.execute_v1("proj", x),
}


@pytest.mark.parametrize("name", sorted(DEEPNOTE))
def test_deepnote_identifiers_stay_in_their_segment(name: str) -> None:
    @IDS
    @given(ident=NASTY)
    def run(ident: str) -> None:
        check_target(fixed(deepnote), DEEPNOTE[name], ident)

    run()


# --------------------------------------------------------------------------- Datalore

DATALORE_URL = "https://datalore.test"


def datalore() -> DataloreBackend:
    return DataloreBackend(token="dl-token", base_url=DATALORE_URL)


def dl_handle(run_id: str) -> RunHandle:
    return RunHandle(
        backend="datalore",
        run_id=run_id,
        notebook_id="own/nb",
        extra={"mode": "run", "base_url": DATALORE_URL},
    )


@IDS
@given(ident=NASTY)
def test_datalore_run_id_stays_in_its_segment(ident: str) -> None:
    check_target(fixed(datalore), lambda b, x: b.get_run(dl_handle(x)), ident)


@IDS
@given(ident=NASTY, owner=st.booleans())
def test_datalore_notebook_id_goes_in_the_body_only(ident: str, owner: bool) -> None:
    """A notebook id travels in the JSON body: the path never changes, and the body holds
    the id as given (less one trailing slash, as ids copied from a URL have) or the id is
    refused."""
    notebook = f"{ident}/nb" if owner else f"own/{ident}"

    async def main() -> None:
        backend = datalore()
        stub = install(backend, b'{"runId": "r1"}')
        async with backend:
            try:
                await backend.start_run(RunRequest(notebook))
            except ConfigurationError:
                assert not stub.requests
                return
        [request] = stub.requests
        assert request.url == f"{DATALORE_URL}/api/run/v1/notebook"
        assert request.json["notebookId"] == notebook.strip().removesuffix("/")

    asyncio.run(main())


# --------------------------------------------------------------------------- PostHog


def posthog(project: str = "1") -> Callable[[], PostHogBackend]:
    return lambda: PostHogBackend(
        "phx_ids", project_id=project, base_url="https://posthog.test", mode="server"
    )


def ph_handle(run_id: str = "r1", notebook: str = "nb", project: str = "1") -> RunHandle:
    return RunHandle(
        backend="posthog",
        run_id=run_id,
        notebook_id=notebook,
        extra={"mode": "server", "project_id": project},
    )


POSTHOG: dict[str, Target] = {
    "get_notebook": lambda b, x: b.client.get_notebook(x),
    "get_notebook_if_changed": lambda b, x: b.client.get_notebook_if_changed(x, 3),
    "update_notebook": lambda b, x: b.client.update_notebook(x, title="t"),
    "delete_notebook": lambda b, x: b.client.delete_notebook(x),
    "get_markdown": lambda b, x: b.client.get_markdown(x),
    "notebook_activity": lambda b, x: b.client.notebook_activity(x),
    "get_sharing": lambda b, x: b.client.get_sharing(x),
    "update_sharing": lambda b, x: b.client.update_sharing(x, enabled=True),
    "create_sharing_password": lambda b, x: b.client.create_sharing_password(x),
    "delete_sharing_password notebook": lambda b, x: b.client.delete_sharing_password(x, "pw"),
    "delete_sharing_password password": lambda b, x: b.client.delete_sharing_password("nb", x),
    "refresh_sharing": lambda b, x: b.client.refresh_sharing(x),
    "collab_save": lambda b, x: b.client.collab_save(
        x, client_id="c", version=1, steps=[], content={}
    ),
    "collab_markdown_save": lambda b, x: b.client.collab_markdown_save(
        x, client_id="c", version=1, content={}
    ),
    "collab_presence": lambda b, x: b.client.collab_presence(
        x, client_id="c", version=1, cursor={}
    ),
    "collab_stream": lambda b, x: _drain(b.client.collab_stream(x, reconnect=False)),
    "hogql_execute": lambda b, x: b.client.hogql_execute(x, "select 1"),
    "kernel_start": lambda b, x: b.client.kernel_start(x),
    "kernel_restart": lambda b, x: b.client.kernel_restart(x),
    "kernel_stop": lambda b, x: b.client.kernel_stop(x),
    "kernel_status": lambda b, x: b.client.kernel_status(x),
    "kernel_config": lambda b, x: b.client.kernel_config(x, cpu_cores=1),
    "kernel_execute": lambda b, x: b.client.kernel_execute(x, "1"),
    "kernel_execute_stream": lambda b, x: _drain(b.client.kernel_execute_stream(x, "1")),
    "kernel_dataframe": lambda b, x: b.client.kernel_dataframe(x, "df"),
    "start_notebook_run": lambda b, x: b.client.start_notebook_run(x),
    "get_notebook_run notebook": lambda b, x: b.client.get_notebook_run(x, "r1"),
    "get_notebook_run run": lambda b, x: b.client.get_notebook_run("nb", x),
    "interrupt_notebook_run notebook": lambda b, x: b.client.interrupt_notebook_run(x, "r1"),
    "interrupt_notebook_run run": lambda b, x: b.client.interrupt_notebook_run("nb", x),
    "run_cell": lambda b, x: b.client.run_cell(x, node_id="c0", node_type="python", code="1"),
    "get_cell_run notebook": lambda b, x: b.client.get_cell_run(x, "c1"),
    "get_cell_run run": lambda b, x: b.client.get_cell_run("nb", x),
    "start_run": lambda b, x: b.start_run(RunRequest(x)),
    "get_run notebook": lambda b, x: b.get_run(ph_handle(notebook=x)),
    "get_run run": lambda b, x: b.get_run(ph_handle(run_id=x)),
    "get_run project": lambda b, x: b.get_run(ph_handle(project=x)),
    "cancel_run notebook": lambda b, x: b.cancel_run(ph_handle(notebook=x)),
    "cancel_run run": lambda b, x: b.cancel_run(ph_handle(run_id=x)),
    "recording_comments": lambda b, x: b.client.recording_comments(x),
    "list_notebooks_page search": lambda b, x: b.client.list_notebooks_page(search=x),
}


@pytest.mark.parametrize("name", sorted(POSTHOG))
def test_posthog_identifiers_stay_in_their_segment(name: str) -> None:
    @IDS
    @given(ident=NASTY)
    def run(ident: str) -> None:
        check_target(fixed(posthog()), POSTHOG[name], ident)

    run()


@IDS
@given(ident=NASTY)
def test_posthog_project_id_stays_in_its_segment(ident: str) -> None:
    # Surrounding whitespace of a configured project id is trimmed (documented).
    check_target(posthog, lambda b, _x: b.client.get_notebook("nb"), ident, sent=ident.strip())


# --------------------------------------------------------------------------- on the wire


class _Echo(FakeServer):
    """Records the raw request target of everything it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[tuple[str, str, dict[str, str]]] = []

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._echo)

    async def _echo(self, request: web.Request) -> web.Response:
        self.targets.append((request.raw_path, request.path, dict(request.query)))
        return web.json_response({})


@pytest.fixture
async def echo() -> AsyncIterator[_Echo]:
    async with _Echo() as server:
        yield server


@pytest.mark.parametrize("ident", NASTY_SAMPLES)
async def test_what_reaches_the_server(echo: _Echo, ident: str) -> None:
    """Through the real transport: the identifier is one segment on the wire and decodes back
    to itself; as a query value it is exactly one value of one key."""
    transport = ApiClient(VendorProfile("echo"), base_url=echo.url, token="test-token")
    try:
        try:
            segment = path_segment(ident)
        except ConfigurationError:
            segment = None
        if segment is not None:
            await transport.request("GET", f"/runs/{segment}/cells")
            raw, path, query = echo.targets[-1]
            assert raw == f"/runs/{segment}/cells"
            assert path == f"/runs/{ident}/cells"
            assert query == {}
        try:
            await transport.request("GET", "/search", params={"q": ident, "limit": 5})
        except ConfigurationError:
            assert "\ud800" in ident  # only unencodable text is refused
        else:
            raw, path, query = echo.targets[-1]
            assert path == "/search"
            assert query == {"q": ident, "limit": "5"}
    finally:
        await transport.aclose()
