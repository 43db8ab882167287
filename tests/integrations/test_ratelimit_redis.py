"""RedisRateLimiter on a real redis-server: one pace and one cool-down for every process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import pytest

from notebookops.ratelimit import RateLimiter
from notebookops.ratelimit_redis import RedisRateLimiter
from notebookops.store import StoreUnavailable
from notebookops.testing.stores import redis_server, require_redis_server


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_redis_server()
    with redis_server() as url:
        yield url


async def test_two_limiters_on_one_key_share_the_rate(redis_url: str) -> None:
    first = RedisRateLimiter(redis_url, key="cred", rate=50.0)
    second = RedisRateLimiter(redis_url, key="cred", rate=50.0)
    assert isinstance(first, RateLimiter)
    async with first, second:
        began = time.monotonic()
        for _ in range(20):
            await first.acquire()
            await second.acquire_read()
        # 40 slots at 50/s: the first is free, the last 39 intervals later.
        assert time.monotonic() - began >= 39 / 50 - 0.05


async def test_a_429_pauses_the_whole_fleet(redis_url: str) -> None:
    first = RedisRateLimiter(redis_url, key="cred", rate=1000.0)
    second = RedisRateLimiter(redis_url, key="cred", rate=1000.0)
    async with first, second:
        began = time.monotonic()
        first.on_rate_limited(0.5)
        finished: list[float] = []

        async def take(limiter: RedisRateLimiter, after: float) -> None:
            await anyio.sleep(after)
            await limiter.acquire()
            finished.append(time.monotonic() - began)

        async with anyio.create_task_group() as group:
            group.start_soon(take, first, 0.0)  # its request books the pause for everyone
            group.start_soon(take, second, 0.1)
        assert min(finished) >= 0.45


async def test_unreachable_at_start_is_a_typed_error() -> None:
    require_redis_server()
    with redis_server() as url:
        pass  # nothing listens there any more
    limiter = RedisRateLimiter(url, key="cred", rate=10.0)
    with pytest.raises(StoreUnavailable):
        await limiter.acquire()
    with pytest.raises(StoreUnavailable):
        async with limiter:
            pass
    await limiter.aclose()


async def test_redis_going_away_later_falls_back_to_local_pacing() -> None:
    require_redis_server()
    with redis_server() as url:
        limiter = RedisRateLimiter(url, key="cred", rate=50.0, expected_processes=2)
        await limiter.acquire()  # connected: shared from now on
    # The server is gone: requests go on, paced by this process alone at 50 / 2 per second.
    began = time.monotonic()
    for _ in range(6):
        await limiter.acquire_read()
    assert time.monotonic() - began >= 5 / 25 - 0.02
    assert limiter.rate == 25.0
    await limiter.aclose()


def test_importing_notebookops_imports_neither_arq_nor_redis() -> None:
    code = (
        "import sys, notebookops, notebookops.integrations\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('arq', 'redis')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert output.stdout.decode().strip() == "[]"
