"""``protected``: finish a piece of work whatever happens to the caller, within a bound.

anyio's shield holds off anyio cancel scopes only. On asyncio a service also cancels with
``Task.cancel()`` (``asyncio.timeout``, ``wait_for``, a failing ``TaskGroup`` sibling), which
would abort a run-starting request mid-flight and orphan the run. So the work runs as a child
task in a shielded scope (a child is reached by the caller's cancellation only through anyio,
which respects the shield), and a cancellation of the caller that arrived meanwhile is
delivered again once the work is over: at the caller's next checkpoint.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio

__all__ = ["SENT_WORK_GRACE", "WorkTimedOut", "protected"]

T = TypeVar("T")

#: How long the search for the run an unanswered start may have made (a read of the vendor's
#: runs list) is still awaited once its caller is cancelled or its deadline passes; past it
#: the start is reported as of unknown outcome. (The start request itself is seen through to
#: its own timeout: see ApiClient.)
SENT_WORK_GRACE: Final = 5.0


class WorkTimedOut(TimeoutError):
    """Raised by :func:`protected` when the work ran out of its time (and was cancelled);
    a TimeoutError the work raised itself passes through as it is."""


async def protected(
    work: Callable[[], Awaitable[T]], timeout: float, *, after_cancel: float | None = None
) -> T:
    """Await ``work()`` to its end even if the caller is cancelled, for at most ``timeout``
    seconds (then the work is cancelled and :class:`WorkTimedOut` raised). The work's own errors
    propagate; a cancellation of the caller is delivered after the work is over.

    ``after_cancel`` shortens the wait once the caller is cancelled (its deadline passed, a
    scope cancelled, ``Task.cancel()``): the work then gets at most that many seconds more,
    so a caller's deadline stays an upper bound give or take that grace.
    """
    outcome: list[tuple[bool, Any]] = []
    shield = anyio.CancelScope(shield=True, deadline=anyio.current_time() + timeout)
    finished = anyio.Event() if after_cancel is not None else None

    async def run() -> None:
        with shield:
            try:
                outcome.append((True, await work()))
            except Exception as error:
                outcome.append((False, error))
        if shield.cancelled_caught and not outcome:
            outcome.append((False, WorkTimedOut("did not finish in time")))
        if finished is not None:
            finished.set()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            if finished is not None and after_cancel is not None:
                try:
                    await finished.wait()
                except anyio.get_cancelled_exc_class():
                    shield.deadline = min(shield.deadline, anyio.current_time() + after_cancel)
                    raise
    except anyio.get_cancelled_exc_class() as cancelled:
        if not outcome:  # pragma: no cover - the child always records an outcome
            raise
        _redeliver(cancelled)
    done, value = outcome[0]
    if done:
        return value  # type: ignore[no-any-return]
    raise value


def _redeliver(cancelled: BaseException) -> None:
    """Ask again for a cancellation that was held off, so it lands at the next checkpoint.

    An anyio cancel scope does this by itself: it cancels its task again at every checkpoint
    until the task leaves it (its effective deadline is then -inf). A bare ``Task.cancel()``
    happens once, so it is requested again, with the task's count of cancel requests kept as
    it was (``asyncio.timeout`` tells its own cancellation by that count).
    """
    if anyio.current_effective_deadline() == -math.inf:
        return
    asyncio: Any = sys.modules.get("asyncio")
    task = asyncio.current_task() if asyncio is not None else None
    if task is None:  # pragma: no cover - only asyncio cancels outside anyio scopes
        raise cancelled
    task.uncancel()
    task.cancel(*cancelled.args)
