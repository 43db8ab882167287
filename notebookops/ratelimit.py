"""The per-backend request limiter: a shared cool-down after 429s and a pace learnt from them.

Vendors publish few rate limits, and the ones they publish change. So by default the limiter
learns: it sends unpaced until the first 429, then paces at 90% of the rate the server was
seen to accept, and probes upwards while no 429 comes back. A fixed ``max_rate`` is a ceiling
on top (use it when you know the vendor's limit, or share one limiter between backends that use
the same credentials).
"""

from __future__ import annotations

import math
from bisect import insort
from collections import deque
from collections.abc import Callable

import anyio

from .errors import ConfigurationError

__all__ = ["RateLimiter"]

#: The window over which the server's accepted rate is estimated at each 429.
_WINDOW = 1.0
#: Pace at this share of the accepted rate, so the bucket refills instead of running dry.
_HEADROOM = 0.9
#: The shortest stretch of sends after the first refused one that a drain estimate uses.
_MIN_DRAIN_SPAN = 0.05
#: A 429 after fewer requests than this in the window says the limit is not about our rate
#: (other clients on the same key, a concurrency cap): cool down, but learn no pace from it.
_MIN_SAMPLE = 10
#: Each second without a 429 while paced, the pace rises by this factor (a raised vendor limit
#: is found again; the next 429 sets it back). Slow on purpose: from the learnt 90% the pace
#: passes the vendor's rate after ~20 s, and its token bucket takes a while more to run dry, so
#: the burst of 429s that sets it back (about one round trip's worth of requests) comes every
#: half minute or so. At 2% a second it came every ~8 s: 0.7-1.4% of requests refused in a
#: model of 500 waits against a 200/s bucket (tests/core/test_ratelimit.py), 0.15-0.2% now.
_PROBE = 1.005


