"""Run a PostHog notebook's Python cells and watch them finish one by one.

Try it against the sandbox (no account needed), in two terminals::

    notebookops sandbox --env-file sandbox.env      # terminal 1: keeps running
    source sandbox.env                              # terminal 2
    python examples/posthog_run.py Ada

Against PostHog, set ``POSTHOG_PERSONAL_API_KEY`` (a personal key, ``phx_...``, created
without scopes: the kernel endpoints refuse scoped keys), ``POSTHOG_PROJECT_ID``,
``POSTHOG_HOST`` (default https://us.posthog.com) and ``POSTHOG_NOTEBOOK_ID`` (the short id
in the notebook's URL). The input ``name`` is assigned as a variable before the first cell.
"""

from __future__ import annotations

import os
import sys

import anyio

from notebookops import NotebookOpsError, Run, run_and_wait
from notebookops.backends.posthog import PostHogBackend


def show(run: Run) -> None:
    progress = run.progress
    cells = f" (cell {progress.completed} of {progress.total})" if progress else ""
    print(f"  {run.state.value}{cells}")


async def main(name: str) -> int:
    short_id = os.environ.get("POSTHOG_NOTEBOOK_ID")
    if not short_id:
        print("set POSTHOG_NOTEBOOK_ID (see this script's docstring)", file=sys.stderr)
        return 2
    try:
        # Key, project and base URL come from the POSTHOG_* variables. The default "auto"
        # mode uses PostHog's server-side runs where the server has them; otherwise it runs
        # the cells through the notebook's kernel, streaming their output (no polling).
        async with PostHogBackend() as posthog:
            run = await run_and_wait(
                posthog,
                short_id,
                inputs={"name": name},
                timeout=600,
                on_start=lambda handle: print(f"started {handle.run_id}"),
                on_update=show,
            )
    except NotebookOpsError as error:
        print(f"failed: {error}", file=sys.stderr)
        return 1
    print(f"finished: {run.state.value}")
    for output in run.outputs:
        if output.plain_text is not None:
            print(f"  cell {output.cell_index}: {output.plain_text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "Ada"))
