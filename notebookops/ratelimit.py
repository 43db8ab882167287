"""The per-backend request limiter: a shared cool-down after 429s and a pace learnt from them.

Vendors publish few rate limits, and the ones they publish change. So by default the limiter
learns: it sends unpaced until the first 429, then paces at 90% of the rate the server was
seen to let through, and probes upwards while no 429 comes back. A fixed ``max_rate`` is a ceiling
on top (use it when you know the vendor's limit, or share one limiter between backends that use
the same credentials).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import anyio

from .errors import ConfigurationError

__all__ = ["RateLimiter"]

#: The window over which the server's accepted rate is estimated at each 429, and the quiet
#: time after which the next 429 starts a new run of them.
_WINDOW = 1.0
#: Pace at this share of the accepted rate, so the bucket refills instead of running dry.
_HEADROOM = 0.9
#: The shortest run of 429s whose accepted answers measure the vendor's refill (a shorter one
#: holds too few answers to tell the rate from noise).
_MIN_DRAIN_SPAN = 0.2
#: A 429 after fewer accepted answers than this in the window says the limit is not about our
#: rate (other clients on the same key, a concurrency cap): cool down, but learn no pace from
#: it. Also the fewest answers a drain estimate is made from.
_MIN_SAMPLE = 10
#: Each second without a 429 while paced, the pace rises by this factor (a raised vendor limit
#: is found again; the next 429 sets it back). Slow on purpose: from the learnt 90% the pace
#: passes the vendor's rate after ~20 s, and its token bucket takes a while more to run dry, so
#: the burst of 429s that sets it back (about one round trip's worth of requests) comes every
#: half minute or so. At 2% a second it came every ~8 s, and the model of 500 waits against a
#: 200/s bucket in tests/core/test_ratelimit.py refuses more than 1% of requests in some cases.
_PROBE = 1.005


class RateLimiter:
    """One per backend, shared by every request and every concurrent wait on it.

    Three mechanisms:

    * a shared cool-down: after a 429 every caller pauses until the vendor's ``Retry-After``
      (or a short backoff) has passed, so a fleet of waits backs off together instead of each
      hammering the server on its own schedule;
    * with ``adaptive=True`` (the default), a learnt pace: at each 429 the limiter estimates
      the rate the vendor lets through, and spaces requests at 90% of it; each second without
      a 429 raises the pace by 0.5%. Until the first 429 nothing is paced, and a 429 after
      fewer than 10 accepted answers in the last second teaches nothing (the limit is then not
      about this client's rate);
    * ``max_rate``: a fixed ceiling in requests per second, whatever was learnt.

    The estimate counts answers, not sends: requests that passed the limiter may still queue
    for a connection, so when they were let go says little about when the vendor saw them. At
    a run of 429s it is the lower of what was answered over the last second (the lowest such
    figure in the run) and, once the run has lasted long enough to tell, what was answered
    since the run's first 429 over the time since then. The second matters because a vendor's
    token bucket lets a burst through before its first 429: the last second then overstates
    the sustained rate by up to that burst (a fresh fleet measured 225-310/s against a 200/s
    limit), while what gets through after the first 429, with the allowance spent, is the
    vendor's refill. A run of 429s never raises the pace above where it stood before the run.

    The transport drives it: :meth:`acquire` before each request, :meth:`record_answer` for
    each answer but a 429, :meth:`on_rate_limited` for each 429. Pass the same instance to
    several backends (``rate_limiter=``) when they share one API key, since vendors limit per
    key.
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
        #: When answers other than 429 came back (the last two windows), oldest first.
        self._answered: deque[float] = deque()
        #: The current run of 429s: when its first came, the pace before it, and the lowest
        #: window estimate in it so far.
        self._run_began = -math.inf
        self._pace_before: float | None = None
        self._window_estimate = math.inf
        self._last_refusal = -math.inf
        self._last_probe = -math.inf
        #: Monotonic seconds; replaceable so tests can drive time by hand. Only differences
        #: of its own readings matter (sleeps are relative), so time.monotonic serves, without
        #: anyio's lookup of the running event loop on each of a request's two readings.
        self._clock: Callable[[], float] = time.monotonic

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

    async def acquire(self) -> None:
        """Wait until the next request may be sent. Returns at once (without even yielding to
        the event loop) when nothing is paced or paused: the request's own I/O follows."""
        wait = self.reserve()
        if wait > 0:
            await anyio.sleep(wait)
        if self._learnt is not None:
            self.record_send()

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

    def record_send(self) -> None:
        """Note a request going out now: a second of them without a 429 raises a learnt pace
        by one probe step."""
        if self._learnt is None:
            return
        now = self._clock()
        if now - self._last_refusal >= _WINDOW and now - self._last_probe >= _WINDOW:
            self._learnt *= _PROBE
            self._last_probe = now

    def record_answer(self) -> None:
        """Note an answer other than 429 coming back now (only counted while adaptive)."""
        if not self.adaptive:
            return
        now = self._clock()
        answered = self._answered
        answered.append(now)
        horizon = now - 2 * _WINDOW
        while answered[0] < horizon:
            answered.popleft()

    def on_rate_limited(self, retry_after: float | None, fallback: float = 1.0) -> None:
        """Record a 429: pause every caller for ``retry_after`` seconds (``fallback`` when the
        vendor gave none) and, when adaptive, lower the pace to what the server let through."""
        self.rate_limited_count += 1
        now = self._clock()
        pause = retry_after if retry_after is not None else fallback
        self._paused_until = max(self._paused_until, now + pause)
        if not self.adaptive:
            return
        if now - self._last_refusal >= _WINDOW:  # a new run of 429s
            self._run_began = now
            self._pace_before = self._learnt
            self._window_estimate = math.inf
        self._last_refusal = now
        in_window = self._answered_since(now - _WINDOW)
        if in_window < _MIN_SAMPLE:
            return
        self._window_estimate = min(self._window_estimate, _HEADROOM * in_window)
        estimate = self._window_estimate
        span = now - self._run_began
        if span >= _MIN_DRAIN_SPAN:
            # The latest, not the lowest: it sharpens as the run lasts, and its early noise
            # (few answers yet) must not stick.
            since = self._answered_since(self._run_began)
            if since >= _MIN_SAMPLE:
                estimate = min(estimate, _HEADROOM * since / span)
        before = self._pace_before
        self._learnt = estimate if before is None else min(before, estimate)

    def _answered_since(self, moment: float) -> int:
        answered = self._answered
        count = 0
        for index in range(len(answered) - 1, -1, -1):
            if answered[index] < moment:
                break
            count += 1
        return count
