"""RedisRunStore beyond the conformance suite: failures, keys, expiry, borrowed clients."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest
import redis.asyncio

from notebookops import ConfigurationError
from notebookops.models import RunHandle
from notebookops.store import (
    RecordState,
    RedisRunStore,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
)
from notebookops.testing.stores import redis_server, require_redis_server


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


async def test_an_unreachable_redis_is_store_unavailable_without_secrets() -> None:
    url = f"redis://user:s3cret-password@127.0.0.1:{_closed_port()}/0"
    store = RedisRunStore(url, timeout=2.0)
    assert "s3cret" not in repr(store)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable") as caught:
        async with store:
            pass
    assert time.monotonic() - started < 5.0
    assert "s3cret" not in str(caught.value)
    store = RedisRunStore(url, timeout=2.0)
    with pytest.raises(StoreUnavailable):
        await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
    await store.aclose()


@pytest.mark.parametrize(
    "url", ["redis://host:99999/0", "redis://host:notaport/0", "redis://[::1/0", "http://host/0"]
)
def test_a_bad_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisRunStore(url)


def test_without_the_redis_package_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"notebookops\[redis\]"):
        RedisRunStore("redis://127.0.0.1:6379/0")


async def test_keys_carry_the_prefix_and_prefixes_are_apart(redis_url: str) -> None:
    async with (
        RedisRunStore(redis_url, prefix="team-a:") as a,
        RedisRunStore(redis_url, prefix="team-b:") as b,
    ):
        assert (await a.reserve("k", "fp", owner="a", lease=1.0, retention=60.0)).created
        assert (await b.reserve("k", "fp", owner="b", lease=1.0, retention=60.0)).created
        assert await a.acquire_lease("nb", owner="a", ttl=60.0)
        assert await b.acquire_lease("nb", owner="b", ttl=60.0)
        assert await b.prune(now=time.time() + 3600.0) == 1
        record = await a.get("k")
        assert record is not None
        assert record.owner == "a"
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = sorted(_text(key) for key in await client.keys("*"))
        ttl = await client.ttl("team-a:run:k")
    finally:
        await client.aclose()
    assert keys == ["team-a:lease:nb", "team-a:run:k", "team-a:runs:expiry", "team-b:lease:nb"]
    assert 0 < ttl <= 60


async def test_a_record_expires_by_itself_at_expires_at(redis_url: str) -> None:
    async with RedisRunStore(redis_url) as store:
        await store.reserve("k", "fp", owner="o", lease=0.1, retention=0.5)
        assert await store.get("k") is not None
        await anyio.sleep(0.7)
        assert await store.get("k") is None
        assert (await store.reserve("k", "fp", owner="p", lease=1.0, retention=60.0)).created
        assert await store.prune() == 0


async def test_from_client_leaves_the_client_open(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with RedisRunStore.from_client(client, prefix="x:") as store:
            await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
            await store.record_start("k", owner="o", handle=RunHandle("fake", "r", "nb"))
            assert "given client" in repr(store)
        assert await client.exists("x:run:k") == 1
        record = await RedisRunStore.from_client(client, prefix="x:").get("k")
        assert record is not None
        assert record.state is RecordState.STARTED
    finally:
        await client.aclose()


async def test_unreadable_or_foreign_keys_are_store_errors(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.hset("notebookops:run:bad", mapping={"state": "reserved", "owner": "o"})
        await client.hset(
            "notebookops:run:bytes",
            mapping={
                "fingerprint": b"\xff\xfe",
                "state": "reserved",
                "owner": "o",
                "reserved_at": "1",
                "lease_until": "2",
                "expires_at": "3",
            },
        )
        await client.set("notebookops:run:string", "not a hash")
    finally:
        await client.aclose()
    async with RedisRunStore(redis_url) as store:
        with pytest.raises(StoreCorrupted, match="record of key 'bad'"):
            await store.get("bad")
        with pytest.raises(StoreCorrupted, match="record of key 'bad'"):
            await store.reserve("bad", "fp", owner="p", lease=1.0, retention=60.0)
        with pytest.raises(StoreCorrupted, match="record of key 'bytes'"):
            await store.get("bytes")
        with pytest.raises(StoreError, match="WRONGTYPE"):
            await store.get("string")


async def test_redis_going_away_and_coming_back() -> None:
    # An outage is StoreUnavailable; the same store works again once Redis is back (its
    # records gone here: this server keeps nothing on disk).
    require_redis_server()
    with redis_server() as url:
        store = RedisRunStore(url, timeout=2.0)
        await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    port = urlsplit(url).port
    with redis_server(port=port):
        assert await store.get("k") is None
        assert (await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)).created
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.get("k")


def test_require_redis_server_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must install it"):
        require_redis_server()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y redis-server"):
        require_redis_server()


async def test_reserve_drops_index_entries_of_records_expired_long_ago(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        index = "notebookops:runs:expiry"
        await client.zadd(index, {"gone-long-ago": time.time() - 3 * 86400.0})
        await client.zadd(index, {"recent": time.time()})
        async with RedisRunStore(redis_url) as store:
            await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
        members = sorted(_text(m) for m in await client.zrange(index, 0, -1))
    finally:
        await client.aclose()
    assert members == ["k", "recent"]
