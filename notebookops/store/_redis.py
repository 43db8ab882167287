"""RedisRunStore: run records in Redis, shared by a fleet of workers on many machines.

Needs the ``redis`` package (``pip install 'notebookops[redis]'``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .._validate import seconds
from ..errors import ConfigurationError
from ..models import Run, RunHandle
from . import _records
from ._base import (
    Claim,
    RunRecord,
    RunStore,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["DEFAULT_PREFIX", "RedisRunStore"]

T = TypeVar("T")

#: What every key of a RedisRunStore starts with unless ``prefix=`` says otherwise.
DEFAULT_PREFIX = "notebookops:"

# Each script is one atomic step: Redis runs a script with nothing else in between. They keep
# the rules of notebookops.store._records (the memory and SQLite stores run those directly);
# when a script declines to write, it returns the record and Python's copy of the rule says
# why (or that nothing needed writing).

# KEYS: record, expiry index. ARGV: key, fingerprint, owner, reserved_at, lease_until,
# expires_at, expires_at in ms, a time before which every record has expired. Returns nil when
# it created the record, else the record. It also drops index entries of records that Redis
# expired by itself long ago, so that a fleet that never prunes keeps a bounded index.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[8])
local existing = redis.call('HGETALL', KEYS[1])
if #existing > 0 then return existing end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2], 'state', 'reserved', 'owner', ARGV[3],
    'reserved_at', ARGV[4], 'lease_until', ARGV[5], 'expires_at', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
return false
"""

#: How far the clocks of the workers and of Redis may disagree, for dropping the index
#: entries of records that Redis has expired.
_CLOCK_SKEW = 86400.0

# KEYS: record. ARGV: expected owner, owner, lease_until. Returns the new record or nil.
_TAKE_OVER = """
if redis.call('HGET', KEYS[1], 'state') ~= 'reserved' then return false end
local current = redis.call('HGET', KEYS[1], 'owner')
if current ~= ARGV[1] and current ~= ARGV[2] then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'lease_until', ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: record. ARGV: owner, handle JSON. Returns nil when it wrote, else the record.
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'reserved' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
    return redis.call('HGETALL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'state', 'started', 'handle', ARGV[2])
return false
"""

