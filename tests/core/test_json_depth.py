"""Free-form JSON in outputs has a bounded depth: what is decoded can always be serialised.

Issue 30 item 4: ``Run.to_json()`` raised RecursionError on an output nested 900 levels deep
that the decoder had accepted. Now the vendors' converters refuse free-form values nested
deeper than ``MAX_JSON_DEPTH`` (a ResponseDecodeError, like any unreadable answer), and
serialising copies such values without deep recursion, refusing with the same typed error
what no decoder would have accepted (an output built by hand or by the local backend).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import cattrs
import pytest

from notebookops import CellOutput, Run, RunHandle, RunState
from notebookops._convert import MAX_JSON_DEPTH, make_converter
from notebookops.backends.posthog import _wire as posthog_wire
from notebookops.errors import ResponseDecodeError

HANDLE = RunHandle(backend="fake", run_id="r1", notebook_id="nb")


def nested(depth: int) -> Any:
    """A JSON value with ``depth`` levels of containers, alternating objects and arrays."""
    value: Any = "leaf"
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def run_with(data: Any, *, raw: Any = None) -> Run:
    output = CellOutput(output_type="display_data", data={"application/json": data})
    return Run(handle=HANDLE, state=RunState.SUCCEEDED, outputs=(output,), raw=raw)


def test_a_900_deep_output_raises_a_typed_error_not_recursion_error() -> None:
    run = run_with(nested(900))
    with pytest.raises(ResponseDecodeError, match="nested deeper than"):
        run.to_json()
    with pytest.raises(ResponseDecodeError, match="nested deeper than"):
        run.to_dict()


def test_a_vendor_decoder_refuses_an_output_nested_past_the_cap() -> None:
    with pytest.raises(ResponseDecodeError, match=r"could not be read .*\$\.data"):
        posthog_wire.decode(
            {"mime_type": "application/json", "data": nested(900)},
            posthog_wire.MediaItem,
            what="an output",
        )


def test_the_deepest_output_a_decoder_accepts_serialises_and_round_trips() -> None:
    value = nested(MAX_JSON_DEPTH)
    item = posthog_wire.decode(
        {"mime_type": "application/json", "data": value}, posthog_wire.MediaItem, what="x"
    )
    run = run_with(item.data, raw={"payload": {"outputs": [{"data": value}]}})
    assert json.loads(run.to_json())["outputs"][0]["data"]["application/json"] == value
    assert json.loads(run.to_json(include_raw=True))["raw"]["payload"]["outputs"][0] == {
        "data": value
    }


def test_serialising_copies_free_form_values() -> None:
    data = {"a": [1, 2.5, None, True, {"b": "c"}], "t": ("x", "y")}
    out = run_with(data).to_dict()["outputs"][0]["data"]["application/json"]
    assert out == {"a": [1, 2.5, None, True, {"b": "c"}], "t": ["x", "y"]}
    out["a"].append(3)  # the copy is the caller's to change
    assert data["a"] == [1, 2.5, None, True, {"b": "c"}]


def test_any_converter_from_make_converter_has_the_bound() -> None:
    @attrs.frozen
    class Wire:
        payload: dict[str, Any] = attrs.field(factory=dict)

    converter = make_converter()
    ok = {"payload": {"v": nested(MAX_JSON_DEPTH)}}
    assert converter.structure(ok, Wire).payload == ok["payload"]
    with pytest.raises(cattrs.BaseValidationError):
        converter.structure({"payload": {"v": nested(MAX_JSON_DEPTH + 1)}}, Wire)
    assert converter.unstructure(Wire({"v": nested(MAX_JSON_DEPTH)})) == ok
