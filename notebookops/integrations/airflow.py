"""Apache Airflow: a deferrable operator and an async trigger that never start a run twice.

::

    from notebookops.integrations.airflow import NotebookRunOperator

    with DAG("reports", schedule="@daily", start_date=datetime(2025, 1, 1)) as dag:
        NotebookRunOperator(task_id="refresh", target="deepnote:<notebookId>", inputs={"n": 5})

How a task runs (``pip install 'notebookops[airflow]'``):

1. ``execute()`` starts the run with an idempotency key made of the DAG id, task id, DAG run
   id and map index, recorded in a run store (``store_url``: a SQLite file for one machine,
   Redis for a fleet of workers). A try that finds the key's run still going (its worker died
   before deferring, or the triggerer lost it) resumes that run instead of starting another.
   A try after a recorded end (a retry after a failure, a cleared task) starts a new run.
2. It defers to :class:`NotebookRunTrigger`, which waits in the triggerer with notebookops'
   own polling (transient errors are retried until the deadline: one HTTP 500 never fails the
   task) and fires one event. The trigger has no other side effect than the deadline's
   cancel, so running it twice is harmless, and it never cancels the run when the triggerer
   drops it (a restart, a move to another triggerer).
3. ``execute_complete()`` records the end in the store and returns a summary of the final
   run (state, url, outputs) as the task's XCom; a failed, cancelled or timed-out run fails
   the task with the reason.

The deadline is ``timeout`` or the task's ``execution_timeout`` (minus a margin that leaves
the task time to report it), whichever comes first. At the deadline the run is cancelled
(``on_timeout="cancel"``, where the vendor can) or left running (``"detach"``); the task fails
saying which.

Credentials come from an Airflow connection (``conn_id``) of type ``notebookops``: its
password is the API token (PostHog: the personal API key), its host the API origin
(``https://host`` or ``http://127.0.0.1:port`` for a test server; without a scheme, https) and
its extra ``{"project_id": ...}`` PostHog's project. Whatever the connection leaves out (or
all of it without ``conn_id``) comes from the environment variables the library reads.

PostHog targets run in server mode (a kernel-mode run lives in the process that started it,
which a deferred task leaves). Local ``.ipynb`` targets need ``deferrable=False``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Final

import attrs

from .._validate import seconds
from ..backend import NotebookBackend
from ..errors import ConfigurationError, NotebookOpsError, RunTimeout
from ..models import Capability, Run, RunHandle, RunRequest, RunState
from ..orchestration import OnTimeout, start_run, wait_for_run
from ..policies import PollPolicy
from ..store import RecordState, RunStore, default_store_path, open_store
from ..targets import backend_for_target, parse_target

try:  # Airflow 3: the task SDK
    from airflow.sdk import BaseHook, BaseOperator
except ImportError:  # Airflow 2
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,unused-ignore]
    from airflow.models import BaseOperator  # type: ignore[no-redef,unused-ignore]
from airflow.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

__all__ = [
    "CONN_TYPE",
    "NotebookRunOperator",
    "NotebookRunTrigger",
    "connection_credentials",
    "run_key",
    "run_summary",
]

logger = logging.getLogger("notebookops.airflow")

#: The connection type holding notebookops credentials (password: token, host: API origin).
CONN_TYPE: Final = "notebookops"
#: Key prefix of the runs this integration records.
KEY_PREFIX: Final = "airflow"
#: A key longer than this is hashed (stores take keys of up to 255 characters).
_MAX_READABLE_KEY: Final = 240
#: The trigger's deadline comes this much before the task's execution_timeout (at most), so
#: that the run is cancelled, and the task resumed to say so, before Airflow itself gives up.
_MAX_TIMEOUT_MARGIN: Final = 60.0
#: The trigger's first status read comes after a random pause of up to this many seconds.
DEFAULT_START_SPREAD: Final = 2.0
#: Text kept per output in the XCom summary.
_OUTPUT_TEXT_LIMIT: Final = 2000


# --------------------------------------------------------------------------- shared pieces


def run_key(dag_id: str, task_id: str, run_id: str, map_index: int, generation: int) -> str:
    """The idempotency key of one task instance's run (the same for every try number).

    ``generation`` counts the runs a task instance has ended: a try after a recorded end
    (a retry after a failure, a cleared task) starts the next generation's run.
    """
    key = f"{KEY_PREFIX}:{dag_id}:{task_id}:{run_id}:{map_index}#{generation}"
    if len(key) <= _MAX_READABLE_KEY:
        return key
    parts = json.dumps([dag_id, task_id, run_id, map_index, generation])
    return f"{KEY_PREFIX}:sha256:{hashlib.sha256(parts.encode()).hexdigest()}"


def connection_credentials(conn_id: str | None) -> dict[str, str]:
    """``backend_for_target`` keyword arguments from the Airflow connection ``conn_id``
    (token, base URL, PostHog project id); none without a connection, so that the adapters
    read their environment variables."""
    if conn_id is None:
        return {}
    conn = BaseHook.get_connection(conn_id)
    credentials: dict[str, str] = {}
    if conn.password:
        credentials["token"] = conn.password
    if conn.host:
        host = conn.host.rstrip("/")
        if "://" not in host:
            host = f"https://{host}"
            if conn.port:
                host = f"{host}:{conn.port}"
        credentials["base_url"] = host
    project = (conn.extra_dejson or {}).get("project_id")
    if project is not None:
        credentials["posthog_project_id"] = str(project)
    return credentials


def _backend(target: str, credentials: Mapping[str, str]) -> tuple[NotebookBackend, str]:
    # PostHog's server mode: a kernel-mode run would end with the process that started it.
    return backend_for_target(target, posthog_mode="server", **credentials)


def run_summary(run: Run) -> dict[str, Any]:
    """What goes to XCom: the run's identity, state, url, error and its outputs as text."""
    outputs = []
    for output in run.outputs:
        text = output.plain_text
        outputs.append(
            {
                "cell": output.cell_id if output.cell_id is not None else output.cell_index,
                "type": output.output_type,
                "text": text[:_OUTPUT_TEXT_LIMIT] if text is not None else None,
            }
        )
    return {
        "backend": run.handle.backend,
        "run_id": run.run_id,
        "notebook": run.handle.notebook_id,
        "state": run.state.value,
        "url": run.url,
        "error": run.error.message if run.error else None,
        "outputs": outputs,
        "handle": run.handle.to_json(),
    }


