"""Fuzzing every vendor's responses: whatever a server sends, an adapter method returns a model
or raises from the notebookops tree (ResponseDecodeError for an unreadable answer), never a
bare KeyError/TypeError/cattrs/RecursionError/UnicodeError.

Bodies are arbitrary JSON, near-valid documents (a real answer with fields dropped, replaced
or added), arbitrary bytes and a few hand-made bombs (deep nesting, lone surrogates, NaN).
Each example drives the whole adapter method through :mod:`._stub` (no socket).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notebookops import (
    APIError,
    NotebookOpsError,
    ResponseDecodeError,
    RunHandle,
    RunRequest,
    StartOutcomeUnknown,
)
from notebookops._api_errors import VendorProfile, build_api_error
from notebookops.backends.datalore import DataloreBackend
from notebookops.backends.datalore.client import PROFILE as DATALORE_PROFILE
from notebookops.backends.deepnote import BlockPlacement, DeepnoteBackend, DeepnoteOptions
from notebookops.backends.deepnote.client import PROFILE as DEEPNOTE_PROFILE
from notebookops.backends.posthog import NoRunnableCells, PostHogBackend
from notebookops.backends.posthog._requests import PROFILE as POSTHOG_PROFILE
from notebookops.models import Run, RunState
from notebookops.orchestration import wait_for_run
from notebookops.policies import PollPolicy, RetryPolicy
from notebookops.testing.deepnote import dump_yaml
from notebookops.transport import Response

from ._stub import install

#: Examples per target; raise it for a longer hunt (NOTEBOOKOPS_FUZZ_EXAMPLES=2000).
EXAMPLES = int(os.environ.get("NOTEBOOKOPS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = "2026-01-02T03:04:05Z"
DEEPNOTE_URL = "https://api.deepnote.test"
DATALORE_URL = "https://datalore.test"
POSTHOG_URL = "https://posthog.test"

# --------------------------------------------------------------------------- strategies

# Text with every code point JSON can carry, lone surrogates included ("\ud800" is valid JSON).
TEXT = st.text(st.characters(exclude_categories=()), max_size=16)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | TEXT
)
JSON = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=16,
)

BOMBS = [
    b"",
    b"null",
    b"NaN",
    b"[Infinity, -Infinity]",
    b'"\\ud800"',
    b'{"\\udfff": "\\ud800"}',
    b"\xff\xfe\x00",
    b"<html><body>502 Bad Gateway</body></html>",
]
#: Nesting bombs: too big for hypothesis to print, so every target gets them directly.
DEEP = [
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b"[" * 900 + b"]" * 900,
    b'{"run": ' * 900 + b"{}" + b"}" * 900,
]
DEEP_INDEX: list[int | None] = [None, None, None, *range(len(DEEP))]


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def near(draw: st.DrawFn, seed: Any) -> Any:
    """``seed`` with some fields dropped, some values replaced by arbitrary JSON, some added."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                choice = draw(st.integers(0, 9))
                if choice == 0:
                    continue
                out[key] = draw(JSON) if choice == 1 else walk(item)
            if draw(st.integers(0, 5)) == 0:
                out[draw(TEXT)] = draw(JSON)
            return out
        if isinstance(value, list):
            items = [walk(item) for item in value if draw(st.integers(0, 6))]
            if draw(st.integers(0, 3)) == 0:
                items.append(draw(JSON))
            return items
        return draw(JSON) if draw(st.integers(0, 4)) == 0 else value

    return walk(seed)


def bodies(*seeds: Any) -> st.SearchStrategy[bytes]:
    near_seeds = [near(seed).map(_dumps) for seed in seeds]
    return st.one_of(
        *near_seeds,
        *near_seeds,  # twice the weight: near-valid answers reach the deeper code
        JSON.map(_dumps),
        st.binary(max_size=200),
        st.sampled_from(BOMBS),
    )


# --------------------------------------------------------------------------- harness


