"""One keyed ``run_and_wait`` in a process of its own, for the kill -9 trials.

Run as ``python _driver.py`` with the trial in the ``NOTEBOOKOPS_DRIVER`` environment variable
(JSON, see :func:`trial_config`). It opens the store by URL, builds the backend pointed at the
test's fake vendor server, and prints JSON lines on stdout:

* ``{"event": "paused", "at": POINT}`` when it reaches the kill point ``pause`` names, and then
  waits forever for the test to kill it;
* ``{"event": "calling", "at": UNIX_TIME}`` just before it calls ``run_and_wait``;
* ``{"event": "started", "run_id": ...}`` from ``on_start`` (the handle is recorded by then);
* ``{"event": "result", "run_id": ..., "state": ...}`` when the call returns, or
  ``{"event": "error", "type": ..., "message": ..., "run_id": ...}`` when it raises.

Kill points: ``after_reserve`` (the key is reserved, nothing sent), ``before_record_start``
(the vendor answered the start, its handle not yet recorded), ``before_record_finish`` (the
run ended, its end not yet recorded). The other two (start request in flight, mid-wait) need
no pause here: the test holds the fake's answer, or kills after ``started``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import anyio
import anyio.to_thread

from notebookops import NotebookOpsError, run_and_wait
from notebookops.backend import NotebookBackend
from notebookops.models import Run, RunHandle, RunRequest
from notebookops.policies import PollPolicy, RetryPolicy
from notebookops.store import Claim, RunRecord, RunStore, open_store

ENV = "NOTEBOOKOPS_DRIVER"
FAST_POLL = PollPolicy(initial=0.05, maximum=0.1)
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def make_backend(config: dict[str, Any]) -> NotebookBackend:
    """The backend of ``config["vendor"]``, pointed at the fake server at ``config["url"]``."""
    # Each imported only when used: eight drivers starting at once on two cores is the
    # heaviest trial, and imports are most of a driver's start-up.
    vendor = config["vendor"]
    if vendor == "deepnote":
        from notebookops.backends.deepnote import DeepnoteBackend, DeepnoteOptions

        return DeepnoteBackend(
            config["token"],
            base_url=config["url"],
            timeout=5.0,
            retry=FAST_RETRY,
            options=DeepnoteOptions(workspace=config["workspace"], reconcile_interval=0.02),
        )
    if vendor == "datalore":
        from notebookops.backends.datalore import DataloreBackend

        return DataloreBackend(token=config["token"], base_url=config["url"], retry=FAST_RETRY)
    if vendor == "posthog":
        from notebookops.backends.posthog import PostHogBackend

        return PostHogBackend(
            config["token"],
            project_id=config["project_id"],
            base_url=config["url"],
            mode="server",
            poll=FAST_POLL,
            retry=FAST_RETRY,
        )
    raise ValueError(f"unknown vendor {vendor!r}")


def make_request(config: dict[str, Any]) -> RunRequest:
    if config["vendor"] != "posthog":
        return RunRequest(notebook=config["notebook"], inputs=config["inputs"])
    from notebookops.backends.posthog import PostHogRunOptions

    options = PostHogRunOptions(mode="server")
    return RunRequest(notebook=config["notebook"], inputs=config["inputs"], options=options)


class PausingStore(RunStore):
    """The store, with a pause (until killed) at the kill point ``pause`` names."""

    def __init__(self, inner: RunStore, pause: str | None) -> None:
        self.inner = inner
        self.pause = pause

    async def _maybe_pause(self, point: str) -> None:
        if self.pause == point:
            emit("paused", at=point)
            await anyio.sleep_forever()

    async def reserve(
        self, key: str, fingerprint: str, *, owner: str, lease: float, retention: float
    ) -> Claim:
        claim = await self.inner.reserve(
            key, fingerprint, owner=owner, lease=lease, retention=retention
        )
        if claim.created:
            await self._maybe_pause("after_reserve")
        return claim

    async def take_over(
        self, key: str, *, expected_owner: str, owner: str, lease: float
    ) -> RunRecord | None:
        return await self.inner.take_over(
            key, expected_owner=expected_owner, owner=owner, lease=lease
        )

    async def record_start(self, key: str, *, owner: str, handle: RunHandle) -> None:
        await self._maybe_pause("before_record_start")
        await self.inner.record_start(key, owner=owner, handle=handle)

    async def record_finish(self, key: str, run: Run) -> None:
        await self._maybe_pause("before_record_finish")
        await self.inner.record_finish(key, run)

    async def release(self, key: str, *, owner: str) -> None:
        await self.inner.release(key, owner=owner)

    async def get(self, key: str) -> RunRecord | None:
        return await self.inner.get(key)

    async def acquire_lease(self, name: str, *, owner: str, ttl: float) -> bool:
        return await self.inner.acquire_lease(name, owner=owner, ttl=ttl)

    async def release_lease(self, name: str, *, owner: str) -> None:
        await self.inner.release_lease(name, owner=owner)

    async def prune(self, *, now: float | None = None) -> int:
        return await self.inner.prune(now=now)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def main(config: dict[str, Any]) -> None:
    backend = make_backend(config)
    store = PausingStore(open_store(config["store"]), config.get("pause"))

    def started(handle: RunHandle) -> None:
        emit("started", run_id=handle.run_id)

    if config.get("wait_for_go"):
        # Many processes at once: each is ready (imports done), then all are told to go.
        emit("ready")
        await anyio.to_thread.run_sync(sys.stdin.readline)
    try:
        async with store, backend:
            emit("calling", at=time.time())
            run = await run_and_wait(
                backend,
                make_request(config),
                key=config["key"],
                store=store,
                on_ambiguous=config.get("on_ambiguous", "raise"),
                poll=FAST_POLL,
                timeout=60.0,
                on_start=started,
            )
    except NotebookOpsError as error:
        handle = error.handle
        emit(
            "error",
            type=type(error).__name__,
            message=str(error),
            run_id=handle.run_id if handle is not None else None,
        )
    else:
        emit("result", run_id=run.run_id, state=run.state.value)


if __name__ == "__main__":
    anyio.run(main, json.loads(os.environ[ENV]))
    sys.exit(0)
