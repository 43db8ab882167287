"""The arq worker the fleet tests start as subprocesses (``python -m arq
tests.integrations.fleet_app.WorkerSettings``), configured from the environment the test
sets: its Redis, the fake Deepnote's URL and token, the wait slice."""

from __future__ import annotations

import logging
import os
from typing import Any

from notebookops import _durable
from notebookops.backend import NotebookBackend
from notebookops.backends.deepnote import DeepnoteBackend, DeepnoteOptions
from notebookops.errors import ConfigurationError
from notebookops.integrations.arq import worker_settings
from notebookops.policies import PollPolicy, RetryPolicy

#: A Redis hash of job id -> the PID of the worker that last started it (for the kill tests).
PIDS_KEY = "fleet-test:pids"


def _backend(name: str) -> NotebookBackend:
    if name != "deepnote":
        raise ConfigurationError(f"this test worker runs deepnote only, not {name}")
    return DeepnoteBackend(
        os.environ["DEEPNOTE_API_KEY"],
        base_url=os.environ["DEEPNOTE_API_URL"],
        options=DeepnoteOptions(workspace=os.environ["FLEET_WORKSPACE"], reconcile_interval=0.05),
        timeout=10.0,
        retry=RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.5),
    )


# The library's own account of each keyed start (adopted, started anew, resumed) goes to the
# worker's log, which the test keeps: what a failed kill trial is read from.
_log = logging.StreamHandler()
_log.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
logging.getLogger("notebookops").addHandler(_log)
logging.getLogger("notebookops").setLevel(logging.INFO)

if "FLEET_START_LEASE" in os.environ:
    # See START_LEASE in test_arq_fleet.py: a start killed in flight holds its notebook's
    # start lease this long (the library's 600 s would outlast the test).
    setattr(_durable, "START_LEASE", float(os.environ["FLEET_START_LEASE"]))  # noqa: B010


async def _note_pid(ctx: dict[str, Any]) -> None:
    await ctx["redis"].hset(PIDS_KEY, ctx["job_id"], os.getpid())


WorkerSettings = worker_settings(
    os.environ["FLEET_REDIS_URL"],
    backend_factory=_backend,
    wait_slice=float(os.environ.get("FLEET_WAIT_SLICE", "2")),
    start_margin=float(os.environ.get("FLEET_START_MARGIN", "3")),
    poll=PollPolicy(initial=0.1, maximum=0.3, proportion=0.0),
    redis_retry=20.0,
    poll_delay=0.05,
    max_jobs=60,
    on_job_start=_note_pid,
)
