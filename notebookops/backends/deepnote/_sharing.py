"""Shared status polls: concurrent waits on runs of one notebook read one runs list.

A service that starts hundreds of runs of one notebook and waits for each would otherwise send
one ``GET /v2/runs/{id}`` per wait per poll. ``GET /v2/notebooks/{id}/runs`` reports up to 100
runs in one answer, so while at least two runs of a notebook are being waited on, their status
reads share that list: a read joins a list request already in flight, or reuses one sent at
most ``window`` seconds ago, or sends a new one (one page, sized to the runs being waited on).
Each wait keeps its own poll schedule; only the requests are pooled.

A list request is only sent when it is expected to be shared: the summed poll rates of the
notebook's runs (each measured from the time between its reads) times how long an answer can
serve (``window``, or the request's own duration when longer) must reach one, i.e. about one
read answered besides the one that sent it. Waits polling once a minute, as long runs do under
the default PollPolicy, would otherwise each send a list request that nobody else uses, heavier
than the one-run read it replaces.

The page is sized to the runs waited on (``page_size_for``). A run missing from a page too
small for it (older than its last row) asks once more with the largest page: a burst of starts
registers one wait at a time, so the first pages are sized for the first few. A list request
with the largest page follows the list's cursor while runs being waited on are still unseen and
could be on a later page (they are older than the last row so far), up to ``MAX_PAGES`` pages:
each page of 100 rows replaces up to 100 reads. A run older than the last row of the last page
is beyond what the list shows; it is read on its own from then on and no longer counts.

The start's own answer (``POST /v2/runs`` says the run is pending) is an observation too: the
first read of a run, which ``run_and_wait`` makes right after the start, is served by it while
it is at most ``window`` seconds old and other runs of the notebook are being waited on. Without
this, the first reads of a burst of starts would join list requests sent before their runs
existed, miss their runs, and each fall back to a read of its own.

The list carries no snapshot and no error text, so a run the list reports finished (or does
not report at all) is still read on its own, and a finished run always has its outputs.

Shared waits (``wait``, behind ``DeepnoteBackend.next_change``): ``run_and_wait`` hands each
wait's poll schedule to the backend, and the waits on one notebook sleep until the list shows
their run changed, instead of each waking on its own schedule to read a shared answer. One of
them, the leader, sleeps until the earliest wait is due, reads the list once for all, moves
every due wait that is unchanged on to its next poll time without waking it, and wakes only
the waits whose run changed, finished or went missing. When the leader's own run changes (or
its wait is cancelled), it wakes another wait to lead. Requests are the same as with shared
reads; what goes away is a wake-up, a read of the shared answer and a new timer per wait per
poll, which cost more CPU than the requests they saved.

Cancellation: the list request is performed by whichever caller needs it first, and the others
wait for its answer. If that caller is cancelled, its request is abandoned and one of those
still waiting sends it again. The alternative, shielding the request from the cancellation,
would hold a cancelled caller (a ``run_and_wait`` at its deadline, a task group being torn
down) for up to a request timeout plus the transport's retries; a task owned by the backend
would need a task group living as long as the backend, which anyio cannot give an object that
is used without ``async with``. Handing off costs one extra list request per cancellation,
which is rare, and keeps every deadline exact and nothing running after ``aclose()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

import anyio
import attrs

from ...backend import StateTable
from ...errors import APIError, NotebookOpsError, ResponseDecodeError
from ...models import RunHandle, RunState
from ...transport import Response
from ._requests import MAX_PAGE_SIZE, decode_error, structure
from ._wire import RunSummary

__all__ = [
    "IDLE_AFTER",
    "MAX_PAGES",
    "NOT_SHARED",
    "READ_NOW",
    "ListedRun",
    "SharedRunPolls",
    "page_size_for",
]

logger = logging.getLogger("notebookops.deepnote")

#: A run not read for this long no longer counts as being waited on (its wait ended without
#: reading it finished: a deadline, a cancelled caller, a crashed worker).
IDLE_AFTER: Final = 300.0
#: How often idle runs are looked for across all notebooks.
_SWEEP_EVERY: Final = 30.0
#: Notebooks whose runs list refused us, remembered so each is logged once (bounded).
_KEEP_DISABLED: Final = 10_000
#: Poll rate assumed for a run read once so far (the default PollPolicy's first delay is 1 s).
_FIRST_RATE: Final = 1.0
#: Shortest time between reads used for a rate (two waits on one run read it back to back).
_MIN_INTERVAL: Final = 0.01
#: List request duration assumed until one was measured.
_FIRST_LATENCY: Final = 0.1
#: Smallest list page asked for: Deepnote's default size, and room for runs started meanwhile.
MIN_PAGE: Final = 20
#: Rows asked for beyond the runs being waited on, for runs started by others (UI, schedules).
PAGE_HEADROOM: Final = 10
#: Start answers kept for a first read (bounded: runs started and never waited on).
_KEEP_STARTS: Final = 10_000


class _Outcome:
    """A named sentinel (its repr shows in test failures and debuggers)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: ``wait``: the run is due and must be read on its own now (the list reports it finished,
#: not at all, or nobody else waits on the notebook).
READ_NOW: Final = _Outcome("READ_NOW")
#: ``wait``: the list cannot serve this run (sharing is off for the notebook, or the run is
#: beyond the pages it shows): poll it on its own schedule.
NOT_SHARED: Final = _Outcome("NOT_SHARED")
#: How early, as a share of the wait before it, a list read may count as a wait's next read.
_EARLY: Final = 0.25
#: A waiter's outcome: lead the notebook's polls from now on.
_LEAD: Final = _Outcome("LEAD")
#: Pages one list request may read (of MAX_PAGE_SIZE rows each): 1,000 runs of one notebook.
MAX_PAGES: Final = 10


def _clock() -> float:
    # A module-level indirection so tests can move time without sleeping. Only differences
    # of its own readings matter, so the monotonic clock (what asyncio's loop reads) serves
    # without anyio's per-call lookup of the running event loop: read about 10 times a wait.
    return time.monotonic()


def page_size_for(waited_on: int) -> int:
    """The list page size for ``waited_on`` runs of a notebook: headroom for runs others
    started, at least Deepnote's default page and at most its largest."""
    return min(MAX_PAGE_SIZE, max(MIN_PAGE, waited_on + PAGE_HEADROOM))


@attrs.frozen
class ListedRun:
    """A run still in progress, as the shared runs list reported it."""

    summary: RunSummary
    state: RunState
    #: The notebook's project, when an individual read of one of its runs said (rows do not).
    project_id: str | None
    #: The row's JSON object.
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)


