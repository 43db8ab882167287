"""Run notebooks from an arq job queue: a fleet of asyncio workers sharing one Redis.

Needs the ``arq`` package (``pip install 'notebookops[arq]'``). In your application::

    from notebookops.integrations.arq import worker_settings

    WorkerSettings = worker_settings("redis://redis.internal:6379/0")

start workers with ``arq myapp.WorkerSettings`` (as many as you like, on any machines), and
enqueue runs from anywhere::

    pool = await arq.create_pool(RedisSettings.from_dsn("redis://redis.internal:6379/0"))
    await pool.enqueue_job("run_notebook", "deepnote:<notebookId>", inputs={...},
                           _job_id="report-2026-12-06")
    run = await notebookops.integrations.arq.result(pool, "report-2026-12-06")

Guarantees:

* **one run per job.** The job's idempotency key is its arq job id (or ``key=``), kept in a
  :class:`~notebookops.store.RedisRunStore` on the workers' own Redis. arq may run a job more
  than once (a worker killed mid-job, a job enqueued again after its result expired): every
  such run finds the key's record and follows the same vendor run, or returns its final
  :class:`~notebookops.models.Run` at once. Enqueuing the same job id while it is queued or
  running is refused by arq itself; another job id with the same ``key=`` follows the same
  run.
* **bounded jobs.** No job holds a worker for the length of a run: a job waits at most
  ``wait_slice`` seconds (default 60), then enqueues its own continuation
  (``notebookops_wait``, job id ``"<key>:wait:<n>"``) and returns. A worker killed with
  ``kill -9`` therefore delays a wait by at most one slice plus arq's grace (arq starts a
  killed job again once its in-progress mark expires: the job timeout, ``wait_slice +
  start_margin``, plus 10 s). Every link of the chain claims its number in Redis first, so a
  link that arq runs again after a later one exists stands down instead of waiting twice.
* **results.** The final run is recorded in the store; :func:`result` waits for it. A job's
  own arq result is a small dict, ``{"key", "state", "run", "next_job_id"}``: ``state`` is
  ``"finished"`` (``run`` holds the final Run as JSON) or ``"continued"`` (the wait goes on
  in ``next_job_id``). A failed run is a finished job (its Run says FAILED): only bad input,
  an idempotency conflict, an ambiguous start or the run's deadline make the job fail.
* **Redis outages.** A wait in progress keeps reading the vendor while Redis is away; what it
  must write (the final run, its continuation) is retried until Redis is back, for up to
  ``start_margin`` seconds. arq's own connection retries for about as long (see
  ``redis_retry``). A store that cannot be reached when a run is about to start raises
  :class:`~notebookops.store.StoreUnavailable` before anything is sent.

Backends are built once per worker process by ``backend_factory(name)`` (default:
:func:`notebookops.targets.make_backend`, configured from the environment) and shared by all
of its jobs. To hold the whole fleet under a vendor's rate limit, give them a
:class:`notebookops.ratelimit_redis.RedisRateLimiter` (see ``examples/arq_worker.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from .._validate import count, seconds
from ..backend import NotebookBackend
from ..errors import ConfigurationError, RunTimeout
from ..models import Run, RunHandle, RunRequest
from ..orchestration import DEFAULT_TIMEOUT, start_run, wait_for_run
from ..policies import PollPolicy
from ..store import DEFAULT_PREFIX, RecordState, RedisRunStore, RunStore, StoreUnavailable
from ..targets import make_backend, parse_target

if TYPE_CHECKING:
    from arq.connections import ArqRedis, RedisSettings

__all__ = [
    "DEFAULT_WAIT_SLICE",
    "RUN_JOB",
    "WAIT_JOB",
    "result",
    "run_notebook",
    "wait_notebook",
    "worker_settings",
]

logger = logging.getLogger("notebookops.integrations.arq")

#: The job function users enqueue, and the continuation it enqueues for itself.
RUN_JOB: Final = "run_notebook"
WAIT_JOB: Final = "notebookops_wait"
#: How long one job waits on a run before it hands the wait to its continuation.
DEFAULT_WAIT_SLICE: Final = 60.0
#: Time a job may spend beyond its slice: the start (its turn at the rate limiter, the start
#: request) and writing to Redis again after an outage.
DEFAULT_START_MARGIN: Final = 30.0
#: Where ``ctx`` keeps the worker's notebookops state.
_CTX_KEY: Final = "notebookops"
#: How often a write to Redis that failed is tried again, and how often :func:`result` reads.
_RETRY_EVERY: Final = 0.25
_RESULT_POLL: Final = 0.5

# KEYS: the chain's cursor. ARGV: this link's number, seconds to keep the cursor.
# Returns 1 when the link may wait (no later link has claimed the chain), else 0.
_CLAIM_LINK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) < current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

BackendFactory = Callable[[str], NotebookBackend]


def _import_arq() -> Any:
    try:
        import arq
        import arq.connections
        import arq.worker
    except ImportError:
        raise ConfigurationError(
            "notebookops.integrations.arq needs the arq package: pip install 'notebookops[arq]'"
        ) from None
    return arq


@attrs.define
class _Fleet:
    """What one worker process keeps for its notebook jobs (``ctx["notebookops"]``)."""

    redis: ArqRedis
    store: RunStore
    backend_factory: BackendFactory
    wait_slice: float
    start_margin: float
    prefix: str
    keep: float
    poll: PollPolicy | None = None
    backends: dict[str, NotebookBackend] = attrs.field(factory=dict)

    def backend(self, name: str) -> NotebookBackend:
        """This worker's backend for ``name``, built at its first job."""
        backend = self.backends.get(name)
        if backend is None:
            backend = self.backends[name] = self.backend_factory(name)
        return backend

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()
        self.backends.clear()

    async def claim_link(self, key: str, link: int) -> bool:
        """Whether link ``link`` of the key's wait chain may wait (no later one exists)."""
        cursor = f"{self.prefix}arq:chain:{key}"
        claimed = await _persist(
            f"claim wait {link} of {key!r}",
            lambda: self.redis.register_script(_CLAIM_LINK)(
                keys=[cursor], args=[link, int(self.keep)]
            ),
            self.start_margin,
        )
        return bool(claimed == 1)


