"""What runs keep in a backend's memory: finished runs and streamed output, bounded by bytes."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final, Generic, TypeVar

from ...models import CellOutput

__all__ = [
    "FINISHED_RUNS_MAX_BYTES",
    "STREAM_OUTPUT_MAX_BYTES",
    "FinishedRuns",
    "output_bytes",
]

V = TypeVar("V")

#: The default budget for finished runs kept for late readers (their outputs, roughly).
FINISHED_RUNS_MAX_BYTES: Final = 32 * 1024 * 1024
#: The default cap on one cell's streamed stdout/stderr kept in a kernel run; past it the
#: rest is dropped and one marker output says so.
STREAM_OUTPUT_MAX_BYTES: Final = 16 * 1024 * 1024


def output_bytes(outputs: Iterable[CellOutput], extra: Any = None) -> int:
    """A cheap estimate of what ``outputs`` (and ``extra``, any JSON) keep alive."""
    total = 0
    for output in outputs:
        total += 200 + len(output.text or "") + len(output.evalue or "")
        total += sum(len(line) for line in output.traceback)
        if output.data:
            total += len(json.dumps(output.data, default=str))
    if extra is not None:
        total += len(json.dumps(extra, default=str))
    return total


class FinishedRuns(Generic[V]):
    """Finished runs by id, oldest forgotten first once their sizes pass ``max_bytes``.

    The newest run is always kept, however large, so the caller that waited for it can read
    it once more.
    """

    def __init__(self, max_bytes: int = FINISHED_RUNS_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._total = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def total_bytes(self) -> int:
        return self._total

    def get(self, run_id: str) -> V | None:
        item = self._items.get(run_id)
        return None if item is None else item[0]

    def add(self, run_id: str, value: V, size: int) -> None:
        previous = self._items.pop(run_id, None)
        if previous is not None:
            self._total -= previous[1]
        self._items[run_id] = (value, size)
        self._total += size
        while self._total > self.max_bytes and len(self._items) > 1:
            _, (_, dropped) = self._items.popitem(last=False)
            self._total -= dropped
