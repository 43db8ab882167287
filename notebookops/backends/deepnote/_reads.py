"""The read coalescer: concurrent status reads of one notebook's runs share one runs list.

A service that waits on hundreds of runs of one notebook would otherwise send one
``GET /v2/runs/{id}`` per wait per poll. ``GET /v2/notebooks/{id}/runs`` reports up to 100 of
them in one answer, so reads that happen at the same time share it (the dataloader pattern):

* A read of a run of notebook N joins the runs-list request for N that is being made or is in
  flight, and is answered from the row of its run in that list.
* Otherwise it opens a new request for N and lets the reads of N made in the same event-loop
  turn join it. With company, it sends ``GET /v2/notebooks/{N}/runs`` (100 rows), which more
  reads may join while it is in flight; alone, it reads nothing here and the caller sends its
  own ``GET /v2/runs/{id}``, the lighter request for one run. So a list request is only
  sent for two reads or more.
* The list says nothing of a run's snapshot or error, and may not show a run at all (one
  older than the page, or newer than the request): such reads get None and the caller reads
  the run on its own, so a finished run always carries its outputs.

A joined answer can be older than the read by up to one request's duration (the request may
have been sent just before the read came); nothing else is ever reused. A failed list request
is raised to every read that shared it, each as its own copy of the error (callers attach
their own handle to what they catch).

State: an instance lives on one backend. It holds, per notebook, only the list request being
made or in flight, dropped when its answer comes, so its size is bounded by the number of
concurrent reads; nothing is kept between polls.
"""

from __future__ import annotations

from typing import Final

import anyio
import anyio.lowlevel
import attrs

from ...errors import NotebookOpsError
from ._wire import RunSummary
from .client import DeepnoteClient

__all__ = ["PAGE_SIZE", "ReadCoalescer"]

#: Rows one shared list asks for: Deepnote's largest page.
PAGE_SIZE: Final = 100


@attrs.define(eq=False)
class _Request:
    """One runs-list request of a notebook, shared by the reads that joined it."""

    #: Reads sharing it, the one that opened it included.
    readers: int = 1
    done: anyio.Event = attrs.field(factory=anyio.Event)
    rows: dict[str, RunSummary] | None = None
    error: NotebookOpsError | None = None


def _copy(error: NotebookOpsError) -> NotebookOpsError:
    """A copy of a shared error for one more reader, without the handle another one attached."""
    clone = type(error).__new__(type(error), *error.args)
    clone.__dict__.update({k: v for k, v in error.__dict__.items() if k != "handle"})
    return clone


class ReadCoalescer:
    """Merges concurrent reads of one notebook's runs into one runs-list request, sent with
    ``client``'s ``list_notebook_runs_page``."""

    def __init__(self, client: DeepnoteClient) -> None:
        self._client = client
        #: Per notebook: the list request reads may join (being made or in flight).
        self._open: dict[str, _Request] = {}

    async def listed(self, notebook_id: str, run_id: str) -> RunSummary | None:
        """The run's row from a list request shared with concurrent reads of its notebook, or
        None when the caller must read the run on its own: it had no company, its run is not
        on the list, or the shared request was abandoned (its sender was cancelled)."""
        request = self._open.get(notebook_id)
        mine = request is None
        if request is not None:
            request.readers += 1
            await request.done.wait()
        else:
            request = self._open[notebook_id] = _Request()
            await anyio.lowlevel.checkpoint()  # this turn's other reads join meanwhile
            if request.readers == 1:  # alone: a read of its own is the lighter request
                del self._open[notebook_id]
                request.rows = {}
                request.done.set()
                return None
            await self._send(notebook_id, request)
        if request.error is not None:
            raise request.error if mine else _copy(request.error)
        assert request.rows is not None
        return request.rows.get(run_id)

    async def _send(self, notebook_id: str, request: _Request) -> None:
        try:
            page = await self._client.list_notebook_runs_page(notebook_id, page_size=PAGE_SIZE)
            request.rows = {row.run_id: row for row in page.runs}
        except NotebookOpsError as error:
            request.error = error
        finally:
            if request.rows is None and request.error is None:
                # Cancelled: the reads that joined must not wait forever, nor fail for it;
                # they read their runs on their own.
                request.rows = {}
            if self._open.get(notebook_id) is request:
                del self._open[notebook_id]
            request.done.set()
