"""A fleet of arq workers running notebooks, sharing one store and one vendor rate limit.

Start Redis, then as many workers as you like (any machines)::

    export DEEPNOTE_API_KEY=...  REDIS_URL=redis://localhost:6379/0
    arq examples.arq_worker.WorkerSettings

and enqueue from anywhere::

    python examples/arq_worker.py deepnote:<notebookId> report-2026-12-06

The job id is the idempotency key: enqueue it again (or let arq run it twice) and the same run
is followed; ``result()`` returns its final Run.
"""

from __future__ import annotations

import os
import sys

import anyio

from notebookops.backend import NotebookBackend
from notebookops.integrations.arq import redis_settings, result, worker_settings
from notebookops.ratelimit_redis import RedisRateLimiter
from notebookops.targets import make_backend

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


def backend_for(name: str) -> NotebookBackend:
    """One backend per vendor per worker, paced with every other worker on the same key."""
    if name == "deepnote":
        from notebookops.backends.deepnote import DeepnoteBackend

        # Name the limit after the credential: vendors limit per API key.
        limiter = RedisRateLimiter(REDIS_URL, key="deepnote-main-key", rate=5.0)
        return DeepnoteBackend(rate_limiter=limiter)
    return make_backend(name)


WorkerSettings = worker_settings(REDIS_URL, backend_factory=backend_for, wait_slice=60.0)


async def enqueue(target: str, job_id: str) -> None:
    from arq import create_pool

    pool = await create_pool(redis_settings(REDIS_URL))
    try:
        await pool.enqueue_job("run_notebook", target, _job_id=job_id)
        run = await result(pool, job_id, timeout=3600)
        print(run.state.value, run.url or run.run_id)
    finally:
        await pool.aclose()


if __name__ == "__main__":
    anyio.run(enqueue, sys.argv[1], sys.argv[2])
