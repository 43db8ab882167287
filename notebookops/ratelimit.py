"""The per-backend request limiter: a shared cool-down after 429s and a pace learnt from them.

Vendors publish few rate limits, and the ones they publish change. So by default the limiter
learns: it sends unpaced until 429s come in a sustained run, then paces at 90% of the rate the
server was seen to let through, and probes upwards while no 429 comes back. A 429 now and then
(a vendor's background noise) teaches nothing. A fixed ``max_rate`` is a ceiling on top (use it
when you know the vendor's limit, or share one limiter between backends that use the same
credentials).
"""

from __future__ import annotations

import math
from collections import deque

import anyio

from .errors import ConfigurationError

__all__ = ["RateLimiter"]

#: The window over which 429s and answers are counted, and the quiet time after which the next
#: 429 starts a new run of them.
_WINDOW = 1.0
#: 429s are "sustained" when the last quarter second holds at least this many of them...
_SUSTAINED_SPAN = 0.25
_SUSTAINED_COUNT = 8
#: ...and they are at least this share of its answers. A vendor's limit refuses in bursts
#: (the requests in flight when its bucket runs dry); 1% of background 429s at any request rate
#: almost never packs that many that close: at 300 requests/s, about once in four hours; at
#: 1,000/s (13 needed), about once in three.
_SUSTAINED_SHARE = 0.05
#: Pace at this share of the accepted rate, so the bucket refills instead of running dry.
_HEADROOM = 0.9
#: The shortest run of 429s whose accepted answers measure the vendor's refill (a shorter one
#: holds too few answers to tell the rate from noise).
_MIN_DRAIN_SPAN = 0.2
#: A run of 429s with fewer accepted answers than this in the window says the limit is not
#: about our rate (an outage, a concurrency cap): cool down, but learn no pace from it. Also
#: the fewest answers a drain estimate is made from.
_MIN_SAMPLE = 10
#: A sustained run of 429s during which the vendor let through less than this share of the
#: pace that had held before the trouble began is not that pace meeting the vendor's limit
#: (an outage, another client on the key taking the budget for a while): once it ends, the
#: pace climbs back quickly.
_OUTAGE_SHARE = 0.5
#: A pace "held" when no sustained 429 came for this long; sustained runs closer together
#: than this are one spell of trouble, measured against the pace from before its first.
_HELD_FOR = 10.0
#: Each quiet second (no sustained 429s) while recovering, the pace is multiplied by this: from
#: a tenth of the held pace, back in under four seconds.
_RECOVERY = 2.0
#: The first climb starts after one quiet second. Each sustained run that cuts a climb short
#: (the outage is not over) doubles that wait; past this one the lower rate is taken as the
#: vendor's new limit and the climb is given up.
_MAX_RECOVERY_WAIT = 30.0
#: Each second without a 429 while paced at or above what was learnt, the pace rises by this
#: factor (a raised vendor limit is found again). Slow on purpose: each time the probe passes
#: the vendor's rate, its 429s (about one round trip's worth of the excess) pause the fleet
#: for their Retry-After, so probing faster costs throughput and 429s: from the learnt 90% it
#: passes the vendor's rate after about 20 s.
_PROBE = 1.005


class _Waiter:
    """One queued :meth:`RateLimiter.acquire`."""

    __slots__ = ("released", "wake")

    def __init__(self) -> None:
        self.released = False
        #: Set when the waiter is released, or asked to take over dispatching.
        self.wake = anyio.Event()