def _before(earlier: datetime, later: datetime) -> bool:
    try:
        return earlier < later
    except TypeError:  # a naive handle timestamp: nothing can be concluded
        return False


@attrs.define(eq=False)
class _Page:
    """One runs-list answer (one page, or several read through the cursor), indexed by run
    id. Rows are only checked for a run id here; a row is decoded when somebody asks for it
    (most of a 100-row page is nobody's)."""

    response: Response
    #: The page size asked for.
    size: int
    rows: dict[str, dict[str, Any]]
    #: The last (oldest) row, when the last page read was full: older runs are beyond it.
    oldest: dict[str, Any] | None
    #: The cursor to the next page, when the list said there is one.
    next_token: str | None = None
    pages: int = 1

    def oldest_created_at(self) -> datetime | None:
        """When the last row was created, if the page was full and the row says."""
        if self.oldest is None:
            return None
        try:
            return structure(self.oldest, RunSummary, self.response).created_at
        except ResponseDecodeError:
            return None

    def older_than_page(self, created_at: datetime | None) -> bool:
        """Whether a run created at ``created_at`` is certainly too old for this page."""
        if created_at is None:
            return False
        oldest = self.oldest_created_at()
        return oldest is not None and _before(created_at, oldest)

    def extend(self, following: _Page) -> None:
        """Add the next page's rows (a row seen already keeps its first, fresher, answer)."""
        for run_id, row in following.rows.items():
            self.rows.setdefault(run_id, row)
        self.oldest = following.oldest
        self.next_token = following.next_token
        self.pages += 1


