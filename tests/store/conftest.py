"""A real Redis server for the store tests (see notebookops.testing.stores.redis_server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from notebookops.testing.stores import redis_server, require_redis_server


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of a new, empty redis-server of the test's own (fails in CI without one)."""
    require_redis_server()
    with redis_server() as url:
        yield url
