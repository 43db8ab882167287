"""A pytest plugin that stalls the event loop at random, as a busy CI machine does.

Tests that pass only when the machine is quick (a fake run's 10 ms phase read in time, a
50 ms limit not run out while a loopback request is answered) fail here first::

    make test-stalled                     # 3% of loop iterations stall 0-300 ms
    STALL_P=0.01 STALL_MAX=0.1 STALL_SEED=4 make test-stalled

Not part of CI: at these settings a few tests whose deadlines are the point (0.25 s and
less) can still lose to a stall, which says nothing about the library.
"""

from __future__ import annotations

import asyncio.base_events
import os
import random
import time
from typing import Any

_RNG = random.Random(int(os.environ.get("STALL_SEED", "1")))
_PROBABILITY = float(os.environ.get("STALL_P", "0.03"))
_LONGEST = float(os.environ.get("STALL_MAX", "0.3"))
_run_once: Any = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]


def _stalling_run_once(self: asyncio.base_events.BaseEventLoop) -> None:
    if _RNG.random() < _PROBABILITY:
        time.sleep(_RNG.uniform(0, _LONGEST))  # the whole loop stops, as when descheduled
    _run_once(self)


asyncio.base_events.BaseEventLoop._run_once = _stalling_run_once  # type: ignore[attr-defined]
