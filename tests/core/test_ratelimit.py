"""RateLimiter: shared cool-down, the pace learnt from 429s, and the max_rate ceiling.

Time is driven by hand through the limiter's clock, so nothing here sleeps for real except the
two end-to-end checks of ``acquire``.
"""

from __future__ import annotations

import anyio
import pytest

from notebookops import ConfigurationError, RateLimiter, _http
from notebookops.ratelimit import _MIN_SAMPLE


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
    assert limiter.rate == pytest.approx(learnt * 1.02**10)


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
