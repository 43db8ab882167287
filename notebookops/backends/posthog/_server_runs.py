"""Server mode: PostHog's own whole-notebook runs (``POST runs/``, newer servers)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator

import anyio
import attrs

from ..._validate import utc_now
from ...errors import (
    ConfigurationError,
    NotFound,
    ResponseDecodeError,
    ServerError,
    StartOutcomeUnknown,
    TransportError,
)
from ...models import CellOutput, Run, RunHandle, RunRequest
from ...policies import PollPolicy
from .._runhost import output_size
from ._cells import (
    SERVER_RUN_STATES,
    cell_run_outputs,
    server_run_error,
    server_run_progress,
)
from ._errors import ModeUnavailable, answer_of
from .client import PostHogClient

__all__ = ["ServerRuns"]

logger = logging.getLogger("notebookops.posthog")


def _ambiguous_start(error: Exception) -> str | None:
    """Why a failed ``POST runs/`` may still have started a run (None: it did not)."""
    if isinstance(error, TransportError):
        return "POST runs/ got no response" if error.request_sent else None
    if isinstance(error, ResponseDecodeError):
        return f"POST runs/ answered {error.status or 'a'} body that could not be read"
    if isinstance(error, ServerError) and error.status in (502, 504):
        # A gateway lost track of a request it forwarded; PostHog's own refusals are 503.
        return f"POST runs/ answered {error.status} from a gateway"
    return None


class ServerRuns:
    """Runs executed by the PostHog server: resumable from any process, interrupted on the
    server, polled for status; outputs are read from each cell run once the run ends.

    Finished runs are kept for late readers (reading one costs a request per cell) within
    ``keep_output_bytes`` of outputs and ``keep_finished_runs``, newest always; a forgotten
    one is read from PostHog again."""

    mode = "server"

    def __init__(
        self,
        client: PostHogClient,
        *,
        poll: PollPolicy,
        keep_output_bytes: int,
        keep_finished_runs: int,
    ) -> None:
        self.client = client
        self._poll = poll
        self._keep_output_bytes = keep_output_bytes
        self._keep_finished_runs = keep_finished_runs
        #: Finished runs by id, oldest first, with what each weighs.
        self._finished: OrderedDict[str, tuple[Run, int]] = OrderedDict()
        self._finished_bytes = 0

    def _client_for(self, handle: RunHandle) -> PostHogClient:
        project = handle.extra.get("project_id", self.client.project_id)
        return (
            self.client if project == self.client.project_id else self.client.for_project(project)
        )

    async def start(self, request: RunRequest, short_id: str) -> RunHandle:
        """``POST runs/`` with ``request.inputs`` as the run's variables (checked first)."""
        try:
            started = await self.client.start_notebook_run(short_id, variables=request.inputs)
        except NotFound as error:
            raise ModeUnavailable(
                f"mode='server' needs PostHog's server-side runs, but POST runs/ of notebook "
                f"{short_id!r} answered {answer_of(error)!r}: this server predates "
                "them or has the revamped-py-notebooks flag off (use mode='kernel' or 'auto')",
                mode="server",
                answer=answer_of(error),
            ) from error
        except (TransportError, ResponseDecodeError, ServerError) as error:
            evidence = _ambiguous_start(error)
            if evidence is None:
                raise
            raise StartOutcomeUnknown(
                f"starting a server-side run of posthog notebook {short_id!r} failed after the "
                f"request was sent ({error}); a run may have started. PostHog allows one "
                "running run per notebook, so a new start answers 409 while it runs.",
                notebook=short_id,
                evidence=evidence,
            ) from error
        return RunHandle(
            backend="posthog",
            run_id=started.run_id,
            notebook_id=short_id,
            created_at=utc_now(),
            web_url=self.client.web_url(short_id),
            extra={"mode": "server", "project_id": self.client.project_id},
        )

    async def get(self, handle: RunHandle) -> Run:
        """``GET runs/{id}/``; once terminal, each cell run's result (kept, by size)."""
        cached = self._finished.get(handle.run_id)
        if cached is not None:
            return attrs.evolve(cached[0], handle=handle)
        client = self._client_for(handle)
        status = await client.get_notebook_run(handle.notebook_id, handle.run_id)
        state = SERVER_RUN_STATES(status.status)
        outputs: list[CellOutput] = []
        if state.is_terminal:
            for position, cell in enumerate(status.cells):
                if cell.run_id:
                    outputs.extend(
                        await self._cell_outputs(
                            client, handle, cell.run_id, position, cell.node_id
                        )
                    )
        run = Run(
            handle=handle,
            state=state,
            vendor_state=status.status,
            created_at=status.created_at or handle.created_at,
            started_at=status.created_at,
            finished_at=status.finished_at if state.is_terminal else None,
            outputs=tuple(outputs),
            error=server_run_error(status),
            progress=server_run_progress(status),
            web_url=handle.web_url,
            raw=status,
        )
        if state.is_terminal:
            self._keep(run)
        return run

    def _keep(self, run: Run) -> None:
        size = sum(map(output_size, run.outputs))
        previous = self._finished.pop(run.handle.run_id, None)
        self._finished_bytes += size - (previous[1] if previous else 0)
        self._finished[run.handle.run_id] = (run, size)
        while len(self._finished) > 1 and (
            self._finished_bytes > self._keep_output_bytes
            or len(self._finished) > self._keep_finished_runs
        ):
            _, (_, dropped) = self._finished.popitem(last=False)
            self._finished_bytes -= dropped

    async def _cell_outputs(
        self,
        client: PostHogClient,
        handle: RunHandle,
        cell_run_id: str,
        position: int,
        node_id: str | None,
    ) -> list[CellOutput]:
        try:
            cell_run = await client.get_cell_run(handle.notebook_id, cell_run_id)
        except ConfigurationError:
            # PostHog's data, not the caller's: a cell run id that is no path segment.
            logger.warning(
                "posthog named cell run %r of run %s, which cannot be read",
                cell_run_id,
                handle.run_id,
            )
            return []
        except NotFound:
            logger.warning(
                "posthog cell run %s of run %s has no result", cell_run_id, handle.run_id
            )
            return []
        return cell_run_outputs(cell_run, cell_id=node_id, cell_index=position)

    async def cancel(self, handle: RunHandle) -> None:
        """``POST runs/{id}/interrupt/``."""
        await self._client_for(handle).interrupt_notebook_run(handle.notebook_id, handle.run_id)

    async def watch(self, handle: RunHandle) -> AsyncGenerator[Run, None]:
        """The run at every change, polled with the backend's ``poll`` policy."""
        last: tuple[object, ...] | None = None
        attempt = 0
        began = anyio.current_time()
        while True:
            run = await self.get(handle)
            key = (run.state, run.vendor_state, run.progress, len(run.outputs))
            if key != last:
                last = key
                yield run
            if run.state.is_terminal:
                return
            await anyio.sleep(self._poll.delay(attempt, elapsed=anyio.current_time() - began))
            attempt += 1