class _Unexpected(logging.Handler):
    """Collects "failed unexpectedly" log records: a bare exception caught by a backstop."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "unexpected" in record.getMessage():
            self.records.append(record)


@contextmanager
def backstops_silent() -> Iterator[_Unexpected]:
    handler = _Unexpected()
    logger = logging.getLogger("notebookops")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


Call = Callable[[Any], Awaitable[Any]]


def check(
    make: Callable[[], Any],
    call: Call,
    body: bytes,
    allowed: tuple[type[NotebookOpsError], ...] = (ResponseDecodeError,),
    **stub: Any,
) -> None:
    """Run ``call(backend)`` with every response carrying ``body``: a value, or one of the
    ``allowed`` errors, and nothing else."""

    async def main() -> None:
        backend = make()
        install(backend, body, **stub)
        failure: NotebookOpsError | None = None
        async with backend:
            try:
                await call(backend)
            except NotebookOpsError as error:
                failure = error
        if failure is not None:
            assert isinstance(failure, allowed), f"{type(failure).__name__}: {failure}"
            str(failure), repr(failure)  # reading them must not fail either

    with backstops_silent():
        asyncio.run(main())


# --------------------------------------------------------------------------- Deepnote

SNAPSHOT_YAML = dump_yaml(
    {
        "version": "1.0.0",
        "project": {
            "id": "p1",
            "notebooks": [
                {
                    "id": "nb1",
                    "blocks": [
                        {
                            "id": "b1",
                            "outputs": [
                                {"output_type": "stream", "name": "stdout", "text": "hi"},
                                {"output_type": "error", "ename": "E", "evalue": "v"},
                            ],
                        }
                    ],
                }
            ],
        },
        "execution": {"error": {"name": "E", "message": "m", "traceback": ["t"]}},
    }
)
OUTPUTS = [
    {"output_type": "stream", "name": "stdout", "text": ["a", "b"]},
    {"output_type": "execute_result", "data": {"text/plain": "1"}, "execution_count": 1},
    {"output_type": "error", "ename": "ValueError", "evalue": "boom", "traceback": ["t"]},
]
DN_RUN = {
    "run": {
        "runId": "r1",
        "notebookId": "nb1",
        "projectId": "p1",
        "status": "error",
        "createdAt": T0,
        "completedAt": T0,
        "error": {"message": "boom"},
        "snapshotStatus": "available",
        "snapshotBlocks": [{"id": "b1", "type": "code", "outputs": OUTPUTS, "metadata": {}}],
    }
}
DN_RUN_INLINE = {
    "run": {
        "runId": "r1",
        "status": "success",
        "snapshotStatus": "available",
        "snapshotContent": SNAPSHOT_YAML,
        "snapshot": {"snapshotContent": SNAPSHOT_YAML, "downloadUrl": "/snapshots/r1"},
    }
}
DN_SUMMARY = {"runId": "r1", "notebookId": "nb1", "status": "running", "createdAt": T0}
DN_PAGE = {"runs": [DN_SUMMARY], "pagination": {"nextPageToken": "t", "hasMore": True}}
DN_NOTEBOOK = {
    "notebook": {
        "id": "nb1",
        "projectId": "p1",
        "name": "N",
        "blocks": [{"id": "b1", "type": "code", "content": "x"}],
        "inputs": [{"name": "day", "type": "input-text", "value": "x", "blockId": "b2"}],
    }
}
DN_PROJECT = {
    "project": {
        "id": "p1",
        "name": "P",
        "createdAt": T0,
        "folder": {"id": "f", "path": [{"id": "f", "name": "F"}]},
        "notebooks": [{"id": "nb1", "name": "N", "isScheduled": False, "lastRunAt": T0}],
        "files": [{"path": "a.txt", "size": 3, "updatedAt": T0}],
    }
}
DN_PROJECTS = {"projects": [DN_PROJECT["project"]], "pagination": {"hasMore": False}}
DN_ME = {"workspace": {"id": "w", "slug": "s"}, "accessLevel": "admin", "apiKey": {}, "user": {}}
DN_SCHEDULE = {"schedule": {"notebookId": "nb1", "cron": "0 * * * *", "nextRunAt": T0}}
DN_HANDLE = RunHandle(backend="deepnote", run_id="r1", notebook_id="nb1")


def deepnote() -> DeepnoteBackend:
    return DeepnoteBackend(
        "dn-key",
        base_url=DEEPNOTE_URL,
        options=DeepnoteOptions(
            workspace="w-0b3b2c53-a7ad-441b-80f8-bf8350752305",
            snapshot_wait=0,
            reconcile_attempts=2,
            reconcile_interval=0,
            v1_discovery_timeout=0,
        ),
    )


async def _first_runs(backend: DeepnoteBackend) -> None:
    async with aclosing(backend.client.list_notebook_runs("nb1")) as runs:
        count = 0
        async for _ in runs:
            count += 1
            if count > 5:
                break


DEEPNOTE_CALLS: dict[str, tuple[tuple[Any, ...], Call, tuple[type[NotebookOpsError], ...]]] = {
    "start_run": (
        ({"runId": "r1", "status": "pending", "createdAt": T0}, DN_PAGE),
        lambda b: b.start_run(RunRequest("nb1", inputs={"day": "x"})),
        (StartOutcomeUnknown,),
    ),
    "get_run": ((DN_RUN, DN_RUN_INLINE), lambda b: b.get_run(DN_HANDLE), (ResponseDecodeError,)),
    "client.get_run": ((DN_RUN,), lambda b: b.client.get_run("r1"), (ResponseDecodeError,)),
    "list_notebook_runs_page": (
        (DN_PAGE,),
        lambda b: b.client.list_notebook_runs_page("nb1"),
        (ResponseDecodeError,),
    ),
    "list_notebook_runs": ((DN_PAGE,), _first_runs, (ResponseDecodeError,)),
    "get_notebook": (
        (DN_NOTEBOOK,),
        lambda b: b.client.get_notebook("nb1"),
        (ResponseDecodeError,),
    ),
    "create_notebook": (
        (DN_NOTEBOOK,),
        lambda b: b.client.create_notebook("p1", "N"),
        (ResponseDecodeError,),
    ),
    "get_project": ((DN_PROJECT,), lambda b: b.client.get_project("p1"), (ResponseDecodeError,)),
    "create_project": (
        (DN_PROJECT,),
        lambda b: b.client.create_project("P"),
        (ResponseDecodeError,),
    ),
    "list_projects_page": (
        (DN_PROJECTS,),
        lambda b: b.client.list_projects_page(),
        (ResponseDecodeError,),
    ),
    "me": ((DN_ME,), lambda b: b.client.me(), (ResponseDecodeError,)),
    "upsert_schedule": (
        (DN_SCHEDULE,),
        lambda b: b.client.upsert_schedule("nb1", "0 * * * *"),
        (ResponseDecodeError,),
    ),
    "reorder_blocks": (
        ({"blockIds": ["b1", "b2"]},),
        lambda b: b.client.reorder_blocks("nb1", ["b1"], BlockPlacement.start()),
        (ResponseDecodeError,),
    ),
    "fetch_snapshot": (
        (SNAPSHOT_YAML,),
        lambda b: b.client.fetch_snapshot(f"{DEEPNOTE_URL}/snapshots/r1"),
        (ResponseDecodeError,),
    ),
}


@pytest.mark.parametrize("name", sorted(DEEPNOTE_CALLS))
def test_deepnote_answers_never_escape(name: str) -> None:
    seeds, call, allowed = DEEPNOTE_CALLS[name]

    @FUZZ
    @given(body=bodies(*seeds))
    def run(body: bytes) -> None:
        check(deepnote, call, body, allowed)

    run()


# --------------------------------------------------------------------------- Datalore

DL_RUNNING = {"runId": "r1", "status": "RUNNING", "startTime": T0, "artifacts": []}
DL_DONE = {
    "runId": "r1",
    "userId": "own",
    "notebookId": "nb",
    "startTime": 1_767_000_000_000,
    "endTime": T0,
    "success": True,
    "artifacts": [{"name": "nb.ipynb", "path": "/notebook/own/nb/artifacts/r1/nb.ipynb"}],
}
DL_HANDLE = RunHandle(
    backend="datalore",
    run_id="r1",
    notebook_id="own/nb",
    extra={"mode": "run", "base_url": DATALORE_URL},
)


def datalore() -> DataloreBackend:
    return DataloreBackend(token="dl-token", base_url=DATALORE_URL)


#: A start answered 200 may have started the run: an unreadable answer is StartOutcomeUnknown.
DATALORE_CALLS: dict[str, tuple[tuple[Any, ...], Call, tuple[type[NotebookOpsError], ...]]] = {
    "start_run": (
        ({"runId": "r1"},),
        lambda b: b.start_run(RunRequest("own/nb")),
        (StartOutcomeUnknown,),
    ),
    "get_run": ((DL_RUNNING, DL_DONE), lambda b: b.get_run(DL_HANDLE), (ResponseDecodeError,)),
}


@pytest.mark.parametrize("name", sorted(DATALORE_CALLS))
def test_datalore_answers_never_escape(name: str) -> None:
    seeds, call, allowed = DATALORE_CALLS[name]

    @FUZZ
    @given(body=bodies(*seeds))
    def run(body: bytes) -> None:
        check(datalore, call, body, allowed)

    run()


# --------------------------------------------------------------------------- PostHog

USER = {"id": 1, "uuid": "u", "first_name": "Ann", "email": "a@example.com"}
PH_CONTENT = {
    "type": "doc",
    "content": [
        {"type": "heading", "content": [{"type": "text", "text": "T"}]},
        {"type": "ph-python", "attrs": {"nodeId": "c0", "code": "x = 1"}},
        {"type": "ph-hogql-sql", "attrs": {"nodeId": "c1", "code": "select 1"}},
    ],
}
PH_NOTEBOOK = {
    "id": "u1",
    "short_id": "nb",
    "title": "T",
    "deleted": False,
    "created_at": T0,
    "created_by": USER,
    "last_modified_by": USER,
    "content": PH_CONTENT,
    "text_content": "T",
    "version": 3,
}
PH_PAGE = {
    "count": 1,
    "next": f"{POSTHOG_URL}/api/projects/1/notebooks/?offset=1",
    "results": [PH_NOTEBOOK],
}
PH_ACTIVITY = {"results": [{"id": "a", "activity": "updated", "created_at": T0}], "next": None}
ENVELOPE = {
    "status": "ok",
    "stdout": "hi",
    "stderr": "",
    "media": [{"mime_type": "image/png", "data": "AAAA"}],
    "columns": ["a"],
    "types": ["Int"],
    "row_count": 1,
    "first_page": [[1]],
    "error": None,
}
PH_RESULT = {
    "status": "error",
    "stdout": "out",
    "stderr": "err",
    "result": {"text/plain": "2"},
    "media": [{"mime_type": "image/png", "data": "AAAA"}],
    "execution_count": 2,
    "error_name": "ZeroDivisionError",
    "traceback": ["\x1b[31mZeroDivisionError\x1b[0m: division by zero"],
    "variables": {"x": {"status": "ok", "type": "int"}},
    "started_at": T0,
    "completed_at": T0,
    "kernel_runtime": {"id": "k", "status": "running", "last_used_at": T0},
}
PH_RUN_STATUS = {
    "run_id": "r1",
    "status": "failed",
    "cell_count": 2,
    "current_index": 1,
    "failed_node_id": "c1",
    "error": "Traceback: boom",
    "cells": [
        {"node_id": "c0", "cell_type": "python", "run_id": "c-run", "status": "done"},
        {"node_id": "c1", "cell_type": "python", "run_id": "c-run2", "status": "failed"},
    ],
    "created_at": T0,
    "finished_at": T0,
}
# Cell run ids no URL can carry: PostHog's data, so still an answer, not a caller's mistake.
PH_RUN_STATUS_ODD_IDS = {
    **PH_RUN_STATUS,
    "cells": [
        {"node_id": "c0", "run_id": "..", "status": "done"},
        {"node_id": "c1", "run_id": "\x00", "status": "done"},
        {"node_id": "c2", "run_id": "\ud800", "status": "done"},
    ],
}
PH_CELL_RUN = {"status": "done", "result": ENVELOPE, "error": None}
PH_SHARING = {
    "created_at": T0,
    "enabled": True,
    "access_token": "secret",
    "settings": {},
    "share_passwords": [{"id": "p", "note": "n", "is_active": True}],
}
PH_SERVER_HANDLE = RunHandle(
    backend="posthog", run_id="r1", notebook_id="nb", extra={"mode": "server", "project_id": "1"}
)


def posthog(mode: str = "server") -> Callable[[], PostHogBackend]:
    def make() -> PostHogBackend:
        return PostHogBackend(
            "phx_fuzz",
            project_id="1",
            base_url=POSTHOG_URL,
            mode=mode,  # type: ignore[arg-type]
            poll=PollPolicy(initial=0.001, maximum=0.001),
            retry=RetryPolicy(max_attempts=1),
        )

    return make


async def _first_notebooks(backend: PostHogBackend) -> None:
    async with aclosing(backend.client.list_notebooks()) as items:
        count = 0
        async for _ in items:
            count += 1
            if count > 5:
                break


POSTHOG_CALLS: dict[str, tuple[tuple[Any, ...], Call]] = {
    "get_notebook": ((PH_NOTEBOOK,), lambda b: b.client.get_notebook("nb")),
    "list_notebooks_page": ((PH_PAGE,), lambda b: b.client.list_notebooks_page()),
    "list_notebooks": ((PH_PAGE,), _first_notebooks),
    "create_notebook": ((PH_NOTEBOOK,), lambda b: b.client.create_notebook(title="T")),
    "get_markdown": (({"markdown": "# T"},), lambda b: b.client.get_markdown("nb")),
    "notebook_activity": ((PH_ACTIVITY,), lambda b: b.client.notebook_activity("nb")),
    "recording_comments": (
        ({"results": [{"id": "c", "time_in_recording": 1.5, "comment": "hi"}]},),
        lambda b: b.client.recording_comments("rec"),
    ),
    "get_sharing": ((PH_SHARING,), lambda b: b.client.get_sharing("nb")),
    "kernel_status": (
        ({"status": "running", "cpu_cores": 1, "frames": [{}]},),
        lambda b: b.client.kernel_status("nb"),
    ),
    "kernel_stop": (({"stopped": True},), lambda b: b.client.kernel_stop("nb")),
    "kernel_execute": ((PH_RESULT,), lambda b: b.client.kernel_execute("nb", "1/0")),
    "kernel_dataframe": (
        ({"columns": ["a"], "rows": [{"a": 1}], "row_count": 1},),
        lambda b: b.client.kernel_dataframe("nb", "df"),
    ),
    "hogql_execute": (
        ({"results": [[1]], "columns": ["a"], "types": ["Int"], "hasMore": False},),
        lambda b: b.client.hogql_execute("nb", "select 1"),
    ),
    "start_notebook_run": (
        ({"run_id": "r1", "cell_count": 2, "starts_sandbox": True},),
        lambda b: b.client.start_notebook_run("nb"),
    ),
    "get_notebook_run": ((PH_RUN_STATUS,), lambda b: b.client.get_notebook_run("nb", "r1")),
    "interrupt_notebook_run": (
        ({"interrupted": True, "status": "interrupted"},),
        lambda b: b.client.interrupt_notebook_run("nb", "r1"),
    ),
    "run_cell": (
        ({"run_id": "c-run"},),
        lambda b: b.client.run_cell("nb", node_id="c0", node_type="python", code="1"),
    ),
    "get_cell_run": ((PH_CELL_RUN,), lambda b: b.client.get_cell_run("nb", "c-run")),
    "server start_run": (({"run_id": "r1"},), lambda b: b.start_run(RunRequest("nb"))),
    "server get_run": (
        (PH_RUN_STATUS, PH_RUN_STATUS_ODD_IDS, PH_CELL_RUN),
        lambda b: b.get_run(PH_SERVER_HANDLE),
    ),
}


@pytest.mark.parametrize("name", sorted(POSTHOG_CALLS))
def test_posthog_answers_never_escape(name: str) -> None:
    seeds, call = POSTHOG_CALLS[name]

    @FUZZ
    @given(body=bodies(*seeds))
    def run(body: bytes) -> None:
        check(posthog(), call, body)

    run()


def _all_targets() -> Iterator[tuple[str, Callable[[], Any], Call, tuple[Any, ...]]]:
    for name, (_, call, allowed) in DEEPNOTE_CALLS.items():
        yield f"deepnote {name}", deepnote, call, allowed
    for name, (_, call, allowed) in DATALORE_CALLS.items():
        yield f"datalore {name}", datalore, call, allowed
    for name, (_, call) in POSTHOG_CALLS.items():
        yield f"posthog {name}", posthog(), call, (ResponseDecodeError,)


@pytest.mark.parametrize("index", range(len(DEEP)))
def test_nesting_bombs_are_decode_errors_everywhere(index: int) -> None:
    """JSON nested deeper than Python's recursion limit (or just under it) is an answer we
    cannot read, not a RecursionError."""
    for _, make, call, allowed in _all_targets():
        check(make, call, DEEP[index], allowed)


#: Answers that once got through as something other than a model or a ResponseDecodeError.
REGRESSIONS = [
    ("posthog", "server start_run", {"run_id": None}),  # was tracked as run "None"
    ("posthog", "server start_run", {"run_id": ""}),  # was a ConfigurationError
    ("posthog", "server start_run", {"run_id": 5}),
    ("posthog", "server get_run", PH_RUN_STATUS_ODD_IDS),  # was a ConfigurationError
    ("deepnote", "start_run", {"runId": "  "}),
    ("datalore", "start_run", {"runId": None}),
]


@pytest.mark.parametrize(("vendor", "name", "answer"), REGRESSIONS)
def test_known_bad_answers(vendor: str, name: str, answer: Any) -> None:
    targets = {label: (make, call, allowed) for label, make, call, allowed in _all_targets()}
    make, call, allowed = targets[f"{vendor} {name}"]
    check(make, call, _dumps(answer), allowed)


def _frames(*frames: tuple[str, Any]) -> bytes:
    return b"".join(
        f"event: {event}\ndata: {json.dumps(data)}\n\n".encode() for event, data in frames
    )


STREAM = _frames(("stdout", {"text": "hi\n"}), ("stderr", {"text": "warn"}), ("result", PH_RESULT))


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(st.binary(max_size=300))
    if choice == 1:
        return STREAM[: draw(st.integers(0, len(STREAM)))]
    if choice == 2:
        return draw(st.sampled_from(BOMBS))
    name = draw(st.sampled_from(["stdout", "stderr", "result", "error", "other"]))
    data = draw(near(PH_RESULT if name == "result" else {"text": "x", "error": "e"}))
    return _frames(("stdout", {"text": "a"}), (name, data))


@FUZZ
@given(notebook=bodies(PH_NOTEBOOK), stream=streams())
# Regression: the answer's short_id used to name the run's kernel (and "" broke the handle).
@example(notebook=_dumps({**PH_NOTEBOOK, "short_id": ""}), stream=b"")
@example(notebook=_dumps({**PH_NOTEBOOK, "short_id": "../other"}), stream=STREAM)
def test_posthog_kernel_run_survives_any_notebook_and_stream(
    notebook: bytes, stream: bytes
) -> None:
    """A kernel-mode run reads the notebook, then executes its cells over event streams: any
    answer ends the run in a state, never in a crash of its background task."""

    async def main() -> None:
        backend = posthog("kernel")()
        stub = install(backend, notebook, stream=stream)
        async with backend:
            try:
                handle = await backend.start_run(RunRequest("nb", inputs={"day": "mon"}))
            except (ResponseDecodeError, NoRunnableCells):
                return  # refused at the start, typed: nothing ran
            try:
                run = await wait_for_run(
                    backend,
                    handle,
                    timeout=10,
                    poll=PollPolicy(initial=0.001, maximum=0.001),
                    raise_on_failure=False,
                )
            except NotebookOpsError as error:
                raise AssertionError(f"the wait failed: {error!r}") from error
            assert isinstance(run, Run)
            assert run.state in (RunState.SUCCEEDED, RunState.FAILED)
        # Whatever the answer says, only the notebook that was asked for is touched.
        assert all("/notebooks/nb/" in request.url for request in stub.requests)

    with backstops_silent():
        asyncio.run(main())


# --------------------------------------------------------------------------- error bodies

PROFILES: dict[str, VendorProfile] = {
    "deepnote": DEEPNOTE_PROFILE,
    "datalore": DATALORE_PROFILE,
    "posthog": POSTHOG_PROFILE,
}
ERROR_SEEDS = (
    {"message": "bad", "details": [{"message": "field x"}]},
    {"type": "throttled_error", "detail": "Expected available in 3 seconds.", "attr": None},
    {"error": {"message": "nope"}, "code": "E1"},
)


@pytest.mark.parametrize("vendor", sorted(PROFILES))
def test_error_bodies_always_map_to_api_errors(vendor: str) -> None:
    profile = PROFILES[vendor]

    @FUZZ
    @given(
        body=bodies(*ERROR_SEEDS),
        deep=st.sampled_from(DEEP_INDEX),
        status=st.sampled_from([400, 401, 403, 404, 405, 409, 410, 422, 429, 500, 502, 503]),
        method=st.sampled_from(["GET", "POST", "PATCH", "DELETE"]),
        retry_after=st.none() | TEXT,
    )
    def run(
        body: bytes, deep: int | None, status: int, method: str, retry_after: str | None
    ) -> None:
        if deep is not None:
            body = DEEP[deep]  # by index: hypothesis would print a 100 kB example
        headers = {"x-request-id": "req-1"}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        error = build_api_error(
            profile,
            status=status,
            method=method,
            url=f"https://{vendor}.test/api/x/?personal_api_key=k",
            headers=headers,
            body=body,
        )
        assert isinstance(error, APIError)
        assert error.status == status
        assert "personal_api_key=k" not in str(error)

    run()


@given(body=st.binary(max_size=200) | st.sampled_from(BOMBS), deep=st.sampled_from(DEEP_INDEX))
@FUZZ
def test_response_json_is_a_value_or_a_decode_error(body: bytes, deep: int | None) -> None:
    if deep is not None:
        body = DEEP[deep]
    response = Response(
        status=200, headers={"content-type": "application/json"}, body=body, method="GET", url="u"
    )
    try:
        response.json()
    except ResponseDecodeError as error:
        failure: ResponseDecodeError | None = error
    else:
        failure = None
    assert failure is None or failure.status == 200


def test_handles_from_garbage_are_configuration_errors() -> None:
    """A saved handle is user input, but it comes from storage: garbage must still be typed."""
    for text in (b"[" * 100_000, b"\xff", b'{"backend": 1}', b"null", b'"\\ud800"'):
        with pytest.raises(NotebookOpsError):
            RunHandle.from_json(text)