class RateLimiter:
    """One per backend, shared by every request and every concurrent wait on it.

    Three mechanisms:

    * a shared cool-down: after a 429 every caller pauses until the vendor's ``Retry-After``
      (or a short backoff) has passed, so a fleet of waits backs off together instead of each
      hammering the server on its own schedule;
    * with ``adaptive=True`` (the default), a learnt pace: at each 429 the rate the server
      accepted over the last second is estimated (requests sent minus requests refused), and
      requests are spaced at 90% of the lowest estimate; each second without a 429 raises the
      pace by 0.5%. Until the first 429 nothing is paced, and a 429 after fewer than 10 requests
      in the last second teaches nothing (the limit is then not about this client's rate);
    * ``max_rate``: a fixed ceiling in requests per second, whatever was learnt.

    Pass the same instance to several backends (``rate_limiter=``) when they share one API key,
    since vendors limit per key.
    """

    def __init__(self, max_rate: float | None = None, *, adaptive: bool = True) -> None:
        if max_rate is not None and (
            isinstance(max_rate, bool)
            or not isinstance(max_rate, int | float)
            or not math.isfinite(max_rate)
            or max_rate <= 0
        ):
            raise ConfigurationError(f"max_rate must be a finite number > 0, got {max_rate!r}")
        if not isinstance(adaptive, bool):
            raise ConfigurationError(f"adaptive must be True or False, got {adaptive!r}")
        self.max_rate = max_rate
        self.adaptive = adaptive
        #: 429 answers seen so far (all callers).
        self.rate_limited_count = 0
        self._learnt: float | None = None
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._sent: deque[float] = deque()
        self._refused: deque[float] = deque()
        #: When the refused requests of the current run of 429s were sent, oldest first.
        self._refused_sent: deque[float] = deque()
        self._last_refusal = -math.inf
        self._last_probe = -math.inf
        #: Monotonic seconds; replaceable so tests can drive time by hand.
        self._clock: Callable[[], float] = anyio.current_time

    def __repr__(self) -> str:
        return (
            f"RateLimiter(max_rate={self.max_rate!r}, adaptive={self.adaptive!r}, "
            f"rate={self.rate!r})"
        )

    @property
    def rate(self) -> float | None:
        """The pace in force, in requests per second (None: unpaced)."""
        if self._learnt is None:
            return self.max_rate
        if self.max_rate is None:
            return self._learnt
        return min(self._learnt, self.max_rate)

    async def acquire(self) -> float | None:
        """Wait until the next request may be sent. Returns at once (without even yielding to
        the event loop) when nothing is paced or paused: the request's own I/O follows.

        Returns the send time to give :meth:`on_rate_limited` if the request is refused (None
        when not adaptive)."""
        wait = self.reserve()
        if wait > 0:
            await anyio.sleep(wait)
        if self.adaptive:
            return self.record_send()
        return None

    def reserve(self) -> float:
        """Book the next request's send slot; return how many seconds to wait for it."""
        now = self._clock()
        wait = self._paused_until - now
        rate = self.rate
        if rate is not None:
            slot = max(now + max(wait, 0.0), self._next_slot)
            self._next_slot = slot + 1.0 / rate
            wait = slot - now
        return max(wait, 0.0)

    def record_send(self) -> float:
        """Note a request going out now (returned: its send time). The estimate at a 429 counts
        actual sends, not bookings: with a backlog, many slots are booked ahead of time."""
        now = self._clock()
        sent = self._sent
        sent.append(now)
        horizon = now - _WINDOW
        while sent[0] < horizon:
            sent.popleft()
        if (
            self._learnt is not None
            and now - self._last_refusal >= _WINDOW
            and now - self._last_probe >= _WINDOW
        ):
            self._learnt *= _PROBE
            self._last_probe = now
        return now

    def on_rate_limited(
        self, retry_after: float | None, fallback: float = 1.0, *, sent_at: float | None = None
    ) -> None:
        """Record a 429: pause every caller for ``retry_after`` seconds (``fallback`` when the
        vendor gave none) and, when adaptive, lower the pace to what the server accepted.
        ``sent_at``: when the refused request was sent (what :meth:`acquire` returned)."""
        self.rate_limited_count += 1
        now = self._clock()
        pause = retry_after if retry_after is not None else fallback
        self._paused_until = max(self._paused_until, now + pause)
        if not self.adaptive:
            return
        horizon = now - _WINDOW
        if now - self._last_refusal >= _WINDOW:
            self._refused_sent.clear()  # a new run of 429s
        for times in (self._sent, self._refused, self._refused_sent):
            while times and times[0] < horizon:
                times.popleft()
        self._refused.append(now)
        self._last_refusal = now
        if sent_at is not None:
            insort(self._refused_sent, sent_at)
        if len(self._sent) < _MIN_SAMPLE:
            return
        # Answers still in flight make early estimates too high; later 429s correct them,
        # hence the minimum.
        accepted = max(1, len(self._sent) - len(self._refused))
        estimate = _HEADROOM * accepted
        drained = self._drain_rate()
        if drained is not None:
            estimate = min(estimate, _HEADROOM * drained)
        self._learnt = estimate if self._learnt is None else min(self._learnt, estimate)

    def _drain_rate(self) -> float | None:
        """The vendor's rate as seen since its allowance ran out, or None if too little is known.

        A vendor's token bucket (or window) lets a burst through before its first 429, so what
        was accepted over the last second overstates its sustained rate, by up to the burst
        (a fresh fleet of waits measured 225-310/s accepted against a 200/s limit). From the
        first refused request on, the allowance is spent, and what gets through is what the
        vendor refills: requests sent since then, minus those refused, over the time spanned.
        Answers still in flight count as accepted, so this too errs high, never low.
        """
        refused = self._refused_sent
        sent = self._sent
        if not refused or not sent:
            return None
        first = refused[0]
        since = 0
        for index in range(len(sent) - 1, -1, -1):
            if sent[index] < first:
                break
            since += 1
        span = sent[-1] - first
        if since < _MIN_SAMPLE or span < _MIN_DRAIN_SPAN:
            return None
        return max(1, since - len(refused)) / span
