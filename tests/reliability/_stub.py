"""A stand-in for a backend's ApiClient: it records every request URL and answers each
with one canned body. Fuzz and identifier tests use it to drive whole adapter methods (request
building, decoding, mapping to models) without a socket, thousands of times per second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs

from notebookops._sse import SSEEvent, SSEParser
from notebookops.backend import ApiClient
from notebookops.errors import ConnectionLost
from notebookops.transport import Response

__all__ = ["Recorded", "StubTransport", "install"]


@attrs.frozen
class Recorded:
    method: str
    url: str
    json: Any = None


class StubTransport:
    """Replaces ``request`` and ``sse`` of one ApiClient (instance attributes, so the
    transport's own ``request_json`` goes through the stub too)."""

    def __init__(
        self,
        transport: ApiClient,
        body: bytes = b"{}",
        *,
        status: int = 200,
        content_type: str = "application/json",
        stream: bytes = b"",
    ) -> None:
        self.transport = transport
        self.body = body
        self.status = status
        self.content_type = content_type
        self.stream = stream
        self.requests: list[Recorded] = []
        transport.request = self.request  # type: ignore[method-assign]
        transport.sse = self.sse  # type: ignore[method-assign]

    def _url(
        self, path_or_url: str, params: Mapping[str, str | int | float | bool | None] | None
    ) -> str:
        # The real transport's own URL building: the exact string that would be sent.
        return self.transport._with_params(self.transport.url_for(path_or_url), params)

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
        url = self._url(path_or_url, params)
        self.requests.append(Recorded(method.upper(), url, json))
        return Response(
            status=self.status,
            headers={"content-type": self.content_type},
            body=self.body,
            method=method.upper(),
            url=url,
            vendor=self.transport.profile.name,
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
        url = self._url(path_or_url, params)
        self.requests.append(Recorded(method.upper(), url, json))
        parser = SSEParser()
        events = parser.feed(self.stream)
        cut = parser.close()

        async def iterate() -> AsyncIterator[SSEEvent]:
            for event in events:
                yield event
            if cut:
                error = ConnectionLost("stream cut mid-frame", method=method, url=url)
                error.partial_event = True
                raise error

        yield iterate()


def transport_of(backend: object) -> ApiClient:
    """The transport under ``backend``: its own, or its client's (the client/backend shape)."""
    owner = getattr(backend, "client", backend)
    transport = owner.api  # type: ignore[attr-defined]
    assert isinstance(transport, ApiClient)
    return transport


def install(backend: object, body: bytes = b"{}", **kwargs: Any) -> StubTransport:
    """Put a StubTransport in place of the network methods of ``backend``'s transport."""
    return StubTransport(transport_of(backend), body, **kwargs)
