"""Starting runs without ever starting one twice: v2 starts, their reconciliation, and v1.

``POST /v2/runs`` is sent once. When its outcome is ambiguous (the connection broke or timed
out after the request was sent, a 5xx, an unreadable 2xx), :class:`Reconciler` settles it
through the notebook's runs list: a single run created since the attempt is adopted, never one
this backend started for another call, nor one that another ambiguous start of the notebook
may have made; anything else is :class:`~notebookops.StartOutcomeUnknown` with what was seen.

:class:`V1Starter` is the legacy mode: ``/v1/.../execute`` returns no run id, so the run it
started is looked for in the v2 runs list; when it cannot be found, the run is SUBMITTED.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Final, TypeVar

import anyio
import attrs

from ..._protect import SENT_WORK_GRACE, protected
from ..._validate import utc_now
from ...errors import (
    AuthenticationError,
    ConfigurationError,
    NotebookOpsError,
    NotFound,
    PermissionDenied,
    ResponseDecodeError,
    ServerError,
    StartOutcomeUnknown,
    TransportError,
)
from ...models import RunHandle, RunRequest
from ._requests import DeepnoteRunOptions
from ._wire import RunStarted, RunSummary
from .client import DeepnoteClient

T = TypeVar("T")

__all__ = ["V1_SUBMITTED", "Reconciler", "StartSettings", "V1Starter"]

logger = logging.getLogger("notebookops.deepnote")

#: ``RunHandle.extra["mode"]`` of a v1 run whose v2 run could not be found (SUBMITTED).
V1_SUBMITTED: Final = "v1-submitted"
_PAGES: Final = 5
_PAGE_SIZE: Final = 20
#: Run ids this backend started, remembered so reconciliation never adopts one of them.
_KEEP_OWN_RUNS: Final = 10_000
#: How long an ambiguous start attempt counts as a possible author of new runs.
_AMBIGUITY_MEMORY: Final = timedelta(minutes=10)
#: A start failing these ways may still have reached Deepnote and made a run.
AMBIGUOUS: Final = (TransportError, ServerError, ResponseDecodeError)
#: The runs list answering these will not answer otherwise if asked again.
_REFUSED: Final = (AuthenticationError, PermissionDenied, NotFound)

#: Makes a handle: (run id, notebook id, created at, project id, extra).
HandleMaker = Callable[[str, str, datetime | None, str | None, dict[str, str]], RunHandle]


@attrs.frozen(kw_only=True)
class StartSettings:
    """The timing of reconciliation and v1 discovery (see ``DeepnoteOptions``)."""

    attempts: int
    interval: float
    clock_skew: float
    v1_timeout: float
    v1_interval: float

    @property
    def skew(self) -> timedelta:
        return timedelta(seconds=self.clock_skew)


async def runs_since(
    client: DeepnoteClient, notebook_id: str, threshold: datetime
) -> list[RunSummary]:
    """The notebook's runs created at or after ``threshold``, newest first (a few pages at
    most: the list is newest first, so no run after an older one can be newer)."""
    found: list[RunSummary] = []
    runs = client.list_notebook_runs(notebook_id, page_size=_PAGE_SIZE)
    async with aclosing(runs):
        async for position, run in _enumerate(runs):
            if position >= _PAGES * _PAGE_SIZE:
                break
            if run.created_at is None:
                continue
            if run.created_at < threshold:
                break
            if run.run_id.strip():
                found.append(run)
    return found


async def _enumerate(items: AsyncIterator[RunSummary]) -> AsyncIterator[tuple[int, RunSummary]]:
    position = 0
    async for item in items:
        yield position, item
        position += 1


#: Bound on what a start does after its request may have made a run (settling it through the
#: runs list, finding a v1 run): seen through a cancellation, within this time, and for at
#: most SENT_WORK_GRACE once the caller is cancelled or its deadline passes.
_SEEN_THROUGH: Final = 120.0


async def _seen_through(
    work: Callable[[], Awaitable[T]], notebook_id: str, error: BaseException | None
) -> T:
    """Run the part of a start that follows a request which may have made a run, protected
    from cancellation (the NotebookBackend.start_run contract: the handle must not be lost)."""
    try:
        return await protected(work, _SEEN_THROUGH, after_cancel=SENT_WORK_GRACE)
    except TimeoutError:
        raise StartOutcomeUnknown(
            f"starting deepnote notebook {notebook_id!r}: the run it may have made could not "
            f"be found in time ({_SEEN_THROUGH:g}s, or {SENT_WORK_GRACE:g}s after the caller's "
            "deadline or cancellation)",
            notebook=notebook_id,
            evidence="the runs list did not settle it in time",
        ) from error


class Reconciler:
    """Starts v2 runs and settles ambiguous starts through the notebook's runs list."""

    def __init__(self, client: DeepnoteClient, settings: StartSettings) -> None:
        self._client = client
        self._settings = settings
        # Reconciliation looks for "the one run created since the attempt": runs this backend
        # started for other calls must not count, nor may two reconciliations of one notebook
        # adopt the same run. So: the ids we started, the POSTs still in flight per notebook,
        # one lock per notebook around adopting, and when ambiguous attempts were made.
        self._own_runs: OrderedDict[str, None] = OrderedDict()
        self._posting: Counter[str] = Counter()
        self._posts_done: dict[str, anyio.Event] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._ambiguous: dict[str, list[datetime]] = {}

    def remember(self, run_id: str) -> None:
        """A run this backend started (bounded memory, oldest forgotten first)."""
        self._own_runs[run_id] = None
        while len(self._own_runs) > _KEEP_OWN_RUNS:
            self._own_runs.popitem(last=False)

    async def start(
        self, request: RunRequest, options: DeepnoteRunOptions
    ) -> RunStarted | RunSummary:
        """``POST /v2/runs`` once; an ambiguous failure settled through the runs list."""
        notebook_id = request.notebook
        attempt_at = utc_now()
        self._posting[notebook_id] += 1
        try:
            started = await self._client.create_run(
                notebook_id, inputs=request.inputs, blocks=request.blocks, options=options
            )
        except AMBIGUOUS as error:
            self._done_posting(notebook_id)
            if isinstance(error, TransportError) and not error.request_sent:
                raise  # provably never reached Deepnote: no run can exist
            self._ambiguous.setdefault(notebook_id, []).append(attempt_at)
            return await _seen_through(
                functools.partial(self._settle_alone, notebook_id, attempt_at, error),
                notebook_id,
                error,
            )
        except BaseException:
            self._done_posting(notebook_id)
            raise
        self.remember(started.run_id)
        self._done_posting(notebook_id)
        return started

    def _done_posting(self, notebook_id: str) -> None:
        self._posting[notebook_id] -= 1
        if self._posting[notebook_id] <= 0:
            del self._posting[notebook_id]
            idle = self._posts_done.pop(notebook_id, None)
            if idle is not None:
                idle.set()

    def _rivals(self, notebook_id: str, created_at: datetime | None) -> int:
        """Other ambiguous attempts on this notebook that could have created a run made at
        ``created_at`` (any recent one when the time is unknown)."""
        now = utc_now()
        recent = [at for at in self._ambiguous.get(notebook_id, []) if at > now - _AMBIGUITY_MEMORY]
        self._ambiguous[notebook_id] = recent
        skew = self._settings.skew
        possible = [at for at in recent if created_at is None or created_at >= at - skew]
        return max(0, len(possible) - 1)  # one of them is the attempt being reconciled

    async def _settle_alone(
        self, notebook_id: str, attempt_at: datetime, error: NotebookOpsError
    ) -> RunSummary:
        """:meth:`_settle`, one reconciliation of a notebook at a time (two must never adopt
        the same run)."""
        async with self._locks.setdefault(notebook_id, anyio.Lock()):
            return await self._settle(notebook_id, attempt_at, error)

    async def _settle(
        self, notebook_id: str, attempt_at: datetime, error: NotebookOpsError
    ) -> RunSummary:
        threshold = attempt_at - self._settings.skew
        evidence: list[str] = []
        for attempt in range(self._settings.attempts):
            if attempt:
                await anyio.sleep(self._settings.interval)
            # Another start of this notebook still waiting for its answer would leave its run
            # looking like ours: let those answers arrive first (each is bounded by its timeout).
            while self._posting[notebook_id] > 0:
                await self._posts_done.setdefault(notebook_id, anyio.Event()).wait()
            try:
                found = await runs_since(self._client, notebook_id, threshold)
            except NotebookOpsError as list_error:
                evidence.append(f"reading the notebook's runs failed ({list_error})")
                if isinstance(list_error, _REFUSED):
                    break
                continue
            candidates = [run for run in found if run.run_id not in self._own_runs]
            rivals = self._rivals(notebook_id, candidates[0].created_at) if candidates else 0
            if len(candidates) == 1 and rivals:
                evidence.append(
                    f"run {candidates[0].run_id} was created since the attempt, but {rivals} "
                    "other start(s) of this notebook by this backend failed ambiguously around "
                    "then: cannot tell whose it is"
                )
                break
            if len(candidates) == 1:
                self.remember(candidates[0].run_id)
                logger.warning(
                    "starting deepnote notebook %s failed ambiguously (%s); adopted run %s, "
                    "the only one created since the attempt",
                    notebook_id,
                    type(error).__name__,
                    candidates[0].run_id,
                )
                return candidates[0]
            if candidates:
                ids = ", ".join(run.run_id for run in candidates[:5])
                evidence.append(
                    f"{len(candidates)} runs were created since the attempt ({ids}); "
                    "cannot tell which one is ours"
                )
                break
            evidence.append(f"read {attempt + 1}: no run created since {threshold.isoformat()}")
        raise StartOutcomeUnknown(
            f"starting deepnote notebook {notebook_id!r} failed ambiguously ({error}); the run "
            "may or may not have started. Check the notebook's runs in Deepnote before "
            "starting it again",
            notebook=notebook_id,
            evidence="; ".join(evidence),
        ) from error


