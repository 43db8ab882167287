"""PollPolicy / RetryPolicy: validation and pure schedules (no event loop)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notebookops import ConfigurationError, PollPolicy, RetryPolicy
from notebookops.policies import retry_delay

BAD_NUMBERS = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, "1", None, True]


@pytest.mark.parametrize("field", ["initial", "maximum"])
@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_poll_policy_rejects_bad_delays(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        PollPolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.5, 0, -2, math.nan, math.inf])
def test_poll_policy_rejects_bad_multiplier(value: float) -> None:
    with pytest.raises(ConfigurationError, match="multiplier"):
        PollPolicy(multiplier=value)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_poll_policy_rejects_bad_jitter(value: float) -> None:
    with pytest.raises(ConfigurationError, match="jitter"):
        PollPolicy(jitter=value)


def test_poll_policy_maximum_below_initial() -> None:
    with pytest.raises(ConfigurationError, match="maximum"):
        PollPolicy(initial=5, maximum=1)


def test_poll_policy_defaults_and_keywords() -> None:
    policy = PollPolicy(initial=1.0, multiplier=1.5, maximum=30.0, jitter=0.1)
    assert policy == PollPolicy()
    with pytest.raises(AttributeError):
        policy.initial = 2  # type: ignore[misc]


def test_poll_schedule_without_jitter_is_exponential_and_capped() -> None:
    policy = PollPolicy(initial=1, multiplier=2, maximum=10, jitter=0)
    delays = [policy.delay(n) for n in range(6)]
    assert delays == [1, 2, 4, 8, 10, 10]
    assert policy.base_delay(10_000) == 10


def test_poll_schedule_is_deterministic_with_a_seeded_rng() -> None:
    policy = PollPolicy()
    first = [policy.delay(n, random.Random(7)) for n in range(10)]
    second = [policy.delay(n, random.Random(7)) for n in range(10)]
    assert first == second


@given(
    initial=st.floats(0.001, 100),
    multiplier=st.floats(1, 5),
    spread=st.floats(1, 100),
    jitter=st.floats(0, 0.99),
    attempt=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
)
def test_poll_delay_stays_between_floor_and_maximum(
    initial: float, multiplier: float, spread: float, jitter: float, attempt: int, seed: int
) -> None:
    policy = PollPolicy(
        initial=initial, multiplier=multiplier, maximum=initial * spread, jitter=jitter
    )
    delay = policy.delay(attempt, random.Random(seed))
    assert policy.floor() - 1e-9 <= delay <= policy.maximum + 1e-9
    assert delay > 0


def test_poll_delays_iterator() -> None:
    policy = PollPolicy(initial=1, multiplier=2, maximum=4, jitter=0)
    iterator = policy.delays()
    assert [next(iterator) for _ in range(4)] == [1, 2, 4, 4]


def test_two_hour_run_costs_bounded_requests_with_defaults() -> None:
    policy = PollPolicy(jitter=0)
    elapsed, polls, attempt = 0.0, 0, 0
    while elapsed < 7200:
        elapsed += policy.delay(attempt)
        attempt += 1
        polls += 1
    # 1 s x1.5 reaches the 30 s cap after ~9 polls; the rest are 30 s apart.
    assert polls <= 250
    assert policy.delay(attempt) == 30


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"max_attempts": 1.5},
        {"max_attempts": True},
        {"initial_backoff": 0},
        {"initial_backoff": math.nan},
        {"max_backoff": -1},
        {"max_retry_after": 0},
        {"max_retry_after": math.inf},
        {"initial_backoff": 10, "max_backoff": 1},
    ],
)
def test_retry_policy_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_backoff_is_equal_jitter_and_capped() -> None:
    policy = RetryPolicy(initial_backoff=1, max_backoff=8)
    rng = random.Random(1)
    for retry in range(1, 10):
        ceiling = min(8, 2 ** (retry - 1))
        for _ in range(20):
            assert ceiling / 2 <= policy.backoff(retry, rng) <= ceiling
    with pytest.raises(ValueError, match="retry_number"):
        policy.backoff(0)


def test_retry_delay_spends_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert retry_delay(policy, 1) is not None
    assert retry_delay(policy, 2) is not None
    assert retry_delay(policy, 3) is None
    assert retry_delay(RetryPolicy(max_attempts=1), 1) is None


def test_retry_delay_honours_and_caps_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=10)
    assert retry_delay(policy, 1, retry_after=3) == 3
    assert retry_delay(policy, 1, retry_after=3600) == 10
    assert retry_delay(policy, 1, retry_after=0) == 0
    # Nonsense from the server falls back to our own backoff.
    delay = retry_delay(policy, 1, retry_after=math.nan)
    assert delay is not None
    assert 0.25 <= delay <= 0.5
