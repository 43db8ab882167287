"""Pure request builders, local validation, status table and result mapping (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from notebookops import ConfigurationError, PermissionDenied, ResponseDecodeError, RunState
from notebookops._api_errors import build_api_error
from notebookops.backend import StateTable
from notebookops.backends.deepnote import BlockPlacement, DeepnoteRunOptions
from notebookops.backends.deepnote._requests import (
    DEEPNOTE_STATES,
    build_notebook_body,
    build_project_body,
    build_reorder_body,
    build_run_body,
    build_schedule_body,
    check_page_size,
    next_page_token,
    outputs_from_blocks,
    outputs_from_snapshot,
    run_error_info,
)
from notebookops.backends.deepnote._wire import Pagination, RunDetails, SnapshotBlock
from notebookops.backends.deepnote.client import PROFILE
from notebookops.models import CellOutput, RunErrorInfo
from notebookops.testing.deepnote import dump_yaml
from notebookops.transport import Response


def _response(body: bytes = b"{}", status: int = 200) -> Response:
    return Response(
        status=status,
        headers={"content-type": "application/json"},
        body=body,
        method="GET",
        url="https://api.deepnote.com/v2/projects?pageToken=secret",
        vendor="deepnote",
    )


# --------------------------------------------------------------------------- run bodies


def test_whole_notebook_run_is_detached_by_default() -> None:
    body = build_run_body("nb1", inputs={"day": "2026-01-01", "flag": True, "tags": ["a"]})
    assert body == {
        "notebookId": "nb1",
        "detached": True,
        "inputs": {"day": "2026-01-01", "flag": True, "tags": ["a"]},
    }


def test_run_body_with_storage_mode_and_explicit_live_run() -> None:
    options = DeepnoteRunOptions(detached_run_storage_mode="readonly")
    assert build_run_body("nb1", options=options) == {
        "notebookId": "nb1",
        "detached": True,
        "detachedRunStorageMode": "readonly",
    }
    live = build_run_body("nb1", options=DeepnoteRunOptions(detached=False))
    assert live == {"notebookId": "nb1", "detached": False}


def test_block_run_is_live_and_keeps_request_order() -> None:
    options = DeepnoteRunOptions(run_dependent_blocks=True)
    body = build_run_body("nb1", blocks=["b2", "b1"], options=options)
    assert body == {
        "notebookId": "nb1",
        "blockIds": ["b2", "b1"],
        "detached": False,
        "runDependentBlocks": True,
    }


def test_tuple_inputs_become_lists() -> None:
    body = build_run_body("nb1", inputs={"range": ("2026-01-01", "2026-02-01")})
    assert body["inputs"] == {"range": ["2026-01-01", "2026-02-01"]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"blocks": []}, "at least one block"),
        ({"blocks": ["b1", "b1", "b2"]}, "repeated: b1"),
        ({"blocks": "b1"}, "not a single string"),
        ({"blocks": ["b1", ""]}, "non-empty strings"),
        (
            {"blocks": ["b1"], "options": DeepnoteRunOptions(detached=True)},
            "not supported for detached runs",
        ),
        (
            {"blocks": ["b1"], "options": DeepnoteRunOptions(detached_run_storage_mode="readonly")},
            "runs of selected blocks are live",
        ),
        ({"options": DeepnoteRunOptions(run_dependent_blocks=True)}, "needs blocks"),
        (
            {"options": DeepnoteRunOptions(detached=False, detached_run_storage_mode="read_write")},
            "detached runs only",
        ),
        ({"inputs": {"n": 5}}, "got int"),
        ({"inputs": {"n": None}}, "got NoneType"),
        ({"inputs": {"n": ["a", 1]}}, "got list"),
        ({"inputs": {"n": {"a": "b"}}}, "got dict"),
    ],
)
def test_run_body_refuses_what_deepnote_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build_run_body("nb1", **kwargs)


@pytest.mark.parametrize("notebook", ["", "  ", None, 5])
def test_run_body_needs_a_notebook_id(notebook: Any) -> None:
    with pytest.raises(ConfigurationError, match="notebook id"):
        build_run_body(notebook)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"detached": "yes"},
        {"detached_run_storage_mode": "write"},
        {"run_dependent_blocks": 1},
        {"use_v1": "true"},
        {"project_id": ""},
        {"project_id": 5},
    ],
)
def test_run_options_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="DeepnoteRunOptions"):
        DeepnoteRunOptions(**kwargs)


# --------------------------------------------------------------------------- other bodies


def test_reorder_bodies_for_each_placement() -> None:
    assert build_reorder_body(["b1"], BlockPlacement.start()) == {
        "blockIds": ["b1"],
        "placement": {"type": "start"},
    }
    assert build_reorder_body(["b1", "b2"], BlockPlacement.end())["placement"] == {"type": "end"}
    assert build_reorder_body(["b1"], BlockPlacement.after("b3"))["placement"] == {
        "type": "after",
        "blockId": "b3",
    }


def test_reorder_validation() -> None:
    with pytest.raises(ConfigurationError, match="cannot be one of the blocks"):
        build_reorder_body(["b1", "b3"], BlockPlacement.after("b3"))
    with pytest.raises(ConfigurationError, match="at least one block"):
        build_reorder_body([], BlockPlacement.start())
    with pytest.raises(ConfigurationError, match="unique"):
        build_reorder_body(["b1", "b1"], BlockPlacement.start())
    with pytest.raises(ConfigurationError, match="BlockPlacement"):
        build_reorder_body(["b1"], "start")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("after",), "anchor block id"),
        (("after", ""), "anchor block id"),
        (("start", "b1"), "takes no block id"),
        (("before", "b1"), "must be 'start', 'end' or 'after'"),
    ],
)
def test_block_placement_validation(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BlockPlacement(*args)


def test_schedule_body_checks_the_timezone_locally() -> None:
    assert build_schedule_body(" 0 9 * * 1-5 ", "America/New_York") == {
        "cron": "0 9 * * 1-5",
        "timezone": "America/New_York",
    }
    assert build_schedule_body("0 9 * * *", None) == {"cron": "0 9 * * *"}
    with pytest.raises(ConfigurationError, match="unknown timezone 'Mars/Olympus'"):
        build_schedule_body("0 9 * * *", "Mars/Olympus")
    with pytest.raises(ConfigurationError, match="unknown timezone"):
        build_schedule_body("0 9 * * *", "../etc/passwd")
    with pytest.raises(ConfigurationError, match="IANA"):
        build_schedule_body("0 9 * * *", "")
    with pytest.raises(ConfigurationError, match="cron"):
        build_schedule_body("  ", None)


def test_project_and_notebook_bodies() -> None:
    assert build_project_body("Sales") == {"name": "Sales"}
    assert build_project_body("Sales", folder_id="f1", project_type="notebook") == {
        "name": "Sales",
        "folderId": "f1",
        "projectType": "notebook",
    }
    assert build_notebook_body("p1", None) == {"projectId": "p1"}
    assert build_notebook_body("p1", "ETL") == {"projectId": "p1", "name": "ETL"}
    with pytest.raises(ConfigurationError, match="project name"):
        build_project_body("")
    with pytest.raises(ConfigurationError, match="folder_id"):
        build_project_body("x", folder_id="")
    with pytest.raises(ConfigurationError, match="project_type"):
        build_project_body("x", project_type="team")
    with pytest.raises(ConfigurationError, match="project_id"):
        build_notebook_body("", None)
    with pytest.raises(ConfigurationError, match="notebook name"):
        build_notebook_body("p1", " ")


@pytest.mark.parametrize("size", [0, 101, -1, True, 5.0, "10"])
def test_page_size_limits(size: Any) -> None:
    with pytest.raises(ConfigurationError, match="page_size"):
        check_page_size(size)


def test_page_size_bounds_accepted() -> None:
    assert check_page_size(1) == 1
    assert check_page_size(100) == 100


# --------------------------------------------------------------------------- pagination


def test_next_page_token_follows_has_more() -> None:
    seen: set[str] = set()
    assert next_page_token(Pagination("t1", True), seen, _response(), "x") == "t1"
    assert next_page_token(Pagination("t2", False), seen, _response(), "x") is None
    # The seed's Pagination has no hasMore: a token means more.
    assert next_page_token(Pagination("t3", None), seen, _response(), "x") == "t3"
    assert next_page_token(Pagination(None, None), seen, _response(), "x") is None


def test_repeated_token_is_a_decode_error() -> None:
    seen = {"t1"}
    with pytest.raises(ResponseDecodeError, match="already returned") as caught:
        next_page_token(Pagination("t1", True), seen, _response(), "projects")
    assert "secret" not in str(caught.value)


def test_more_without_token_is_a_decode_error() -> None:
    with pytest.raises(ResponseDecodeError, match="nextPageToken is empty"):
        next_page_token(Pagination(None, True), set(), _response(), "projects")


# --------------------------------------------------------------------------- states, errors


def test_status_table() -> None:
    table = StateTable("deepnote", DEEPNOTE_STATES)
    assert table("pending") is RunState.PENDING
    assert table("running") is RunState.RUNNING
    assert table("success") is RunState.SUCCEEDED
    assert table("error") is RunState.FAILED
    assert table("internal_error") is RunState.FAILED
    assert table("stopped") is RunState.CANCELLED
    assert table("queued") is RunState.UNKNOWN


def _details(status: str, error: object = None) -> RunDetails:
    return RunDetails(run_id="r1", status=status, error=error)


def test_error_from_the_run_field_string_or_object() -> None:
    info = run_error_info(_details("error", "Kernel died"), RunState.FAILED)
    assert info == RunErrorInfo(message="Kernel died")
    info = run_error_info(_details("error", {"message": "Out of memory"}), RunState.FAILED)
    assert info is not None
    assert info.message == "Out of memory"
    info = run_error_info(_details("error", {"code": 7}), RunState.FAILED)
    assert info is not None
    assert "code" in info.message


def test_error_from_snapshot_error_output_when_field_is_null() -> None:
    outputs = [
        CellOutput(output_type="stream", text="ok\n", cell_id="b1", cell_index=0),
        CellOutput(
            output_type="error",
            ename="KeyError",
            evalue="'x'",
            traceback=("tb1", "tb2"),
            cell_id="b2",
            cell_index=1,
        ),
    ]
    info = run_error_info(_details("error"), RunState.FAILED, outputs)
    assert info == RunErrorInfo(
        message="KeyError: 'x'",
        name="KeyError",
        traceback=("tb1", "tb2"),
        cell_id="b2",
        cell_index=1,
    )


def test_error_from_snapshot_execution_error() -> None:
    snapshot_error = RunErrorInfo(message="invalid input", name="ValueError", traceback=("t",))
    info = run_error_info(_details("error"), RunState.FAILED, (), snapshot_error)
    assert info is not None
    assert info.message == "ValueError: invalid input"
    assert info.traceback == ("t",)


def test_internal_error_is_a_platform_failure_even_without_details() -> None:
    info = run_error_info(_details("internal_error"), RunState.FAILED)
    assert info is not None
    assert info.platform is True
    assert "internal error" in info.message


def test_no_error_info_for_non_failed_or_reasonless_runs() -> None:
    assert run_error_info(_details("success", "ignored"), RunState.SUCCEEDED) is None
    assert run_error_info(_details("error"), RunState.FAILED) is None


def test_error_message_hook_reads_message_error_and_details() -> None:
    error = build_api_error(
        PROFILE,
        status=400,
        method="POST",
        url="https://api.deepnote.com/v2/runs",
        headers={},
        body=b'{"message": "Validation error", "details": [{"message": "bad input x"}, "y"]}',
    )
    assert "Validation error (bad input x; y)" in str(error)
    legacy = build_api_error(
        PROFILE,
        status=401,
        method="POST",
        url="https://api.deepnote.com/v1/projects/p/notebooks/n/execute",
        headers={},
        body=b'{"error": "Workspace is not on a required plan"}',
    )
    assert "Workspace is not on a required plan" in str(legacy)


def test_bare_403_on_schedule_explains_itself() -> None:
    error = build_api_error(
        PROFILE,
        status=403,
        method="POST",
        url="https://api.deepnote.com/v2/notebooks/n/schedule",
        headers={},
        body=b"",
    )
    assert isinstance(error, PermissionDenied)
    assert "scheduling is not enabled" in str(error)
    other = build_api_error(
        PROFILE,
        status=403,
        method="GET",
        url="https://api.deepnote.com/v2/notebooks/n",
        headers={},
        body=b"",
    )
    assert "scheduling" not in str(other)


# --------------------------------------------------------------------------- results


def test_outputs_from_blocks_keep_block_ids_and_order() -> None:
    blocks = [
        SnapshotBlock(id="b0", type="markdown"),
        SnapshotBlock(
            id="b1",
            type="code",
            outputs=[
                {"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
                {
                    "output_type": "execute_result",
                    "data": {"text/plain": "42"},
                    "execution_count": 3,
                },
            ],
        ),
    ]
    result = outputs_from_blocks(blocks)
    outputs = result.outputs
    assert [o.cell_id for o in outputs] == ["b1", "b1"]
    assert [o.cell_index for o in outputs] == [1, 1]
    assert outputs[0].text == "a\nb\n"
    assert outputs[1].plain_text == "42"
    assert outputs[1].metadata == {"execution_count": 3}
    assert result.unreadable == 0


def test_outputs_with_nulls_are_read_and_unreadable_ones_kept_as_they_came() -> None:
    unreadable = [{"output_type": None, "text": "?"}, {"output_type": "stream", "text": 5}, 7]
    blocks = [
        SnapshotBlock(
            id="b1",
            outputs=[
                {
                    "output_type": "stream",
                    "text": "ok",
                    "traceback": None,
                    "metadata": None,
                    "execution_count": None,
                },
                *unreadable,
            ],
        )
    ]
    result = outputs_from_blocks(blocks)
    assert [o.output_type for o in result.outputs] == ["stream", "unknown", "stream", "unknown"]
    assert result.outputs[0].text == "ok"
    assert result.outputs[0].traceback == ()
    assert [o.metadata["unreadable"] for o in result.outputs[1:]] == unreadable
    assert result.unreadable == 3


def _snapshot(notebooks: list[dict[str, Any]], **extra: Any) -> str:
    return dump_yaml({"version": "1.0.0", "project": {"id": "p", "notebooks": notebooks}, **extra})


def test_outputs_from_snapshot_pick_the_runs_notebook() -> None:
    text = _snapshot(
        [
            {"id": "other", "blocks": [{"id": "x", "outputs": [{"output_type": "stream"}]}]},
            {
                "id": "nb1",
                "blocks": [
                    {"id": "m", "type": "markdown"},
                    {
                        "id": "c",
                        "outputs": [
                            {"output_type": "stream", "name": "stdout", "text": "hi\n"},
                            {"output_type": "error", "ename": "E", "evalue": "v"},
                        ],
                    },
                ],
            },
        ],
        execution={"error": {"name": "E", "message": "v", "traceback": ["t"]}},
    )
    result = outputs_from_snapshot(text, "nb1")
    assert [(o.output_type, o.cell_id, o.cell_index) for o in result.outputs] == [
        ("stream", "c", 1),
        ("error", "c", 1),
    ]
    assert result.error == RunErrorInfo(message="v", name="E", traceback=("t",))


def test_single_notebook_snapshot_is_used_whatever_its_id() -> None:
    text = _snapshot(
        [{"id": "renamed", "blocks": [{"id": "c", "outputs": [{"output_type": "x"}]}]}]
    )
    assert len(outputs_from_snapshot(text, "nb1").outputs) == 1


def test_unknown_notebook_in_a_multi_notebook_snapshot_gives_no_outputs() -> None:
    text = _snapshot([{"id": "a", "blocks": []}, {"id": "b", "blocks": []}])
    assert outputs_from_snapshot(text, "nb1").outputs == ()


def test_unreadable_snapshot_outputs_are_kept_and_counted() -> None:
    text = _snapshot(
        [
            {
                "id": "nb1",
                "blocks": [
                    {"id": "c", "outputs": [{"no_type": 1}, {"output_type": "stream", "text": 5}]},
                    {"id": "d", "outputs": "not a list"},
                    "not a block",
                    {"id": "e", "outputs": [{"output_type": "stream", "text": "ok"}]},
                ],
            }
        ]
    )
    result = outputs_from_snapshot(text, "nb1")
    assert [o.text for o in result.outputs] == [None, None, None, "ok"]
    assert [o.metadata.get("unreadable") for o in result.outputs[:3]] == [
        {"no_type": 1},
        {"output_type": "stream", "text": 5},
        "not a list",
    ]
    assert result.unreadable == 3


@pytest.mark.parametrize(
    "text",
    [
        "- a list\n",
        "version: 1\n",
        "project: {notebooks: 5}\n",
        "project:\n  notebooks:\n    - id: nb1\n      blocks: 5\n",
        "project: [unclosed\n",
        "project: !!python/object:os.system {}\n",
        "a: *undefined\n",
        "[" * 5000,
    ],
)
def test_a_malformed_snapshot_is_a_decode_error(text: str) -> None:
    with pytest.raises(ResponseDecodeError, match="snapshot") as caught:
        outputs_from_snapshot(text, "nb1", url="https://s3.example.com/x?X-Amz-Signature=secret")
    assert caught.value.vendor == "deepnote"
    assert "secret" not in str(caught.value)


def test_an_input_of_an_odd_type_is_named_by_its_type_not_echoed() -> None:
    from notebookops.backends.deepnote import DeepnoteRunOptions
    from notebookops.backends.deepnote._requests import build_run_body

    with pytest.raises(ConfigurationError) as caught:
        build_run_body("nb", inputs={"x": object()}, blocks=None, options=DeepnoteRunOptions())
    assert "got object" in str(caught.value)
    assert "<object object" not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"e\.g\. '5'"):
        build_run_body("nb", inputs={"x": 5}, blocks=None, options=DeepnoteRunOptions())