class V1Starter:
    """Legacy mode: trigger ``/v1/.../execute`` and find the run it started in the v2 list."""

    def __init__(self, client: DeepnoteClient, settings: StartSettings) -> None:
        self._client = client
        self._settings = settings

    async def start(
        self, request: RunRequest, options: DeepnoteRunOptions, make_handle: HandleMaker
    ) -> RunHandle:
        if request.inputs or request.blocks is not None:
            raise ConfigurationError(
                "Deepnote's v1 execute endpoint takes no inputs and no block selection; "
                "use the v2 API (use_v1=False) for those"
            )
        if (
            options.detached is not None
            or options.detached_run_storage_mode is not None
            or options.run_dependent_blocks is not None
        ):
            raise ConfigurationError(
                "detached, detached_run_storage_mode and run_dependent_blocks are v2 options; "
                "v1 execute cannot honour them"
            )
        notebook_id = request.notebook
        project_id = options.project_id or await self._project_of(notebook_id)
        known: set[str] | None
        try:
            page = await self._client.list_notebook_runs_page(notebook_id, page_size=_PAGE_SIZE)
            known = {run.run_id for run in page.runs}
        except _REFUSED as error:
            logger.info(
                "deepnote v2 runs list unavailable for %s (%s); a v1 run will be SUBMITTED",
                notebook_id,
                error,
            )
            known = None
        triggered_at = utc_now()
        try:
            await self._client.execute_v1(project_id, notebook_id)
        except (TransportError, ServerError) as error:
            if isinstance(error, TransportError) and not error.request_sent:
                raise
            found = await _seen_through(
                lambda: self._discover(notebook_id, known, triggered_at), notebook_id, error
            )
            if found is None:
                raise StartOutcomeUnknown(
                    f"triggering deepnote notebook {notebook_id!r} through v1 failed "
                    f"ambiguously ({error}); it may or may not be running",
                    notebook=notebook_id,
                    evidence=(
                        "no v2 runs list to check"
                        if known is None
                        else f"no new run appeared within {self._settings.v1_timeout:g}s"
                    ),
                ) from error
            return make_handle(found.run_id, notebook_id, found.created_at, project_id, {})
        found = await _seen_through(
            lambda: self._discover(notebook_id, known, triggered_at), notebook_id, None
        )
        if found is not None:
            return make_handle(found.run_id, notebook_id, found.created_at, project_id, {})
        logger.info(
            "deepnote v1 trigger of %s accepted, but its run could not be found; SUBMITTED",
            notebook_id,
        )
        return make_handle(
            f"v1-{uuid.uuid4().hex}", notebook_id, triggered_at, project_id, {"mode": V1_SUBMITTED}
        )

    async def _project_of(self, notebook_id: str) -> str:
        hint = "pass DeepnoteRunOptions(project_id=...) (the id is in the notebook's URL)"
        try:
            notebook = await self._client.get_notebook(notebook_id)
        except _REFUSED as error:
            raise ConfigurationError(
                f"v1 execute needs the project id of notebook {notebook_id!r} and it could not "
                f"be read through v2 ({error}); {hint}"
            ) from error
        if not notebook.project_id:
            raise ConfigurationError(
                f"Deepnote did not say which project notebook {notebook_id!r} is in; {hint}"
            )
        return notebook.project_id

    async def _discover(
        self, notebook_id: str, known: set[str] | None, triggered_at: datetime
    ) -> RunSummary | None:
        """The run a v1 trigger started: the newest run not seen before the trigger and
        created at or after it, looked for within the v1 discovery timeout."""
        if known is None:
            return None
        threshold = triggered_at - self._settings.skew
        deadline = anyio.current_time() + self._settings.v1_timeout
        while True:
            try:
                found = await runs_since(self._client, notebook_id, threshold)
            except _REFUSED:
                return None
            except NotebookOpsError as error:
                logger.warning("reading deepnote runs of %s failed: %s", notebook_id, error)
                found = []
            candidates = [run for run in found if run.run_id not in known]
            if candidates:
                if len(candidates) > 1:
                    logger.warning(
                        "%d new runs of deepnote notebook %s after a v1 trigger; tracking the "
                        "newest, %s",
                        len(candidates),
                        notebook_id,
                        candidates[0].run_id,
                    )
                return candidates[0]
            if anyio.current_time() + self._settings.v1_interval > deadline:
                return None
            await anyio.sleep(self._settings.v1_interval)
