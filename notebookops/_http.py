"""HttpTransport: the only module that imports aiohttp.

It owns the session lifecycle, authentication, per-request timeouts, retries, the shared rate
limiter, error mapping and Server-Sent-Events reading. Everything that can be a pure function
(retry decisions, Retry-After parsing, error mapping, URL checks) is one, and is tested without
an event loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json as jsonlib
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import anyio
import attrs
import yarl

from . import __version__, _deadline
from ._deadline import effective_deadline
from ._redact import Secret, redact_url, trim
from ._sse import SSEEvent, SSEParser
from .errors import (
    APIError,
    AuthenticationError,
    BackendClosed,
    BadRequest,
    ConfigurationError,
    Conflict,
    ConnectError,
    ConnectionLost,
    NotebookOpsError,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ResponseDecodeError,
    ServerError,
    TransportError,
)
from .policies import RetryPolicy, rate_limit_delay, retry_delay
from .ratelimit import RateLimiter

__all__ = [
    "HttpResponse",
    "HttpTransport",
    "RateLimiter",
    "VendorProfile",
    "build_api_error",
    "check_base_url",
    "default_error_message",
    "map_client_exception",
    "parse_retry_after",
    "path_segment",
    "retry_decision",
]

logger = logging.getLogger("notebookops.http")

USER_AGENT: Final = f"notebookops/{__version__} (+https://github.com/notebookops/notebookops)"
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS: Final = 5
_REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id", "x-amzn-requestid", "x-trace-id")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Characters quote() never encodes (RFC 3986 unreserved): a segment made only of them is
#: already encoded.
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+", re.ASCII)


# --------------------------------------------------------------------------- pure helpers


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, allow_http: bool = False, what: str = "base URL") -> str:
    """Validate a vendor base URL and return it without a trailing slash.

    HTTPS is required, except for loopback hosts (test servers) or when ``allow_http`` is set
    explicitly: a token sent over plain HTTP is a token given away.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"the {what} must be a non-empty URL string")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"the {what} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"the {what} must look like https://host[:port], got {redact_url(url)!r}"
        )
    if parts.username or parts.password:
        raise ConfigurationError(f"the {what} must not contain credentials")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"the {what} must not contain a query or fragment")
    if parts.scheme == "http" and not (allow_http or is_loopback_host(parts.hostname)):
        raise ConfigurationError(
            f"refusing plain http:// for {parts.hostname}: tokens would travel unencrypted. "
            "Use https://, or pass allow_http=True if you really mean it."
        )
    del port
    return url.strip().rstrip("/")


