"""RateLimiter: shared cool-down, the pace learnt from 429s, and the max_rate ceiling.

Time is driven by hand through the limiter's clock, so nothing here sleeps for real except the
two end-to-end checks of ``acquire``.
"""

from __future__ import annotations

import heapq
import random

import anyio
import pytest

from notebookops import ConfigurationError, RateLimiter, _http
from notebookops.ratelimit import _MIN_SAMPLE, _PROBE


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter_with_clock(**kwargs: object) -> tuple[RateLimiter, Clock]:
    limiter = RateLimiter(**kwargs)  # type: ignore[arg-type]
    clock = Clock()
    limiter._clock = clock
    return limiter, clock


def send_burst(limiter: RateLimiter, clock: Clock, count: int, over: float) -> list[float]:
    """``count`` requests spread evenly over ``over`` seconds; returns each one's wait."""
    waits = []
    for index in range(count):
        clock.now += over / count if index else 0.0
        waits.append(limiter.reserve())
        limiter.record_send()
    return waits


def test_nothing_is_paced_before_the_first_429() -> None:
    limiter, clock = limiter_with_clock()
    assert send_burst(limiter, clock, 5000, over=1.0) == [0.0] * 5000
    assert limiter.rate is None


def test_a_429_pauses_every_caller_for_retry_after() -> None:
    limiter, clock = limiter_with_clock()
    limiter.on_rate_limited(2.0)
    assert limiter.reserve() == pytest.approx(2.0)
    clock.now += 0.5
    assert limiter.reserve() == pytest.approx(1.5)
    assert limiter.rate_limited_count == 1


def test_the_pace_is_learnt_from_what_the_server_accepted() -> None:
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 300, over=0.99)
    # 300 sent in the last second, 100 refused: the server accepted about 200/s.
    for _ in range(100):
        limiter.on_rate_limited(0.0)
    assert limiter.rate == pytest.approx(0.9 * 200)
    # From now on requests are spaced 1/180 s apart (within the second after the 429, before
    # the pace starts probing upwards).
    clock.now += 0.5
    waits = [limiter.reserve() for _ in range(4)]
    assert waits == pytest.approx([0.0, 1 / 180, 2 / 180, 3 / 180])


def test_the_lowest_estimate_wins_as_answers_in_flight_come_back() -> None:
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 500, over=0.1)
    limiter.on_rate_limited(0.0)  # first 429: 499 not refused yet, far too optimistic
    first = limiter.rate
    for _ in range(299):
        limiter.on_rate_limited(0.0)
    assert first is not None
    assert limiter.rate is not None
    assert limiter.rate < first
    assert limiter.rate == pytest.approx(0.9 * 200)


def test_the_pace_probes_upwards_while_no_429_comes_back() -> None:
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 300, over=0.99)
    for _ in range(100):
        limiter.on_rate_limited(0.0)
    learnt = limiter.rate
    assert learnt is not None
    for _ in range(10):  # ten quiet seconds, a request in each
        clock.now += 1.0
        limiter.record_send()
    assert limiter.rate == pytest.approx(learnt * _PROBE**10)


def test_a_429_within_the_last_second_stops_the_probe() -> None:
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 300, over=0.99)
    for _ in range(100):
        limiter.on_rate_limited(0.0)
    learnt = limiter.rate
    clock.now += 0.5
    limiter.record_send()
    assert limiter.rate == learnt


def test_a_429_after_a_handful_of_requests_teaches_no_pace() -> None:
    # Too few requests for the limit to be about this client's rate (another client on the
    # same key, or a concurrency cap): cool down, but keep sending at full speed afterwards.
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, _MIN_SAMPLE - 1, over=0.5)
    limiter.on_rate_limited(0.2)
    assert limiter.rate is None
    clock.now += 1.0
    assert limiter.reserve() == 0.0


