"""The transport seam: one ``send(request) -> response``, and the aiohttp implementation.

Everything above this module (retries, rate limiting, error mapping, event streams, every
vendor client) is written against :class:`Transport`, so a test, or a user with their own
HTTP stack, drives any adapter by passing ``transport=`` (see
:class:`notebookops.testing.MockTransport`). :class:`AiohttpTransport` is the only code in
notebookops that imports aiohttp.

A transport sends exactly one request: no retries, no redirects, no authentication. It raises
only :class:`~notebookops.TransportError` (``request_sent`` says whether the request may have
reached the server) or :class:`~notebookops.ResponseDecodeError` (a body over the size cap).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol, runtime_checkable

import aiohttp
import attrs
import yarl

from ._redact import redact_url, trim
from ._validate import count, seconds
from ._version import __version__
from .errors import (
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    NotebookOpsError,
    RequestTimeout,
    ResponseDecodeError,
    TransportError,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "AiohttpTransport",
    "Request",
    "Response",
    "Transport",
]

USER_AGENT: Final = f"notebookops/{__version__} (+https://github.com/notebookops/notebookops)"
#: The largest response body read into memory (64 MiB): a status answer that never ends must
#: not grow the process without limit. Larger bodies fail with ResponseDecodeError.
DEFAULT_MAX_BODY: Final = 64 * 1024 * 1024


@attrs.frozen(repr=False)
class Request:
    """One HTTP request as a transport sends it.

    ``url`` is absolute and already percent-encoded; ``json`` is the body (``None``: none).
    ``timeout`` bounds the whole attempt, from the moment the transport has a connection for
    it (a wait for a free connection is not counted) to the last byte of the answer; for a
    ``stream`` request it bounds the answer's headers and then each wait for more bytes.
    """

    method: str
    url: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    json: Any = None
    timeout: float = 30.0
    stream: bool = False
    #: Which vendor is asked (for error messages); a transport copies it to the Response.
    vendor: str = ""

    def __repr__(self) -> str:
        # Headers carry the credential: never shown.
        return f"<Request {self.method} {redact_url(self.url)}>"


@attrs.frozen(repr=False)
class Response:
    """An HTTP answer. ``headers`` keys are lower-case.

    For a ``stream`` request the body arrives through :meth:`iter_chunks` and the response
    must be closed with :meth:`aclose` (it holds its connection until then); otherwise
    ``body`` holds it whole.
    """

    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    method: str = ""
    url: str = ""
    #: Which vendor answered (for error messages): the request's ``vendor``.
    vendor: str = ""
    #: The body as it arrives, for a streamed answer.
    chunks: AsyncIterator[bytes] | None = attrs.field(default=None, eq=False)
    #: Releases a streamed answer's connection.
    release: Callable[[], Awaitable[None]] | None = attrs.field(default=None, eq=False)

    def __repr__(self) -> str:
        return f"<Response {self.status} to {self.method} {redact_url(self.url)}>"

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ResponseDecodeError (with the body, trimmed) if it is not."""
        try:
            return jsonlib.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            content_type = self.headers.get("content-type", "unknown content type")
            raise ResponseDecodeError(
                f"{self.vendor} {self.method} {redact_url(self.url)} returned {self.status} with "
                f"a body that is not JSON ({content_type})",
                vendor=self.vendor,
                url=redact_url(self.url),
                status=self.status,
                body=trim(self.text, 1000),
            ) from None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as it arrives (the whole ``body`` at once when not streamed)."""
        if self.chunks is None:
            if self.body:
                yield self.body
            return
        async for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        """Give a streamed answer's connection back (idempotent; nothing to do otherwise)."""
        if self.release is not None:
            await self.release()


