"""Canned answers for whole adapter methods: every request a backend sends is recorded and
answered with one body. Fuzz and identifier tests use it to drive request building, decoding
and mapping to models without a socket, thousands of times per second.

The answers come from a :class:`~notebookops.testing.MockTransport` put under the backend's
own client, so URL building, headers and event-stream parsing are the real ones.
"""

from __future__ import annotations

from typing import Any

import attrs

from notebookops.backend import ApiClient
from notebookops.testing import MockTransport
from notebookops.transport import Request, Response

__all__ = ["CannedAnswers", "Recorded", "install"]


@attrs.frozen
class Recorded:
    method: str
    url: str
    json: Any = None


class CannedAnswers:
    """Answers every request with ``body`` (``status``, ``content_type``) and every event
    stream with the bytes of ``stream``."""

    def __init__(
        self,
        body: bytes = b"{}",
        *,
        status: int = 200,
        content_type: str = "application/json",
        stream: bytes = b"",
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.stream = stream
        self.transport = MockTransport(self._answer)

    @property
    def requests(self) -> list[Recorded]:
        return [Recorded(r.method, r.url, r.json) for r in self.transport.requests]

    def _answer(self, request: Request) -> Response:
        if request.stream:
            return Response(
                status=200, headers={"content-type": "text/event-stream"}, body=self.stream
            )
        return Response(
            status=self.status, headers={"content-type": self.content_type}, body=self.body
        )


def transport_of(backend: object) -> ApiClient:
    """The client layer under ``backend``: its vendor client's ``api``."""
    api = backend.client.api  # type: ignore[attr-defined]
    assert isinstance(api, ApiClient)
    return api


def install(backend: object, body: bytes = b"{}", **kwargs: Any) -> CannedAnswers:
    """Answer ``backend``'s requests from now on with canned ``body`` (see CannedAnswers)."""
    answers = CannedAnswers(body, **kwargs)
    transport_of(backend).transport = answers.transport
    return answers