def index_page(response: Response, page_size: int) -> _Page:
    """Check a runs-list answer's shape (ResponseDecodeError if it is not one) and index it."""
    data = response.json()
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise decode_error(response, "expected an object with a 'runs' list")
    pagination = data.get("pagination")
    if not isinstance(pagination, dict):
        raise decode_error(response, "expected a 'pagination' object")
    rows: dict[str, dict[str, Any]] = {}
    for position, row in enumerate(runs):
        run_id = row.get("runId") if isinstance(row, dict) else None
        if not isinstance(run_id, str):
            raise decode_error(response, f"runs[{position}] is not a run with a string runId")
        rows.setdefault(run_id, row)
    has_more = pagination.get("hasMore")
    more = has_more if isinstance(has_more, bool) else bool(pagination.get("nextPageToken"))
    full = bool(runs) and (more or len(runs) >= page_size)
    token = pagination.get("nextPageToken")
    return _Page(
        response=response,
        size=page_size,
        rows=rows,
        oldest=runs[-1] if full else None,
        next_token=token if more and isinstance(token, str) and token else None,
    )


@attrs.define(eq=False)
class _Observation:
    """One list request of a notebook: in flight until ``done``, then a page or an error."""

    sent_at: float
    #: The page size asked for.
    size: int
    done: anyio.Event = attrs.field(factory=anyio.Event)
    page: _Page | None = None
    error: NotebookOpsError | None = None
    #: Its caller was cancelled before the answer came: whoever still waits sends another.
    abandoned: bool = False


@attrs.define(eq=False)
class _Watched:
    last_read: float
    #: When the run was created (its handle's word), to tell whether a later page may hold it.
    created_at: datetime | None = None
    #: Reads per second, from the time between its last two reads.
    rate: float = _FIRST_RATE
    #: Absent from a full page while older than its oldest row: only newer runs come later,
    #: so the list will not report it again; it is read on its own and counts for nothing.
    beyond_page: bool = False


@attrs.define(eq=False)
class _Waiter:
    """One wait sleeping in ``SharedRunPolls.wait`` until its run changes."""

    run_id: str
    created_at: datetime | None
    #: The status the wait last saw: a row with another one wakes it.
    status: str | None
    #: The wait's poll schedule: seconds until its next read (each call is one read).
    next_delay: Callable[[], float]
    #: When (monotonic seconds) its next read is due, and the wait before it.
    due: float
    interval: float
    #: Only a terminal row (or one the list cannot serve) wakes it: a change of status in
    #: progress is taken as its new status without waking it (its caller does not listen).
    quiet: bool = False
    #: Whether it has been woken (``outcome`` is then set).
    woken: bool = False
    #: ListedRun, READ_NOW, NOT_SHARED, _LEAD or a NotebookOpsError, once woken.
    outcome: object = None
    #: What the wait sleeps on while it sleeps: a bare future on asyncio, an anyio Event
    #: elsewhere. An anyio Event is five objects (its asyncio Event, a deque, a future and
    #: two coroutines while waited on), each walked by every full garbage collection for
    #: every wait asleep, and thousands sleep at once.
    signal: Any = None

    def wake(self, outcome: object) -> None:
        if self.woken:
            return
        self.woken = True
        self.outcome = outcome
        signal = self.signal
        if signal is None:
            return
        if isinstance(signal, anyio.Event):
            signal.set()
        elif not signal.done():  # (cancelled with its wait)
            signal.set_result(None)