def test_max_rate_is_a_ceiling_over_the_learnt_pace() -> None:
    limiter, clock = limiter_with_clock(max_rate=50.0)
    assert limiter.rate == 50.0
    send_burst(limiter, clock, 300, over=0.99)
    for _ in range(100):
        limiter.on_rate_limited(0.0)
    assert limiter.rate == 50.0  # learnt 180/s, but the user said 50
    limiter2, clock2 = limiter_with_clock(max_rate=500.0)
    send_burst(limiter2, clock2, 300, over=0.99)
    for _ in range(100):
        limiter2.on_rate_limited(0.0)
    assert limiter2.rate == pytest.approx(180.0)


def test_adaptive_false_never_paces_but_still_cools_down() -> None:
    limiter, clock = limiter_with_clock(adaptive=False)
    send_burst(limiter, clock, 300, over=0.99)
    for _ in range(100):
        limiter.on_rate_limited(0.5)
    assert limiter.rate is None
    assert limiter.reserve() == pytest.approx(0.5)
    clock.now += 1.0
    assert limiter.reserve() == 0.0


def test_bookings_ahead_of_time_are_not_counted_as_sends() -> None:
    # During a cool-down 300 requests book their slots at once, but none has gone out yet: a
    # 429 now must not believe the server accepted ~300 requests in the last second.
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 5, over=0.1)
    limiter.on_rate_limited(1.0)
    for _ in range(300):
        assert limiter.reserve() > 0
    limiter.on_rate_limited(1.0)
    assert limiter.rate is None


def test_memory_stays_bounded_by_one_window_of_requests() -> None:
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 100_000, over=100.0)
    assert len(limiter._sent) <= 1_001


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "10"])
def test_max_rate_is_validated(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_rate"):
        RateLimiter(max_rate=bad)  # type: ignore[arg-type]


def test_adaptive_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="adaptive"):
        RateLimiter(adaptive="yes")  # type: ignore[arg-type]


def test_repr_and_re_export() -> None:
    assert _http.RateLimiter is RateLimiter
    assert repr(RateLimiter(max_rate=5)) == "RateLimiter(max_rate=5, adaptive=True, rate=5)"


async def test_acquire_sleeps_for_the_booked_slot() -> None:
    limiter = RateLimiter(max_rate=200)
    started = anyio.current_time()
    for _ in range(5):
        await limiter.acquire()
    assert anyio.current_time() - started >= 4 / 200 - 0.001


async def test_acquire_without_a_wait_does_not_yield() -> None:
    # The request's own I/O follows at once; an extra trip through the event loop per request
    # was measurable CPU at thousands of waits.
    limiter = RateLimiter()
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        await limiter.acquire()
        order.append("acquired")
    assert order == ["acquired", "other"]


# --------------------------------------------------------------------------- a fleet, modelled


def fleet_against_a_bucket(
    limiter: RateLimiter,
    *,
    rate: float = 200.0,
    waits: int = 500,
    seconds: float = 60.0,
    round_trip: float = 0.15,
    ramp: float = 0.2,
    seed: int = 1,
) -> dict[int, list[int]]:
    """A discrete-event model of ``waits`` concurrent waits sharing one limiter (started over
    ``ramp`` seconds; each reads, then sleeps 1-2 s; a 429 is retried after its
    ``Retry-After: 1``) against a server's token bucket of one second of ``rate``, as the
    transport drives the limiter. Returns [accepted, refused] per second, on a fake clock.
    """
    clock = Clock()
    clock.now = 0.0
    limiter._clock = clock
    rng = random.Random(seed)
    tokens, refilled = rate, 0.0
    events: list[tuple[float, int, str, float]] = []
    order = 0

    def at(when: float, what: str, sent: float = 0.0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, what, sent))

    for _ in range(waits):
        at(rng.uniform(0, ramp), "want")
    seen: dict[int, list[int]] = {}
    while events:
        now, _, what, sent = heapq.heappop(events)
        if now > seconds:
            break
        clock.now = now
        if what == "want":
            at(now + limiter.reserve(), "send")
        elif what == "send":
            at(now + round_trip / 2, "arrive", limiter.record_send())
        elif what == "arrive":
            tokens = min(rate, tokens + (now - refilled) * rate)
            refilled = now
            accepted = tokens >= 1
            tokens -= accepted
            seen.setdefault(int(now), [0, 0])[0 if accepted else 1] += 1
            at(now + round_trip / 2, "accepted" if accepted else "refused", sent)
        elif what == "accepted":
            at(now + rng.uniform(1.0, 2.0), "want")
        else:
            limiter.on_rate_limited(1.0, sent_at=sent)
            at(now + rng.uniform(1.0, 1.1), "want")
    return seen


