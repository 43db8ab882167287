"""aioresponses helpers shared by the Datalore tests."""

from __future__ import annotations

from typing import Any

from aiohttp import ClientResponse
from aioresponses import aioresponses
from yarl import URL


class _Sent:
    output_size = 0


class CompatResponse(ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's ``stream_writer``."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _Sent())
        super().__init__(method, url, **kwargs)


def add(mocked: aioresponses, method: str, url: str, **kwargs: Any) -> None:
    mocked.add(url, method, response_class=CompatResponse, **kwargs)


def calls(mocked: aioresponses, method: str, url: str) -> list[Any]:
    return list(mocked.requests.get((method, URL(url)), []))
