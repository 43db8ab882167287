"""The local backend end to end: real ipykernel processes, one per run.

Each kernel costs a second or so, so every test here starts at most one (several start
none), and each checks that the kernel process is gone once the run has ended. The
``_no_orphan_kernels`` fixture (conftest) checks the same for every test, including the
conformance suite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from notebookops import (
    BackendClosed,
    ConfigurationError,
    NotFound,
    PollPolicy,
    Run,
    RunFailed,
    RunHandle,
    RunProgress,
    RunRequest,
    RunState,
    RunTimeout,
    UnsupportedOperation,
    run_and_wait,
)
from notebookops.backends.local import LocalBackend, LocalRunOptions
from notebookops.testing.local import write_notebook

HELLO = Path(__file__).resolve().parents[2] / "examples" / "notebooks" / "hello.ipynb"
FAST = PollPolicy(initial=0.01, maximum=0.05)
#: Prints, then sleeps in short steps (interruptible) for ~30 s, then a cell never reached.
LONG = (
    'print("started")',
    "import time\n\nfor _ in range(600):\n    time.sleep(0.05)",
    'print("never")',
)


def kernel_running(run: Run) -> bool:
    pid = run.raw["kernel_pid"]
    assert isinstance(pid, int), f"no kernel pid in {run.raw}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(
    backend: LocalBackend, handle: RunHandle, condition: Callable[[Run], bool], timeout: float = 60
) -> Run:
    """The first pushed update that meets ``condition``."""
    last: Run | None = None
    with anyio.fail_after(timeout):
        async with aclosing(backend.watch_run(handle)) as runs:
            async for last in runs:
                if condition(last):
                    return last
    raise AssertionError(f"the run ended before the condition held: {last}")


def replace_with_file(directory: Path) -> None:
    """Turn a directory into a file, so saving into it fails (synchronous on purpose: no
    await may let a just-started run begin)."""
    directory.rmdir()
    directory.write_text("in the way")


def finished(run: Run) -> bool:
    return run.state.is_terminal


def texts(run: Run) -> str:
    return "".join(output.text or "" for output in run.outputs)


# -- success: the README's example notebook


async def test_hello_example_runs_with_injected_inputs(tmp_path: Path) -> None:
    saved = tmp_path / "hello-out.ipynb"
    updates: list[Run] = []
    async with LocalBackend() as backend:
        run = await run_and_wait(
            backend,
            str(HELLO),
            inputs={"name": "Ada", "count": 2},
            options=LocalRunOptions(save_to=saved),
            timeout=120,
            on_update=updates.append,
        )
    assert run.state is RunState.SUCCEEDED
    assert run.vendor_state == "succeeded"
    assert run.error is None
    assert run.started_at is not None
    assert run.finished_at is not None
    assert run.started_at <= run.finished_at
    assert not kernel_running(run)

    # Inputs were injected after the `parameters` cell (index 1), so later cells moved by one.
    by_cell = {(output.cell_id, output.output_type): output for output in run.outputs}
    assert len(run.outputs) == 3
    greet = by_cell["greet", "stream"]
    assert (greet.name, greet.text, greet.cell_index) == (
        "stdout",
        "1. Hello, Ada!\n2. Hello, Ada!\n",
        3,
    )
    shown = by_cell["show", "display_data"]
    assert shown.data["text/markdown"] == "**Hello, Ada!** (said 2 times)"
    assert shown.cell_index == 4
    summary = by_cell["summary", "execute_result"]
    assert summary.plain_text == "{'name': 'Ada', 'count': 2, 'letters': 6}"

    # Per-cell progress reached on_update as cells finished.
    completed = [update.progress.completed or 0 for update in updates if update.progress]
    assert len(completed) == len(updates)
    assert completed == sorted(completed)
    assert any(
        update.state is RunState.RUNNING and 0 < count < 5
        for update, count in zip(updates, completed, strict=True)
    )
    assert updates[0].state is RunState.PENDING
    assert run.progress == RunProgress(completed=5, total=5, current=None)

    # The executed notebook was saved where asked; the source notebook is untouched.
    assert [artifact.path for artifact in run.artifacts] == [str(saved)]
    assert run.artifacts[0].size == len(saved.read_bytes())
    executed = json.loads(saved.read_text())
    injected = executed["cells"][2]
    assert injected["id"] == "injected-parameters"
    assert injected["metadata"]["tags"] == ["injected-parameters"]
    assert "".join(injected["source"]) == "# Parameters\nname = 'Ada'\ncount = 2\n"
    assert executed["cells"][3]["outputs"][0]["text"] == ["1. Hello, Ada!\n", "2. Hello, Ada!\n"]
    assert executed["metadata"]["language_info"]["name"] == "python"
    original = json.loads(HELLO.read_text())
    assert all(not cell.get("outputs") for cell in original["cells"])


# -- failure


async def test_failing_cell_fails_the_run_with_its_traceback(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "fails.ipynb",
        [
            'print("before")',
            "def explode(value):\n"
            "    raise ValueError(f'bad value {value!r}')\n"
            "\n"
            "explode(threshold)",
            'print("never")',
        ],
    )
    out = tmp_path / "out"
    async with LocalBackend(output_dir=out) as backend:
        with pytest.raises(RunFailed) as caught:
            await run_and_wait(backend, str(path), inputs={"threshold": 7}, timeout=120)
    run = caught.value.run
    assert run is not None
    assert run.state is RunState.FAILED
    assert not kernel_running(run)
    error = run.error
    assert error is not None
    # No parameters cell: the inputs went in at the top, so the failing cell is index 2.
    assert (error.name, error.message, error.cell_id, error.cell_index, error.platform) == (
        "ValueError",
        "bad value 7",
        "cell-1",
        2,
        False,
    )
    trace = "\n".join(error.traceback)
    assert "explode" in trace
    assert "\x1b" not in trace
    assert "failed in cell 2 (cell-1): bad value 7" in str(caught.value)
    assert [(output.cell_id, output.output_type) for output in run.outputs] == [
        ("cell-0", "stream"),
        ("cell-1", "error"),
    ]
    assert run.outputs[1].ename == "ValueError"
    assert "never" not in texts(run)
    assert run.progress == RunProgress(completed=3, total=4, current=None)

    saved = out / f"fails-{run.run_id}.ipynb"
    assert [artifact.path for artifact in run.artifacts] == [str(saved)]
    executed = json.loads(saved.read_text())
    assert executed["cells"][0]["id"] == "injected-parameters"
    assert "threshold = 7" in "".join(executed["cells"][0]["source"])
    assert executed["cells"][2]["outputs"][0]["ename"] == "ValueError"


async def test_cell_timeout_fails_the_run(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "slow.ipynb", ['print("quick")', "import time\n\ntime.sleep(60)"]
    )
    async with LocalBackend() as backend:
        run = await run_and_wait(
            backend,
            str(path),
            options=LocalRunOptions(cell_timeout=1),
            raise_on_failure=False,
            timeout=120,
        )
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert run.error.name == "CellTimeoutError"
    assert run.error.cell_index == 1
    assert "within its cell_timeout of 1s" in run.error.message
    assert texts(run) == "quick\n"
    assert not kernel_running(run)


async def test_kernel_that_cannot_start_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "jupyter" / "kernels" / "broken"
    spec.mkdir(parents=True)
    crash = "import sys; sys.stderr.write('kernel exploded\\n'); sys.exit(3)"
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-c", crash, "{connection_file}"],
                "display_name": "Broken",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    path = write_notebook(tmp_path / "nb.ipynb", ["1"], kernel="broken")
    # kernel_name=None: the notebook's own kernelspec decides.
    async with LocalBackend(kernel_name=None, startup_timeout=30) as backend:
        run = await run_and_wait(backend, str(path), raise_on_failure=False, timeout=60)
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert run.error.name == "KernelStartError"
    assert run.error.platform is True
    assert "the 'broken' kernel did not start" in run.error.message
    assert "kernel exploded" in run.error.message
    assert run.raw["kernel_name"] == "broken"
    assert not kernel_running(run)


async def test_saving_failure_fails_an_otherwise_good_run(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "ok.ipynb", ["1 + 1"])
    folder = tmp_path / "folder"
    folder.mkdir()
    async with LocalBackend() as backend:
        handle = await backend.start_run(
            RunRequest(str(path), options=LocalRunOptions(save_to=folder / "out.ipynb"))
        )
        # Valid when the run started; by the time the notebook is saved it is a file.
        replace_with_file(folder)
        run = await until(backend, handle, finished)
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert "could not save the executed notebook" in run.error.message
    assert run.outputs[0].plain_text == "2"
    assert run.artifacts == ()
    assert not kernel_running(run)


# -- cancellation, deadlines, closing


async def test_cancel_interrupts_the_running_cell(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "long.ipynb", LONG)
    # A long grace period: only the interrupt can stop the run in time.
    async with LocalBackend(interrupt_grace=60) as backend:
        handle = await backend.start_run(RunRequest(str(path)))
        running = await until(
            backend, handle, lambda run: run.progress == RunProgress(1, 3, "cell-1")
        )
        assert running.state is RunState.RUNNING
        polled = await backend.get_run(handle)
        assert polled.state is RunState.RUNNING
        assert polled.outputs == running.outputs
        assert kernel_running(polled)
        await anyio.sleep(0.3)  # let the kernel get into the loop
        with anyio.fail_after(20):
            await backend.cancel_run(handle)
            final = await until(backend, handle, finished)
        await backend.cancel_run(handle)  # a finished run: nothing happens
        assert await backend.get_run(handle) == final
    assert final.state is RunState.CANCELLED
    assert final.vendor_state == "cancelled"
    assert final.error is None
    assert final.raw["cancel_reason"] == "cancel requested"
    # The KeyboardInterrupt raised inside the kernel is the remote side seeing the interrupt.
    errors = [output for output in final.outputs if output.output_type == "error"]
    assert [(output.ename, output.cell_index) for output in errors] == [("KeyboardInterrupt", 1)]
    assert texts(final) == "started\n"
    assert not kernel_running(final)


async def test_kernel_ignoring_the_interrupt_is_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stubborn = (
        "import time\n"
        "\n"
        "while True:\n"
        "    try:\n"
        "        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n"
        "        pass"
    )
    path = write_notebook(tmp_path / "stubborn.ipynb", ['print("started")', stubborn])
    caplog.set_level(logging.WARNING, logger="notebookops.local")
    async with LocalBackend(interrupt_grace=0.5) as backend:
        handle = await backend.start_run(RunRequest(str(path)))
        await until(backend, handle, lambda run: run.progress == RunProgress(1, 2, "cell-1"))
        await anyio.sleep(0.3)
        await backend.cancel_run(handle)
        final = await until(backend, handle, finished, timeout=20)
    assert final.state is RunState.CANCELLED
    assert not any(output.output_type == "error" for output in final.outputs)
    assert any("killing its kernel" in record.getMessage() for record in caplog.records)
    # nbclient's complaint about the kernel we killed on purpose is not a warning.
    assert not any("Kernel died" in record.getMessage() for record in caplog.records)
    assert not kernel_running(final)


async def test_run_and_wait_timeout_cancels_the_run(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "long.ipynb", LONG)
    async with LocalBackend() as backend:
        with pytest.raises(RunTimeout) as caught:
            await run_and_wait(backend, str(path), timeout=3, poll=FAST)
        assert caught.value.cancelled is True
        # The cancel returned once the run had ended: the error reports it CANCELLED, not
        # still running (issue 29, item 8).
        reported = caught.value.run
        assert reported is not None
        assert (reported.state, reported.vendor_state) == (RunState.CANCELLED, "cancelled")
        handle = caught.value.handle
        assert handle is not None
        final = await until(backend, handle, finished, timeout=30)
    assert final.state is RunState.CANCELLED
    assert "never" not in texts(final)
    assert not kernel_running(final)


async def test_cancel_while_the_kernel_starts(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "long.ipynb", LONG)
    async with LocalBackend() as backend:
        handle = await backend.start_run(RunRequest(str(path)))
        starting = await until(backend, handle, lambda run: run.raw["kernel_pid"] is not None)
        assert starting.state is RunState.PENDING
        assert starting.vendor_state == "starting"
        await backend.cancel_run(handle)
        final = await until(backend, handle, finished, timeout=30)
    assert final.state is RunState.CANCELLED
    assert final.started_at is None
    assert final.outputs == ()
    assert not kernel_running(final)


async def test_cancel_before_the_run_begins_starts_no_kernel(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "long.ipynb", LONG)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    async with LocalBackend() as backend:
        # start_run returns without yielding to its run, and cancel_run records the request
        # before awaiting anything: the runs end before their task starts a kernel.
        saved = await backend.start_run(
            RunRequest(str(path), options=LocalRunOptions(save_to=tmp_path))
        )
        await backend.cancel_run(saved)
        unsaved = await backend.start_run(
            RunRequest(str(path), options=LocalRunOptions(save_to=blocked / "x.ipynb"))
        )
        replace_with_file(blocked)
        await backend.cancel_run(unsaved)
        first = await until(backend, saved, finished)
        second = await until(backend, unsaved, finished)
    assert first.state is RunState.CANCELLED
    assert first.raw["kernel_pid"] is None
    assert second.raw["kernel_pid"] is None
    # An existing directory as save_to receives <stem>-<run id>.ipynb, even for a cancelled run.
    target = tmp_path / f"long-{saved.run_id}.ipynb"
    assert [artifact.path for artifact in first.artifacts] == [str(target)]
    assert "".join(json.loads(target.read_text())["cells"][0]["source"]) == 'print("started")'
    # Saving failed: the run stays CANCELLED (the failure is only logged).
    assert second.state is RunState.CANCELLED
    assert second.artifacts == ()


async def test_closing_the_backend_kills_running_kernels(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "long.ipynb", LONG)
    backend = LocalBackend(interrupt_grace=60)
    handle = await backend.start_run(RunRequest(str(path)))
    await until(backend, handle, lambda run: run.progress == RunProgress(1, 3, "cell-1"))
    queued = await backend.start_run(RunRequest(str(path)))
    seen: dict[str, list[Run]] = {handle.run_id: [], queued.run_id: []}

    async def follow(watched: RunHandle) -> None:
        async for run in backend.watch_run(watched):
            seen[watched.run_id].append(run)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(follow, handle)
            group.start_soon(follow, queued)
            await anyio.sleep(0.1)
            await backend.aclose()
    final = seen[handle.run_id][-1]
    assert final.state is RunState.CANCELLED
    assert final.raw["cancel_reason"] == "the backend was closed"
    assert not kernel_running(final)
    assert seen[queued.run_id][-1].state is RunState.CANCELLED
    with pytest.raises(BackendClosed):
        await backend.get_run(handle)
    with pytest.raises(BackendClosed):
        await backend.start_run(RunRequest(str(path)))
    await backend.aclose()


# -- retention


async def test_finished_runs_outputs_are_bounded_by_bytes(tmp_path: Path) -> None:
    """Two runs print 40 characters each; with room for 50, the older run keeps its state
    but its outputs are released (issue 30, item 3)."""
    path = write_notebook(tmp_path / "prints.ipynb", ['print("x" * 39)'])
    async with LocalBackend(keep_output_bytes=50, keep_finished_runs=2) as backend:
        first = await run_and_wait(backend, str(path), timeout=120, poll=FAST)
        assert texts(first) == "x" * 39 + "\n"
        second = await run_and_wait(backend, str(path), timeout=120, poll=FAST)
        older = await backend.get_run(first.handle)
        newer = await backend.get_run(second.handle)
    assert older.state is RunState.SUCCEEDED
    assert older.outputs == ()
    assert older.raw["outputs_released"] is True
    assert newer.outputs == second.outputs
    assert "outputs_released" not in newer.raw
    assert not kernel_running(older)


# -- errors before any run exists (no kernel)


async def test_request_problems_are_raised_by_start_run(tmp_path: Path) -> None:
    good = write_notebook(tmp_path / "good.ipynb", ["1"])
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    async with LocalBackend() as backend:
        with pytest.raises(ConfigurationError, match=r"notebook file '.*missing\.ipynb' not found"):
            await backend.start_run(RunRequest(str(tmp_path / "missing.ipynb")))
        with pytest.raises(ConfigurationError, match="is not a file"):
            await backend.start_run(RunRequest(str(tmp_path)))
        with pytest.raises(ConfigurationError, match="is not a valid Jupyter notebook"):
            await backend.start_run(RunRequest(str(bad)))
        with pytest.raises(ConfigurationError, match="not a valid Python identifier"):
            await backend.start_run(RunRequest(str(good), inputs={"no-dash": 1}))
        with pytest.raises(ConfigurationError, match="JSON-compatible"):
            await backend.start_run(RunRequest(str(good), inputs={"x": {1, 2}}))
        with pytest.raises(UnsupportedOperation, match="subset of cells"):
            await backend.start_run(RunRequest(str(good), blocks=["cell-0"]))
        with pytest.raises(ConfigurationError, match="LocalRunOptions"):
            await backend.start_run(RunRequest(str(good), options=object()))
        with pytest.raises(ConfigurationError, match="does not exist"):
            await backend.start_run(
                RunRequest(str(good), options=LocalRunOptions(save_to=tmp_path / "no" / "x.ipynb"))
            )
        with pytest.raises(ConfigurationError, match="expected a RunRequest"):
            await backend.start_run("good.ipynb")  # type: ignore[arg-type]
    async with LocalBackend(kernel_name="no-such-kernel") as backend:
        with pytest.raises(
            ConfigurationError, match=r"no Jupyter kernel named 'no-such-kernel'.*python3"
        ):
            await backend.start_run(RunRequest(str(good)))
    async with LocalBackend(working_dir=tmp_path / "nowhere") as backend:
        with pytest.raises(ConfigurationError, match="working directory"):
            await backend.start_run(RunRequest(str(good)))


async def test_unknown_runs_are_not_found() -> None:
    async with LocalBackend() as backend:
        stranger = RunHandle(backend="local", run_id="5e1f", notebook_id="x.ipynb")
        with pytest.raises(NotFound, match=r"not resumable across processes.*finished runs"):
            await backend.get_run(stranger)
        with pytest.raises(NotFound):
            await backend.cancel_run(stranger)
        with pytest.raises(NotFound):
            async for _ in backend.watch_run(stranger):
                pass
        with pytest.raises(ConfigurationError, match="belongs to the 'fake' backend"):
            await backend.get_run(RunHandle(backend="fake", run_id="1", notebook_id="x"))


async def test_relative_paths_and_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_notebook(tmp_path / "rel.ipynb", ["1"])
    monkeypatch.chdir(tmp_path)
    async with LocalBackend(working_dir=tmp_path) as backend:
        handle = await backend.start_run(RunRequest("rel.ipynb"))
        await backend.cancel_run(handle)
        run = await until(backend, handle, finished)
    assert handle.notebook_id == "rel.ipynb"
    assert handle.extra == {"path": str(tmp_path / "rel.ipynb")}
    assert run.raw["cwd"] == str(tmp_path)
    assert run.state is RunState.CANCELLED


async def test_event_loop_requirements(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "nb.ipynb", ["1"])
    async with LocalBackend() as backend:
        handle = await backend.start_run(RunRequest(str(path)))
        await backend.cancel_run(handle)  # before it begins: no kernel

        def from_another_loop() -> None:
            asyncio.run(backend.start_run(RunRequest(str(path))))

        with pytest.raises(ConfigurationError, match="another event loop"):
            await anyio.to_thread.run_sync(from_another_loop)
        assert (await until(backend, handle, finished)).state is RunState.CANCELLED


def test_runs_need_asyncio(tmp_path: Path) -> None:
    pytest.importorskip("trio")
    path = write_notebook(tmp_path / "nb.ipynb", ["1"])

    async def main() -> None:
        async with LocalBackend() as backend:
            await backend.start_run(RunRequest(str(path)))

    with pytest.raises(ConfigurationError, match="run it under asyncio"):
        anyio.run(main, backend="trio")
