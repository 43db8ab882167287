"""Shared test setup. Warnings are errors (pyproject), so leaked sessions fail tests."""

from __future__ import annotations

from typing import Any

import aioresponses.core
from aiohttp import ClientResponse
from yarl import URL


class _NoWriter:
    output_size = 0


class _CompatResponse(ClientResponse):
    """aioresponses 0.7.9 builds ClientResponse without aiohttp 3.14's ``stream_writer``."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoWriter())
        super().__init__(method, url, **kwargs)


# aioresponses looks the class up at call time, so every mocked response gets the shim.
aioresponses.core.ClientResponse = _CompatResponse  # type: ignore[attr-defined]
