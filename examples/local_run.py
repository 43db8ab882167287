"""Run the bundled notebook on this machine: the main job, with no account and no network.

    pip install 'notebookops[local]'
    python examples/local_run.py            # or: python examples/local_run.py Grace

It runs examples/notebooks/hello.ipynb through a local Jupyter kernel with two inputs
(injected after the cell tagged ``parameters``, as papermill does), shows progress as cells
finish, then prints the run's state and outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from notebookops import Run, run_and_wait
from notebookops.backends.local import LocalBackend

NOTEBOOK = Path(__file__).parent / "notebooks" / "hello.ipynb"


def show(run: Run) -> None:
    progress = run.progress
    cells = f" (cell {progress.completed} of {progress.total})" if progress else ""
    print(f"  {run.state.value} ({run.vendor_state}){cells}")


async def main(name: str) -> None:
    async with LocalBackend() as backend:
        run = await run_and_wait(
            backend,
            str(NOTEBOOK),
            inputs={"name": name, "count": 2},
            timeout=120,
            on_start=lambda handle: print(f"started local run {handle.run_id}"),
            on_update=show,
        )
    print(f"finished: {run.state.value}")
    for output in run.outputs:
        # Rich outputs carry several forms; the Markdown one reads best here.
        text = output.data.get("text/markdown") or output.plain_text
        print(f"  output of cell {output.cell_index}: {text!r}")


if __name__ == "__main__":
    # The local backend needs asyncio (nbclient and jupyter_client are asyncio libraries).
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "Ada", backend="asyncio")