@attrs.define(eq=False)
class _Group:
    """The runs of one notebook being waited on, and its latest list request."""

    runs: dict[str, _Watched] = attrs.field(factory=dict)
    #: How many of ``runs`` the list can report (not ``beyond_page``), and their summed rates
    #: (kept up to date as runs come and go: a read must not cost a pass over all of them).
    listable: int = 0
    rate: float = 0.0
    current: _Observation | None = None
    #: How long the last list request took.
    latency: float = _FIRST_LATENCY
    project_id: str | None = None
    #: Waits sleeping in ``wait``, by run id, and whether one of them leads (or has been
    #: woken to lead: nobody else may start leading meanwhile).
    waiters: dict[str, _Waiter] = attrs.field(factory=dict)
    leading: bool = False
    #: Set to wake the leader early (a wait due sooner than it sleeps until has come).
    alarm: anyio.Event | None = None
    alarm_at: float = 0.0

    def wake(self, waiter: _Waiter, outcome: object) -> None:
        """Wake a sleeping wait with its outcome; it no longer counts as sleeping."""
        if self.waiters.get(waiter.run_id) is waiter:
            del self.waiters[waiter.run_id]
        waiter.wake(outcome)

    def touch(self, run_id: str, now: float, created_at: datetime | None = None) -> _Watched:
        watched = self.runs.get(run_id)
        if watched is None:
            watched = self.runs[run_id] = _Watched(last_read=now, created_at=created_at)
            self.listable += 1
            self.rate += watched.rate
            return watched
        rate = 1.0 / max(now - watched.last_read, _MIN_INTERVAL)
        if not watched.beyond_page:
            self.rate += rate - watched.rate
        watched.rate = rate
        watched.last_read = now
        return watched

    def drop(self, run_id: str) -> None:
        watched = self.runs.pop(run_id, None)
        if watched is not None and not watched.beyond_page:
            self.listable -= 1
            self.rate -= watched.rate

    def set_beyond_page(self, run_id: str, watched: _Watched) -> None:
        # The run may have been dropped (read finished by another wait) meanwhile.
        if self.runs.get(run_id) is watched and not watched.beyond_page:
            watched.beyond_page = True
            self.listable -= 1
            self.rate -= watched.rate

    def recount(self) -> None:
        """Recompute the sums from scratch (float drift from many small updates)."""
        listed = [watched for watched in self.runs.values() if not watched.beyond_page]
        self.listable = len(listed)
        self.rate = sum(watched.rate for watched in listed)


def _clone(error: NotebookOpsError) -> NotebookOpsError:
    """A copy of a shared error for one more caller: callers attach their own handle to what
    they catch (``with_handle``), so each needs an instance of its own."""
    clone = type(error).__new__(type(error), *error.args)
    clone.__dict__.update({k: v for k, v in error.__dict__.items() if k != "handle"})
    return clone


