"""Run a notebook on the in-memory FakeBackend: the whole flow with no account and no network.

python examples/fake_backend.py
"""

from __future__ import annotations

import anyio

from notebookops import PollPolicy, Run, run_and_wait
from notebookops.testing import FakeBackend, FakeScript


def show(run: Run) -> None:
    print(f"  {run.state.value:<10} ({run.vendor_state})")


async def main() -> None:
    async with FakeBackend() as backend:
        backend.program("report", FakeScript(states=("pending", "running", "running", "success")))
        run = await run_and_wait(
            backend,
            "report",
            inputs={"day": "2026-11-22"},
            poll=PollPolicy(initial=0.05, maximum=0.2),
            on_start=lambda handle: print(f"started {handle.run_id}: {handle.to_json()}"),
            on_update=show,
        )
        print(f"finished: {run.state.value}")
        for output in run.outputs:
            print(f"  output: {output.plain_text!r}")


if __name__ == "__main__":
    anyio.run(main)