@runtime_checkable
class Transport(Protocol):
    """Sends one HTTP request. Implementations raise only TransportError/ResponseDecodeError,
    and bound each send by ``request.timeout`` (a request that may start a run and gets no
    answer is otherwise given up at twice that and a second, as a RequestTimeout)."""

    async def send(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


def map_client_exception(exc: BaseException, *, method: str, url: str) -> NotebookOpsError:
    """Translate an aiohttp/OS-level exception into the notebookops tree (never leak aiohttp)."""
    safe_url = redact_url(url)
    where = f"{method} {safe_url}"
    kw: dict[str, Any] = {"method": method, "url": safe_url}
    if isinstance(exc, aiohttp.InvalidURL):
        return ConfigurationError(f"invalid URL for {where}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ServerFingerprintMismatch):
        err: TransportError = ConnectError(
            f"TLS verification failed for {where}: the server's certificate is not trusted",
            request_sent=False,
            **kw,
        )
        err.retryable = False
        return err
    if isinstance(exc, aiohttp.ClientSSLError):
        err = ConnectError(f"TLS handshake failed for {where}", request_sent=False, **kw)
        err.retryable = False
        return err
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return RequestTimeout(f"timed out connecting for {where}", request_sent=False, **kw)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(
            f"could not connect for {where}: {type(exc).__name__}", request_sent=False, **kw
        )
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return RequestTimeout(f"timed out waiting for the response to {where}", **kw)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return ConnectionLost(f"the server closed the connection during {where}", **kw)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ConnectionLost(f"the response to {where} was cut short", **kw)
    if isinstance(exc, aiohttp.ClientResponseError):
        return ConnectionLost(f"the server sent a malformed HTTP response to {where}", **kw)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ConnectionLost(f"connection error during {where}: {type(exc).__name__}", **kw)
    return TransportError(f"unexpected transport failure during {where}: {type(exc).__name__}")


_CLIENT_ERRORS: Final = (aiohttp.ClientError, OSError, TimeoutError)


class AiohttpTransport:
    """The default transport: one :class:`aiohttp.ClientSession`, created on first use.

    A ``session`` passed in is used as is and never closed here; otherwise the pool holds
    ``max_connections``. (The client in front keeps its requests in flight within that
    number, so none waits for a connection inside aiohttp, where the connect timeout would
    count the wait.) Answers larger than ``max_body`` bytes fail with ResponseDecodeError.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        max_connections: int = 100,
        connect_timeout: float = 10.0,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        seconds("connect_timeout", connect_timeout)
        count("max_body", max_body, minimum=1)
        # A connector built with ssl=False verifies nothing; taking it would silently send
        # tokens over unverified TLS. aiohttp keeps the setting on a private attribute.
        if session is not None and getattr(session.connector, "_ssl", None) is False:
            raise ConfigurationError(
                "the aiohttp session passed in has TLS certificate verification turned off "
                "(ssl=False); pass a session that verifies certificates (use an "
                "ssl.SSLContext with your CA for private certificates)"
            )
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections
        self._connect_timeout = float(connect_timeout)
        # The whole attempt is bounded in send() (request.timeout); aiohttp bounds the connect.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout)
        self._max_body = max_body
        self._closed = False

    def __repr__(self) -> str:
        return f"<AiohttpTransport ({'closed' if self._closed else 'open'})>"

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ConfigurationError("the transport is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session if this transport created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def send(self, request: Request) -> Response:
        session = self._ensure_session()
        try:
            if request.stream:
                return await self._open_stream(session, request)
            # aiohttp runs on asyncio only: its own timeout is the cheapest that tells its
            # expiry from any other cancellation (aiohttp's total timeout does not always).
            async with asyncio.timeout(request.timeout):
                async with session.request(
                    request.method,
                    yarl.URL(request.url, encoded=True),
                    json=request.json,
                    headers=request.headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as resp:
                    body = await self._read_capped(resp, request)
                    return Response(
                        status=resp.status,
                        headers={k.lower(): v for k, v in resp.headers.items()},
                        body=body,
                        method=request.method,
                        url=request.url,
                        vendor=request.vendor,
                    )
        except _CLIENT_ERRORS as exc:
            raise map_client_exception(exc, method=request.method, url=request.url) from None

    async def _read_capped(self, resp: aiohttp.ClientResponse, request: Request) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > self._max_body:
            raise self._too_large(request, resp.status)
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > self._max_body:
                raise self._too_large(request, resp.status)
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self, request: Request, status: int) -> ResponseDecodeError:
        return ResponseDecodeError(
            f"{request.method} {redact_url(request.url)} answered with a body over "
            f"{self._max_body} bytes (max_body); it was not read",
            url=redact_url(request.url),
            status=status,
        )

    async def _open_stream(self, session: aiohttp.ClientSession, request: Request) -> Response:
        released = False

        async def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            resp.release()
            resp.close()

        resp = await session.request(
            request.method,
            yarl.URL(request.url, encoded=True),
            json=request.json,
            headers=request.headers,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self._connect_timeout, sock_read=request.timeout
            ),
            allow_redirects=False,
        )

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            except _CLIENT_ERRORS as exc:
                raise map_client_exception(exc, method=request.method, url=request.url) from None

        headers = {k.lower(): v for k, v in resp.headers.items()}
        if resp.status >= 300:
            # An error (or a redirect) is read whole, like any other answer, and the
            # connection given back at once.
            try:
                body = await self._read_capped(resp, request)
            finally:
                await release()
            return Response(
                status=resp.status,
                headers=headers,
                body=body,
                method=request.method,
                url=request.url,
                vendor=request.vendor,
            )
        return Response(
            status=resp.status,
            headers=headers,
            method=request.method,
            url=request.url,
            vendor=request.vendor,
            chunks=chunks(),
            release=release,
        )
