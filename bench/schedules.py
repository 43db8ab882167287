"""Poll cadences as pure functions, and the simulation scenario 2 runs over them.

A cadence is a factory ``rng -> delay(attempt, elapsed) -> seconds``: the delay before status
read ``attempt + 1`` when the previous read happened ``elapsed`` seconds after the start. Every
cadence reads once right after the start (as ``run_and_wait`` does), then sleeps.

:func:`simulate` follows one run of ``length`` seconds: reads at t = 0, d0, d0 + d1, ... until
one lands at or after the end; it returns the number of status reads and the detection lag
(time of that read minus ``length``). Request latency is ignored here; the real-time check in
scenario 2 measures it.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence

from notebookops import PollPolicy

Delay = Callable[[int, float], float]
Cadence = Callable[[random.Random], Delay]


def policy(p: PollPolicy) -> Cadence:
    """The library's own schedule, through ``PollPolicy.delay`` (jitter included)."""

    def make(rng: random.Random) -> Delay:
        return lambda attempt, elapsed: p.delay(attempt, rng, elapsed=elapsed)

    return make


def fixed(seconds: float) -> Cadence:
    return lambda rng: lambda attempt, elapsed: seconds


def linear(start: float, step: float, cap: float) -> Cadence:
    return lambda rng: lambda attempt, elapsed: min(cap, start + step * attempt)


def exponential(initial: float, factor: float, cap: float) -> Cadence:
    return lambda rng: lambda attempt, elapsed: min(cap, initial * factor ** min(attempt, 64))


def simulate(delay: Delay, length: float) -> tuple[int, float]:
    """(status reads, detection lag) for one run of ``length`` seconds."""
    elapsed = 0.0
    reads = 1
    attempt = 0
    while elapsed < length:
        elapsed += delay(attempt, elapsed)
        attempt += 1
        reads += 1
    return reads, elapsed - length


class Sampled:
    """Reads and lags over many runs of about the same length (each run's length drawn from
    ``length * U(0.95, 1.05)``, since real runs are never aligned with a schedule)."""

    def __init__(
        self, reads: Sequence[int], lags: Sequence[float], ratios: Sequence[float]
    ) -> None:
        self.reads = list(reads)
        self.lags = list(lags)
        #: Each run's lag divided by its own :func:`lag_bound`: above 1 misses the target.
        self.ratios = list(ratios)

    @property
    def median_reads(self) -> float:
        return float(statistics.median(self.reads))

    @property
    def median_lag(self) -> float:
        return statistics.median(self.lags)

    @property
    def max_lag(self) -> float:
        return max(self.lags)

    @property
    def within_bound(self) -> float:
        """Fraction of runs detected within the target lag."""
        return sum(ratio <= 1.0 for ratio in self.ratios) / len(self.ratios)


def sample(cadence: Cadence, length: float, runs: int, seed: int = 1) -> Sampled:
    rng = random.Random(seed)
    reads: list[int] = []
    lags: list[float] = []
    ratios: list[float] = []
    for _ in range(runs):
        actual = length * rng.uniform(0.95, 1.05)
        count, lag = simulate(cadence(rng), actual)
        reads.append(count)
        lags.append(lag)
        ratios.append(lag / lag_bound(actual))
    return Sampled(reads, lags, ratios)


def lag_bound(length: float) -> float:
    """The target: detected within 60 s, or 10% of the run's length if that is smaller."""
    return min(60.0, 0.1 * length)


def fewest_reads(length: float, shortest: float = 10.0) -> int:
    """A lower bound: the fewest status reads any schedule needs to detect a run of ``length``
    seconds when every run from ``shortest`` seconds up must be detected within
    :func:`lag_bound`. The greedy schedule (each gap as long as the bound allows for a run
    ending just after the previous read) is optimal because the bound grows with the run's
    length."""
    elapsed = 0.0
    reads = 1
    while elapsed < length:
        worst = max(elapsed, shortest)
        elapsed = worst + lag_bound(worst)
        reads += 1
    return reads