class RateLimiter:
    """One per backend, shared by every request and every concurrent wait on it.

    Four mechanisms:

    * a shared cool-down: after a 429 with ``Retry-After`` every caller pauses until it has
      passed, so a fleet of waits backs off together instead of each hammering the server on
      its own schedule. A 429 without ``Retry-After`` pauses everyone for ``fallback`` only
      when it is part of a sustained run (or ``adaptive=False``): alone, its own request's
      retry backs off and the others carry on;
    * with ``adaptive=True`` (the default), a learnt pace, from sustained 429s only: at least
      8 within a quarter second, and at least 5% of the answers then (a vendor's limit
      refuses in bursts). At each such 429 the limiter estimates the rate the vendor lets
      through and spaces requests at 90% of it; with fewer than 10 answers in the last second
      to go on (an outage, a concurrency cap) it only cools down. Sporadic 429s (a vendor's
      background noise, 1% of requests say) set no pace. Once paced, each second without a
      429 raises the pace by 0.5%, and a lone 429 sets it back to what was learnt;
    * recovery: when, in a spell of sustained 429s, the vendor let through less than half of
      the pace that had held for 10 s before it (an outage, another client on the same key),
      the pace doubles each second without sustained 429s until it is back there. If the
      429s cut the climb short, the next climb waits twice as long (1, 2, 4 ... s); past
      30 s the lower rate is kept as the vendor's new limit;
    * ``max_rate``: a fixed ceiling in requests per second, whatever was learnt.

    The estimate counts answers, not sends: requests that passed the limiter may still queue
    for a connection, so when they were let go says little about when the vendor saw them. At
    a sustained run of 429s it is the lower of what was answered over the last second (the
    lowest such figure in the run) and, once the run has lasted long enough to tell, what was
    answered since the run's first 429 over the time since then. The second matters because a
    vendor's token bucket lets a burst through before its first 429: the last second then
    overstates the sustained rate by up to that burst, while what gets through after the first
    429, with the allowance spent, is the vendor's refill. A run of 429s never raises the pace
    above where it stood before the run.

    Turns: while paced or paused, callers wait in two FIFO queues, and each slot goes to the
    oldest :meth:`acquire_read` caller first, then to the oldest :meth:`acquire` caller. The
    client takes its turn with ``acquire_read`` for reads (idempotent requests: status reads of
    started runs), so queued starts never take every slot from the runs already started.
    Unpaced and unpaused, a turn is taken at once.

    The client drives it: :meth:`acquire` (or :meth:`acquire_read`) before each request,
    :meth:`record_answer` for each answer but a 429, :meth:`on_rate_limited` for each 429.
    Pass the same instance to several backends (``rate_limiter=``) when they share one API
    key, since vendors limit per key.
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
        #: The learnt pace (None: unpaced), and what the last sustained run of 429s taught.
        self._pace: float | None = None
        self._learnt: float | None = None
        #: The pace that held before the current spell of trouble (None: unpaced).
        self._held: float | None = None
        #: While recovering from an outage: the pace to climb back to, and how long a quiet
        #: spell the next climb waits for.
        self._recover_to: float | None = None
        self._recovery_wait = _WINDOW
        self._next_slot = -math.inf
        self._paused_until = -math.inf
        self._last_step = -math.inf
        #: When answers other than 429 came back over the last window and over the last
        #: quarter second, and when 429s did over the last quarter second; and how many
        #: answers came in all.
        self._answered: deque[float] = deque()
        self._recently_answered: deque[float] = deque()
        self._refused: deque[float] = deque()
        self._answered_total = 0
        #: The current run of 429s: when its first came, the answers counted by then, the pace
        #: before it, the lowest window estimate in it so far, whether it has been sustained
        #: yet, and whether it cut a climb short.
        self._run_began = -math.inf
        self._answered_at_run_start = 0
        self._pace_before: float | None = None
        self._window_estimate = math.inf
        self._run_sustained = False
        self._run_cut_climb = False
        self._last_refusal = -math.inf
        self._last_sustained = -math.inf
        #: Callers waiting for a slot: reads first, then everything else.
        self._reads: deque[_Waiter] = deque()
        self._others: deque[_Waiter] = deque()
        self._dispatching = False

    def __repr__(self) -> str:
        return (
            f"RateLimiter(max_rate={self.max_rate!r}, adaptive={self.adaptive!r}, "
            f"rate={self.rate!r})"
        )

    @property
    def rate(self) -> float | None:
        """The pace in force, in requests per second (None: unpaced)."""
        if self._pace is None:
            return self.max_rate
        if self.max_rate is None:
            return self._pace
        return min(self._pace, self.max_rate)

    # ------------------------------------------------------------------------------ turns

    async def acquire(self) -> None:
        """Wait for this request's turn to be sent.

        Returns at once (without even yielding to the event loop) when nothing is paced,
        paused or queued: the request's own I/O follows.
        """
        await self._take_turn(self._others)

    async def acquire_read(self) -> None:
        """Like :meth:`acquire`, for a read (an idempotent request, such as a started run's
        status read): it goes before every ordinary request queued."""
        await self._take_turn(self._reads)

    async def _take_turn(self, queue: deque[_Waiter]) -> None:
        now = anyio.current_time()
        if not (self._reads or self._others) and self._free_at() <= now:
            self._take_slot(now)
            return
        waiter = _Waiter()
        queue.append(waiter)
        try:
            while not waiter.released:
                if self._dispatching:
                    await waiter.wake.wait()
                    waiter.wake = anyio.Event()
                else:
                    await self._dispatch_until(waiter)
        except BaseException:
            if not waiter.released:
                queue.remove(waiter)
                if not self._dispatching:
                    self._wake_first()
            raise

    async def _dispatch_until(self, me: _Waiter) -> None:
        """Hand out slots in turn, sleeping until each is due, until ``me`` has one.

        One queued caller at a time does this (no background task): when it is released, or
        cancelled, the first one still waiting takes over.
        """
        self._dispatching = True
        try:
            while not me.released:
                now = anyio.current_time()
                due = self._free_at()
                if due > now:
                    await anyio.sleep(due - now)
                    continue
                waiter = (self._reads or self._others).popleft()
                waiter.released = True
                self._take_slot(now)
                waiter.wake.set()
        finally:
            self._dispatching = False
            self._wake_first()

    def _wake_first(self) -> None:
        queue = self._reads or self._others
        if queue:
            queue[0].wake.set()

    def _free_at(self) -> float:
        """When the next slot is free."""
        if self.rate is None:
            return self._paused_until
        return max(self._paused_until, self._next_slot)

    def _take_slot(self, now: float) -> None:
        self._step(now)
        rate = self.rate
        if rate is not None:
            interval = 1.0 / rate
            # A dispatcher woken a little late does not push every later slot back; after an
            # idle spell the pace starts afresh from now.
            late = now - self._next_slot
            self._next_slot = (self._next_slot if late < interval else now) + interval

    # ------------------------------------------------------------------------------ learning

    def _step(self, now: float) -> None:
        """Raise a learnt pace for the quiet seconds since the last step: doubling while it
        recovers from an outage, by the slow probe otherwise."""
        if self._pace is None:
            return
        if self._recover_to is not None:
            if self._last_sustained > self._last_step:  # the first step of a climb
                wait, quiet = self._recovery_wait, now - self._last_sustained
            else:
                wait, quiet = _WINDOW, now - self._last_step
            if quiet < wait:
                return
            self._pace = min(self._recover_to, self._pace * _RECOVERY ** min(quiet, 60.0))
            if self._pace == self._recover_to:
                self._recover_to = None
        else:
            quiet = now - max(self._last_step, self._last_refusal)
            if quiet < _WINDOW:
                return
            # Per quiet second (a burst may follow a long idle spell), without overflow.
            self._pace *= _PROBE ** min(quiet, 3600.0)
        self._last_step = now

    def record_answer(self) -> None:
        """Note an answer other than 429 coming back now (only counted while adaptive)."""
        if not self.adaptive:
            return
        now = anyio.current_time()
        self._answered_total += 1
        self._answered.append(now)
        _forget_before(self._answered, now - _WINDOW)
        self._recently_answered.append(now)
        _forget_before(self._recently_answered, now - _SUSTAINED_SPAN)

    def on_rate_limited(self, retry_after: float | None, fallback: float = 1.0) -> None:
        """Record a 429: pause every caller for ``retry_after`` seconds (for ``fallback`` when
        the vendor gave none, if the 429s are sustained) and, when adaptive, learn from it."""
        self.rate_limited_count += 1
        now = anyio.current_time()
        sustained = True
        if self.adaptive:
            self._refused.append(now)
            _forget_before(self._refused, now - _SUSTAINED_SPAN)
            _forget_before(self._answered, now - _WINDOW)
            _forget_before(self._recently_answered, now - _SUSTAINED_SPAN)
            sustained = self._sustained()
        pause = retry_after if retry_after is not None else fallback if sustained else 0.0
        self._paused_until = max(self._paused_until, now + pause)
        if not self.adaptive:
            return
        if now - self._last_refusal >= _WINDOW:  # a new run of 429s
            self._run_began = now
            self._answered_at_run_start = self._answered_total
            self._pace_before = self._pace
            self._window_estimate = math.inf
            self._run_sustained = False
        self._last_refusal = now
        if sustained:
            self._learn(now)
        elif self._recover_to is None and self._learnt is not None and self._pace is not None:
            # The probe went past the vendor's rate again: back to what was learnt.
            self._pace = min(self._pace, self._learnt)

    def _sustained(self) -> bool:
        refused = len(self._refused)
        return refused >= _SUSTAINED_COUNT and refused >= _SUSTAINED_SHARE * (
            refused + len(self._recently_answered)
        )

    def _learn(self, now: float) -> None:
        if not self._run_sustained:  # this run's first sustained 429
            self._run_sustained = True
            if now - self._last_sustained >= _HELD_FOR:  # a new spell of trouble
                self._held = self._pace_before
            self._run_cut_climb = self._recover_to is not None
            if self._run_cut_climb:
                # The outage is not over: keep the target, and wait longer before the next
                # climb (or give up: the vendor's limit really is lower now).
                self._recovery_wait *= 2
                if self._recovery_wait > _MAX_RECOVERY_WAIT:
                    self._recover_to = None
        self._last_sustained = now
        in_window = len(self._answered)
        if in_window < _MIN_SAMPLE:
            return
        self._window_estimate = min(self._window_estimate, _HEADROOM * in_window)
        estimate = self._window_estimate
        span = now - self._run_began
        if span >= _MIN_DRAIN_SPAN:
            # The latest, not the lowest: it sharpens as the run lasts, and its early noise
            # (few answers yet) must not stick.
            since = self._answered_total - self._answered_at_run_start
            if since >= _MIN_SAMPLE:
                estimate = min(estimate, _HEADROOM * since / span)
        before = self._pace_before
        self._pace = self._learnt = estimate if before is None else min(before, estimate)
        if self._run_cut_climb:
            return
        held = self._held
        if held is not None and estimate < _OUTAGE_SHARE * held:
            self._recover_to = held
            self._recovery_wait = _WINDOW
        else:
            self._recover_to = None


def _forget_before(times: deque[float], horizon: float) -> None:
    while times and times[0] < horizon:
        times.popleft()