class SharedRunPolls:
    """Per-backend coordinator of shared status reads, one group of runs per notebook.

    ``fetch(notebook_id, page_size, page_token)`` sends one runs-list request (the first page
    when ``page_token`` is None) and returns the raw answer;
    ``states`` maps a vendor status to a RunState; ``window`` is how old (in seconds, from
    when it was sent) a list answer may be and still serve a read.
    """

    def __init__(
        self,
        fetch: Callable[[str, int, str | None], Awaitable[Response]],
        states: StateTable,
        *,
        window: float,
    ) -> None:
        self._fetch = fetch
        self._states = states
        self._window = window
        self._groups: dict[str, _Group] = {}
        self._disabled: OrderedDict[str, None] = OrderedDict()
        #: When idle runs were last looked for (None until the first read: the backend may be
        #: built outside an event loop, where there is no clock to read).
        self._swept: float | None = None
        #: Start answers not yet used by a first read, oldest first: run id -> (when the start
        #: was sent, the run's state and status then, the answer).
        self._starts: OrderedDict[str, tuple[float, RunState, str, Response]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<SharedRunPolls notebooks={len(self._groups)} window={self._window:g}s>"

    @staticmethod
    def clock() -> float:
        """The clock observations are timed with (monotonic seconds)."""
        return _clock()

    def started(
        self, handle: RunHandle, status: str | None, answer: Response, sent_at: float
    ) -> None:
        """Keep a start's answer (the run's ``status`` in it; ``sent_at``: when the POST was
        sent) to serve the run's first read. An answer without a status, or already terminal,
        is not kept: that read must go to the run itself."""
        if status is None:
            return
        state = self._states(status)
        if state.is_terminal:
            return
        starts = self._starts
        starts[handle.run_id] = (sent_at, state, status, answer)
        # Oldest first: whatever is past the window at the front can never serve a read.
        cutoff = sent_at - self._window
        while starts:
            oldest = next(iter(starts.values()))[0]
            if oldest >= cutoff and len(starts) <= _KEEP_STARTS:
                break
            starts.popitem(last=False)

    @staticmethod
    def _listed_from_start(
        handle: RunHandle, state: RunState, status: str, answer: Response
    ) -> ListedRun:
        raw = answer.json()  # built only when used: most starts' answers never are
        summary = RunSummary(
            run_id=handle.run_id,
            status=status,
            notebook_id=handle.notebook_id,
            created_at=handle.created_at,
        )
        return ListedRun(
            summary=summary,
            state=state,
            project_id=handle.extra.get("project_id"),
            raw=raw if isinstance(raw, dict) else {},
        )

    def _pop_start(
        self, handle: RunHandle, now: float
    ) -> tuple[float, RunState, str, Response] | None:
        """The run's kept start answer if it is within the window at ``now`` (a run then in
        progress, started by this backend); used up either way."""
        start = self._starts.pop(handle.run_id, None) if self._starts else None
        return start if start is not None and now - start[0] <= self._window else None

    def take_start(self, handle: RunHandle) -> str | None:
        """The run's status in its start's answer, as :meth:`read` would use it: it stands
        for a first read that a caller waiting only for the run's end need not make."""
        start = self._pop_start(handle, _clock())
        return start[2] if start is not None else None

    def waited_on(self, notebook_id: str) -> int:
        """How many runs of the notebook are being waited on (for diagnostics and tests)."""
        group = self._groups.get(notebook_id)
        return len(group.runs) if group is not None else 0

    def _group_for(self, handle: RunHandle, now: float) -> tuple[_Group, _Watched] | None:
        """The notebook's group, with ``handle``'s run recorded as read ``now`` (after idle
        runs are swept); None when sharing is off for the notebook."""
        self._sweep(now)
        notebook_id = handle.notebook_id
        if notebook_id in self._disabled:
            return None
        group = self._groups.get(notebook_id)
        if group is None:
            group = self._groups[notebook_id] = _Group()
        return group, group.touch(handle.run_id, now, handle.created_at)

    async def read(self, handle: RunHandle) -> ListedRun | None:
        """Record that ``handle`` is being waited on and, when the shared list reports it still
        in progress, return that row. None means: read the run on its own (alone on its
        notebook, polled too rarely to share, finished, absent from the list, or the list is
        unavailable to this key).

        A list failure is raised to every caller sharing it (each gets an instance of its
        own), except an error status a retry cannot fix (403, 404...), which turns sharing off
        for the notebook instead.
        """
        notebook_id = handle.notebook_id
        now = _clock()
        found = self._group_for(handle, now)
        if found is None:
            return None
        group, watched = found
        start = self._pop_start(handle, now)
        if watched.beyond_page or group.listable < 2:
            return None
        if start is not None:
            return self._listed_from_start(handle, *start[1:])
        page = await self._page(notebook_id, group)
        if page is None:
            return None
        row = page.rows.get(handle.run_id)
        if row is None and page.size < MAX_PAGE_SIZE and page.older_than_page(handle.created_at):
            # The page was sized for the runs waited on when it was sent, and a burst of
            # starts outgrew it: ask again, once, with the largest page (others missing from
            # the small page join that request).
            page = await self._page(notebook_id, group, at_least=MAX_PAGE_SIZE)
            if page is None:
                return None
            row = page.rows.get(handle.run_id)
        if row is None:
            if page.size >= MAX_PAGE_SIZE and page.older_than_page(handle.created_at):
                group.set_beyond_page(handle.run_id, watched)
            return None
        summary = structure(row, RunSummary, page.response)
        state = self._states(summary.status)
        if state.is_terminal:
            return None
        return ListedRun(summary=summary, state=state, project_id=group.project_id, raw=row)

    async def wait(
        self,
        handle: RunHandle,
        status: str | None,
        next_delay: Callable[[], float],
        *,
        quiet: bool = False,
    ) -> object:
        """Sleep until the notebook's shared list shows ``handle``'s run with a status other
        than ``status`` (returns that ListedRun), or until the run must be read on its own:
        READ_NOW (it is due, and the list reports it finished, not at all, or nobody else
        waits on the notebook) or NOT_SHARED (the list cannot serve it: poll it alone).

        ``next_delay()`` is the wait's poll schedule: reads are due when it says, and a due
        read that finds the run unchanged moves it on without waking the wait. ``quiet``: a
        status that changed but is still in progress counts as unchanged too (the wait then
        ends only with READ_NOW, NOT_SHARED or an error). A list failure is raised to the
        waits that were due (each its own instance).
        """
        notebook_id = handle.notebook_id
        run_id = handle.run_id
        now = _clock()
        found = self._group_for(handle, now)
        if found is None:
            return NOT_SHARED
        group, watched = found
        if watched.beyond_page or run_id in group.waiters:
            return NOT_SHARED  # (two waits on one run: the second polls on its own)
        del found, watched  # a sleeping wait keeps no more than it needs
        loop: Any = asyncio.get_running_loop()
        delay = next_delay()
        me = _Waiter(run_id, handle.created_at, status, next_delay, now + delay, delay, quiet)
        group.waiters[run_id] = me
        alarm = group.alarm
        if alarm is not None and me.due < group.alarm_at:
            alarm.set()
        try:
            while True:
                if not group.leading:
                    group.leading = True
                    await self._lead(notebook_id, group, me)
                elif not me.woken:
                    # Awaited here rather than in a method of the waiter: one coroutine less
                    # alive per sleeping wait.
                    if loop is not None:
                        me.signal = loop.create_future()
                        await me.signal
                    else:
                        me.signal = anyio.Event()
                        await me.signal.wait()
                if me.outcome is not _LEAD:
                    break
                # Woken to lead: the flag is ours already.
                me.outcome, me.woken, me.signal = None, False, None
                group.leading = False
        finally:
            if group.waiters.get(run_id) is me:
                del group.waiters[run_id]
            if me.outcome is _LEAD:  # woken to lead, but cancelled before it could
                group.leading = False
                self._promote(group)
        if isinstance(me.outcome, NotebookOpsError):
            raise me.outcome
        return me.outcome

    async def _lead(self, notebook_id: str, group: _Group, me: _Waiter) -> None:
        """Poll the notebook's list for its waits until ``me`` is woken; then (or when
        cancelled) hand the lead to another wait."""
        try:
            while not me.woken:
                now = _clock()
                first_due = min(waiter.due for waiter in group.waiters.values())
                if first_due > now:
                    alarm = group.alarm = anyio.Event()
                    group.alarm_at = first_due
                    with anyio.move_on_after(first_due - now):
                        await alarm.wait()
                    group.alarm = None
                    continue
                await self._serve(notebook_id, group, now)
        finally:
            group.alarm = None
            group.leading = False
            self._promote(group)

    @staticmethod
    def _promote(group: _Group) -> None:
        """Wake one sleeping wait of the group to lead its polls, if there is one."""
        if group.leading:
            return
        for waiter in group.waiters.values():
            if not waiter.woken:
                group.leading = True
                waiter.wake(_LEAD)
                return

    async def _serve(self, notebook_id: str, group: _Group, now: float) -> None:
        """One round of the leader: read the list for the waits due now (or within the
        window), wake those it concerns, move the rest on to their next poll time."""
        due = [waiter for waiter in group.waiters.values() if self._is_due(waiter, now)]
        if len(group.waiters) < 2:
            for waiter in due:  # alone on the notebook: a list request would replace one read
                group.wake(waiter, READ_NOW)
            return
        try:
            page = await self._page(notebook_id, group, worth_it=True)
            # A page sized for fewer runs than now wait (a burst registers one at a time).
            if (
                page is not None
                and page.size < MAX_PAGE_SIZE
                and any(
                    waiter.run_id not in page.rows and page.older_than_page(waiter.created_at)
                    for waiter in due
                )
            ):
                page = await self._page(notebook_id, group, at_least=MAX_PAGE_SIZE, worth_it=True)
        except NotebookOpsError as error:
            for waiter in due:
                group.wake(waiter, _clone(error))
            return
        if page is None:  # the list refused us for good: everyone polls alone from now on
            for waiter in list(group.waiters.values()):
                group.wake(waiter, NOT_SHARED)
            return
        now = _clock()
        rows = page.rows
        for waiter in list(group.waiters.values()):
            if waiter.woken:  # woken to lead, not yet leading
                continue
            row = rows.get(waiter.run_id)
            status = row.get("status") if row is not None else None
            if (
                waiter.quiet
                and status != waiter.status
                and type(status) is str
                and not self._states(status).is_terminal
            ):
                # Another status still in progress, and nobody listens for that: waking the
                # wait would only put it back to sleep, at the cost of a decoded row, a Run
                # and a new waiter. It is the wait's status from now on.
                waiter.status = status
            # Most rows are unchanged, and this loop visits every wait at every list read:
            # an unchanged status (a string, or the wait would not be asleep on it) needs no
            # decoding and no state lookup; it was not terminal, or the wait would be awake.
            if status is not None and status == waiter.status:
                if self._is_due(waiter, now):
                    group.touch(waiter.run_id, now)
                    waiter.interval = waiter.next_delay()
                    waiter.due = now + waiter.interval
                continue
            if row is None:
                if self._is_due(waiter, now):
                    if page.size >= MAX_PAGE_SIZE and page.older_than_page(waiter.created_at):
                        watched = group.runs.get(waiter.run_id)
                        if watched is not None:
                            group.set_beyond_page(waiter.run_id, watched)
                    group.wake(waiter, READ_NOW)
                continue  # (not due: a run newer than the page, most likely)
            state = self._states(status) if isinstance(status, str) else None
            if state is not None and state.is_terminal:
                group.wake(waiter, READ_NOW)  # for its outputs, and as early as the list tells
                continue
            try:
                summary = structure(row, RunSummary, page.response)
            except ResponseDecodeError as error:
                group.wake(waiter, error)
                continue
            state = self._states(summary.status)
            listed = ListedRun(summary=summary, state=state, project_id=group.project_id, raw=row)
            group.wake(waiter, READ_NOW if state.is_terminal else listed)

    def _is_due(self, waiter: _Waiter, now: float) -> bool:
        """Whether a list read now counts as the wait's next read: it is due within the
        window, or within a quarter of the wait before it (reading a little early lets one
        list request serve waits whose jittered schedules drifted apart)."""
        return waiter.due - now <= max(self._window, _EARLY * waiter.interval)

    def read_alone(self, handle: RunHandle, *, finished: bool, project_id: str | None) -> None:
        """The run was read on its own (``GET /v2/runs/{id}``). Finished, it is no longer
        waited on; its project id serves the web URL of the notebook's listed runs."""
        group = self._groups.get(handle.notebook_id)
        if group is None:
            return
        if project_id:
            group.project_id = project_id
        if finished:
            group.drop(handle.run_id)
            if not group.runs:
                del self._groups[handle.notebook_id]

    async def _page(
        self, notebook_id: str, group: _Group, *, at_least: int = 0, worth_it: bool = False
    ) -> _Page | None:
        """A fresh enough list answer for the group: joined, reused or requested. None when
        a new request would not be shared enough to pay (unless ``worth_it``: the caller knows
        it is), or the list refused us for good (sharing is then off for the notebook).
        ``at_least``: the smallest page size to use."""
        while True:
            observation = group.current
            if observation is not None and observation.size < at_least:
                observation = None
            mine = False
            if observation is not None and not observation.done.is_set():
                await observation.done.wait()
                if observation.abandoned:
                    continue  # its caller was cancelled: send (or join) another
            elif (
                observation is None
                or observation.error is not None
                or _clock() - observation.sent_at > self._window
            ):
                if not worth_it and group.rate * max(self._window, group.latency) < 1:
                    return None  # too few reads expected to share a request: not worth it
                observation = await self._send(notebook_id, group, at_least)
                mine = True
            error = observation.error
            if error is None:
                return observation.page
            if isinstance(error, APIError) and error.status not in (429, 500, 502, 503, 504):
                self._disable(notebook_id, error)
                return None
            if mine:
                raise error
            raise _clone(error) from error.__cause__

    async def _send(self, notebook_id: str, group: _Group, at_least: int) -> _Observation:
        page_size = max(page_size_for(group.listable), at_least)
        observation = _Observation(sent_at=_clock(), size=page_size)
        group.current = observation
        try:
            response = await self._fetch(notebook_id, page_size, None)
            page = index_page(response, page_size)
            if page_size >= MAX_PAGE_SIZE:
                await self._follow_cursor(notebook_id, group, page)
            group.latency = _clock() - observation.sent_at
            observation.page = page
        except NotebookOpsError as error:
            observation.error = error
        except BaseException:
            observation.abandoned = True
            if group.current is observation:
                group.current = None
            raise
        finally:
            observation.done.set()
        return observation

    async def _follow_cursor(self, notebook_id: str, group: _Group, page: _Page) -> None:
        """Read further pages into ``page`` while a run being waited on may be on one: it is
        not on the pages so far and not known to be newer than their last row (the list is
        newest first). Stops at MAX_PAGES, at the list's end, or at a repeated cursor."""
        tokens: set[str] = set()
        while page.next_token is not None and page.pages < MAX_PAGES:
            oldest = page.oldest_created_at()
            if oldest is None:
                return
            wanted = False
            for run_id, watched in group.runs.items():
                if watched.beyond_page or run_id in page.rows:
                    continue
                # Unknown creation time: it may be older, so it may be further down.
                if watched.created_at is None or not _before(oldest, watched.created_at):
                    wanted = True
                    break
            token = page.next_token
            if not wanted or token in tokens:
                return
            tokens.add(token)
            response = await self._fetch(notebook_id, page.size, token)
            page.extend(index_page(response, page.size))

    def _disable(self, notebook_id: str, error: APIError) -> None:
        """The list refused us for a reason a retry will not fix (a key without list access,
        say): poll this notebook's runs one by one from now on."""
        self._groups.pop(notebook_id, None)
        if notebook_id in self._disabled:
            return
        self._disabled[notebook_id] = None
        while len(self._disabled) > _KEEP_DISABLED:
            self._disabled.popitem(last=False)
        logger.warning(
            "deepnote: reading the runs list of notebook %s failed (%s); its runs are polled "
            "one by one from now on",
            notebook_id,
            error,
        )

    def _sweep(self, now: float) -> None:
        """Forget runs nobody has read for IDLE_AFTER seconds, and notebooks left without any."""
        if self._swept is None:
            self._swept = now
        if now - self._swept < _SWEEP_EVERY:
            return
        self._swept = now
        cutoff = now - IDLE_AFTER
        for notebook_id, group in list(self._groups.items()):
            for run_id in [
                r
                for r, watched in group.runs.items()
                if watched.last_read < cutoff and r not in group.waiters
            ]:
                group.drop(run_id)
            group.recount()
            if not group.runs and not group.waiters:
                del self._groups[notebook_id]
