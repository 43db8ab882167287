"""Secret hygiene: the API token never shows, and never travels anywhere but its own origin.

The token is searched for in the repr/str of backends, transports, handles, runs and errors
(chained causes and notes included, through ``traceback.format_exception``), in every log
record at DEBUG level of a chaos run, and in errors built from servers that echo it back.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aioresponses import aioresponses
from yarl import URL

from notebookops import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    NotebookOpsError,
    RunHandle,
    run_and_wait,
)
from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.deepnote import DeepnoteBackend
from notebookops.backends.posthog import PostHogBackend
from notebookops.models import Run, RunState
from notebookops.policies import PollPolicy, RetryPolicy
from notebookops.testing.datalore import fake_datalore_server
from notebookops.testing.deepnote import RunScript, fake_deepnote
from notebookops.testing.posthog import posthog_server

from ._chaos import TOKEN, VENDORS, Call, Settings, chaos_scenario
from ._stub import transport_of

FAST = PollPolicy(initial=0.01, maximum=0.05)
NO_RETRY = RetryPolicy(max_attempts=1)
DEEPNOTE = "https://api.deepnote.test"
DATALORE = "https://datalore.test"
POSTHOG = "https://posthog.test"


def backends() -> list[Any]:
    return [
        DeepnoteBackend(TOKEN, base_url=DEEPNOTE, retry=NO_RETRY),
        DataloreBackend(token=TOKEN, base_url=DATALORE, retry=NO_RETRY),
        PostHogBackend(TOKEN, project_id="1", base_url=POSTHOG, mode="server", retry=NO_RETRY),
        PostHogBackend(TOKEN, project_id="1", base_url=POSTHOG, mode="kernel", retry=NO_RETRY),
    ]


# --------------------------------------------------------------------------- searching


def texts_of(value: Any, *, depth: int = 0) -> Iterator[str]:
    """Every way ``value`` can turn into text in a log line or a traceback."""
    yield repr(value)
    yield str(value)
    yield format(value, "")
    if isinstance(value, BaseException):
        yield "".join(traceback.format_exception(value))  # chained causes and notes
        chain: BaseException | None = value
        seen: set[int] = set()
        while chain is not None and id(chain) not in seen:
            seen.add(id(chain))
            yield from (repr(arg) for arg in chain.args)
            yield from (repr(item) for item in vars(chain).values())
            chain = chain.__cause__ or chain.__context__
    elif isinstance(value, Run):
        yield value.to_json(include_raw=True)
        yield from texts_of(value.handle, depth=depth + 1)
    elif isinstance(value, RunHandle):
        yield value.to_json()
    elif depth < 2 and hasattr(value, "__dict__"):
        for item in vars(value).values():
            yield from texts_of(item, depth=depth + 1)


def assert_no_token(value: Any, where: str) -> None:
    for text in texts_of(value):
        assert TOKEN not in text, f"the token shows in {where}: {text[:300]}"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # the message, args and any traceback


@contextmanager
def debug_logs() -> Iterator[_Capture]:
    """Every record of every logger at DEBUG (notebookops, aiohttp, asyncio...)."""
    capture = _Capture()
    root = logging.getLogger()
    level = root.level
    lowered = {
        name: logging.getLogger(name).level for name in ("notebookops", "aiohttp", "asyncio")
    }
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    for name in lowered:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
        for name, old in lowered.items():
            logging.getLogger(name).setLevel(old)


# --------------------------------------------------------------------------- objects


def test_backends_and_transports_never_show_the_token() -> None:
    for backend in backends():
        assert_no_token(backend, type(backend).__name__)
        transport = transport_of(backend)
        assert_no_token(transport, f"{type(backend).__name__}'s transport")
        assert TOKEN not in repr(vars(transport))
        if hasattr(backend, "client"):
            assert_no_token(backend.client, f"{type(backend).__name__}'s client")


def test_malformed_tokens_are_refused_without_echoing_them() -> None:
    for make in (
        lambda: DataloreBackend(token=f"{TOKEN} x", base_url=DATALORE),
        lambda: DeepnoteBackend(f"{TOKEN}\x00", base_url=DEEPNOTE),
        lambda: PostHogBackend(f"phc_{TOKEN}", project_id="1", base_url=POSTHOG),
    ):
        with pytest.raises(ConfigurationError) as caught:
            make()
        assert_no_token(caught.value, "a configuration error")


@pytest.mark.parametrize("vendor", VENDORS)
async def test_chaos_leaves_no_token_in_results_errors_or_debug_logs(vendor: str) -> None:
    calls: list[Call] = []
    with debug_logs() as logs:
        figures = await chaos_scenario(
            vendor,
            seed=11,
            runs=8,
            settings=Settings(fault_rate=0.3, call_timeout=1.0, start_timeout=0.8),
            collect=calls,
        )
    assert figures.ok, figures.problems
    assert calls
    for call in calls:
        where = f"{vendor} call {call.index}"
        for value in (call.result, call.error, call.handle):
            if value is not None:
                assert_no_token(value, where)
    assert logs.lines, "DEBUG logging produced nothing: the capture is broken"
    for line in logs.lines:
        assert TOKEN not in line, f"the token is in a log record: {line[:300]}"


# --------------------------------------------------------------------------- echoed tokens

ECHO = {"message": f"invalid API key {TOKEN}", "detail": f"key {TOKEN} refused"}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500])
async def test_a_server_echoing_the_token_never_gets_it_into_errors(status: int) -> None:
    targets: list[tuple[Any, str]] = [
        (DeepnoteBackend(TOKEN, base_url=DEEPNOTE, retry=NO_RETRY), f"{DEEPNOTE}/v2/me"),
        (
            DataloreBackend(token=TOKEN, base_url=DATALORE, retry=NO_RETRY),
            f"{DATALORE}/api/run/v1/r1",
        ),
        (
            PostHogBackend(TOKEN, project_id="1", base_url=POSTHOG, retry=NO_RETRY),
            f"{POSTHOG}/api/projects/1/notebooks/nb/",
        ),
    ]
    calls: list[Callable[[Any], Awaitable[Any]]] = [
        lambda b: b.client.me(),
        lambda b: b.get_run(
            RunHandle(backend="datalore", run_id="r1", notebook_id="own/nb", extra={})
        ),
        lambda b: b.client.get_notebook("nb"),
    ]
    with debug_logs() as logs, aioresponses() as mocked:
        for (backend, url), call in zip(targets, calls, strict=True):
            mocked.get(url, status=status, payload=ECHO, headers={"Retry-After": "0"})
            async with backend:
                with pytest.raises(APIError) as caught:
                    await call(backend)
            assert caught.value.status == status
            assert "[redacted]" in caught.value.body
            assert_no_token(caught.value, f"a {status} error of {type(backend).__name__}")
    for line in logs.lines:
        assert TOKEN not in line


@pytest.mark.parametrize("vendor", ["deepnote", "datalore", "posthog"])
async def test_a_refused_token_is_not_repeated_back(vendor: str) -> None:
    """A real 401 from each fake (the server expects another token)."""
    if vendor == "deepnote":
        async with fake_deepnote(token="another-token-entirely") as dn:
            backend: Any = DeepnoteBackend(TOKEN, base_url=dn.url, retry=NO_RETRY)
            async with backend:
                with pytest.raises(AuthenticationError) as caught:
                    await backend.client.me()
    elif vendor == "datalore":
        async with fake_datalore_server(token="another-token-entirely") as dl:
            dl.add_notebook("own/nb")
            backend = DataloreBackend(token=TOKEN, base_url=dl.url, retry=NO_RETRY)
            async with backend:
                with pytest.raises(AuthenticationError) as caught:
                    await run_and_wait(backend, "own/nb", poll=FAST, timeout=5)
    else:
        async with posthog_server(token="another-token-entirely") as ph:
            backend = PostHogBackend(TOKEN, project_id=ph.project_id, base_url=ph.url)
            async with backend:
                with pytest.raises(AuthenticationError) as caught:
                    await run_and_wait(backend, "nb", poll=FAST, timeout=5)
    assert_no_token(caught.value, f"{vendor}'s 401")


# --------------------------------------------------------------------------- other origins


def _auth_headers(mocked: aioresponses, method: str, url: str) -> list[str | None]:
    calls = mocked.requests.get((method, URL(url)), [])
    return [(call.kwargs.get("headers") or {}).get("Authorization") for call in calls]


def _redirect_cases() -> list[tuple[Callable[[], Any], str, Callable[[Any], Awaitable[Any]]]]:
    return [
        (
            lambda: DeepnoteBackend(TOKEN, base_url=DEEPNOTE, retry=NO_RETRY),
            f"{DEEPNOTE}/v2/me",
            lambda b: b.client.me(),
        ),
        (
            lambda: PostHogBackend(TOKEN, project_id="1", base_url=POSTHOG, retry=NO_RETRY),
            f"{POSTHOG}/api/projects/1/notebooks/nb/",
            lambda b: b.client.get_notebook("nb"),
        ),
        (
            lambda: DataloreBackend(token=TOKEN, base_url=DATALORE, retry=NO_RETRY),
            f"{DATALORE}/api/run/v1/r1",
            lambda b: b.get_run(
                RunHandle(backend="datalore", run_id="r1", notebook_id="own/nb", extra={})
            ),
        ),
    ]


async def _follow(
    make: Callable[[], Any], call: Callable[[Any], Awaitable[Any]]
) -> NotebookOpsError | None:
    async with make() as backend:
        try:
            await call(backend)
        except NotebookOpsError as error:
            return error  # "{}" is not every endpoint's answer; the headers are what counts
    return None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_to_another_origin_drop_the_token(status: int) -> None:
    """Through each adapter: the first hop carries the token; a hop to another origin (another
    host, or the same host on another port) does not; a hop on the same origin does."""
    for make, url, call in _redirect_cases():
        same = url.rsplit("/", 2)[0] + "/moved/"
        for elsewhere, keeps in (
            ("https://cdn.example.net/x", False),
            (url.replace(".test", ".test:8443"), False),
            (same, True),
        ):
            with aioresponses() as mocked:
                mocked.get(url, status=status, headers={"Location": elsewhere})
                mocked.get(elsewhere, status=200, payload={})
                await _follow(make, call)
            assert _auth_headers(mocked, "GET", url) == [f"Bearer {TOKEN}"]
            expected = f"Bearer {TOKEN}" if keeps else None
            assert _auth_headers(mocked, "GET", elsewhere) == [expected], elsewhere


async def test_a_redirect_to_plain_http_is_refused() -> None:
    """A downgrade to http:// (same host, or another) is never followed: the request there
    would travel unencrypted."""
    for make, url, call in _redirect_cases():
        for target in (url.replace("https://", "http://"), "http://cdn.example.net/x"):
            with aioresponses() as mocked:
                mocked.get(url, status=302, headers={"Location": target})
                error = await _follow(make, call)
            assert isinstance(error, ConfigurationError), error
            assert "only https://" in str(error)
            assert not mocked.requests.get(("GET", URL(target)))


async def test_deepnote_snapshot_downloads_on_another_host_get_no_token() -> None:
    async with fake_deepnote(token=TOKEN, second_origin=True) as server:
        notebook = server.add_notebook(script=RunScript.succeed(0.02))
        host = server.snapshot_host
        assert host is not None
        async with server.backend(snapshot_delivery="downloadUrl") as backend:
            run = await run_and_wait(backend, notebook.id, poll=FAST, timeout=10)
        assert run.state is RunState.SUCCEEDED
        assert run.outputs, "the snapshot was not read"
        downloads = host.requests_to("GET", r"^/snapshots/")
        assert downloads
        assert all("Authorization" not in request.headers for request in downloads)
        assert all(
            request.headers.get("Authorization") == f"Bearer {TOKEN}" for request in server.requests
        )


async def test_posthog_next_links_to_another_host_are_followed_on_ours() -> None:
    """PostHog builds ``next`` from the request's host; a link naming another host is read
    as a path on the configured one, so the token never goes there."""
    first = f"{POSTHOG}/api/projects/1/notebooks/"
    evil = "https://evil.example/api/projects/1/notebooks/?offset=1"
    ours = f"{POSTHOG}/api/projects/1/notebooks/?offset=1"
    summary = {"id": "u", "short_id": "nb"}
    with aioresponses() as mocked:
        mocked.get(first, payload={"results": [summary], "next": evil})
        mocked.get(ours, payload={"results": [summary], "next": None})
        async with PostHogBackend(TOKEN, project_id="1", base_url=POSTHOG) as backend:
            items = [item async for item in backend.client.list_notebooks()]
    assert len(items) == 2
    assert _auth_headers(mocked, "GET", ours) == [f"Bearer {TOKEN}"]
    assert not [key for key in mocked.requests if key[1].host == "evil.example"]


async def test_datalore_artifacts_point_at_the_installation_and_carry_no_token() -> None:
    async with fake_datalore_server(token=TOKEN) as server:
        server.add_notebook("own/nb", duration=0.02)
        async with DataloreBackend(token=TOKEN, base_url=server.url) as backend:
            run = await run_and_wait(backend, "own/nb", poll=FAST, timeout=10)
        assert run.artifacts
        for artifact in run.artifacts:
            assert artifact.url is not None
            assert artifact.url.startswith(server.url + "/")
            assert TOKEN not in artifact.url
        # Artifacts are described, never fetched by the backend.
        assert not server.requests_to("GET", r"/artifacts/")
