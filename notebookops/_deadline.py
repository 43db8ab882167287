"""The deadline a request runs under, as the transport sees it.

On asyncio, orchestration bounds its waits with a timer that cancels the task and its
shielded sections with a timer on a task of their own, and anyio's
``current_effective_deadline`` sees neither. Orchestration therefore also records its
deadline here, per task, so that the transport can still decline a retry that would end
after it (and raise the real error instead of a timeout).

A plain dict keyed by task, not a ContextVar: setting a ContextVar allocates a new context
mapping and a token per wait, objects the cyclic GC then walks for as long as the wait lasts.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import anyio

_BY_TASK: dict[object, float] = {}


def push(task: object, deadline: float) -> float | None:
    """Record ``task``'s deadline; returns the one it replaces (give it back to :func:`pop`)."""
    previous = _BY_TASK.get(task)
    _BY_TASK[task] = deadline
    return previous


def pop(task: object, previous: float | None) -> None:
    """Forget ``task``'s deadline, restoring ``previous`` (from :func:`push`) if there was one."""
    if previous is None:
        _BY_TASK.pop(task, None)
    else:
        _BY_TASK[task] = previous


def effective_deadline() -> float:
    """The earliest of the caller's anyio cancel scopes and orchestration's own deadline."""
    deadline = anyio.current_effective_deadline()
    aio: Any = sys.modules.get("asyncio")
    if aio is not None and _BY_TASK:
        try:
            task = aio.current_task()
        except RuntimeError:  # not on an asyncio loop (trio): anyio's scopes are the deadline
            return deadline
        return min(deadline, _BY_TASK.get(task, math.inf))
    return deadline
