"""The hand-written readers of ``_wire.read_fast`` against the cattrs converter: whatever payload
the fast path accepts, it must read exactly as the converter does; whatever the converter
refuses, the fast path must decline (so the error is the converter's); and the ordinary shapes
of the hot path must actually take the fast path."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notebookops import ResponseDecodeError
from notebookops._convert import parse_datetime
from notebookops._http import HttpResponse
from notebookops.backends.deepnote import _requests, _wire
from notebookops.backends.deepnote._requests import decode_run, decode_started, structure
from notebookops.backends.deepnote._wire import (
    Pagination,
    RunDetails,
    RunPage,
    RunStarted,
    RunSummary,
    SnapshotBlock,
    SnapshotOutput,
    converter,
    read_fast,
)

RESPONSE = HttpResponse(
    status=200,
    headers={"content-type": "application/json"},
    body=b"{}",
    method="GET",
    url="https://api.deepnote.com/v2/runs/r1",
    vendor="deepnote",
)

# --------------------------------------------------------------------------- strategies

#: Any JSON value: what a field holds when the server sends something unexpected.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
TEXT = st.text(max_size=12)
MOMENTS = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1))
OFFSETS = st.integers(min_value=-12 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """Timestamps in every shape vendors were seen to send, and some that are not ISO-8601."""
    moment = draw(MOMENTS)
    shape = draw(st.sampled_from(["Z", "Z3", "Z6", "Z9", "offset", "naive", "z", "padded", "junk"]))
    if shape == "Z":
        return moment.replace(microsecond=0).isoformat() + "Z"
    if shape == "Z3":
        return moment.isoformat(timespec="milliseconds") + "Z"
    if shape == "Z6":
        return moment.isoformat(timespec="microseconds") + "Z"
    if shape == "Z9":
        return moment.isoformat(timespec="microseconds") + "789Z"
    if shape == "offset":
        return moment.replace(tzinfo=draw(OFFSETS)).isoformat()
    if shape == "naive":
        return moment.isoformat()
    if shape == "z":
        return moment.isoformat() + "z"
    if shape == "padded":
        return f" {moment.isoformat()}Z "
    return draw(st.sampled_from(["yesterday", "", "2026-13-01T00:00:00Z", "2026-01-01T25:00Z"]))


def shaped(
    fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...], *, wild: bool
) -> st.SearchStrategy[dict[str, Any]]:
    """Payloads with ``fields`` (wire key -> strategy of its ordinary values) and unknown extra
    keys. ``wild``: any field may be missing or hold any JSON value instead."""
    if wild:
        fields = {key: st.one_of(strategy, JSON) for key, strategy in fields.items()}
        known = st.fixed_dictionaries({}, optional=fields)
    else:
        known = st.fixed_dictionaries(
            {key: fields[key] for key in required},
            optional={key: value for key, value in fields.items() if key not in required},
        )
    extra = st.dictionaries(st.sampled_from(["futureField", "requestId", "raw"]), JSON)
    return st.builds(lambda extra, known: {**extra, **known}, extra, known)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def output_fields(wild: bool) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "output_type": st.sampled_from(["stream", "execute_result", "display_data", "error"]),
        "name": optional(TEXT),
        "text": optional(TEXT | st.lists(TEXT, max_size=3)),
        "data": st.dictionaries(st.sampled_from(["text/plain", "text/html"]), JSON, max_size=2),
        "metadata": st.dictionaries(TEXT, JSON, max_size=2),
        "ename": optional(TEXT),
        "evalue": optional(TEXT),
        "traceback": st.lists(TEXT, max_size=3),
        "execution_count": optional(st.integers(min_value=0)),
    }


def outputs(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    return shaped(output_fields(wild), ("output_type",), wild=wild)


def blocks(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    return shaped(
        {
            "id": TEXT,
            "type": optional(TEXT),
            "outputs": st.lists(outputs(wild), max_size=3),
            "metadata": st.dictionaries(TEXT, JSON, max_size=2),
        },
        ("id",),
        wild=wild,
    )


def run_details(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    nested = shaped(
        {"snapshotContent": optional(TEXT), "downloadUrl": optional(TEXT)}, (), wild=wild
    )
    return shaped(
        {
            "runId": TEXT,
            "status": st.sampled_from(["pending", "running", "success", "error", "stopped"]),
            "notebookId": optional(TEXT),
            "projectId": optional(TEXT),
            "createdAt": optional(timestamps()),
            "completedAt": optional(timestamps()),
            "finishedAt": optional(timestamps()),
            "error": JSON,
            "snapshotStatus": optional(st.sampled_from(["pending", "available", "failed"])),
            "snapshotContent": optional(TEXT),
            "snapshotDownloadUrl": optional(TEXT),
            "snapshotBlocks": optional(st.lists(blocks(wild), max_size=3)),
            "snapshot": optional(nested),
        },
        ("runId", "status"),
        wild=wild,
    )


def run_summaries(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    return shaped(
        {
            "runId": TEXT,
            "status": st.sampled_from(["pending", "running", "success", "internal_error"]),
            "notebookId": optional(TEXT),
            "createdAt": optional(timestamps()),
            "completedAt": optional(timestamps()),
            "finishedAt": optional(timestamps()),
        },
        ("runId", "status"),
        wild=wild,
    )


def paginations(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    return shaped(
        {
            "nextPageToken": optional(TEXT),
            "hasMore": optional(st.booleans()),
            "pageSize": optional(st.integers(min_value=1, max_value=100)),
        },
        (),
        wild=wild,
    )


def run_pages(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    return shaped(
        {"runs": st.lists(run_summaries(wild), max_size=4), "pagination": paginations(wild)},
        ("runs", "pagination"),
        wild=wild,
    )


def runs_started(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    return shaped(
        {"runId": TEXT, "status": optional(TEXT), "createdAt": optional(timestamps())},
        ("runId",),
        wild=wild,
    )


STRATEGIES = {
    RunDetails: run_details,
    RunSummary: run_summaries,
    RunStarted: runs_started,
    RunPage: run_pages,
    Pagination: paginations,
    SnapshotBlock: blocks,
    SnapshotOutput: outputs,
}


def cases(wild: bool) -> st.SearchStrategy[tuple[type[Any], dict[str, Any]]]:
    return st.sampled_from(sorted(STRATEGIES, key=lambda cls: cls.__name__)).flatmap(
        lambda cls: st.tuples(st.just(cls), STRATEGIES[cls](wild))
    )


def by_converter(payload: dict[str, Any], cls: type[Any]) -> Any:
    """What the cattrs path makes of ``payload`` (``raw`` set as ``structure`` sets it)."""
    result = converter().structure(payload, cls)
    if "raw" in attrs.fields_dict(cls):
        result = attrs.evolve(result, raw=payload)
    return result


def assert_same(fast: Any, slow: Any, payload: dict[str, Any]) -> None:
    assert fast == slow
    assert type(fast) is type(slow)
    if isinstance(fast, RunDetails):
        assert fast.raw is payload  # raw is eq=False: compared apart


# --------------------------------------------------------------------------- parity


def test_every_fast_class_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(_wire._FAST)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(cases(wild=True))
def test_the_fast_path_reads_as_the_converter_or_declines(case: tuple[type[Any], Any]) -> None:
    cls, payload = case
    fast = read_fast(payload, cls)
    try:
        slow = by_converter(payload, cls)
    except Exception:
        assert fast is None, "the converter refuses this payload, the fast path must decline"
        return
    if fast is not None:
        assert_same(fast, slow, payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(cases(wild=False))
def test_ordinary_payloads_take_the_fast_path(case: tuple[type[Any], Any]) -> None:
    cls, payload = case
    fast = read_fast(payload, cls)
    try:
        slow = by_converter(payload, cls)
    except Exception:
        # Only a timestamp drawn unreadable on purpose makes an ordinary payload invalid.
        assert fast is None
        return
    assert fast is not None, f"the fast path declined an ordinary {cls.__name__}"
    assert_same(fast, slow, payload)


def test_the_bench_servers_running_and_finished_runs_take_the_fast_path() -> None:
    running = {
        "runId": "0b6f1c9e-5a1d-4c1e-9a2b-3f4e5d6c7b8a",
        "notebookId": "notebook-1",
        "status": "running",
        "createdAt": "2026-11-22T03:00:00.000Z",
        "completedAt": None,
        "projectId": "project-1",
        "error": None,
        "snapshotStatus": "pending",
        "snapshotContent": None,
        "snapshotDownloadUrl": None,
    }
    finished = {
        **running,
        "status": "success",
        "completedAt": "2026-11-22T03:00:03.000Z",
        "snapshotStatus": "available",
        "snapshotBlocks": [
            {
                "id": "block-1",
                "type": "code",
                "outputs": [{"output_type": "stream", "name": "stdout", "text": "done\n"}],
                "metadata": {},
            }
        ],
    }
    for payload in (running, finished):
        fast = read_fast(payload, RunDetails)
        assert fast is not None
        assert_same(fast, by_converter(payload, RunDetails), payload)


@pytest.mark.parametrize(
    ("cls", "payload"),
    [
        (RunDetails, {"runId": "r", "status": True}),
        (RunDetails, {"runId": "r", "status": "x", "createdAt": "yesterday"}),
        (RunDetails, {"runId": "r", "status": "x", "createdAt": 1_700_000_000}),
        (RunDetails, {"runId": "r", "status": "x", "snapshotBlocks": "b1"}),
        (RunDetails, {"runId": "r", "status": "x", "snapshotBlocks": [{"outputs": []}]}),
        (RunDetails, {"runId": "r", "status": "x", "snapshot": []}),
        (SnapshotOutput, {"output_type": "stream", "traceback": "ab"}),
        (SnapshotOutput, {"output_type": "stream", "data": {"a": 1}, "metadata": None}),
        (SnapshotOutput, {"output_type": "stream", "execution_count": True}),
        (SnapshotOutput, {"output_type": "stream", "text": ["a", 1]}),
        (SnapshotOutput, {"output_type": "stream", "text": ("a", "b")}),
        (SnapshotOutput, {"output_type": "stream", "data": {1: "a"}}),
        (SnapshotBlock, {"id": "b", "outputs": None}),
        (Pagination, {"hasMore": 1}),
        (Pagination, {"pageSize": False}),
        (RunPage, {"runs": [], "pagination": None}),
        (RunPage, {"runs": ({"runId": "r"},), "pagination": {}}),
    ],
)
def test_unusual_payloads_go_to_the_converter(cls: type[Any], payload: dict[str, Any]) -> None:
    # Each is something cattrs reads its own way (a string iterated into a list) or refuses
    # with a message the decoders pass on: the fast path must not guess.
    assert read_fast(payload, cls) is None


# --------------------------------------------------------------------------- decoders


def decoded(payload: Any, decoder: Any) -> tuple[str, Any]:
    response = HttpResponse(
        status=200,
        headers={"content-type": "application/json"},
        body=json.dumps(payload).encode(),
        method="GET",
        url="https://api.deepnote.com/v2/runs/r1?snapshotDelivery=blocks",
        vendor="deepnote",
    )
    try:
        return "ok", decoder(response)
    except ResponseDecodeError as error:
        return "error", (str(error), error.status, error.body)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    run_details(wild=True),
    st.sampled_from(["run", "bare", "id"]),
)
def test_decode_run_is_the_same_with_or_without_the_fast_path(
    payload: dict[str, Any], envelope: str
) -> None:
    if envelope == "run":
        body: Any = {"run": payload}
    elif envelope == "id":
        body = {key: value for key, value in payload.items() if key != "runId"}
        body["id"] = payload.get("runId", "r-id")
    else:
        body = payload
    fast = decoded(body, decode_run)
    with mock.patch.object(_requests, "read_fast", return_value=None):
        slow = decoded(body, decode_run)
    assert fast[0] == slow[0]
    if fast[0] == "ok":
        assert fast[1] == slow[1]
        assert fast[1].raw == slow[1].raw
    else:
        assert fast[1] == slow[1]  # the same message: the converter wrote both


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(runs_started(wild=True))
def test_decode_started_is_the_same_with_or_without_the_fast_path(payload: Any) -> None:
    fast = decoded(payload, decode_started)
    with mock.patch.object(_requests, "read_fast", return_value=None):
        slow = decoded(payload, decode_started)
    assert fast == slow


def test_structure_errors_keep_the_converters_wording() -> None:
    with pytest.raises(ResponseDecodeError, match=r"required field missing @ \$\.run_id"):
        structure({"status": "running"}, RunDetails, RESPONSE)
    with pytest.raises(ResponseDecodeError, match=r"created_at"):
        structure({"runId": "r", "status": "x", "createdAt": "soon"}, RunDetails, RESPONSE)


def test_snapshot_documents_read_outputs_through_either_path() -> None:
    snapshot = (
        "project:\n"
        "  notebooks:\n"
        "    - id: nb1\n"
        "      blocks:\n"
        "        - id: b1\n"
        "          outputs:\n"
        "            - output_type: stream\n"
        "              name: stdout\n"
        "              text: hi\n"
        "            - output_type: stream\n"
        "              traceback: ab\n"
        "            - output_type: 5\n"
    )
    result = _requests.outputs_from_snapshot(snapshot, "nb1")
    # The first is ordinary; the second only the converter reads, its own way; the third
    # nobody reads.
    assert [output.text for output in result.outputs] == ["hi", None]
    quirk = converter().structure({"output_type": "stream", "traceback": "ab"}, SnapshotOutput)
    assert result.outputs[1].traceback == tuple(quirk.traceback)
    assert result.skipped_outputs == 1


# --------------------------------------------------------------------------- timestamps


@given(MOMENTS, st.sampled_from([0, 3, 6]))
def test_common_timestamps_parse_to_the_moment(moment: datetime, digits: int) -> None:
    if digits == 0:
        moment = moment.replace(microsecond=0)
        text = moment.isoformat() + "Z"
    elif digits == 3:
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        text = moment.isoformat(timespec="milliseconds") + "Z"
    else:
        text = moment.isoformat(timespec="microseconds") + "Z"
    assert parse_datetime(text) == moment.replace(tzinfo=UTC)
    # The general path (taken once the text is padded) reads it the same way.
    assert parse_datetime(f" {text} ") == parse_datetime(text)


@pytest.mark.parametrize(
    "text", ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00.000Z", "2026-01-01T24:00:00.000000Z"]
)
def test_impossible_timestamps_in_the_common_shape_are_worded_as_any_other(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 timestamp"):
        parse_datetime(text)


# --------------------------------------------------------------------------- laziness


def test_importing_the_adapter_builds_no_converter() -> None:
    code = (
        "import sys\n"
        "import notebookops.backends.deepnote as deepnote\n"
        "from notebookops.backends.deepnote import _wire\n"
        "from notebookops import models\n"
        "print('cattrs' in sys.modules, _wire._CONVERTER is None, models._CONVERTER is None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["False", "True", "True"]


def test_the_converter_is_built_once_and_still_importable_by_name() -> None:
    from notebookops.backends.deepnote._wire import CONVERTER

    assert CONVERTER is converter()
    assert converter().structure({"runId": "r", "status": "x"}, RunStarted) == RunStarted("r", "x")
    with pytest.raises(AttributeError):
        _wire.NOT_A_NAME  # noqa: B018