@pytest.mark.parametrize("seconds", [15.0, 60.0, 300.0])
@pytest.mark.parametrize("round_trip", [0.05, 0.15])
@pytest.mark.parametrize("ramp", [0.2, 1.0])
def test_a_fleet_learns_the_buckets_rate_and_stays_under_it(
    seconds: float, round_trip: float, ramp: float
) -> None:
    seen = fleet_against_a_bucket(RateLimiter(), seconds=seconds, round_trip=round_trip, ramp=ramp)
    after = [counts for second, counts in seen.items() if second >= 1]
    accepted = sum(counts[0] for counts in after)
    refused = sum(counts[1] for counts in after)
    # The first second's burst of 429s is how the pace is learnt; after it, few are left.
    assert refused <= 0.01 * (accepted + refused), f"{refused} refused of {accepted + refused}"
    # As the benchmark counts it: the median second (the first ones include the cool-down).
    per_second = sorted(counts[0] for counts in after)
    assert per_second[len(per_second) // 2] >= 0.9 * 200


def test_without_learning_a_fleet_keeps_hitting_the_limit() -> None:
    """The model's baseline: the fixed limiter only cools down, so 429s keep coming."""
    seen = fleet_against_a_bucket(RateLimiter(adaptive=False), seconds=60.0)
    after = [counts for second, counts in seen.items() if second >= 1]
    refused = sum(counts[1] for counts in after)
    assert refused > 0.1 * sum(counts[0] + counts[1] for counts in after)


def test_the_burst_a_bucket_lets_through_is_not_taken_for_its_rate() -> None:
    """A fresh fleet: 200 requests accepted at once (the bucket's allowance), then refusals.
    From the first refused request on, only the refill (100/s here) gets through."""
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 200, over=0.1)  # all accepted: the allowance
    first_refused = clock.now + 0.001
    sends: list[float] = []
    for index in range(200):  # 0.4 s more at 500/s: 40 accepted (100/s refill), 160 refused
        clock.now = first_refused + index * 0.002
        limiter.reserve()
        sends.append(limiter.record_send())
    refused = [t for index, t in enumerate(sends) if index % 5 != 0]
    for sent in refused:
        limiter.on_rate_limited(0.0, sent_at=sent)
    # Over the last second 240 of 400 were accepted: that window alone would say 216/s.
    assert limiter.rate == pytest.approx(0.9 * 40 / (sends[-1] - sends[0]), rel=0.05)
    assert limiter.rate == pytest.approx(0.9 * 100, rel=0.05)


def test_without_send_times_the_window_estimate_stands() -> None:
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 300, over=0.99)
    for _ in range(100):
        limiter.on_rate_limited(0.0)
    assert limiter.rate == pytest.approx(0.9 * 200)


def test_a_drain_too_short_to_measure_teaches_nothing_of_its_own() -> None:
    limiter, clock = limiter_with_clock()
    send_burst(limiter, clock, 300, over=0.99)
    last = clock.now
    for _ in range(100):  # every refused request sent in the same instant: no span to divide
        limiter.on_rate_limited(0.0, sent_at=last)
    assert limiter.rate == pytest.approx(0.9 * 200)


async def test_acquire_returns_the_send_time_for_the_429_report() -> None:
    limiter, clock = limiter_with_clock()
    clock.now = 1234.5
    assert await limiter.acquire() == 1234.5
    assert await RateLimiter(adaptive=False).acquire() is None