def _poll_kwargs(poll: PollPolicy | None) -> dict[str, float] | None:
    return None if poll is None else attrs.asdict(poll)


def _seconds(
    value: float | timedelta | None, name: str, *, allow_zero: bool = False
) -> float | None:
    if value is None:
        return None
    amount = value.total_seconds() if isinstance(value, timedelta) else value
    return seconds(name, amount, allow_zero=allow_zero)


# --------------------------------------------------------------------------- the trigger


class NotebookRunTrigger(BaseTrigger):  # type: ignore[misc]
    """Waits in Airflow's triggerer for a started run and fires one event with its end.

    ``handle`` is the run's :meth:`RunHandle.to_json`; ``target`` and ``conn_id`` say how to
    reach its vendor (credentials are looked up again, never serialised); ``deadline`` is a
    Unix time (None: none); ``key`` is the run's idempotency key, passed back in the event;
    the first status read comes after a random pause of up to ``start_spread`` seconds.
    The event's payload is a dict: ``status`` (the run's final state
    ``succeeded``/``failed``/``cancelled``, or ``timeout`` or ``error``), ``key``, ``handle``,
    ``run``
    (the last Run read, as JSON, or None), ``state``, ``url``, ``error`` and ``cancelled``
    (whether the deadline cancelled the run).

    Waiting has no side effect but the deadline's cancel: a trigger run twice (Airflow allows
    it) or rebuilt from :meth:`serialize` after a restart just waits again, and one the
    triggerer cancels (a restart, a move) leaves the run alone.
    """

    def __init__(
        self,
        handle: str,
        target: str,
        conn_id: str | None = None,
        deadline: float | None = None,
        on_timeout: OnTimeout = "cancel",
        poll: Mapping[str, float] | None = None,
        key: str | None = None,
        start_spread: float = DEFAULT_START_SPREAD,
    ) -> None:
        super().__init__()
        RunHandle.from_json(handle)  # a bad handle is refused here, not in the triggerer
        parse_target(target)
        if on_timeout not in ("cancel", "detach"):
            raise ConfigurationError(f"on_timeout must be 'cancel' or 'detach', got {on_timeout!r}")
        self.handle = handle
        self.target = target
        self.conn_id = conn_id
        self.deadline = deadline
        self.on_timeout: OnTimeout = on_timeout
        self.poll = dict(poll) if poll is not None else None
        self.key = key
        self.start_spread = float(_seconds(start_spread, "start_spread", allow_zero=True) or 0.0)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and plain-JSON keyword arguments that rebuild this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "handle": self.handle,
                "target": self.target,
                "conn_id": self.conn_id,
                "deadline": self.deadline,
                "on_timeout": self.on_timeout,
                "poll": self.poll,
                "key": self.key,
                "start_spread": self.start_spread,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait for the run's end (or the deadline) and yield one event."""
        handle = RunHandle.from_json(self.handle)
        credentials = await asyncio.to_thread(connection_credentials, self.conn_id)
        backend, _ = _backend(self.target, credentials)
        try:
            payload = await self._wait(backend, handle)
        finally:
            await backend.aclose()
        yield TriggerEvent(payload)

    async def _wait(self, backend: NotebookBackend, handle: RunHandle) -> dict[str, Any]:
        # The run was started moments ago (or, after a restart, is read again by every trigger
        # the triggerer picked up at once): spread the first reads rather than send them all
        # in the same instant, which stalls the shared event loop (bench/airflow_triggers.py).
        await asyncio.sleep(random.uniform(0, self.start_spread))
        timeout = None
        if self.deadline is not None:
            # A deadline already past still gets one status read (and the cancel).
            timeout = max(self.deadline - time.time(), 0.001)
        try:
            run = await wait_for_run(
                backend,
                handle,
                timeout=timeout,
                poll=PollPolicy(**self.poll) if self.poll is not None else None,
                on_timeout=self.on_timeout,
                raise_on_failure=False,
                cancel_on_interrupt=False,
            )
        except RunTimeout as error:
            return self._event("timeout", handle, error.run, str(error), error.cancelled)
        except NotebookOpsError as error:
            return self._event("error", handle, None, str(error))
        message = run.error.message if run.error else None
        return self._event(run.state.value, handle, run, message)

    def _event(
        self,
        status: str,
        handle: RunHandle,
        run: Run | None,
        error: str | None,
        cancelled: bool = False,
    ) -> dict[str, Any]:
        return {
            "status": status,
            "key": self.key,
            "handle": handle.to_json(),
            "run": run.to_json() if run is not None else None,
            "state": run.state.value if run is not None else None,
            "url": run.url if run is not None else handle.web_url,
            "error": error,
            "cancelled": cancelled,
        }


