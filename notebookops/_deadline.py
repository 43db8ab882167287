"""The deadline a request runs under, as the transport sees it.

On asyncio, orchestration bounds its waits with a timer that cancels the task and its
shielded sections with a timer on a task of their own, and anyio's
``current_effective_deadline`` sees neither. Orchestration therefore also records its
deadline here, per task, so that the transport can still decline a retry that would end
after it (and raise the real error instead of a timeout).

A plain dict keyed by task, not a ContextVar: setting a ContextVar allocates a new context
mapping and a token per wait, objects the cyclic GC then walks for as long as the wait lasts.

The transport also tells a shielded start here whether it has sent anything yet
(:class:`StartSection`): until it has, no run can exist, so the start may still be abandoned.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from contextlib import AbstractContextManager
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


# --------------------------------------------------------------------------- unsent starts

#: The context of the timers orchestration arms: an empty one, shared.
NO_CONTEXT = contextvars.Context()

#: Cancellation messages of an unsent start's task (see StartSection).
NOT_SENT = "notebookops: the start was still waiting to be sent at the deadline"
ABORTED = "notebookops: the start was abandoned before it was sent"
EXPIRED = "notebookops: shielded section timed out"
#: An ``abandonable=False`` section timed out while waiting for its turn, nothing taken.
EXPIRED_UNSENT = "notebookops: shielded section timed out before it was sent"

#: Starts that may not have sent their request yet, by the task running them.
_STARTS: dict[object, StartSection] = {}


class StartSection:
    """A shielded start (``orchestration._shielded`` with ``unsent_until``) and what its work
    has sent so far, as the transport reports it.

    While the start's request waits its turn in the transport (the rate limiter, a free
    connection, the pause before retrying a 429) and nothing the section sent may have taken
    effect, no run can exist yet: a cancellation of the caller may abandon it, and the
    caller's deadline (``deadline``) bounds the wait, not the start's time limit. That limit
    (``timeout``) counts from when a request that may take effect was sent: a start queued
    behind thousands of others, or refused with 429 until the vendor's limit lets it through,
    has not "taken too long" while the vendor did nothing with it, and reporting it as an
    unknown outcome would send its caller reconciling a run that was never made. A request
    is taken to have had no effect only when it provably had none: a 429 answer, or a
    connection that failed before the request left. Work that never reports to the transport
    (a custom backend) is timed from the section's start, as before, and never abandoned.

    ``abandonable=False`` (a remote cancel): only recorded, for the caller to tell whether
    its time ran out while its request still waited for its turn (``EXPIRED_UNSENT``); timed
    from the section's start and never abandoned, as before, since a cancel left unsent would
    leave its run running.

    The instance is the section's timer callback itself (no argument tuple per start); a time
    limit pushed later by a send is checked when the first timer fires, so a start that is
    sent at once arms one timer, as before.
    """

    __slots__ = (
        "abandon",
        "abandonable",
        "began",
        "deadline",
        "held",
        "in_doubt",
        "loop",
        "outcome",
        "queued",
        "sent_at",
        "task",
        "timeout",
        "timer",
    )

    def __init__(
        self,
        task: Any,
        loop: Any,
        timeout: float,
        deadline: float,
        *,
        abandonable: bool = True,
        held: Any = None,
    ) -> None:
        self.task = task
        self.abandonable = abandonable
        self.loop = loop
        self.timeout = timeout
        self.deadline = deadline
        self.began = loop.time()
        #: Requests sent that may have taken effect, and since when there have been some
        #: (loop time; None while there are none).
        self.in_doubt = 0
        self.sent_at: float | None = None
        #: Whether the work waits for its turn in the transport right now.
        self.queued = False
        #: Why the section cancelled its task: EXPIRED or NOT_SENT (None: it did not).
        self.outcome: str | None = None
        #: Set when the caller was cancelled before anything was sent: the work is abandoned
        #: where it next waits its turn or would send (it may be elsewhere right now).
        self.abandon = False
        #: The transport's connection gate whose place the caller took on the work's behalf
        #: before starting it (see orchestration._shielded): its first request uses it
        #: (:func:`take_held`); None once it has, or if there is none.
        self.held: Any = held
        #: The section's timer (None between timers): first due at the earlier of the time
        #: limit counted from now and the deadline.
        self.timer: Any = None
        self.arm(min(self.began + timeout, deadline))

    def arm(self, when: float) -> None:
        # An empty context: a cancelled timer stays in the loop's heap (with its context)
        # until its time comes, long after the section is over.
        self.timer = self.loop.call_at(when, self, context=NO_CONTEXT)

    def __call__(self) -> None:
        self.timer = None
        now = self.loop.time()
        if not self.abandonable:
            # Armed once, at the section's start plus its limit. Waiting in the transport's
            # queue with nothing taken: its request was never sent.
            self._cancel(EXPIRED_UNSENT if self.queued and not self.in_doubt else EXPIRED)
            return
        if self.sent_at is not None:
            limit = self.sent_at + self.timeout
        elif self.queued:
            if now >= self.deadline:
                self._cancel(NOT_SENT)
            elif self.deadline != math.inf:
                self.arm(self.deadline)
            # else: the send arms the time limit
            return
        else:
            # Waiting on something other than the transport's queue: it may have sent
            # something of its own, so the time limit counts from the section's start, as for
            # work that never reports to the transport. (Entering the queue past the
            # deadline abandons it there: see queueing.)
            limit = self.began + self.timeout
        if now < limit:
            self.arm(limit)
        else:
            self._cancel(EXPIRED)

    def _cancel(self, outcome: str) -> None:
        self.outcome = outcome
        self.task.cancel(outcome)

    def _refusal(self) -> str | None:
        """Why a start with nothing taken may not wait for its turn or send now: ABORTED (its
        caller gave up) or NOT_SENT (past its deadline; recorded as the outcome). None: it
        may."""
        if self.abandon:
            return ABORTED
        if self.loop.time() >= self.deadline:
            self.outcome = NOT_SENT
            return NOT_SENT
        return None

    def __enter__(self) -> StartSection:
        # Entered by the transport around a wait for its turn (see queueing).
        self.queued = True
        if self.abandonable:
            refusal = self._refusal()
            if refusal is not None:
                self.task.cancel(refusal)  # raised where the wait begins
        return self

    def __exit__(self, *_: object) -> None:
        self.queued = False


def _current_section() -> StartSection | None:
    asyncio: Any = sys.modules["asyncio"]  # the transport's callers run on asyncio
    return _STARTS.get(asyncio.current_task())


#: What :func:`queueing` gives a task that is not a start with nothing in doubt (shared:
#: a nullcontext keeps no state).
_NOT_A_START: AbstractContextManager[object] = contextlib.nullcontext()


def queueing() -> AbstractContextManager[object]:
    """For the transport to wrap a wait of the current task's request for its turn in:
    ``with queueing(): await ...``. For a start with nothing in doubt that is its section,
    which marks it queued meanwhile; one abandoned by its caller, or past its deadline, is
    cancelled there at once (nothing of it took effect, and nothing will be sent). For any
    other task, a shared no-op context: nothing is made per wait."""
    if not _STARTS:
        return _NOT_A_START
    section = _current_section()
    if section is None or section.in_doubt:
        return _NOT_A_START
    return section


def take_held(gate: object) -> bool:
    """For the transport, before its request waits for a place at ``gate`` (its connection
    gate): True if the current task is a start whose caller already took one there on its
    behalf. The request then has it (and gives it back as usual); a second request waits
    like any other."""
    if not _STARTS:
        return False
    section = _current_section()
    if section is None or section.held is not gate:
        return False
    section.held = None
    return True


def release_held(gate: object) -> None:
    """For the transport, before the current task's request waits for the rate limiter: a
    start whose caller took a place at ``gate`` for it gives the place back (its request
    then waits for one after the limiter, as any request does), so that a start paced by the
    limiter does not keep a connection from requests that could go meanwhile."""
    if not _STARTS:
        return
    section = _current_section()
    if section is not None and section.held is gate and gate is not None:
        section.held = None
        gate.release()


def sending() -> None:
    """Called by the transport right before it sends a request of the current task: if the
    task is a start with nothing in doubt so far, its time limit begins now. A start
    abandoned by its caller, or past its deadline, is not sent: CancelledError, as at a
    cancelled wait (a run started now would only be cancelled at once)."""
    if not _STARTS:
        return
    section = _current_section()
    if section is None:
        return
    if not section.in_doubt and section.abandonable:
        refusal = section._refusal()
        if refusal is not None:
            raise sys.modules["asyncio"].CancelledError(refusal)
        now = section.loop.time()
        section.sent_at = now
        # The transport's retries see the limit as it now stands.
        limit = _BY_TASK[section.task] = now + section.timeout
        if section.timer is None:
            section.arm(limit)
        elif section.timer.when() > limit:
            # Put off to the deadline while the start was queued past its limit.
            section.timer.cancel()
            section.arm(limit)
    section.in_doubt += 1


def not_taken() -> None:
    """Called by the transport when a request of the current task provably had no effect (a
    429 answer, a connection that failed before the request left), before it waits to retry:
    a start with nothing else in doubt is back to having sent nothing."""
    if not _STARTS:
        return
    section = _current_section()
    if section is None or not section.in_doubt:
        return
    section.in_doubt -= 1
    if not section.in_doubt and section.abandonable:
        section.sent_at = None
        # Its retry now waits for a turn, bounded by the caller's deadline.
        _BY_TASK[section.task] = section.deadline
