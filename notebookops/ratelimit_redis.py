"""RedisRateLimiter: one request pace shared by every process that uses one vendor credential.

Needs the ``redis`` package (``pip install 'notebookops[redis]'``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._validate import count
from .errors import ConfigurationError
from .ratelimit import RateLimiter
from .store import StoreUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisRateLimiter"]

logger = logging.getLogger("notebookops.ratelimit")

#: While Redis is away, how often a request tries it again (the others pace locally).
_RETRY_REDIS_EVERY: Final = 1.0

# GCRA as slot booking, timed by the Redis server's clock (so the fleet's clocks need not
# agree). KEYS: the next free slot, the shared pause. ARGV: the interval between requests,
# a pause to share (0: none) and how far behind the clock the next slot may lag (the burst
# tolerance), all in microseconds. Returns the microseconds the caller must wait for the
# slot it has just booked.
_TURN: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local pause = tonumber(ARGV[2])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > 0 and now + pause > paused then
    paused = now + pause
    redis.call('SET', KEYS[2], string.format('%.0f', paused), 'PX', math.ceil(pause / 1000) + 1000)
end
local tolerance = tonumber(ARGV[3])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now - tolerance, paused)
local free = slot + interval
redis.call('SET', KEYS[1], string.format('%.0f', free), 'PX', math.ceil((free - now) / 1000) + 1000)
return string.format('%.0f', math.max(0, slot - now))
"""


class RedisRateLimiter(RateLimiter):
    """A :class:`~notebookops.RateLimiter` whose pace and 429 cool-downs are shared, through
    Redis, by every process using the same ``key`` (name it after the credential: vendors
    limit per API key).

    ``rate`` is the fleet's total in requests per second. Each request books the next free
    slot in one Lua script (GCRA, timed by the Redis server's clock), so the fleet as a whole
    sends at most ``rate`` requests a second however many workers share the key, plus up to
    ``burst - 1`` requests sent together to make up for slots the fleet was late for (keep
    ``burst`` within the vendor's own burst allowance; 1 allows none). A 429 pauses
    the whole fleet: its ``Retry-After`` (or, for a sustained run of 429s without one,
    ``fallback``) is booked in Redis with the next request this process makes.

    ``url_or_client`` is a Redis URL or a redis-py asyncio client (e.g. an arq worker's
    ``ctx["redis"]``). Pass the instance as ``rate_limiter=`` to a backend, as any
    RateLimiter. Reads and starts take slots in the order they ask (the fleet-wide queue has
    no read priority). If Redis cannot be reached at the first request (or at ``async with``),
    that raises :class:`~notebookops.store.StoreUnavailable`; if it goes away later, each
    process paces itself at ``rate / expected_processes`` until it is back (logged; Redis is
    tried again once a second), so runs keep going.
    """

    def __init__(
        self,
        url_or_client: str | Redis,
        *,
        key: str,
        rate: float,
        burst: int = 1,
        expected_processes: int = 1,
        prefix: str = "notebookops:",
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"key must be a non-empty string, got {key!r}")
        count("burst", burst, minimum=1)
        count("expected_processes", expected_processes, minimum=1)
        super().__init__(max_rate=rate, adaptive=False)
        # (rate checked by RateLimiter: a finite number > 0.)
        self._fleet_rate = float(rate)
        self._local_rate = self._fleet_rate / expected_processes
        self.key = key
        self._slot_key = f"{prefix}ratelimit:{key}:slot"
        self._pause_key = f"{prefix}ratelimit:{key}:pause"
        self._interval_us = max(1, math.ceil(1_000_000 / self._fleet_rate))
        self._tolerance_us = (burst - 1) * self._interval_us
        self._pending_pause = 0.0
        self._connected = False
        self._degraded = False
        self._retry_redis_at = 0.0
        self._owns_client = isinstance(url_or_client, str)
        if isinstance(url_or_client, str):
            try:
                import redis.asyncio
            except ImportError:
                raise ConfigurationError(
                    "RedisRateLimiter needs the redis package: pip install 'notebookops[redis]'"
                ) from None
            try:
                self._client: Any = redis.asyncio.Redis.from_url(
                    url_or_client, socket_connect_timeout=5.0, socket_timeout=5.0
                )
            except ValueError as error:
                raise ConfigurationError(f"not a usable Redis URL: {error}") from None
        else:
            self._client = url_or_client
        self._script: Any = None

    def __repr__(self) -> str:
        return f"RedisRateLimiter(key={self.key!r}, rate={self._fleet_rate!r})"

    async def __aenter__(self) -> RedisRateLimiter:
        await self._turn_in_redis(probe=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection this limiter opened (not a client it was given)."""
        if self._owns_client:
            await self._client.aclose()

    async def acquire(self) -> None:
        """Wait for the fleet's next free slot (see the class docs)."""
        await self._take_shared_turn()

    async def acquire_read(self) -> None:
        """Like :meth:`acquire` (the fleet-wide queue has no read priority)."""
        await self._take_shared_turn()

    def on_rate_limited(self, retry_after: float | None, fallback: float = 1.0) -> None:
        """Pause this process now, and the fleet from its next request on."""
        super().on_rate_limited(retry_after, fallback)
        pause = retry_after if retry_after is not None else fallback
        self._pending_pause = max(self._pending_pause, pause)

    async def _take_shared_turn(self) -> None:
        if self._degraded and time.monotonic() < self._retry_redis_at:
            # Redis is away: do not make every request wait for a connection attempt.
            await super().acquire()
            return
        try:
            wait = await self._turn_in_redis()
        except StoreUnavailable:
            if not self._connected:
                raise
            self._retry_redis_at = time.monotonic() + _RETRY_REDIS_EVERY
            if not self._degraded:
                self._degraded = True
                logger.warning(
                    "Redis is unreachable: rate limit %r paced by this process alone at %g/s",
                    self.key,
                    self._local_rate,
                )
            self.max_rate = self._local_rate
            await super().acquire()
            return
        if self._degraded:
            self._degraded = False
            self.max_rate = self._fleet_rate
            logger.warning("Redis is back: rate limit %r is shared again", self.key)
        if wait > 0:
            await anyio.sleep(wait)

    async def _turn_in_redis(self, *, probe: bool = False) -> float:
        import redis.exceptions

        pause_us = math.ceil(self._pending_pause * 1_000_000)
        self._pending_pause = 0.0
        if self._script is None:
            self._script = self._client.register_script(_TURN)
        try:
            if probe:
                await self._client.ping()
                return 0.0
            waited = await self._script(
                keys=[self._slot_key, self._pause_key],
                args=[self._interval_us, pause_us, self._tolerance_us],
            )
        except redis.exceptions.RedisError as error:
            self._pending_pause = max(self._pending_pause, pause_us / 1_000_000)
            raise StoreUnavailable(
                f"the Redis of rate limit {self.key!r} is unreachable: {error}"
            ) from error
        self._connected = True
        return int(waited) / 1_000_000
