"""Polling and retry policies: frozen, validated, and pure.

Three separate knobs decide how a wait behaves (mixing them up is a classic source of bugs in
peer libraries):

* :class:`PollPolicy`: how often to ask for a run's status while it is running;
* :class:`RetryPolicy`: how a single HTTP request is retried after a transient failure;
* the overall deadline: the ``timeout=`` argument of :func:`notebookops.run_and_wait`.

The schedule functions take an explicit :class:`random.Random` so they are deterministic under
test and need no event loop.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import attrs

from ._validate import count
from .errors import ConfigurationError

__all__ = ["PollPolicy", "RetryPolicy", "rate_limit_delay", "retry_delay"]

_RANDOM = random.Random()


def _finite_positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a number, got {value!r}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a finite number > 0, got {value!r}"
        )


def _jitter_fraction(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a finite number, got {value!r}"
        )
    if not 0 <= value < 1:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be in [0, 1), got {value!r}"
        )


def _at_least_one(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    _finite_positive(instance, attribute, value)
    if value < 1:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be >= 1, got {value!r}"
        )


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a finite number, got {value!r}"
        )
    if value < 0:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be >= 0, got {value!r}"
        )


@attrs.frozen
class PollPolicy:
    """How often a running run's status is read.

    The delay before read ``n + 1`` (``n`` from 0), when the wait has lasted ``elapsed``
    seconds, is::

        min(maximum, max(initial * multiplier**n, proportion * elapsed))

    scaled by a random factor in ``[1 - jitter, 1 + jitter]`` and never above ``maximum``
    again after scaling. Because ``jitter < 1`` the delay never drops below
    ``initial * (1 - jitter)``: there is always a floor, unlike "full jitter", which can poll
    back to back.

    The defaults wait about a fifth of the time the run has taken so far (``proportion=0.2``),
    at least 1 s and at most 60 s. A finished run is therefore noticed within about 20% of
    its running time (10% on the median), never more than 60 s late, and a 2-hour run costs
    about 147 status reads (``bench/README.md``, scenario 2). A schedule that grows
    per read instead (``multiplier``) lags by up to ``multiplier - 1`` of the elapsed time:
    the previous default (1 s x1.5, capped at 30 s) noticed a 1-minute run up to 23 s late.

    ``proportion=0`` with ``multiplier > 1`` gives the classic capped exponential schedule.
    ``PollPolicy(initial=0.8, proportion=0.09)`` notices every run of 10 s or more within 10%
    of its length (60 s at most) in the worst case, not only on the median: its largest gap,
    jitter included, is 0.099 of the time waited (0.88 s early on). It costs about 174 reads
    for 2 hours; no schedule keeping that bound does it in fewer than 154.
    """

    initial: float = attrs.field(default=1.0, validator=_finite_positive)
    multiplier: float = attrs.field(default=1.0, validator=_at_least_one)
    maximum: float = attrs.field(default=60.0, validator=_finite_positive)
    jitter: float = attrs.field(default=0.1, validator=_jitter_fraction)
    proportion: float = attrs.field(default=0.2, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ConfigurationError(
                f"PollPolicy.maximum ({self.maximum!r}) must be >= initial ({self.initial!r})"
            )

    def base_delay(self, attempt: int, *, elapsed: float = 0.0) -> float:
        """The un-jittered delay before poll number ``attempt + 1`` (``attempt`` from 0), when
        the wait began ``elapsed`` seconds ago."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        proportional = self.proportion * elapsed if elapsed > 0 else 0.0
        if proportional >= self.maximum:
            return self.maximum
        # Compare in log space: multiplier**attempt overflows a float long before attempts end.
        if self.multiplier > 1 and attempt * math.log(self.multiplier) >= math.log(
            self.maximum / self.initial
        ):
            return self.maximum
        return min(self.maximum, max(self.initial * self.multiplier**attempt, proportional))

    def delay(
        self, attempt: int, rng: random.Random | None = None, *, elapsed: float = 0.0
    ) -> float:
        """The jittered delay before poll number ``attempt + 1``, ``elapsed`` seconds into the
        wait."""
        base = self.base_delay(attempt, elapsed=elapsed)
        if self.jitter == 0:
            return base
        factor = (rng or _RANDOM).uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.maximum, base * factor)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless iterator of successive delays (each one's ``elapsed`` is the sum of the
        delays before it, as if every status read took no time)."""
        attempt = 0
        elapsed = 0.0
        while True:
            delay = self.delay(attempt, rng, elapsed=elapsed)
            yield delay
            elapsed += delay
            attempt += 1

    def floor(self) -> float:
        """The smallest delay this policy can ever produce."""
        return self.initial * (1 - self.jitter)


@attrs.frozen
class RetryPolicy:
    """How one HTTP request is retried after a transient failure.

    ``max_attempts`` counts the first try (1 means never retry, not even after a 429). Backoff
    before retry n (n from 1) is drawn from ``[b/2, b]`` where
    ``b = min(max_backoff, initial_backoff * 2**(n-1))`` ("equal jitter": spread out, never near
    zero). A vendor's ``Retry-After`` replaces the backoff but is capped at ``max_retry_after``.

    A 429 is the vendor asking us to slow down, not a failure: 429 answers do not use up
    ``max_attempts``. Instead a request keeps waiting them out while the time spent so stays
    within ``max_rate_limit_wait`` seconds (and within the caller's deadline); 0 turns this off.
    Under a rate-limiting vendor a fleet of run starts therefore queues rather than fails.

    Which failures are retried is not a setting: see :func:`notebookops._http.retry_decision`
    (idempotent reads on connection errors, timeouts, 429 and 502/503/504; run-starting POSTs only
    when the request provably never reached the server, or on 429).
    """

    max_attempts: int = attrs.field(default=5)
    initial_backoff: float = attrs.field(default=0.5, validator=_finite_positive)
    max_backoff: float = attrs.field(default=30.0, validator=_finite_positive)
    max_retry_after: float = attrs.field(default=120.0, validator=_finite_positive)
    max_rate_limit_wait: float = attrs.field(default=300.0, validator=_non_negative)

    @max_attempts.validator
    def _check_attempts(self, attribute: attrs.Attribute[int], value: int) -> None:
        count("RetryPolicy.max_attempts", value, minimum=1)

    def __attrs_post_init__(self) -> None:
        if self.max_backoff < self.initial_backoff:
            raise ConfigurationError(
                f"RetryPolicy.max_backoff ({self.max_backoff!r}) must be >= "
                f"initial_backoff ({self.initial_backoff!r})"
            )

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """The backoff before retry ``retry_number`` (1 for the first retry)."""
        if retry_number < 1:
            raise ValueError("retry_number must be >= 1")
        exponent = min(retry_number - 1, 64)
        ceiling = min(self.max_backoff, self.initial_backoff * 2.0**exponent)
        return (rng or _RANDOM).uniform(ceiling / 2, ceiling)


def retry_delay(
    policy: RetryPolicy,
    retry_number: int,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before retry ``retry_number``, or ``None`` when attempts are spent.

    A vendor-given ``retry_after`` wins over the computed backoff, capped at
    ``policy.max_retry_after`` so a hostile or confused server cannot park us for hours.
    """
    if retry_number >= policy.max_attempts:
        return None
    return _wait(policy, retry_number, retry_after, rng)


def rate_limit_delay(
    policy: RetryPolicy,
    throttle_number: int,
    waited: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before retrying after 429 number ``throttle_number`` (from 1), having
    already waited ``waited`` seconds on earlier 429s of the same request; ``None`` when the
    policy retries nothing or ``max_rate_limit_wait`` would be exceeded. Same wait as
    :func:`retry_delay`, but bounded by time instead of ``max_attempts``."""
    if policy.max_attempts == 1 or policy.max_rate_limit_wait == 0:
        return None
    delay = _wait(policy, throttle_number, retry_after, rng)
    if waited + delay > policy.max_rate_limit_wait:
        return None
    return delay


def _wait(
    policy: RetryPolicy, retry_number: int, retry_after: float | None, rng: random.Random | None
) -> float:
    """The vendor's ``retry_after`` (capped) when it gave a usable one, else the backoff."""
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        return min(retry_after, policy.max_retry_after)
    return policy.backoff(retry_number, rng)
