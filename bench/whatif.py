"""What-if: a library change this benchmark proposes, measured in-process. Nothing here ships.

``bench/client.py ratelimit --adaptive`` swaps :class:`AdaptiveRateLimiter` into a
``DeepnoteBackend``'s transport, so the proposal is measured side by side with the library's
default limiter and with a user-set ``max_rate`` in the same run.
"""

from __future__ import annotations

import math
from collections import deque

import anyio

from notebookops._http import RateLimiter


class AdaptiveRateLimiter(RateLimiter):
    """What-if for scenario 3: a limiter that learns the vendor's rate from its 429s.

    Unpaced until the first 429. On every 429 the rate the server accepted over the last second
    is estimated as (requests sent - requests refused) in that second; the limiter paces at 90%
    of the lowest such estimate (answers still in flight make early estimates too high, later
    ones correct them). Each second without a 429 raises the pace by 2%, so a raised limit is
    found again. The shared cool-down of the base class (everyone waits out ``Retry-After``)
    is kept.
    """

    def __init__(self) -> None:
        super().__init__(None)
        self._sent: deque[float] = deque()
        self._refused: deque[float] = deque()
        self._last_refusal = -math.inf
        self._last_raise = -math.inf

    def _trim(self, now: float) -> None:
        for times in (self._sent, self._refused):
            while times and times[0] < now - 1.0:
                times.popleft()

    async def acquire(self) -> None:
        await super().acquire()
        now = anyio.current_time()
        self._sent.append(now)
        if (
            self.max_rate is not None
            and now - self._last_refusal >= 1.0
            and now - self._last_raise >= 1.0
        ):
            self.max_rate *= 1.02
            self._last_raise = now

    def on_rate_limited(self, retry_after: float | None, fallback: float = 1.0) -> None:
        super().on_rate_limited(retry_after, fallback)
        now = anyio.current_time()
        self._refused.append(now)
        self._trim(now)
        estimate = 0.9 * max(1, len(self._sent) - len(self._refused))
        self.max_rate = estimate if self.max_rate is None else min(self.max_rate, estimate)
        self._last_refusal = now
