"""The client layer: retries, rate limiting, redirects, credentials and error mapping over
a :class:`~notebookops.transport.Transport`.

Every vendor client (``DeepnoteClient``, ``PostHogClient``, ``DataloreClient``) sends its
requests through one :class:`ApiClient`. There is one retry loop, used by plain requests and
by event streams alike; the delay before a retry comes from the pure functions in
:mod:`notebookops.policies`, and the caller's deadline from anyio's cancel scopes
(``anyio.current_effective_deadline()``): a retry that would end past it is not attempted.
Whether a failed request may have reached the server travels only in the exception
(``TransportError.request_sent``).

Everything that can be a pure function (retry decisions, Retry-After parsing, error mapping,
URL checks) is one, and is tested without an event loop.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar
from urllib.parse import urljoin, urlsplit

import anyio
import attrs
import yarl

from ._api_errors import VendorProfile, build_api_error, parse_retry_after
from ._protect import WorkTimedOut, protected
from ._redact import Secret, redact_url, trim
from ._sse import SSEEvent, SSEParser
from ._urls import check_base_url, is_loopback_host, origin_of
from ._validate import count, seconds
from .errors import (
    APIError,
    BackendClosed,
    ConfigurationError,
    ConnectionLost,
    RateLimited,
    RequestTimeout,
    ResponseDecodeError,
    TransportError,
)
from .policies import RetryPolicy, rate_limit_delay, retry_delay
from .ratelimit import RateLimiter
from .transport import AiohttpTransport, Request, Response, Transport

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ApiClient", "VendorClient", "retry_decision"]

TransportErrorT = TypeVar("TransportErrorT", bound=TransportError)

logger = logging.getLogger("notebookops.http")

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS: Final = 5


def retry_decision(
    method: str, *, idempotent: bool | None, status: int | None = None, error: object = None
) -> bool:
    """Whether a failed attempt may be retried.

    Idempotent requests (GET/DELETE/...) are retried on any transport failure and on 429,
    502, 503 and 504. Others (a POST that starts a run) only when the request provably never
    reached the server, or on 429 (the server explicitly refused to process it); anything else
    is ambiguous, and retrying could run a notebook twice.
    """
    safe = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
    if error is not None:
        if not isinstance(error, TransportError) or not error.retryable:
            return False
        return safe or not error.request_sent
    if status is None:
        return False
    if status == 429:
        return True
    return safe and status in RETRYABLE_STATUSES


@attrs.define
class _Attempts:
    """Retry bookkeeping for one request: failures use up ``RetryPolicy.max_attempts``, 429s
    use up ``RetryPolicy.max_rate_limit_wait`` instead."""

    failures: int = 0
    throttles: int = 0
    throttled_for: float = 0.0


class ApiClient:
    """An authenticated client for one vendor API, over a :class:`Transport`.

    ``transport`` defaults to an :class:`~notebookops.transport.AiohttpTransport` (on
    ``session`` when one is passed: it is then used as is and never closed here). The token
    is only ever sent to ``base_url``'s origin, over HTTPS unless the host is loopback or
    ``allow_http`` is set. ``timeout`` bounds each attempt once it has a connection.

    A request that is not idempotent (a POST that starts a run) is sent under
    :func:`~notebookops._protect.protected`: once it has left, a cancellation of the caller
    waits for its answer (within ``timeout``) instead of abandoning a run the vendor may have
    made. Before that (its turn at the rate limiter, a free connection, the pause after a
    429) nothing has reached the vendor and a cancellation simply propagates.
    """

    def __init__(
        self,
        profile: VendorProfile,
        *,
        base_url: str,
        token: str | Secret | None,
        auth_scheme: str = "Bearer",
        transport: Transport | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        allow_http: bool = False,
        max_connections: int = 100,
        rng: random.Random | None = None,
    ) -> None:
        seconds("timeout", timeout)
        seconds("connect_timeout", connect_timeout)
        if transport is not None and session is not None:
            raise ConfigurationError("pass either transport= or session=, not both")
        if rate_limiter is not None and not isinstance(rate_limiter, RateLimiter):
            raise ConfigurationError(
                f"rate_limiter must be a notebookops.RateLimiter, got {type(rate_limiter).__name__}"
            )
        self.profile = profile
        self.base_url = check_base_url(base_url, allow_http=allow_http)
        self._origin = origin_of(self.base_url)
        self._token = token if isinstance(token, Secret) or token is None else Secret(token)
        self._auth_scheme = auth_scheme
        if session is not None:
            # Within the caller's own pool (0 there means no limit of its own).
            max_connections = getattr(session.connector, "limit", 0) or max_connections
        self._owns_transport = transport is None
        self.transport: Transport = transport or AiohttpTransport(
            session, max_connections=max_connections, connect_timeout=connect_timeout
        )
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter or RateLimiter()
        self.allow_http = allow_http
        self._rng = rng or random.Random()
        self._closed = False
        count("max_connections", max_connections, minimum=1)
        #: Requests in flight at once (streams until closed): the pool's size, so that none
        #: waits for a connection inside the transport, where a connect timeout would count.
        self._in_flight = anyio.Semaphore(max_connections)
        # URLs under base_url passed check_base_url already: the per-request checks only need
        # to parse URLs elsewhere (redirect targets, absolute snapshot links).
        self._trusted_prefix = self.base_url + "/"

    def __repr__(self) -> str:
        return f"ApiClient(vendor={self.profile.name!r}, base_url={self.base_url!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport if this client made it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_transport:
            await self.transport.aclose()

    # -- URL and header handling

    def url_for(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        if not path_or_url.startswith("/"):
            raise ConfigurationError(f"request paths must start with '/', got {path_or_url!r}")
        return self.base_url + path_or_url

    def _headers_for(self, url: str, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if extra:
            headers.update(extra)
        if self._token is not None and (
            url.startswith(self._trusted_prefix) or origin_of(url) == self._origin
        ):
            headers["Authorization"] = f"{self._auth_scheme} {self._token.reveal()}"
        return headers

    def _scrub(self, body: bytes) -> bytes:
        """An error body without our token: some servers echo the credential they refused,
        and error bodies end up in messages and logs. (Tokens shorter than 8 characters are
        not real credentials and are left alone rather than mangling the text.)"""
        if self._token is None:
            return body
        secret = self._token.reveal().encode()
        if len(secret) < 8:
            return body
        return body.replace(secret, b"[redacted]")

    def _check_target(self, url: str) -> None:
        if url.startswith(self._trusted_prefix):
            return
        parts = urlsplit(url)
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and (self.allow_http or is_loopback_host(parts.hostname)):
            return
        raise ConfigurationError(
            f"refusing to fetch {redact_url(url)}: only https:// (or loopback http) is allowed"
        )

    @staticmethod
    def _with_params(url: str, params: Mapping[str, str | int | float | bool | None] | None) -> str:
        if not params:
            return url
        clean = {
            key: ("true" if value is True else "false" if value is False else str(value))
            for key, value in params.items()
            if value is not None
        }
        for key, value in clean.items():
            try:
                f"{key}={value}".encode()
            except UnicodeEncodeError:  # yarl would silently drop the unencodable part
                raise ConfigurationError(f"query parameter {key!r} is not valid text") from None
        return str(yarl.URL(url, encoded=True).update_query(clean))

    # -- requests

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str | int | float | bool | None] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        protect: bool | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send a request with retries; return the response (2xx, 304) or raise from the tree.

        ``idempotent`` overrides the method-based default when deciding retries (a POST that
        merely reads, or a PUT that is not safe to repeat). ``protect`` (default: when not
        idempotent) sees a sent request through to its answer even if the caller is
        cancelled meanwhile: what a request that may start a run needs. Pass False for one
        whose answer nobody needs once its caller is gone.
        """
        method = method.upper()
        url = self._with_params(self.url_for(path_or_url), params)
        safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        return await self._with_retries(
            Request(
                method=method,
                url=url,
                headers=self._headers_for(url, headers),
                json=json,
                timeout=timeout or self.timeout,
                vendor=self.profile.name,
            ),
            safe=safe,
            protect=not safe if protect is None else protect,
        )

    async def request_json(self, method: str, path_or_url: str, **kwargs: Any) -> Any:
        """Like :meth:`request`, returning the decoded JSON body (``None`` for an empty one)."""
        response = await self.request(method, path_or_url, **kwargs)
        if not response.body.strip():
            return None
        return response.json()

    async def _with_retries(self, request: Request, *, safe: bool, protect: bool) -> Response:
        """The one retry loop: every request and every event stream goes through it."""
        attempts = _Attempts()
        while True:
            self._ensure_open()
            # Reads go before queued starts: runs already started keep getting their status
            # read while a burst of new starts waits for its turn.
            if safe:
                await self.rate_limiter.acquire_read()
            else:
                await self.rate_limiter.acquire()
            try:
                response = await self._send_in_turn(request, protect=protect)
            except TransportError as error:
                delay = self._delay_after_failure(request, safe, error, attempts)
                if delay is None:
                    raise
            else:
                if response.status != 429:
                    # What got through, for the limiter's estimate of the vendor's rate.
                    self.rate_limiter.record_answer()
                if response.status < 400:
                    return response
                api_error, delay = self._delay_after_error_status(request, safe, response, attempts)
                if delay is None:
                    raise api_error
            await anyio.sleep(delay)

    async def _send_in_turn(self, request: Request, *, protect: bool) -> Response:
        """Wait for one of the ``max_connections`` places, then send. The wait is not
        protected (nothing has left yet) and has no time limit of its own: the caller's
        deadline bounds it. A streamed answer keeps its place until it is closed."""
        await self._in_flight.acquire()
        try:
            response = await self._send(request, protect=protect)
        except BaseException:
            self._in_flight.release()
            raise
        if response.release is None:
            self._in_flight.release()
            return response
        release_stream = response.release
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._in_flight.release()
            await release_stream()

        return attrs.evolve(response, release=release)

    def _ensure_open(self) -> None:
        if self._closed:
            raise BackendClosed(f"the {self.profile.name} backend is closed")

    async def _send(self, request: Request, *, protect: bool) -> Response:
        """One attempt, following redirects (the token goes only to our own origin)."""
        for _hop in range(_MAX_REDIRECTS + 1):
            self._check_target(request.url)
            if not protect:
                response = await self.transport.send(request)
            else:
                # Once sent, a request that may start a run is seen through to its answer,
                # whatever the caller's deadline: given up early, it could still make a run
                # after a keyed retry had looked for one and found none (a run started
                # twice). The transport bounds it (request.timeout); the bound here is a
                # backstop for a custom transport that does not, late enough that a transport
                # which does always tells its own, more precise, error first.
                backstop = request.timeout * 2 + 1
                try:
                    response = await protected(
                        functools.partial(self.transport.send, request), backstop
                    )
                except WorkTimedOut:
                    raise self._failed(
                        RequestTimeout,
                        request,
                        f"no answer within {backstop:g}s; it may have reached the server",
                    ) from None
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or not location:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "%s %s -> %d", request.method, redact_url(request.url), response.status
                    )
                return response
            await response.aclose()
            url = urljoin(request.url, location)
            method, body = request.method, request.json
            if response.status == 303:
                method, body = "GET", None
            request = attrs.evolve(
                request,
                method=method,
                url=url,
                json=body,
                headers=self._headers_for(url, _without_auth(request.headers)),
            )
        raise self._failed(ConnectionLost, request, "too many redirects")

    def _failed(self, kind: type[TransportErrorT], request: Request, what: str) -> TransportErrorT:
        url = redact_url(request.url)
        return kind(
            f"{self.profile.name} {request.method} {url}: {what}",
            vendor=self.profile.name,
            method=request.method,
            url=url,
        )

    def _fits_deadline(self, delay: float) -> bool:
        """False when sleeping ``delay`` would run past the caller's deadline: better to raise
        the real error now than a timeout later."""
        deadline = anyio.current_effective_deadline()
        return deadline == math.inf or anyio.current_time() + delay < deadline

    def _delay_after_failure(
        self, request: Request, safe: bool, error: TransportError, attempts: _Attempts
    ) -> float | None:
        """Seconds to wait before retrying a request that got no response, or None to give up
        (not retryable, attempts spent, or past the caller's deadline)."""
        error.vendor = error.vendor or self.profile.name
        attempts.failures += 1
        if not retry_decision(request.method, idempotent=safe, error=error):
            return None
        delay = retry_delay(self.retry, attempts.failures, None, self._rng)
        if delay is None or not self._fits_deadline(delay):
            return None
        logger.warning(
            "%s %s failed (%s); retry %d in %.2fs",
            request.method,
            redact_url(request.url),
            type(error).__name__,
            attempts.failures,
            delay,
        )
        return delay

    def _delay_after_error_status(
        self, request: Request, safe: bool, response: Response, attempts: _Attempts
    ) -> tuple[APIError, float | None]:
        """Map an error response, feed a 429 to the shared limiter, and decide the delay before
        the retry (None: raise the error now)."""
        status = response.status
        api_error = build_api_error(
            self.profile,
            status=status,
            method=request.method,
            url=request.url,
            headers=response.headers,
            body=self._scrub(response.body),
        )
        if isinstance(api_error, RateLimited):
            retry_after = api_error.retry_after
        else:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            self.rate_limiter.on_rate_limited(
                None if retry_after is None else min(retry_after, self.retry.max_retry_after),
                self.retry.initial_backoff,
            )
        if not retry_decision(request.method, idempotent=safe, status=status):
            attempts.failures += 1
            return api_error, None
        if status == 429:
            attempts.throttles += 1
            delay = rate_limit_delay(
                self.retry, attempts.throttles, attempts.throttled_for, retry_after, self._rng
            )
            if delay is not None:
                attempts.throttled_for += delay
            retry_count = attempts.throttles
        else:
            attempts.failures += 1
            delay = retry_delay(self.retry, attempts.failures, retry_after, self._rng)
            retry_count = attempts.failures
        if delay is None or not self._fits_deadline(delay):
            return api_error, None
        logger.warning(
            "%s %s returned %d; retry %d in %.2fs",
            request.method,
            redact_url(request.url),
            status,
            retry_count,
            delay,
        )
        return api_error, delay

    # -- event streams

    @asynccontextmanager
    async def sse(
        self,
        method: str,
        path_or_url: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int | float | bool | None] | None = None,
        headers: Mapping[str, str] | None = None,
        last_event_id: str | None = None,
        idle_timeout: float = 60.0,
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        """Open a Server-Sent-Events stream; yields an async iterator of events.

        Opening goes through the same retry loop as :meth:`request` (a stream that starts
        work, a POST, is never retried once it may have reached the vendor). A stream that
        stalls for ``idle_timeout`` or breaks mid-way raises RequestTimeout / ConnectionLost
        (``ConnectionLost.partial_event`` tells whether it was cut mid-frame). Reconnection
        policy belongs to the caller (it knows the resume id).
        """
        method = method.upper()
        url = self._with_params(self.url_for(path_or_url), params)
        extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if headers:
            extra.update(headers)
        if last_event_id is not None:
            extra["Last-Event-ID"] = last_event_id
        response = await self._with_retries(
            Request(
                method=method,
                url=url,
                headers=self._headers_for(url, extra),
                json=json,
                timeout=idle_timeout,
                stream=True,
                vendor=self.profile.name,
            ),
            safe=method in IDEMPOTENT_METHODS,
            # An event stream belongs to the task that reads it: handing its opening to
            # another task would also delay its first read, and aiohttp drops the buffered
            # bytes of a connection that broke meanwhile.
            protect=False,
        )
        try:
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                body = b"".join([chunk async for chunk in response.iter_chunks()])
                raise ResponseDecodeError(
                    f"{self.profile.name} {method} {redact_url(url)} was expected to stream "
                    f"events but answered {response.status} with "
                    f"{content_type or 'no content type'}",
                    vendor=self.profile.name,
                    url=redact_url(url),
                    status=response.status,
                    body=trim(body.decode("utf-8", errors="replace"), 1000),
                )
            yield self._events(response, method, url)
        finally:
            await response.aclose()

    async def _events(self, response: Response, method: str, url: str) -> AsyncIterator[SSEEvent]:
        parser = SSEParser()
        try:
            async for chunk in response.iter_chunks():
                for event in parser.feed(chunk):
                    yield event
        except TransportError as error:
            error.vendor = error.vendor or self.profile.name
            error.partial_event = parser.has_partial_event
            raise
        except ResponseDecodeError as error:  # an event over the parser's size cap
            raise ResponseDecodeError(
                f"the event stream from {self.profile.name} {method} {redact_url(url)}: "
                f"{error.message}",
                vendor=self.profile.name,
                url=redact_url(url),
                status=response.status,
                body=error.body,
            ) from None
        if parser.close():
            cut = ConnectionLost(
                f"the event stream from {self.profile.name} {method} {redact_url(url)} "
                "ended in the middle of an event",
                vendor=self.profile.name,
                method=method,
                url=redact_url(url),
            )
            cut.partial_event = True
            raise cut


class VendorClient:
    """What every vendor client (``DeepnoteClient``, ``PostHogClient``, ...) shares: the
    :class:`ApiClient` it sends through, closing it, and ``async with``."""

    #: The client every typed method sends through (set by the subclass). For an endpoint the
    #: typed methods do not cover: ``await client.api.request_json("GET", "/path")``, with the
    #: same credentials, retries and rate limiter.
    api: ApiClient

    @property
    def base_url(self) -> str:
        """The API origin requests go to."""
        return self.api.base_url

    @property
    def rate_limiter(self) -> RateLimiter:
        """The limiter every request of this client goes through."""
        return self.api.rate_limiter

    @property
    def closed(self) -> bool:
        return self.api.closed

    async def aclose(self) -> None:
        """Close the connections. Idempotent; any later request raises BackendClosed."""
        await self.api.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _without_auth(headers: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key.lower() != "authorization"}
