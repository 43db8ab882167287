"""Transport security: HTTPS by default, plain HTTP only for loopback or an explicit opt-in,
and no way to switch TLS verification off without saying so."""

from __future__ import annotations

import inspect
import re
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from notebookops import (
    ConfigurationError,
    ConnectError,
    RunRequest,
    run_and_wait,
    wait_for_run,
)
from notebookops.backend import ApiClient, VendorProfile
from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.deepnote import DeepnoteBackend, DeepnoteOptions
from notebookops.backends.posthog import PostHogBackend
from notebookops.policies import RetryPolicy

from ._stub import transport_of

TOKEN = "tls-test-token-0123"
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)

Factory = Callable[..., Any]
FACTORIES: dict[str, Factory] = {
    "deepnote": lambda url, **kw: DeepnoteBackend(TOKEN, base_url=url, **kw),
    "datalore": lambda url, **kw: DataloreBackend(token=TOKEN, base_url=url, **kw),
    "posthog": lambda url, **kw: PostHogBackend(TOKEN, project_id="1", base_url=url, **kw),
}


def _url_of(backend: Any) -> str:
    url = transport_of(backend).base_url
    assert isinstance(url, str)
    return url


def test_https_is_the_default_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DATALORE_URL", "POSTHOG_HOST"):
        monkeypatch.delenv(variable, raising=False)
    defaults = [
        DeepnoteBackend(TOKEN),
        DataloreBackend(token=TOKEN),
        PostHogBackend(TOKEN, project_id="1"),
    ]
    for backend in defaults:
        assert _url_of(backend).startswith("https://"), backend


@pytest.mark.parametrize("vendor", sorted(FACTORIES))
@pytest.mark.parametrize(
    "url", ["http://api.example.com", "http://10.0.0.8:8080", "http://[2001:db8::1]", "ftp://x"]
)
def test_plain_http_to_a_remote_host_is_refused(vendor: str, url: str) -> None:
    with pytest.raises(ConfigurationError):
        FACTORIES[vendor](url)


@pytest.mark.parametrize("vendor", sorted(FACTORIES))
def test_plain_http_needs_an_explicit_opt_in(vendor: str) -> None:
    backend = FACTORIES[vendor]("http://notebooks.internal:8080", allow_http=True)
    assert _url_of(backend) == "http://notebooks.internal:8080"


@pytest.mark.parametrize("vendor", sorted(FACTORIES))
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "http://127.8.9.10"]
)
def test_plain_http_to_loopback_is_allowed(vendor: str, url: str) -> None:
    assert _url_of(FACTORIES[vendor](url)) == url


def test_deepnote_web_links_follow_the_same_rule() -> None:
    with pytest.raises(ConfigurationError):
        DeepnoteBackend(TOKEN, options=DeepnoteOptions(web_base_url="http://deepnote.example.com"))


_TLS_SWITCH = re.compile(r"ssl|tls|verify|insecure|cert|fingerprint", re.IGNORECASE)


def test_no_parameter_turns_tls_verification_off() -> None:
    """Nothing in the public constructors or entry points can disable certificate checks."""
    for callable_ in (
        ApiClient.__init__,
        DeepnoteBackend.__init__,
        DataloreBackend.__init__,
        PostHogBackend.__init__,
        run_and_wait,
        wait_for_run,
    ):
        names = [n for n in inspect.signature(callable_).parameters if _TLS_SWITCH.search(n)]
        assert not names, f"{callable_.__qualname__} takes {names}"


# --------------------------------------------------------------------------- a real TLS server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
async def tls_server(certificate: tuple[Path, Path]) -> AsyncIterator[tuple[str, list[str]]]:
    """An https:// server on 127.0.0.1 with a self-signed certificate; yields its URL and the
    paths of the requests that got through."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"workspace": {"id": "w"}, "runId": "r1", "id": "x"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "environment",
    [{}, {"PYTHONHTTPSVERIFY": "0", "CURL_CA_BUNDLE": "", "REQUESTS_CA_BUNDLE": ""}],
)
async def test_an_untrusted_certificate_is_refused_and_not_retried(
    tls_server: tuple[str, list[str]],
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A self-signed certificate fails the request with a clear, non-retryable ConnectError,
    whatever the environment says (variables that disable checks in other tools included)."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    url, seen = tls_server
    transport = ApiClient(VendorProfile("tls"), base_url=url, token=TOKEN, retry=RETRY)
    try:
        with pytest.raises(ConnectError) as caught:
            await transport.request("GET", "/v2/me")
    finally:
        await transport.aclose()
    assert caught.value.retryable is False
    assert caught.value.request_sent is False
    assert "not trusted" in str(caught.value)
    assert seen == []
    calls: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "deepnote": lambda backend: backend.client.me(),
        "datalore": lambda backend: backend.start_run(_request("own/nb")),
        "posthog": lambda backend: backend.client.get_notebook("nb"),
    }
    for vendor, factory in FACTORIES.items():
        async with factory(url, retry=RETRY) as backend:
            with pytest.raises(ConnectError, match="not trusted"):
                await calls[vendor](backend)
    assert seen == []


def _request(notebook: str) -> RunRequest:
    return RunRequest(notebook)


async def test_a_certificate_the_caller_trusts_works(
    tls_server: tuple[str, list[str]], certificate: tuple[Path, Path]
) -> None:
    """The control: with the certificate trusted explicitly (a custom CA, as on-premises
    installations need), the same server answers."""
    url, seen = tls_server
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as session,
        DataloreBackend(token=TOKEN, base_url=url, session=session) as backend,
    ):
        handle = await backend.start_run(_request("own/nb"))
    assert handle.run_id == "r1"
    assert seen == ["/api/run/v1/notebook"]


async def test_a_session_without_verification_is_refused(
    tls_server: tuple[str, list[str]],
) -> None:
    url, _ = tls_server
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        with pytest.raises(ConfigurationError):
            async with DataloreBackend(token=TOKEN, base_url=url, session=session) as backend:
                await backend.start_run(_request("own/nb"))
