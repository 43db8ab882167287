"""Run one notebook for many inputs at once, at most three at a time, with ``run_many``.

Try it against the sandbox (no account needed), in two terminals::

    notebookops sandbox --env-file sandbox.env      # terminal 1: keeps running
    source sandbox.env                              # terminal 2
    python examples/many_runs.py

It uses Deepnote (``DEEPNOTE_API_KEY``, ``DEEPNOTE_NOTEBOOK_ID``, and ``DEEPNOTE_API_URL``
for the sandbox), but ``run_many`` works the same on any backend. One of the requests is
wrong on purpose (a number where Deepnote wants a string): its outcome carries the error and
the other runs are not affected.
"""

from __future__ import annotations

import os
import sys

import anyio

from notebookops import PollPolicy, RunRequest, run_many
from notebookops.backends.deepnote import DeepnoteBackend

NAMES: list[object] = ["Ada", "Grace", "Linus", "Barbara", 42]


async def main() -> int:
    notebook_id = os.environ.get("DEEPNOTE_NOTEBOOK_ID")
    if not notebook_id:
        print("set DEEPNOTE_NOTEBOOK_ID (see this script's docstring)", file=sys.stderr)
        return 2
    requests = [RunRequest(notebook=notebook_id, inputs={"name": name}) for name in NAMES]
    async with DeepnoteBackend() as deepnote:  # DEEPNOTE_API_KEY and DEEPNOTE_API_URL
        outcomes = await run_many(
            deepnote,
            requests,
            concurrency=3,
            timeout=600,
            poll=PollPolicy(initial=0.5, maximum=10),
        )
    for outcome in outcomes:
        name = outcome.request.inputs["name"]
        if outcome.run is not None:
            print(f"{name!r:>10}: {outcome.run.state.value} (run {outcome.run.run_id})")
        else:
            print(f"{name!r:>10}: error: {outcome.error}")
    succeeded = sum(outcome.ok for outcome in outcomes)
    print(f"{succeeded} of {len(outcomes)} runs succeeded")
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