def _fleet(ctx: Mapping[str, Any]) -> _Fleet:
    fleet = ctx.get(_CTX_KEY)
    if not isinstance(fleet, _Fleet):
        raise ConfigurationError(
            "this arq worker was not set up by notebookops.integrations.arq.worker_settings "
            "(or its on_startup did not run)"
        )
    return fleet


async def _persist(what: str, write: Callable[[], Awaitable[Any]], patience: float) -> Any:
    """``write()``, tried again while Redis is unreachable, for up to ``patience`` seconds."""
    import redis.exceptions

    give_up = time.monotonic() + patience
    while True:
        try:
            return await write()
        except (
            StoreUnavailable,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        ) as error:
            if time.monotonic() >= give_up:
                if isinstance(error, StoreUnavailable):
                    raise
                message = f"Redis is unreachable, could not {what}: {error}"
                raise StoreUnavailable(message) from error
            logger.warning("Redis is unreachable (%s); will %s again", error, what)
        await anyio.sleep(_RETRY_EVERY)


def _outcome(
    key: str, state: str, run: Run | None = None, next_job: str | None = None
) -> dict[str, Any]:
    return {
        "key": key,
        "state": state,
        "run": None if run is None else run.to_json(),
        "next_job_id": next_job,
    }


async def run_notebook(
    ctx: dict[str, Any],
    target: str,
    *,
    inputs: Mapping[str, Any] | None = None,
    blocks: Sequence[str] | None = None,
    key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """The arq job: start ``target`` (``deepnote:<id>``, ``posthog:<short_id>``,
    ``datalore:<owner/id>`` or a ``.ipynb`` path) once per ``key`` (default: the job id) and
    wait for it one slice at a time. ``timeout`` (seconds) bounds the whole run, counted from
    its first reservation: at that deadline the run is cancelled and the job raises
    :class:`~notebookops.RunTimeout`. See the module docs for what it returns.
    """
    fleet = _fleet(ctx)
    key = key if key is not None else str(ctx["job_id"])
    seconds("timeout", timeout)
    parsed = parse_target(target)
    request = RunRequest(
        notebook=parsed.notebook,
        inputs=dict(inputs or {}),
        blocks=list(blocks) if blocks is not None else None,
    )
    if not await fleet.claim_link(key, 0):
        return _outcome(key, "continued")
    record = await fleet.store.get(key)
    if record is not None and record.state is RecordState.FINISHED and record.run is not None:
        return _outcome(key, "finished", record.run)
    # Counted from the key's first reservation (an earlier try's, or the one made now), read
    # here so that nothing stands between the start and the wait's first read: a Redis that
    # stalls then must not stop the waits.
    deadline = (record.reserved_at if record is not None else time.time()) + timeout
    began = time.monotonic()
    backend = fleet.backend(parsed.backend)
    handle: RunHandle | None = None
    # A start that does not get going within a slice (its turn at the rate limiter, the
    # notebook's start lease held by another start) gives up unsent and is tried again as a
    # new try of this job, which keeps every job within its timeout. A request already sent
    # is seen through and its handle recorded before the cancellation lands.
    with anyio.move_on_after(fleet.wait_slice):
        try:
            handle = await start_run(
                backend, request, key=key, store=fleet.store, start_timeout=fleet.wait_slice
            )
        except RunTimeout as error:
            if error.handle is not None:
                raise
    if handle is None:
        arq = _import_arq()
        raise arq.worker.Retry(defer=_RETRY_EVERY)
    spent = time.monotonic() - began
    return await _wait_slice(
        ctx, fleet, backend, key, handle, deadline, link=0, budget=fleet.wait_slice - spent
    )


async def wait_notebook(
    ctx: dict[str, Any], key: str, link: int, deadline: float
) -> dict[str, Any]:
    """The continuation :func:`run_notebook` enqueues (as ``notebookops_wait``): wait one more
    slice on the key's recorded run. Not meant to be enqueued by hand."""
    fleet = _fleet(ctx)
    if not await fleet.claim_link(key, link):
        return _outcome(key, "continued")
    record = await _persist(
        f"read the record of {key!r}", lambda: fleet.store.get(key), fleet.start_margin
    )
    if record is None or record.handle is None:
        raise ConfigurationError(
            f"idempotency key {key!r} has no recorded run to wait for (it expired, or the "
            "store was cleared)"
        )
    if record.state is RecordState.FINISHED and record.run is not None:
        return _outcome(key, "finished", record.run)
    backend = fleet.backend(record.handle.backend)
    return await _wait_slice(
        ctx, fleet, backend, key, record.handle, deadline, link=link, budget=fleet.wait_slice
    )


async def _wait_slice(
    ctx: dict[str, Any],
    fleet: _Fleet,
    backend: NotebookBackend,
    key: str,
    handle: RunHandle,
    deadline: float,
    *,
    link: int,
    budget: float,
) -> dict[str, Any]:
    """Wait up to ``budget`` seconds (at least a little); then record the end, or hand the
    wait to the next link."""
    remaining = deadline - time.time()
    last = remaining <= budget
    try:
        run = await wait_for_run(
            backend,
            handle,
            timeout=max(0.1, min(budget, remaining)),
            on_timeout="cancel" if last else "detach",
            raise_on_failure=False,
            # arq cancels a job at its timeout or a worker's shutdown: the run goes on.
            cancel_on_interrupt=False,
            poll=fleet.poll,
        )
    except RunTimeout:
        if last:
            raise
        next_job = f"{key}:wait:{link + 1}"
        await _persist(
            f"enqueue {next_job}",
            lambda: fleet.redis.enqueue_job(WAIT_JOB, key, link + 1, deadline, _job_id=next_job),
            fleet.start_margin,
        )
        return _outcome(key, "continued", next_job=next_job)
    await _persist(
        f"record the end of {key!r}",
        lambda: fleet.store.record_finish(key, run),
        fleet.start_margin,
    )
    return _outcome(key, "finished", run)


def worker_settings(
    redis_url: str = "redis://localhost:6379/0",
    *,
    backend_factory: BackendFactory = make_backend,
    wait_slice: float = DEFAULT_WAIT_SLICE,
    start_margin: float = DEFAULT_START_MARGIN,
    max_tries: int = 50,
    keep_result: float = 86400.0,
    store_prefix: str = DEFAULT_PREFIX,
    redis_retry: float = 30.0,
    poll: PollPolicy | None = None,
    on_startup: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    on_shutdown: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    **worker_options: Any,
) -> type:
    """An arq ``WorkerSettings`` class running :func:`run_notebook` (as ``run_notebook``) and
    its continuation, for ``arq myapp.WorkerSettings``.

    ``wait_slice`` is how long one job waits before handing the wait on (seconds);
    ``start_margin`` what a job may take beyond it: arq's job timeout is their sum. A job is
    run again at most ``max_tries`` times (kills, a rate-limited start's next turn).
    ``poll`` is how often a run's status is read (default: :class:`PollPolicy`'s).
    ``keep_result`` is how long arq keeps each job's result and the store keeps its chain's
    cursor. ``redis_retry`` is how long arq's connection retries a command through a Redis
    outage. ``on_startup``/``on_shutdown`` are yours, called after notebookops set up and
    before it closes its backends. Other keyword arguments are arq ``Worker`` options
    (``max_jobs``, ``queue_name``, ``poll_delay``...).
    """
    arq = _import_arq()
    for name, value in (
        ("wait_slice", wait_slice),
        ("start_margin", start_margin),
        ("keep_result", keep_result),
        ("redis_retry", redis_retry),
    ):
        seconds(name, value)
    count("max_tries", max_tries, minimum=1)
    settings = redis_settings(redis_url, retry_for=redis_retry)
    job_timeout = wait_slice + start_margin

    async def startup(ctx: dict[str, Any]) -> None:
        client: ArqRedis = ctx["redis"]
        ctx[_CTX_KEY] = _Fleet(
            redis=client,
            store=RedisRunStore.from_client(client, prefix=store_prefix),
            backend_factory=backend_factory,
            wait_slice=wait_slice,
            start_margin=start_margin,
            prefix=store_prefix,
            keep=keep_result,
            poll=poll,
        )
        if on_startup is not None:
            await on_startup(ctx)

    async def shutdown(ctx: dict[str, Any]) -> None:
        try:
            if on_shutdown is not None:
                await on_shutdown(ctx)
        finally:
            fleet = ctx.get(_CTX_KEY)
            if isinstance(fleet, _Fleet):
                await fleet.aclose()

    functions = [
        arq.worker.func(
            job, name=name, timeout=job_timeout, keep_result=keep_result, max_tries=max_tries
        )
        for job, name in ((run_notebook, RUN_JOB), (wait_notebook, WAIT_JOB))
    ]
    options: dict[str, Any] = {
        "functions": functions,
        "redis_settings": settings,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_timeout": job_timeout,
        "keep_result": keep_result,
        "max_tries": max_tries,
        "max_jobs": 100,
        **worker_options,
    }
    return type("WorkerSettings", (), options)


def redis_settings(redis_url: str, *, retry_for: float = 30.0) -> RedisSettings:
    """arq's ``RedisSettings`` for ``redis_url``, with commands retried through a Redis
    outage of up to about ``retry_for`` seconds (arq's default gives up at once)."""
    _import_arq()
    import redis.asyncio.retry
    import redis.backoff
    import redis.exceptions
    from arq.connections import RedisSettings

    try:
        settings = RedisSettings.from_dsn(redis_url)
    except (RuntimeError, ValueError) as error:
        raise ConfigurationError(f"not a usable Redis URL for arq: {error}") from None
    cap = 1.0
    settings.retry = redis.asyncio.retry.Retry(
        redis.backoff.ExponentialBackoff(cap=cap, base=0.1), max(1, int(retry_for / cap))
    )
    settings.retry_on_error = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    settings.conn_retries = max(1, int(retry_for))
    return settings


async def result(
    source: ArqRedis | RunStore | str,
    key: str,
    *,
    timeout: float | None = None,
    store_prefix: str = DEFAULT_PREFIX,
) -> Run:
    """The final run of the job enqueued with job id (or ``key=``) ``key``, once it has one.

    ``source`` is the arq pool the job was enqueued with, a :class:`RunStore` the workers
    record to, or a Redis URL. Waits (polling the store) until the run is recorded as
    finished, up to ``timeout`` seconds (TimeoutError; None: no limit). With an arq pool, a
    job that failed (bad input, an idempotency conflict, the run's deadline) raises its
    error here instead of leaving the wait to the timeout. A Redis that cannot be reached
    raises :class:`~notebookops.store.StoreUnavailable`.
    """
    seconds("timeout", timeout, allow_none=True)
    owns = isinstance(source, str)
    pool: Any = None
    if isinstance(source, str):
        store: RunStore = RedisRunStore(source, prefix=store_prefix)
    elif isinstance(source, RunStore):
        store = source
    else:
        pool = source
        store = RedisRunStore.from_client(source, prefix=store_prefix)
    try:
        with anyio.fail_after(timeout):
            while True:
                record = await store.get(key)
                if record is not None and record.state is RecordState.FINISHED:
                    assert record.run is not None
                    return record.run
                if pool is not None:
                    await _raise_if_failed(pool, key)
                await anyio.sleep(_RESULT_POLL)
    finally:
        if owns:
            await store.aclose()


async def _raise_if_failed(pool: Any, job_id: str) -> None:
    from arq.jobs import Job

    info = await Job(job_id, pool).result_info()
    if info is not None and not info.success and isinstance(info.result, BaseException):
        raise info.result