# KEYS: record. ARGV: handle JSON, run JSON. Returns nil when it wrote, else the record.
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
local handle = redis.call('HGET', KEYS[1], 'handle')
if not state or state == 'finished' or (handle and handle ~= ARGV[1]) then
    return redis.call('HGETALL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'state', 'finished', 'handle', ARGV[1], 'run', ARGV[2])
return false
"""

# KEYS: record, expiry index. ARGV: owner, key.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') == 'reserved'
        and redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: owner, ttl in ms. Returns 1 when owner holds the lease now.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease. ARGV: owner.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: expiry index. ARGV: now, record key prefix, batch size. Returns {seen, deleted}.
# Record keys are built here from the index: fine on one Redis server, not on a cluster.
_PRUNE = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local deleted = 0
for _, key in ipairs(keys) do
    deleted = deleted + redis.call('DEL', ARGV[2] .. key)
    redis.call('ZREM', KEYS[1], key)
end
return {#keys, deleted}
"""

_PRUNE_BATCH = 500


class RedisRunStore(RunStore):
    """A :class:`~notebookops.store.RunStore` in Redis, for workers on many machines.

    ``url`` is a redis-py URL (``redis://[[user]:password@]host:6379/0``, ``rediss://`` for
    TLS, ``unix:///path/redis.sock``). Every method is one Lua script, so it is atomic with
    respect to every other worker. Keys start with ``prefix``: ``<prefix>run:<key>`` (a hash)
    per record, ``<prefix>runs:expiry`` (a sorted set) for :meth:`prune`, and
    ``<prefix>lease:<name>`` per lease. A record also expires by itself at its ``expires_at``
    (Redis key expiry), so a fleet that never prunes does not grow without bound; a lease is a
    key with a TTL, timed by the Redis server's clock.

    The connection is made at first use (or on ``async with``, which pings the server); a
    server that cannot be reached raises :class:`~notebookops.store.StoreUnavailable`, any
    other Redis failure :class:`~notebookops.store.StoreError`. redis-py retries a command
    twice on a lost connection, which is safe: every method can be repeated (see
    :meth:`RunStore.reserve`).

    Runs on asyncio (redis-py's asyncio client), in the event loop of its first use.
    A record is as durable as the server makes it: for runs that must survive a Redis restart,
    run it with ``appendonly yes`` (and ``appendfsync always`` to lose nothing on a power
    cut). Needs one Redis server (not a cluster: :meth:`prune` touches keys it finds in its
    index).
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 10.0) -> None:
        redis_asyncio, retry, backoff = _import_redis()
        checked_timeout = seconds("timeout", timeout)
        try:
            client = redis_asyncio.Redis.from_url(
                url,
                socket_connect_timeout=checked_timeout,
                socket_timeout=checked_timeout,
                retry=retry.Retry(backoff.ExponentialBackoff(cap=1.0, base=0.1), 2),
            )
        except ValueError as exc:
            raise ConfigurationError(f"not a usable Redis URL {_where(url)}: {exc}") from None
        self._init(client, prefix=prefix, where=_where(url), owns_client=True)

    @classmethod
    def from_client(cls, client: Redis, *, prefix: str = DEFAULT_PREFIX) -> RedisRunStore:
        """A store on a redis-py asyncio client the caller already has (e.g. an arq worker's
        pool). :meth:`aclose` leaves that client open."""
        store = cls.__new__(cls)
        store._init(client, prefix=prefix, where="(a given client)", owns_client=False)
        return store

    def _init(self, client: Redis, *, prefix: str, where: str, owns_client: bool) -> None:
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a string, got {prefix!r}")
        self._client = client
        self._prefix = prefix
        self._where = where
        self._owns_client = owns_client
        self._closed = False
        self._index = f"{prefix}runs:expiry"
        self._scripts: dict[str, AsyncScript] = {}

    def __repr__(self) -> str:
        return f"RedisRunStore({self._where}, prefix={self._prefix!r})"

    async def __aenter__(self) -> RedisRunStore:
        await self._call(lambda: self._client.ping())
        return self

    async def reserve(
        self, key: str, fingerprint: str, *, owner: str, lease: float, retention: float
    ) -> Claim:
        """See :meth:`RunStore.reserve`."""
        record = _records.new_record(
            key, fingerprint, owner=owner, lease=lease, retention=retention, at=_records.now()
        )
        existing = await self._script(
            _RESERVE,
            [self._record_key(key), self._index],
            [
                key,
                fingerprint,
                owner,
                repr(record.reserved_at),
                repr(record.lease_until),
                repr(record.expires_at),
                math.ceil(record.expires_at * 1000),
                repr(record.reserved_at - _CLOCK_SKEW),
            ],
        )
        if existing is None:
            return Claim(created=True, record=record)
        found = self._decode(key, existing)
        assert found is not None  # the script returns a record only when there is one
        return _records.claim(found, owner=owner)

    async def take_over(
        self, key: str, *, expected_owner: str, owner: str, lease: float
    ) -> RunRecord | None:
        """See :meth:`RunStore.take_over`."""
        lease_until = _records.now() + _records.check_seconds("lease", lease)
        reply = await self._script(
            _TAKE_OVER, [self._record_key(key)], [expected_owner, owner, repr(lease_until)]
        )
        return None if reply is None else self._decode(key, reply)

    async def record_start(self, key: str, *, owner: str, handle: RunHandle) -> None:
        """See :meth:`RunStore.record_start`."""
        declined = await self._script(_START, [self._record_key(key)], [owner, handle.to_json()])
        if declined is not None:
            # The script wrote nothing: the rules raise the conflict, or find nothing to write.
            record = self._decode(key, declined)
            self._unchanged(_records.start(record, key, owner=owner, handle=handle))

    async def record_finish(self, key: str, run: Run) -> None:
        """See :meth:`RunStore.record_finish`."""
        declined = await self._script(
            _FINISH, [self._record_key(key)], [run.handle.to_json(), run.to_json()]
        )
        if declined is not None:
            record = self._decode(key, declined)
            self._unchanged(_records.finish(record, key, run))

    async def release(self, key: str, *, owner: str) -> None:
        """See :meth:`RunStore.release`."""
        await self._script(_RELEASE, [self._record_key(key), self._index], [owner, key])

    async def get(self, key: str) -> RunRecord | None:
        """See :meth:`RunStore.get`."""
        # redis-py 5 (which arq pins) types the asyncio client's reply as "awaitable or not".
        reply = await self._call(lambda: _awaited(self._client.hgetall(self._record_key(key))))
        return _fields_to_record(key, reply)

    async def acquire_lease(self, name: str, *, owner: str, ttl: float) -> bool:
        """See :meth:`RunStore.acquire_lease`."""
        ttl_ms = max(1, math.ceil(_records.check_seconds("ttl", ttl) * 1000))
        held = await self._script(_ACQUIRE, [self._lease_key(name)], [owner, ttl_ms])
        return bool(held == 1)

    async def release_lease(self, name: str, *, owner: str) -> None:
        """See :meth:`RunStore.release_lease`."""
        await self._script(_RELEASE_LEASE, [self._lease_key(name)], [owner])

    async def prune(self, *, now: float | None = None) -> int:
        """See :meth:`RunStore.prune`. Leases need no pruning: they expire in Redis."""
        at = _records.now() if now is None else now
        pruned = 0
        while True:
            seen, deleted = await self._script(
                _PRUNE, [self._index], [repr(at), self._record_key(""), _PRUNE_BATCH]
            )
            pruned += int(deleted)
            if int(seen) < _PRUNE_BATCH:
                return pruned

    async def aclose(self) -> None:
        """Close the connections (not those of a client given to :meth:`from_client`)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._call(lambda: self._client.aclose(), closing=True)

    def _record_key(self, key: str) -> str:
        return f"{self._prefix}run:{key}"

    def _lease_key(self, name: str) -> str:
        return f"{self._prefix}lease:{name}"

    def _decode(self, key: str, reply: Sequence[Any]) -> RunRecord | None:
        """A record from a script's flat ``HGETALL`` reply (None when empty)."""
        return _fields_to_record(key, dict(zip(reply[::2], reply[1::2], strict=True)))

    def _unchanged(self, record: RunRecord | None) -> None:
        if record is not None:
            # The script declined a write that the rules allow: the two copies disagree.
            raise StoreError(f"{self!r}: the script and the rules disagree on {record.key!r}")

    async def _script(self, source: str, keys: list[str], args: list[str | int]) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client.register_script(source)
        return await self._call(lambda: script(keys=keys, args=args))

    async def _call(self, command: Callable[[], Awaitable[T]], *, closing: bool = False) -> T:
        if self._closed and not closing:
            raise StoreError(f"{self!r} is closed")
        import redis.exceptions

        try:
            return await command()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis {self._where} is unreachable: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"Redis {self._where} failed: {exc}") from exc


async def _awaited(value: Awaitable[T] | T) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


def _import_redis() -> tuple[Any, Any, Any]:
    try:
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
    except ImportError:
        raise ConfigurationError(
            "RedisRunStore needs the redis package: pip install 'notebookops[redis]'"
        ) from None
    return redis.asyncio, redis.asyncio.retry, redis.backoff


def _where(url: str) -> str:
    """The URL without its credentials, to name the server in messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparsable URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _fields_to_record(key: str, fields: dict[Any, Any]) -> RunRecord | None:
    if not fields:
        return None
    try:
        texts = {_text(name): _text(value) for name, value in fields.items()}
    except UnicodeDecodeError as exc:
        raise StoreCorrupted(f"the stored record of key {key!r} is unreadable: {exc}") from None
    return _records.decode_record(key, texts)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
