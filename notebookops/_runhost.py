"""A home for runs that execute inside this process (PostHog's kernel mode, local notebooks).

Such runs are tasks that must outlive the call that started them, and end when the backend
closes. A task group must be exited by the task that entered it, while ``start_run`` and
``aclose`` come from arbitrary tasks: so one host task, created on first use, owns the group
for the backend's lifetime, and ``aclose`` asks it to finish, waiting a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from .errors import BackendClosed

__all__ = ["RunHost"]

logger = logging.getLogger("notebookops.runs")


class RunHost:
    """Runs background tasks on one task group hosted by a task of its own (asyncio)."""

    def __init__(self, name: str, *, closed_message: str) -> None:
        self._name = name
        self._closed_message = closed_message
        self._task: asyncio.Task[None] | None = None
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._group: anyio.abc.TaskGroup | None = None

    async def start_soon(
        self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str
    ) -> None:
        """Start ``function(*args)`` on the host's group (creating it on first use)."""
        if self._stop.is_set():
            raise BackendClosed(self._closed_message)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._host(), name=self._name)
        await self._ready.wait()
        if self._group is None or self._stop.is_set():
            raise BackendClosed(self._closed_message)
        self._group.start_soon(function, *args, name=name)

    async def _host(self) -> None:
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                self._ready.set()
                await self._stop.wait()
                group.cancel_scope.cancel()
        finally:
            self._group = None
            self._ready.set()

    async def aclose(self, timeout: float) -> bool:
        """Cancel every task and wait for them, at most ``timeout`` seconds (shielded from
        the caller's own cancellation). False when they did not finish in time: they are
        then abandoned (cancelled again, not awaited)."""
        self._stop.set()
        task = self._task
        if task is None:
            return True
        with anyio.move_on_after(timeout, shield=True) as scope:
            try:
                await asyncio.shield(task)
            except Exception:
                logger.exception("the %s task group ended with an error", self._name)
        if scope.cancelled_caught:
            logger.warning("%s did not settle within %gs; abandoning them", self._name, timeout)
            task.cancel()
            return False
        return True
