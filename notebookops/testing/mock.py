"""MockTransport: drive any vendor client or backend without a server."""

from __future__ import annotations

import inspect
import json as jsonlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..transport import Request, Response

__all__ = ["MockTransport", "json_response"]

Handler = Callable[[Request], Response | Awaitable[Response]]


def json_response(
    data: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> Response:
    """A Response whose body is ``data`` as JSON (``content-type: application/json``)."""
    return Response(
        status=status,
        headers={
            "content-type": "application/json",
            **{k.lower(): v for k, v in (headers or {}).items()},
        },
        body=jsonlib.dumps(data).encode(),
    )


class MockTransport:
    """A :class:`~notebookops.transport.Transport` that answers every request with
    ``handler(request)`` (a function or a coroutine function returning a Response), and keeps
    every request it was sent in ``requests``.

    ::

        def handler(request: Request) -> Response:
            assert request.url.endswith("/v2/runs")
            return json_response({"runId": "r1", "status": "queued"}, 201)

        backend = DeepnoteBackend("token", transport=MockTransport(handler))

    A handler may raise :class:`~notebookops.TransportError` (e.g. ``ConnectionLost``) to
    stand for a network failure. For a streamed request, a Response with a ``body`` is
    delivered as one piece.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"<MockTransport ({len(self.requests)} requests)>"

    async def send(self, request: Request) -> Response:
        self.requests.append(request)
        answer = self.handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return Response(
            status=answer.status,
            headers={k.lower(): v for k, v in answer.headers.items()},
            body=answer.body,
            method=request.method,
            url=request.url,
            vendor=request.vendor,
            chunks=answer.chunks,
            release=answer.release,
        )

    async def aclose(self) -> None:
        self.closed = True