def origin_of(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def path_segment(value: str, *, what: str = "identifier") -> str:
    """Percent-encode one path segment, refusing values that could change the path's meaning.

    ``/``, ``?``, ``#`` and ``%`` are encoded; empty values, ``.``/``..`` and control characters
    are refused with ConfigurationError (no vendor id legitimately contains them).
    """
    if type(value) is str and _UNRESERVED.fullmatch(value) and value not in (".", ".."):
        return value  # what nearly every id looks like, and what quote() would return
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    if value in (".", "..") or _CONTROL.search(value):
        raise ConfigurationError(f"{what} {value!r} is not a valid identifier")
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:  # a lone surrogate (JSON can carry one): not encodable
        raise ConfigurationError(f"{what} {value!r} is not valid text") from None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date. ``None`` if absent
    or unreadable; never negative."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


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


def default_error_message(data: Any, text: str) -> str | None:
    """The vendor's own words from an error body: ``message``, ``detail``, ``error`` (str or
    ``{message}``), or a short plain-text body."""
    if isinstance(data, dict):
        for key in ("message", "detail", "error", "error_description", "title"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
            if isinstance(value, dict):
                inner = value.get("message") or value.get("detail")
                if isinstance(inner, str) and inner.strip():
                    return inner.strip()
        code = data.get("code")
        if isinstance(code, str) and code:
            return code
        return None
    if isinstance(data, list) and data and isinstance(data[0], str):
        return data[0]
    stripped = text.strip()
    if not stripped:
        return None
    if stripped[:1] == "<":
        return "the server sent an HTML error page"
    return trim(stripped, 200)


_STATUS_ERRORS: Final[dict[int, type[APIError]]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}

_STATUS_HINTS: Final[dict[int, str]] = {
    401: "check that the API token is set and valid",
    403: "the token is valid but lacks access to this resource",
    404: "check the identifier, and that the token's workspace can see it",
    429: "rate limited by the vendor",
}


@attrs.frozen
class VendorProfile:
    """What differs between vendors at the HTTP level, as data and small pure hooks."""

    name: str
    #: Extracts the vendor's message from a decoded error body (``None`` if not JSON) and text.
    error_message: Callable[[Any, str], str | None] = default_error_message
    #: A retry delay hidden in an error body (PostHog: "Expected available in N seconds").
    retry_after_from_body: Callable[[Any], float | None] | None = None
    #: Last chance to replace a mapped error with a more specific one (same status family).
    refine_error: Callable[[APIError], APIError] | None = None


def build_api_error(
    profile: VendorProfile,
    *,
    status: int,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
) -> APIError:
    """Map an error response to the error tree. Pure: the one place statuses become classes."""
    text = body.decode("utf-8", errors="replace")
    data: Any = None
    if text.strip()[:1] in ("{", "["):
        try:
            data = jsonlib.loads(text)
        except (ValueError, RecursionError):  # nesting deeper than the interpreter allows
            data = None
    vendor_message = profile.error_message(data, text)
    safe_url = redact_url(url)
    request_id = next((headers[h] for h in _REQUEST_ID_HEADERS if h in headers), None)
    cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else APIError)
    summary = vendor_message or _STATUS_HINTS.get(status) or "no details given"
    message = f"{profile.name} API {method} {safe_url} returned {status}: {summary}"
    if request_id:
        message += f" (request id {request_id})"
    kwargs: dict[str, Any] = {
        "status": status,
        "vendor": profile.name,
        "method": method,
        "url": safe_url,
        "request_id": request_id,
        "body": trim(text, 2000),
        "data": data,
    }
    error: APIError
    if cls is RateLimited:
        retry_after = parse_retry_after(headers.get("retry-after"), now=now)
        if retry_after is None and profile.retry_after_from_body is not None:
            retry_after = profile.retry_after_from_body(data)
        error = RateLimited(message, retry_after=retry_after, **kwargs)
    else:
        error = cls(message, **kwargs)
    if profile.refine_error is not None:
        error = profile.refine_error(error)
    return error


def map_client_exception(
    exc: BaseException, *, vendor: str, method: str, url: str
) -> NotebookOpsError:
    """Translate an aiohttp/OS-level exception into the notebookops tree (never leak aiohttp)."""
    safe_url = redact_url(url)
    where = f"{vendor} {method} {safe_url}"
    kw: dict[str, Any] = {"vendor": vendor, "method": method, "url": safe_url}
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


# --------------------------------------------------------------------------- responses


@attrs.frozen
class HttpResponse:
    """A complete response. ``headers`` keys are lower-case."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    method: str
    url: str
    vendor: str = ""
    #: Seconds from sending the request to its complete answer: the time it waited for a
    #: connection or the rate limiter is not in it (the answer is that much younger).
    elapsed: float = attrs.field(default=0.0, eq=False)

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


# --------------------------------------------------------------------------- transport


@attrs.define
class _Attempts:
    """Retry bookkeeping for one request: failures use up ``RetryPolicy.max_attempts``, 429s
    use up ``RetryPolicy.max_rate_limit_wait`` instead."""

    failures: int = 0
    throttles: int = 0
    throttled_for: float = 0.0


#: Query values made only of these characters need no escaping, so the query can be appended
#: as is (anything else goes through yarl, which escapes it).
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9._~-]*")


class HttpTransport:
    """An authenticated HTTP client for one vendor API.

    One :class:`aiohttp.ClientSession` per transport, created on first use; a ``session`` passed
    in is used as is and never closed by us. The token is only ever sent to ``base_url``'s
    origin.

    At most ``max_connections`` requests (or the passed session's pool size) are in flight at
    once; the others wait their turn without a time limit of their own (the caller's deadline
    bounds the wait), and ``timeout`` / ``connect_timeout`` start when a request has its
    connection.
    """

    def __init__(
        self,
        profile: VendorProfile,
        *,
        base_url: str,
        token: str | Secret | None,
        auth_scheme: str = "Bearer",
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        allow_http: bool = False,
        max_connections: int = 100,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")
        self.profile = profile
        self.base_url = check_base_url(base_url, allow_http=allow_http)
        # A connector built with ssl=False verifies nothing; taking it would silently send
        # tokens over unverified TLS. aiohttp keeps the setting on a private attribute.
        if session is not None and getattr(session.connector, "_ssl", None) is False:
            raise ConfigurationError(
                "the aiohttp session passed in has TLS certificate verification turned off "
                "(ssl=False); pass a session that verifies certificates (use an "
                "ssl.SSLContext with your CA for private certificates)"
            )
        self._origin = origin_of(self.base_url)
        self._token = token if isinstance(token, Secret) or token is None else Secret(token)
        self._auth_scheme = auth_scheme
        self._session = session
        self._owns_session = session is None
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter or RateLimiter()
        self.allow_http = allow_http
        self._max_connections = max_connections
        #: Requests hold one of these while they have a connection, so the ones beyond the
        #: pool's size queue here, where no timeout runs: aiohttp's ``connect`` timeout would
        #: count the wait for a free connection in its own pool, and 10,000 concurrent waits
        #: on 100 connections then "time out" by the thousand without ever reaching the
        #: vendor. Waiting here is bounded by the caller's deadline; each request's own
        #: timeout starts once it has a connection. A caller's session gets as many as its
        #: own pool holds (0 there means no limit, and no gate).
        limit = max_connections if session is None else getattr(session.connector, "limit", 0)
        self._slots = asyncio.Semaphore(limit) if limit else None
        self._rng = rng or random.Random()
        self._closed = False
        # URLs under base_url passed check_base_url already: the per-request checks only need
        # to parse URLs elsewhere (redirect targets, absolute snapshot links).
        self._trusted_prefix = self.base_url + "/"
        # Only the connect phase is timed by aiohttp. Its total timeout swallows a
        # cancellation that lands in the same loop iteration as its own expiry (it enters one
        # timer twice and uncancels the task twice, so the second uncancel eats the other
        # request: aio-libs/aiohttp#5979 is the same family), and a wait's deadline would
        # then be lost. _send times the whole request with asyncio.timeout instead, which
        # tells its own expiry from other cancellations.
        self._connect_only = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout)

    def __repr__(self) -> str:
        return f"HttpTransport(vendor={self.profile.name!r}, base_url={self.base_url!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connection_gate(self) -> asyncio.Semaphore | None:
        """The FIFO gate in front of the connections (None: no limit). A request holds a
        place from before it is sent until its response is read; orchestration lets a start
        wait for one in its caller's task (see ``BaseBackend._connection_gate``)."""
        return self._slots

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise BackendClosed(f"the {self.profile.name} backend is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session if we created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

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
        timeout: float | None = None,
    ) -> HttpResponse:
        """Send a request with retries; return the response (2xx, 304) or raise from the tree.

        ``idempotent`` overrides the method-based default when deciding retries (a POST that
        merely reads, or a PUT that is not safe to repeat).
        """
        method = method.upper()
        url = self._with_params(self.url_for(path_or_url), params)
        limiter = self.rate_limiter
        # RateLimiter.acquire inlined (one coroutine fewer per request), unless a subclass
        # changed it. The retry bookkeeping is made at the first retry: most requests have none.
        inline_acquire = type(limiter).acquire is RateLimiter.acquire
        attempts: _Attempts | None = None
        while True:
            # A start waiting here has sent nothing yet: _deadline.queueing lets it be
            # abandoned meanwhile (see _deadline.StartSection).
            if inline_acquire:
                wait = limiter.reserve()
                if wait > 0:
                    # A start's caller may have taken a connection for it: not held while
                    # the limiter paces it, so that other requests keep their turn.
                    _deadline.release_held(self._slots)
                    with _deadline.queueing():
                        await anyio.sleep(wait)
                limiter.record_send()
            else:
                _deadline.release_held(self._slots)
                with _deadline.queueing():
                    await limiter.acquire()
            try:
                response = await self._send(
                    method, url, json=json, headers=headers, timeout=timeout
                )
            except NotebookOpsError as error:
                if isinstance(error, TransportError) and not error.request_sent:
                    _deadline.not_taken()
                if attempts is None:
                    attempts = _Attempts()
                delay = self._delay_after_failure(method, url, idempotent, error, attempts)
                if delay is None:
                    raise
                await self._pause_before_retry(delay)
                continue
            if response.status != 429:
                # What got through, for the limiter's estimate of the vendor's rate.
                self.rate_limiter.record_answer()
            if response.status < 400:
                return response
            if response.status == 429:
                _deadline.not_taken()  # refused, not acted upon: a start made no run
            if attempts is None:
                attempts = _Attempts()
            api_error, delay = self._delay_after_error_status(
                method,
                url,
                idempotent,
                response.status,
                response.headers,
                response.body,
                attempts,
            )
            if delay is None:
                raise api_error
            await self._pause_before_retry(delay)

    @staticmethod
    async def _pause_before_retry(delay: float) -> None:
        # A start whose every attempt provably had no effect waits here as in a queue.
        with _deadline.queueing():
            await anyio.sleep(delay)

    def _delay_after_failure(
        self,
        method: str,
        url: str,
        idempotent: bool | None,
        error: NotebookOpsError,
        attempts: _Attempts,
    ) -> float | None:
        """Seconds to wait before retrying a request that got no response, or None to give up
        (not retryable, attempts spent, or past the caller's deadline)."""
        attempts.failures += 1
        if not retry_decision(method, idempotent=idempotent, error=error):
            return None
        delay = retry_delay(self.retry, attempts.failures, None, self._rng)
        if delay is None or not self._fits_deadline(delay):
            return None
        logger.warning(
            "%s %s failed (%s); retry %d in %.2fs",
            method,
            redact_url(url),
            type(error).__name__,
            attempts.failures,
            delay,
        )
        return delay

    def _delay_after_error_status(
        self,
        method: str,
        url: str,
        idempotent: bool | None,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        attempts: _Attempts,
    ) -> tuple[APIError, float | None]:
        """Map an error response, feed a 429 to the shared limiter, and decide the delay before
        the retry (None: raise the error now)."""
        api_error = build_api_error(
            self.profile,
            status=status,
            method=method,
            url=url,
            headers=headers,
            body=self._scrub(body),
        )
        if isinstance(api_error, RateLimited):
            retry_after = api_error.retry_after
        else:
            retry_after = parse_retry_after(headers.get("retry-after"))
        if status == 429:
            self.rate_limiter.on_rate_limited(
                None if retry_after is None else min(retry_after, self.retry.max_retry_after),
                self.retry.initial_backoff,
            )
        if not retry_decision(method, idempotent=idempotent, status=status):
            attempts.failures += 1
            return api_error, None
        if status == 429:
            delay = self._delay_after_throttle(retry_after, attempts)
            retry_count = attempts.throttles
        else:
            attempts.failures += 1
            delay = retry_delay(self.retry, attempts.failures, retry_after, self._rng)
            retry_count = attempts.failures
        if delay is None or not self._fits_deadline(delay):
            return api_error, None
        logger.warning(
            "%s %s returned %d; retry %d in %.2fs",
            method,
            redact_url(url),
            status,
            retry_count,
            delay,
        )
        return api_error, delay

    def _delay_after_throttle(self, retry_after: float | None, attempts: _Attempts) -> float | None:
        """The wait before retrying after a 429, within ``max_rate_limit_wait`` (not within
        ``max_attempts``: the server asked us to slow down, nothing failed)."""
        attempts.throttles += 1
        delay = rate_limit_delay(
            self.retry, attempts.throttles, attempts.throttled_for, retry_after, self._rng
        )
        if delay is not None:
            attempts.throttled_for += delay
        return delay

    async def request_json(self, method: str, path_or_url: str, **kwargs: Any) -> Any:
        """Like :meth:`request`, returning the decoded JSON body (``None`` for an empty one)."""
        response = await self.request(method, path_or_url, **kwargs)
        if not response.body.strip():
            return None
        return response.json()

    @staticmethod
    def _with_params(url: str, params: Mapping[str, str | int | float | bool | None] | None) -> str:
        if not params:
            return url
        clean = {
            key: ("true" if value is True else "false" if value is False else str(value))
            for key, value in params.items()
            if value is not None
        }
        if "?" not in url and all(
            _PLAIN_QUERY.fullmatch(key) and _PLAIN_QUERY.fullmatch(value)
            for key, value in clean.items()
        ):
            # What yarl would produce, without building two URL objects per request.
            return (
                f"{url}?{'&'.join(f'{key}={value}' for key, value in clean.items())}"
                if clean
                else url
            )
        for key, value in clean.items():
            try:
                f"{key}={value}".encode()
            except UnicodeEncodeError:  # yarl would silently drop the unencodable part
                raise ConfigurationError(f"query parameter {key!r} is not valid text") from None
        return str(yarl.URL(url, encoded=True).update_query(clean))

    @staticmethod
    def _fits_deadline(delay: float) -> bool:
        """False when sleeping ``delay`` would run past the caller's deadline: better to raise
        the real error now than a timeout later."""
        deadline = effective_deadline()
        return deadline == math.inf or anyio.current_time() + delay < deadline

    async def _send(
        self,
        method: str,
        url: str,
        *,
        json: Any,
        headers: Mapping[str, str] | None,
        timeout: float | None,
    ) -> HttpResponse:
        session = self._ensure_session()
        limit = timeout or self.timeout
        started = time.perf_counter()
        slots = self._slots
        for _hop in range(_MAX_REDIRECTS + 1):
            self._check_target(url)
            # A start whose caller waited for a connection on its behalf has one already.
            if slots is not None and not _deadline.take_held(slots):
                with _deadline.queueing():
                    await slots.acquire()
            try:
                _deadline.sending()
                sent = time.perf_counter()
                async with (
                    asyncio.timeout(limit),
                    session.request(
                        method,
                        yarl.URL(url, encoded=True),
                        json=json,
                        headers=self._headers_for(url, headers),
                        timeout=self._connect_only,
                        allow_redirects=False,
                    ) as resp,
                ):
                    body = await resp.read()
                    status = resp.status
                    response_headers = {k.lower(): v for k, v in resp.headers.items()}
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise map_client_exception(
                    exc, vendor=self.profile.name, method=method, url=url
                ) from None
            finally:
                if slots is not None:
                    slots.release()
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s -> %d in %.3fs",
                    method,
                    redact_url(url),
                    status,
                    time.perf_counter() - started,
                )
            location = response_headers.get("location")
            if status in _REDIRECTS and location:
                url = urljoin(url, location)
                if status == 303:
                    method, json = "GET", None
                continue
            return HttpResponse(
                status=status,
                headers=response_headers,
                body=body,
                method=method,
                url=url,
                vendor=self.profile.name,
                elapsed=time.perf_counter() - sent,
            )
        raise ConnectionLost(
            f"too many redirects for {self.profile.name} {method} {redact_url(url)}",
            vendor=self.profile.name,
            method=method,
            url=redact_url(url),
        )

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

        Error statuses before the stream starts are raised from the tree (with the usual
        retries for a GET); a stream that stalls for ``idle_timeout`` or breaks mid-way raises
        RequestTimeout / ConnectionLost (``ConnectionLost.partial_event`` tells whether it was
        cut mid-frame). Reconnection policy belongs to the caller (it knows the resume id).
        """
        method = method.upper()
        url = self._with_params(self.url_for(path_or_url), params)
        self._check_target(url)
        extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if headers:
            extra.update(headers)
        if last_event_id is not None:
            extra["Last-Event-ID"] = last_event_id
        session = self._ensure_session()
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.connect_timeout, sock_read=idle_timeout
        )
        attempts = _Attempts()
        slots = self._slots
        while True:
            _deadline.release_held(slots)  # not held while the limiter paces the stream
            await self.rate_limiter.acquire()
            # A stream holds its connection, and so its slot, until it is closed.
            if slots is not None and not _deadline.take_held(slots):
                await slots.acquire()
            try:
                _deadline.sending()
                resp = await session.request(
                    method,
                    yarl.URL(url, encoded=True),
                    json=json,
                    headers=self._headers_for(url, extra),
                    timeout=timeout,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if slots is not None:
                    slots.release()
                error = map_client_exception(exc, vendor=self.profile.name, method=method, url=url)
                delay = self._delay_after_failure(method, url, None, error, attempts)
                if delay is None:
                    raise error from None
                await anyio.sleep(delay)
                continue
            except BaseException:  # cancelled while connecting: the slot is not ours to keep
                if slots is not None:
                    slots.release()
                raise
            if resp.status != 429:
                self.rate_limiter.record_answer()
            if resp.status < 400:
                break
            try:
                body = await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                body = b""
            finally:
                resp.release()
                if slots is not None:
                    slots.release()
            api_error, delay = self._delay_after_error_status(
                method,
                url,
                None,
                resp.status,
                {k.lower(): v for k, v in resp.headers.items()},
                body,
                attempts,
            )
            if delay is None:
                raise api_error
            await anyio.sleep(delay)
        try:
            content_type = resp.headers.get("Content-Type", "")
            if "text/event-stream" not in content_type:
                body = await resp.read()
                raise ResponseDecodeError(
                    f"{self.profile.name} {method} {redact_url(url)} was expected to stream "
                    f"events but answered {resp.status} with {content_type or 'no content type'}",
                    vendor=self.profile.name,
                    url=redact_url(url),
                    status=resp.status,
                    body=trim(body.decode("utf-8", errors="replace"), 1000),
                )
            yield self._iter_events(resp, method, url)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise map_client_exception(
                exc, vendor=self.profile.name, method=method, url=url
            ) from None
        finally:
            resp.release()
            resp.close()
            if slots is not None:
                slots.release()

    async def _iter_events(
        self, resp: aiohttp.ClientResponse, method: str, url: str
    ) -> AsyncIterator[SSEEvent]:
        parser = SSEParser()
        try:
            async for chunk in resp.content.iter_any():
                for event in parser.feed(chunk):
                    yield event
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = map_client_exception(exc, vendor=self.profile.name, method=method, url=url)
            if isinstance(error, TransportError):
                error.partial_event = parser.has_partial_event
            raise error from None
        if parser.close():
            error = ConnectionLost(
                f"the event stream from {self.profile.name} {method} {redact_url(url)} "
                "ended in the middle of an event",
                vendor=self.profile.name,
                method=method,
                url=redact_url(url),
            )
            error.partial_event = True
            raise error
