"""Pure transport helpers: retry decisions, Retry-After, error mapping, URL checks."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
import anyio
import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st

from notebookops import errors
from notebookops._api_errors import (
    VendorProfile,
    build_api_error,
    default_error_message,
    parse_retry_after,
)
from notebookops._client import ApiClient, retry_decision
from notebookops._redact import Secret, redact_url, trim
from notebookops._urls import check_base_url, path_segment
from notebookops.testing import MockTransport, json_response
from notebookops.transport import map_client_exception

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


# -- retry decisions


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_get_retries_transient_statuses(status: int) -> None:
    assert retry_decision("GET", idempotent=None, status=status)
    assert retry_decision("DELETE", idempotent=None, status=status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 500, 501])
def test_get_does_not_retry_other_statuses(status: int) -> None:
    assert not retry_decision("GET", idempotent=None, status=status)


def test_post_retries_only_429_among_statuses() -> None:
    assert retry_decision("POST", idempotent=None, status=429)
    for status in (500, 502, 503, 504):
        assert not retry_decision("POST", idempotent=None, status=status)
    assert retry_decision("POST", idempotent=True, status=503)


def test_post_retries_only_when_request_provably_not_sent() -> None:
    not_sent = errors.ConnectError("refused", request_sent=False)
    sent = errors.ConnectionLost("reset", request_sent=True)
    timeout = errors.RequestTimeout("slow")
    assert retry_decision("POST", idempotent=None, error=not_sent)
    assert not retry_decision("POST", idempotent=None, error=sent)
    assert not retry_decision("POST", idempotent=None, error=timeout)
    assert retry_decision("GET", idempotent=None, error=sent)
    assert retry_decision("GET", idempotent=None, error=timeout)


def test_unretryable_transport_errors_are_never_retried() -> None:
    tls = errors.ConnectError("bad cert", request_sent=False)
    tls.retryable = False
    assert not retry_decision("GET", idempotent=None, error=tls)
    assert not retry_decision("GET", idempotent=None, error=errors.ConfigurationError("x"))


# -- Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Sun, 22 Nov 2026 12:00:30 GMT", 30.0),
        ("Sun, 22 Nov 2026 11:00:00 GMT", 0.0),
        ("", None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


# -- error mapping

PROFILE = VendorProfile(name="acme")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequest),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDenied),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (429, errors.RateLimited),
        (500, errors.ServerError),
        (503, errors.ServerError),
        (418, errors.APIError),
        (405, errors.APIError),
    ],
)
def test_status_maps_to_class(status: int, cls: type[errors.APIError]) -> None:
    error = build_api_error(
        PROFILE, status=status, method="GET", url="https://h/x", headers={}, body=b""
    )
    assert type(error) is cls
    assert error.status == status
    assert error.vendor == "acme"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"message": "Notebook not found"}', "Notebook not found"),
        (b'{"error": "bad token"}', "bad token"),
        (b'{"detail": "Not found."}', "Not found."),
        (b'{"error": {"message": "nested"}}', "nested"),
        (b'{"code": "conflict_stale"}', "conflict_stale"),
        (b'["first problem"]', "first problem"),
        (b"plain words", "plain words"),
        (b"<html><h1>502</h1></html>", "the server sent an HTML error page"),
    ],
)
def test_vendor_message_is_used(body: bytes, expected: str) -> None:
    error = build_api_error(
        PROFILE, status=400, method="POST", url="https://h/x", headers={}, body=body
    )
    assert expected in str(error)
    assert error.body


def test_message_without_body_gets_a_hint() -> None:
    error = build_api_error(
        PROFILE, status=401, method="GET", url="https://h/x", headers={}, body=b""
    )
    assert "token" in str(error)


def test_rate_limited_reads_retry_after_header_then_body_hook() -> None:
    error = build_api_error(
        PROFILE,
        status=429,
        method="GET",
        url="https://h/x",
        headers={"retry-after": "7"},
        body=b"{}",
    )
    assert isinstance(error, errors.RateLimited)
    assert error.retry_after == 7
    profile = VendorProfile(name="ph", retry_after_from_body=lambda data: 12.0)
    error = build_api_error(
        profile, status=429, method="GET", url="https://h/x", headers={}, body=b"{}"
    )
    assert isinstance(error, errors.RateLimited)
    assert error.retry_after == 12


def test_request_id_and_redacted_url_in_error() -> None:
    error = build_api_error(
        PROFILE,
        status=500,
        method="GET",
        url="https://h/x?signature=SECRET&limit=5",
        headers={"x-request-id": "req-1"},
        body=b"",
    )
    assert error.request_id == "req-1"
    assert "SECRET" not in str(error)
    assert "SECRET" not in error.url
    assert "limit=5" in error.url
    assert "req-1" in str(error)


def test_refine_error_hook() -> None:
    def refine(error: errors.APIError) -> errors.APIError:
        return errors.Conflict("refined", status=error.status, vendor="v", method="m", url="u")

    error = build_api_error(
        VendorProfile(name="v", refine_error=refine),
        status=409,
        method="POST",
        url="https://h",
        headers={},
        body=b"",
    )
    assert str(error) == "refined"


def test_default_error_message_edge_cases() -> None:
    assert default_error_message({}, "") is None
    assert default_error_message({"message": "  "}, "") is None
    assert default_error_message(None, "   ") is None
    assert len(default_error_message(None, "x" * 1000) or "") < 300


# -- exception mapping: no aiohttp exception may escape unmapped


def _all_aiohttp_exceptions() -> list[type[BaseException]]:
    found = []
    for name in aiohttp.client_exceptions.__all__:
        obj = getattr(aiohttp.client_exceptions, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            found.append(obj)
    return found


def _instance(cls: type[BaseException]) -> BaseException:
    instance = cls.__new__(cls)
    BaseException.__init__(instance, "boom")
    return instance


@pytest.mark.parametrize("cls", _all_aiohttp_exceptions(), ids=lambda c: c.__name__)
def test_every_aiohttp_exception_is_mapped(cls: type[BaseException]) -> None:
    mapped = map_client_exception(_instance(cls), method="GET", url="https://h/p")
    assert isinstance(mapped, errors.NotebookOpsError)
    assert not isinstance(mapped, aiohttp.ClientError)


def test_mapping_classifies_delivery() -> None:
    def mapped(exc: BaseException) -> errors.NotebookOpsError:
        return map_client_exception(exc, method="POST", url="https://h/p")

    refused = mapped(_instance(aiohttp.ClientConnectorError))
    assert isinstance(refused, errors.ConnectError)
    assert refused.request_sent is False
    lost = mapped(_instance(aiohttp.ServerDisconnectedError))
    assert isinstance(lost, errors.ConnectionLost)
    assert lost.request_sent is True
    slow = mapped(TimeoutError())
    assert isinstance(slow, errors.RequestTimeout)
    assert slow.request_sent is True
    cert = mapped(_instance(aiohttp.ClientConnectorCertificateError))
    assert isinstance(cert, errors.ConnectError)
    assert cert.retryable is False
    connect_timeout = mapped(_instance(aiohttp.ConnectionTimeoutError))
    assert isinstance(connect_timeout, errors.RequestTimeout)
    assert connect_timeout.request_sent is False
    assert isinstance(mapped(_instance(aiohttp.InvalidURL)), errors.ConfigurationError)
    assert isinstance(mapped(ConnectionResetError()), errors.ConnectionLost)


# -- URLs


@pytest.mark.parametrize(
    "url",
    ["https://api.deepnote.com", "https://h:8443/base/", "http://127.0.0.1:9", "http://[::1]:80"],
)
def test_accepted_base_urls(url: str) -> None:
    assert not check_base_url(url).endswith("/")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "api.deepnote.com",
        "ftp://h",
        "http://example.com",
        "https://user:pw@h",
        "https://h/?token=x",
        "https://h/#frag",
        "https://h:notaport",
    ],
)
def test_refused_base_urls(url: str) -> None:
    with pytest.raises(errors.ConfigurationError):
        check_base_url(url)


def test_plain_http_needs_explicit_opt_in() -> None:
    with pytest.raises(errors.ConfigurationError, match="allow_http"):
        check_base_url("http://datalore.internal")
    assert check_base_url("http://datalore.internal", allow_http=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc-123", "abc-123"),
        ("a/b", "a%2Fb"),
        ("a?b#c", "a%3Fb%23c"),
        ("100%", "100%25"),
        ("with space", "with%20space"),
        ("..x", "..x"),
    ],
)
def test_path_segment_encodes(value: str, expected: str) -> None:
    assert path_segment(value) == expected


@pytest.mark.parametrize("value", ["", ".", "..", "a\nb", "a\x00", "tab\t"])
def test_path_segment_refuses(value: str) -> None:
    with pytest.raises(errors.ConfigurationError):
        path_segment(value, what="run id")


@given(st.one_of(st.text(), st.from_regex(r"[A-Za-z0-9._~-]{1,12}", fullmatch=True)))
def test_path_segment_is_quote_where_it_accepts(value: str) -> None:
    """The fast path for plain ids gives exactly what percent-encoding gives, and refuses
    the same values."""
    try:
        encoded = path_segment(value)
    except errors.ConfigurationError:
        assert (
            value in ("", ".", "..")
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
            or (any(0xD800 <= ord(c) <= 0xDFFF for c in value))
        )
        return
    assert encoded == quote(value, safe="")


@given(st.text(min_size=1))
def test_path_segment_never_contains_path_syntax(value: str) -> None:
    try:
        encoded = path_segment(value)
    except errors.ConfigurationError:
        return
    assert not set(encoded) & set("/?#\\ ")
    assert encoded not in (".", "..")


# -- redaction


def test_secret_never_shows() -> None:
    secret = Secret("tok-123")
    assert "tok-123" not in repr(secret)
    assert "tok-123" not in str(secret)
    assert "tok-123" not in f"{secret}"
    assert secret.reveal() == "tok-123"
    assert secret == Secret("tok-123")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)


def test_redact_url() -> None:
    redacted = redact_url(
        "https://u:p@h:8443/p?personal_api_key=KEY42&X-Amz-Signature=SIG42&limit=1"
    )
    assert "KEY42" not in redacted
    assert "SIG42" not in redacted
    assert "u:p" not in redacted
    assert redacted.startswith("https://h:8443/p?")
    assert "limit=1" in redacted
    assert redact_url("http://[::1]:80/x") == "http://[::1]:80/x"


def test_trim() -> None:
    assert trim("abc", 5) == "abc"
    assert trim("abcdefgh", 3) == "abc... [5 more characters]"


# ------------------------------------------------------------------ query strings

_PLAIN = st.text(alphabet="abcXYZ019._~-", max_size=8)


def _url_sent(url: str, params: Mapping[str, str | int | bool]) -> str:
    """The URL a request with ``params`` reaches the transport with."""
    mock = MockTransport(lambda request: json_response({}))

    async def send() -> None:
        async with ApiClient(
            VendorProfile("acme"), base_url="https://api.example.com", token=None, transport=mock
        ) as client:
            await client.request("GET", url, params=params)

    anyio.run(send)
    return mock.requests[0].url


@given(params=st.dictionaries(_PLAIN, _PLAIN | st.integers() | st.booleans(), max_size=4))
def test_plain_queries_are_built_as_yarl_builds_them(
    params: dict[str, str | int | bool],
) -> None:
    url = "https://api.example.com/v2/runs/x"
    clean = {
        key: "true" if value is True else "false" if value is False else str(value)
        for key, value in params.items()
    }
    expected = str(yarl.URL(url, encoded=True).update_query(clean)) if clean else url
    assert _url_sent(url, params) == expected


@given(
    params=st.dictionaries(
        st.text(min_size=1, max_size=6).filter(lambda t: t.isprintable()),
        st.text(max_size=6).filter(lambda t: t.isprintable()),
        min_size=1,
        max_size=3,
    )
)
def test_other_queries_go_through_yarl(params: dict[str, str]) -> None:
    url = "https://api.example.com/v2/runs"
    try:
        expected = str(yarl.URL(url, encoded=True).update_query(params))
    except UnicodeEncodeError:
        with pytest.raises(errors.ConfigurationError, match="not valid text"):
            _url_sent(url, params)
        return
    assert _url_sent(url, params) == expected
