"""Run a Deepnote notebook with an input and wait for it.

Try it against the sandbox (no account needed), in two terminals::

    notebookops sandbox --env-file sandbox.env      # terminal 1: keeps running
    source sandbox.env                              # terminal 2
    python examples/deepnote_run.py Ada

Against Deepnote itself, set ``DEEPNOTE_API_KEY`` and ``DEEPNOTE_NOTEBOOK_ID`` (the notebook
id from its URL); the notebook needs an input variable ``name``. ``DEEPNOTE_API_URL`` is only
needed for the sandbox (or a proxy).
"""

from __future__ import annotations

import os
import sys

import anyio

from notebookops import NotebookOpsError, PollPolicy, Run, run_and_wait
from notebookops.backends.deepnote import DeepnoteBackend


def show(run: Run) -> None:
    print(f"  {run.state.value} ({run.vendor_state})")


async def main(name: str) -> int:
    notebook_id = os.environ.get("DEEPNOTE_NOTEBOOK_ID")
    if not notebook_id:
        print("set DEEPNOTE_NOTEBOOK_ID (see this script's docstring)", file=sys.stderr)
        return 2
    try:
        # The API key comes from DEEPNOTE_API_KEY (TOKEN_ENV), the origin from DEEPNOTE_API_URL.
        async with DeepnoteBackend() as deepnote:
            run = await run_and_wait(
                deepnote,
                notebook_id,
                inputs={"name": name},  # Deepnote inputs are strings (numbers too: "5")
                timeout=600,
                poll=PollPolicy(initial=0.5, maximum=10),
                on_start=lambda handle: print(f"started {handle.run_id}: {handle.to_json()}"),
                on_update=show,
            )
    except NotebookOpsError as error:
        print(f"failed: {error}", file=sys.stderr)
        return 1
    print(f"finished: {run.state.value}")
    for output in run.outputs:
        print(f"  {output.cell_id}: {output.plain_text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "Ada"))
