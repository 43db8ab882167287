"""Loopback fixtures: a fake PostHog server and a backend pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from notebookops.backends.posthog import PostHogBackend
from notebookops.policies import PollPolicy, RetryPolicy
from notebookops.testing.posthog import PostHogFakeServer, posthog_server

FAST_POLL = PollPolicy(initial=0.01, maximum=0.05)
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


def backend_for(
    server: PostHogFakeServer, token: str | None = None, **kwargs: object
) -> PostHogBackend:
    options: dict[str, object] = {
        "poll": FAST_POLL,
        "retry": FAST_RETRY,
        "cancel_timeout": 5.0,
        "collab_reconnect_delay": 0.01,
    }
    options.update(kwargs)
    return PostHogBackend(
        token or server.token,
        project_id=server.project_id,
        base_url=server.url,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def server() -> AsyncIterator[PostHogFakeServer]:
    async with posthog_server() as fake:
        yield fake


@pytest.fixture
async def backend(server: PostHogFakeServer) -> AsyncIterator[PostHogBackend]:
    async with backend_for(server) as client:
        yield client


@pytest.fixture
async def new_server() -> AsyncIterator[PostHogFakeServer]:
    """A newer PostHog: server-side runs (flag on), no kernel stream, no HogQL execute."""
    async with posthog_server(version="new") as fake:
        yield fake