# --------------------------------------------------------------------------- the operator


class NotebookRunOperator(BaseOperator):  # type: ignore[misc]
    """Runs a notebook and succeeds when it does; the final run's summary goes to XCom.

    ``target`` is what ``notebookops run`` takes (``deepnote:<id>``, ``posthog:<short_id>``,
    ``datalore:<owner/id>``, a local ``.ipynb`` path); ``inputs`` the notebook's inputs (both
    templated). ``timeout`` (seconds or a timedelta; None: the task's ``execution_timeout``
    only) bounds the wait; ``on_timeout`` says what happens to the run at the deadline.
    ``conn_id`` names a ``notebookops`` connection (see the module docs). ``store_url`` is the
    run store that makes the start happen once per task instance (default: a SQLite file in
    the worker's state directory, which covers the workers of one machine; use
    ``redis://...`` for a fleet). ``poll`` is the status-read schedule
    (:class:`~notebookops.PollPolicy`). ``deferrable=False`` waits on the worker instead of
    the triggerer (needed for local notebooks).
    """

    template_fields = ("target", "inputs")

    def __init__(
        self,
        *,
        target: str,
        inputs: Mapping[str, Any] | None = None,
        timeout: float | timedelta | None = None,
        conn_id: str | None = None,
        deferrable: bool = True,
        on_timeout: OnTimeout = "cancel",
        store_url: str | None = None,
        poll: PollPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_timeout not in ("cancel", "detach"):
            raise ConfigurationError(f"on_timeout must be 'cancel' or 'detach', got {on_timeout!r}")
        if poll is not None and not isinstance(poll, PollPolicy):
            raise ConfigurationError(f"poll must be a PollPolicy, got {type(poll).__name__}")
        self.target = target
        self.inputs = dict(inputs or {})
        self.timeout_seconds = _seconds(timeout, "timeout")
        self.conn_id = conn_id
        self.deferrable = deferrable
        self.on_timeout: OnTimeout = on_timeout
        self.store_url = store_url
        self.poll = poll
        self._started: tuple[str, RunHandle] | None = None

    # -- execute

    def execute(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """Start the task instance's run (or find it), then defer to the trigger."""
        credentials = connection_credentials(self.conn_id)
        key, handle, final = asyncio.run(self._start(context, credentials))
        self._started = (key, handle)
        if final is not None:  # deferrable=False waited here
            return self._finish(context, key, final)
        self.defer(
            trigger=NotebookRunTrigger(
                handle.to_json(),
                self.target,
                conn_id=self.conn_id,
                deadline=self._deadline(context),
                on_timeout=self.on_timeout,
                poll=_poll_kwargs(self.poll),
                key=key,
            ),
            method_name="execute_complete",
        )
        raise AssertionError("defer() raises TaskDeferred")  # pragma: no cover

    def _store(self) -> RunStore:
        return open_store(self.store_url or f"sqlite://{default_store_path()}")

    def _deadline(self, context: Mapping[str, Any]) -> float | None:
        """Unix time of the deadline: ``timeout`` from now, or the execution_timeout's end
        less a margin, whichever comes first."""
        deadlines = []
        if self.timeout_seconds is not None:
            deadlines.append(time.time() + self.timeout_seconds)
        if self.execution_timeout is not None:
            limit = self.execution_timeout.total_seconds()
            began = getattr(context.get("ti"), "start_date", None)
            began_at = began.timestamp() if began is not None else time.time()
            deadlines.append(began_at + limit - min(_MAX_TIMEOUT_MARGIN, limit / 10))
        return min(deadlines) if deadlines else None

    async def _start(
        self, context: Mapping[str, Any], credentials: Mapping[str, str]
    ) -> tuple[str, RunHandle, dict[str, Any] | None]:
        backend, notebook = _backend(self.target, credentials)
        try:
            if self.deferrable and Capability.RESUMABLE not in backend.capabilities:
                raise ConfigurationError(
                    f"{backend.name} runs cannot be followed from Airflow's triggerer (they "
                    "live in the process that started them): pass deferrable=False"
                )
            request = RunRequest(notebook=notebook, inputs=self.inputs)
            async with self._store() as store:
                key = await self._current_key(store, context)
                handle = await start_run(backend, request, key=key, store=store)
                logger.info("%s run %s (key %s)", handle.backend, handle.run_id, key)
                if self.deferrable:
                    return key, handle, None
                self._started = (key, handle)
                trigger = NotebookRunTrigger(
                    handle.to_json(),
                    self.target,
                    deadline=self._deadline(context),
                    on_timeout=self.on_timeout,
                    poll=_poll_kwargs(self.poll),
                    key=key,
                )
                return key, handle, await trigger._wait(backend, handle)
        finally:
            await backend.aclose()

    async def _current_key(self, store: RunStore, context: Mapping[str, Any]) -> str:
        """This task instance's key: the first generation without a recorded end."""
        ti = context["ti"]
        generation = 1
        while True:
            key = run_key(ti.dag_id, ti.task_id, context["run_id"], ti.map_index, generation)
            record = await store.get(key)
            if record is None or record.state is not RecordState.FINISHED:
                return key
            generation += 1

    # -- completion

    def execute_complete(
        self, context: Mapping[str, Any], event: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The trigger fired: record the end, push the summary, fail unless it succeeded."""
        return self._finish(context, event["key"], event)

    def _finish(
        self, context: Mapping[str, Any], key: str, event: Mapping[str, Any]
    ) -> dict[str, Any]:
        run = Run.from_json(event["run"]) if event.get("run") else None
        ended = run is not None and (run.state.is_terminal or event.get("cancelled"))
        if run is not None and ended:
            asyncio.run(self._record_finish(key, run))
        summary = run_summary(run) if run is not None else None
        status = event["status"]
        if status == RunState.SUCCEEDED.value and summary is not None:
            return summary
        if summary is not None:
            context["ti"].xcom_push(key="run", value=summary)
        where = f" ({event['url']})" if event.get("url") else ""
        raise AirflowException(
            f"notebook run {status}{where}: {event.get('error') or 'no reason given'}"
        )

    async def _record_finish(self, key: str, run: Run) -> None:
        try:
            async with self._store() as store:
                await store.record_finish(key, run)
        except NotebookOpsError as error:
            # The run's result is what the task reports; a later try reads the vendor again.
            logger.warning(
                "could not record the end of run %s (key %s): %s", run.run_id, key, error
            )

    # -- a user's kill

    def on_kill(self) -> None:
        """Cancel the run, but only if this task instance still owns it: the store's record
        of its key holds this run's handle and no end. (Airflow calls this on a user's kill
        of a running task; a trigger moved to another triggerer never gets here.)"""
        if self._started is None:
            return
        key, handle = self._started
        # Airflow calls this from a signal handler, maybe while execute()'s loop runs in
        # this thread: the cancel gets a loop of its own in another thread.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self._cancel_if_owned(key, handle)).result()

    async def _cancel_if_owned(self, key: str, handle: RunHandle) -> None:
        async with self._store() as store:
            record = await store.get(key)
        if record is None or record.handle != handle or record.state is RecordState.FINISHED:
            logger.info("not cancelling %s run %s: key %s no longer holds it", *_ids(handle), key)
            return
        credentials = await asyncio.to_thread(connection_credentials, self.conn_id)
        backend, _ = _backend(self.target, credentials)
        try:
            if Capability.CANCEL in backend.capabilities:
                await backend.cancel_run(handle)
                logger.info("cancelled %s run %s", *_ids(handle))
            else:
                logger.info("%s cannot cancel runs: run %s left running", *_ids(handle))
        finally:
            await backend.aclose()


def _ids(handle: RunHandle) -> tuple[str, str]:
    return handle.backend, handle.run_id
