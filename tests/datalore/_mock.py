"""aioresponses helpers shared by the Datalore tests (tests/conftest.py makes aioresponses
build responses this aiohttp accepts)."""

from __future__ import annotations

from typing import Any

from aioresponses import aioresponses
from yarl import URL


def add(mocked: aioresponses, method: str, url: str, **kwargs: Any) -> None:
    mocked.add(url, method, **kwargs)


def calls(mocked: aioresponses, method: str, url: str) -> list[Any]:
    return list(mocked.requests.get((method, URL(url)), []))
