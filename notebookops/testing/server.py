"""What every loopback fake vendor server shares: lifecycle, auth, request log, faults.

Import :class:`Fault` (and :class:`FaultPlan`) from here to script failures into any vendor
fake through its ``faults`` attribute::

    server.faults.add(Fault("reset_after", method="POST", path=r"/v2/runs$"))

Each vendor fake (``notebookops.testing.deepnote`` ...) subclasses :class:`FakeServer`, adds its
routes in :meth:`FakeServer.setup_routes`, and gets for free:

* binding to 127.0.0.1 on a free port (never anything but loopback);
* a bearer-token check with a vendor-shaped 401 body;
* a log of every request (method, path, query, headers, JSON body) for assertions;
* a :class:`FaultPlan`: scripted or seeded-random faults (statuses, 429 with or without
  Retry-After, resets before/after the handler ran, slow responses, truncated or invalid bodies,
  HTML error pages, wrong content types, unknown status values, missing fields, event streams
  cut in the middle of a frame).

Payload faults (``unknown_status``, ``missing_fields``) run the real handler and then damage
its JSON answer through :meth:`FakeServer.corrupt_payload`, which a vendor fake may override
to damage the fields its clients depend on.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Self

import attrs
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = [
    "SSE_CUT_PREFIX",
    "UNKNOWN_STATUS",
    "FakeServer",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "RecordedRequest",
]

FaultKind = Literal[
    "status",  # answer with `status`, `body`, `headers` instead of the handler
    "reset_before",  # drop the connection before the handler runs (nothing happened)
    "reset_after",  # run the handler, then drop the connection (it happened; reply lost)
    "delay",  # sleep `delay` seconds, then run the handler normally
    "truncate",  # run the handler, send half its body, then drop the connection
    "invalid_json",  # 200 with a JSON content type and a body that is not JSON
    "html",  # `status` with an HTML error page
    "wrong_content_type",  # 200 with text/plain "OK"
    "unknown_status",  # run the handler, then replace status values with one nobody knows
    "missing_fields",  # run the handler, then drop a field of its JSON answer
    "sse_cut",  # 200 event stream that breaks in the middle of a frame (handler not run)
]

#: The status value ``unknown_status`` faults put in place of the real one.
UNKNOWN_STATUS = "chaos_unknown_status"
#: What an ``sse_cut`` fault sends before dropping the connection (unless ``Fault.body`` says).
SSE_CUT_PREFIX = b': keepalive\n\nevent: stdout\ndata: {"text": "cut in the mid'
_PAYLOAD_FAULTS = frozenset({"unknown_status", "missing_fields"})


@attrs.define
class Fault:
    """One fault. Matches requests by method and a regex on the path; fires ``times`` times."""

    kind: FaultKind
    status: int = 500
    body: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    delay: float = 0.0
    method: str | None = None
    path: str | None = None
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or re.search(self.path, path) is not None


@attrs.define
class FaultPlan:
    """Faults to inject, in order of addition; plus an optional seeded random mix."""

    scripted: list[Fault] = attrs.field(factory=list)
    random_rate: float = 0.0
    random_kinds: tuple[Fault, ...] = ()
    rng: random.Random = attrs.field(factory=lambda: random.Random(0))
    injected: Counter[str] = attrs.field(factory=Counter)

    def add(self, fault: Fault) -> Fault:
        self.scripted.append(fault)
        return fault

    def status(self, status: int, body: Any = None, **kwargs: Any) -> Fault:
        """Shorthand: the next matching request gets ``status``."""
        return self.add(Fault("status", status=status, body=body, **kwargs))

    def randomize(self, seed: int, rate: float, kinds: tuple[Fault, ...]) -> None:
        """Inject one of ``kinds`` into a ``rate`` fraction of requests, reproducibly."""
        self.rng = random.Random(seed)
        self.random_rate = rate
        self.random_kinds = kinds

    def clear(self) -> None:
        self.scripted.clear()
        self.random_rate = 0.0

    def take(self, method: str, path: str) -> Fault | None:
        for fault in self.scripted:
            if fault.times > 0 and fault.matches(method, path):
                fault.times -= 1
                if fault.times == 0:
                    self.scripted.remove(fault)
                self.injected[fault.kind if fault.kind != "status" else str(fault.status)] += 1
                return fault
        if self.random_rate and self.random_kinds and self.rng.random() < self.random_rate:
            candidates = [f for f in self.random_kinds if f.matches(method, path)]
            if candidates:
                fault = self.rng.choice(candidates)
                self.injected[fault.kind if fault.kind != "status" else str(fault.status)] += 1
                return fault
        return None


@attrs.frozen
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    json: Any


def _encode(body: Any) -> tuple[bytes, str]:
    if body is None:
        return b"", "application/json"
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain"
    return json.dumps(body).encode(), "application/json"


class FakeServer:
    """Base class of the fake vendor servers (aiohttp.web on 127.0.0.1, port 0)."""

    vendor = "fake"
    #: Paths (regex) that need no token.
    public_paths: tuple[str, ...] = ()

    def __init__(self, *, token: str = "test-token") -> None:
        self.token = token
        self.faults = FaultPlan()
        self.requests: list[RecordedRequest] = []
        self.app = web.Application(
            middlewares=[self._record_middleware, self._fault_middleware, self._auth_middleware]
        )
        self.setup_routes(self.app)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- to override

    def setup_routes(self, app: web.Application) -> None:
        """Add the vendor's routes."""

    def unauthorized(self) -> web.Response:
        """The vendor's 401 response."""
        return web.json_response({"message": "Unauthorized"}, status=401)

    def corrupt_payload(self, kind: FaultKind, data: Any, rng: random.Random) -> Any:
        """Damage a JSON answer for a payload fault; return the new document.

        ``unknown_status`` replaces every string ``status`` value with :data:`UNKNOWN_STATUS`;
        ``missing_fields`` drops one key (chosen with ``rng``) of the answer's object, looking
        inside a one-key envelope such as ``{"run": {...}}``. Override for vendor specifics.
        """
        if kind == "unknown_status":
            return _replace_status(data)
        if kind == "missing_fields":
            target = data
            while isinstance(target, dict) and len(target) == 1:
                inner = next(iter(target.values()))
                if not isinstance(inner, dict):
                    break
                target = inner
            if isinstance(target, dict) and target:
                del target[rng.choice(sorted(target))]
        return data

    # -- lifecycle

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- helpers for subclasses and tests

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.method == method.upper() and re.search(path_regex, r.path) is not None
        ]

    # -- middlewares

    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        body: Any = None
        # body_exists (not can_read_body): handlers may read the body again after us, and
        # aiohttp caches it, but can_read_body turns False once it has been read.
        if request.body_exists:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", errors="replace")
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers.items()),
                json=body,
            )
        )
        return await handler(request)

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        public = any(re.search(p, request.path) for p in self.public_paths)
        if not public and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.unauthorized()
        return await handler(request)

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.faults.take(request.method, request.path)
        if fault is None:
            return await handler(request)
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay)
            return await handler(request)
        if fault.kind == "reset_before":
            return await self._drop(request)
        if fault.kind == "reset_after":
            await handler(request)
            return await self._drop(request)
        if fault.kind == "truncate":
            real = await handler(request)
            full = real.body if isinstance(real, web.Response) and real.body else b"{}"
            assert isinstance(full, bytes)
            stream = web.StreamResponse(status=real.status)
            stream.content_type = "application/json"
            stream.content_length = len(full)
            await stream.prepare(request)
            await stream.write(full[: max(1, len(full) // 2)])
            return await self._drop(request)
        if fault.kind == "invalid_json":
            return web.Response(status=200, body=b'{"truncated": ', content_type="application/json")
        if fault.kind == "html":
            return web.Response(
                status=fault.status,
                text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                content_type="text/html",
            )
        if fault.kind == "wrong_content_type":
            return web.Response(status=200, text="OK", content_type="text/plain")
        if fault.kind in _PAYLOAD_FAULTS:
            return await self._corrupted(request, handler, fault)
        if fault.kind == "sse_cut":
            stream = web.StreamResponse(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            )
            await stream.prepare(request)
            await stream.write(fault.body if isinstance(fault.body, bytes) else SSE_CUT_PREFIX)
            return await self._drop(request)
        body, content_type = _encode(fault.body)
        return web.Response(
            status=fault.status, body=body, headers=dict(fault.headers), content_type=content_type
        )

    async def _corrupted(
        self, request: web.Request, handler: Handler, fault: Fault
    ) -> web.StreamResponse:
        real = await handler(request)
        if not isinstance(real, web.Response) or not isinstance(real.body, bytes):
            return real  # a stream already sent, or no body: nothing to damage
        if real.content_type != "application/json" or not real.body.strip():
            return real
        try:
            data = json.loads(real.body)
        except ValueError:
            return real
        damaged = self.corrupt_payload(fault.kind, data, self.faults.rng)
        real.body = json.dumps(damaged).encode()
        return real

    @staticmethod
    async def _drop(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        # The client is gone; aiohttp discards whatever we return here.
        raise asyncio.CancelledError


def _replace_status(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            key: UNKNOWN_STATUS
            if key == "status" and isinstance(value, str)
            else _replace_status(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_replace_status(item) for item in data]
    return data
