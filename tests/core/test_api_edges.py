"""The public API's edges, as a newcomer meets them (issue 29: API edges)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import notebookops
from notebookops import (
    ConfigurationError,
    PollPolicy,
    RunFailed,
    RunHandle,
    RunRequest,
    RunState,
    run_and_wait,
    run_many,
    start_run,
)
from notebookops.testing import FakeBackend, FakeScript

FAST = PollPolicy(initial=0.001, multiplier=1.5, maximum=0.005, jitter=0)


async def test_run_many_refuses_a_single_string() -> None:
    async with FakeBackend() as backend:
        with pytest.raises(ConfigurationError, match="not a single string"):
            await run_many(backend, "abc")
        assert backend.start_count == 0


async def test_run_many_refuses_a_misspelt_option_at_once() -> None:
    async with FakeBackend() as backend:
        with pytest.raises(TypeError, match="timout"):
            await run_many(backend, ["a"], timout=5)  # type: ignore[call-arg]
        assert backend.start_count == 0


async def test_run_many_checks_its_options_before_starting_anything() -> None:
    async with FakeBackend() as backend:
        with pytest.raises(ConfigurationError, match="on_timeout"):
            await run_many(backend, ["a", "b"], on_timeout="later")  # type: ignore[arg-type]
        assert backend.start_count == 0


async def test_a_failed_run_in_run_many_keeps_its_run_on_the_outcome() -> None:
    async with FakeBackend(default_script=FakeScript(states=("running", "failed"))) as backend:
        (outcome,) = await run_many(backend, ["nb"], poll=FAST)
    assert isinstance(outcome.error, RunFailed)
    assert outcome.run is not None
    assert outcome.run.state is RunState.FAILED
    assert outcome.handle == outcome.run.handle
    assert not outcome.ok


async def test_start_run_takes_a_plain_notebook_id() -> None:
    async with FakeBackend() as backend:
        handle = await start_run(backend, "nb")
        assert handle.notebook_id == "nb"


@pytest.mark.parametrize("call", ["run_and_wait", "start_run"])
async def test_no_backend_is_a_clear_error(call: str) -> None:
    function = run_and_wait if call == "run_and_wait" else start_run
    with pytest.raises(ConfigurationError, match="backend must be a NotebookBackend"):
        await function(None, "nb")  # type: ignore[arg-type]


async def test_an_empty_notebook_id_is_named_as_such() -> None:
    async with FakeBackend() as backend:
        with pytest.raises(ConfigurationError, match="notebook id must be a non-empty"):
            await run_and_wait(backend, "  ")
        with pytest.raises(ConfigurationError):
            await run_and_wait(backend, RunRequest("nb"), inputs={"a": 1})


def test_a_bad_handle_names_the_missing_fields() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RunHandle.from_json("{}")
    message = str(caught.value)
    for field in ("backend", "run_id", "notebook_id"):
        assert f"required field missing @ handle.{field}" in message
    assert "sub-exceptions" not in message


def test_the_library_logs_nothing_to_stderr_when_the_application_set_up_no_logging() -> None:
    code = (
        "import logging, notebookops\n"
        "logging.getLogger('notebookops.orchestration').warning('a library warning')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""


def test_the_library_logger_has_a_null_handler_only() -> None:
    handlers = logging.getLogger("notebookops").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_the_top_level_api_is_what_run_and_wait_users_need() -> None:
    exported = set(notebookops.__all__)
    for adapter_tool in ("BaseBackend", "StateTable", "StreamingBackend", "ApiClient"):
        assert adapter_tool not in exported
    for needed in ("run_and_wait", "start_run", "wait_for_run", "watch", "run_many", "Run"):
        assert needed in exported
    from notebookops.backend import ApiClient, BaseBackend, StateTable, VendorProfile, protected

    assert all((ApiClient, BaseBackend, StateTable, VendorProfile, protected))
