"""Run a Datalore notebook with a parameter and list the files the run produced.

Try it against the sandbox (no account needed), in two terminals::

    notebookops sandbox --env-file sandbox.env      # terminal 1: keeps running
    source sandbox.env                              # terminal 2
    python examples/datalore_run.py Ada

Against Datalore, set ``DATALORE_TOKEN`` (Account settings > API tokens),
``DATALORE_NOTEBOOK_ID`` (``owner/id`` from ``.../notebook/<owner>/<id>``) and, on premises,
``DATALORE_URL``. The notebook needs an interactive control bound to the variable ``name``.
"""

from __future__ import annotations

import os
import sys

import anyio

from notebookops import NotebookOpsError, PollPolicy, Run, run_and_wait
from notebookops.backends.datalore import DataloreBackend


def show(run: Run) -> None:
    print(f"  {run.state.value} ({run.vendor_state or 'no status'})")


async def main(name: str) -> int:
    notebook_id = os.environ.get("DATALORE_NOTEBOOK_ID")
    if not notebook_id:
        print("set DATALORE_NOTEBOOK_ID (see this script's docstring)", file=sys.stderr)
        return 2
    try:
        # The token and installation come from DATALORE_TOKEN and DATALORE_URL.
        async with DataloreBackend() as datalore:
            run = await run_and_wait(
                datalore,
                notebook_id,
                inputs={"name": name},
                # Datalore cannot cancel runs: at the deadline the run is left going and
                # RunTimeout says so.
                timeout=600,
                poll=PollPolicy(initial=0.5, maximum=10),
                on_start=lambda handle: print(f"started {handle.run_id} ({handle.web_url})"),
                on_update=show,
            )
    except NotebookOpsError as error:
        print(f"failed: {error}", file=sys.stderr)
        return 1
    print(f"finished: {run.state.value}")
    for artifact in run.artifacts:
        print(f"  artifact: {artifact.name} {artifact.url}")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "Ada"))
