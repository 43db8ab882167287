"""Shared test setup. Warnings are errors (pyproject), so leaked sessions fail tests."""

from __future__ import annotations

import asyncio.base_events
import os
from collections.abc import Iterator
from typing import Any

import aioresponses.core
import pytest
from aiohttp import ClientResponse
from hypothesis import settings
from yarl import URL

# In CI the property tests replay the same examples every time: a new counterexample is
# found by a developer's run and fixed with a test, not by a submission that happens to draw
# it. Locally every run explores new examples. Neither has a per-example deadline: with a
# worker per core, an example can wait behind another worker or a full garbage collection
# for longer than hypothesis's default 200 ms, failing a correct test.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


class _NoWriter:
    output_size = 0


class _CompatResponse(ClientResponse):
    """aioresponses 0.7.9 builds ClientResponse without aiohttp 3.14's ``stream_writer``."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoWriter())
        super().__init__(method, url, **kwargs)


# aioresponses looks the class up at call time, so every mocked response gets the shim.
aioresponses.core.ClientResponse = _CompatResponse  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _loop_errors_fail_the_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An exception raised in a callback the event loop runs (a timer, a done-callback) is
    only logged by asyncio: without this, a test whose code raised there could still pass."""
    caught: list[dict[str, Any]] = []
    original = asyncio.base_events.BaseEventLoop.call_exception_handler

    def recording(self: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        caught.append(context)
        original(self, context)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "call_exception_handler", recording)
    yield
    errors = [c for c in caught if isinstance(c.get("exception"), Exception)]
    assert not errors, "the event loop caught: " + "; ".join(
        f"{c.get('message')}: {c.get('exception')!r}" for c in errors
    )
