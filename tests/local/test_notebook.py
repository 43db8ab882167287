"""Pure parts of the local backend: input injection, notebook reading, output conversion,
option validation. No kernel is started here."""

from __future__ import annotations

import enum
import json
import keyword
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notebookops import ConfigurationError, RunErrorInfo
from notebookops.backends.local import INJECTED_TAG, LocalBackend, LocalRunOptions
from notebookops.backends.local.backend import (
    _error_info,
    cell_outputs,
    parameterize_notebook,
    parameters_source,
    read_notebook,
)
from notebookops.testing.local import Cell, write_notebook

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def run_source(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    namespace.pop("__builtins__")
    return namespace


def notebook_text(cells: list[dict[str, Any]], minor: int = 5) -> str:
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": minor})


def code(source: str, *, tags: tuple[str, ...] = (), cell_id: str | None = None) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": list(tags)} if tags else {},
        "outputs": [],
        "source": source,
    }
    if cell_id is not None:
        cell["id"] = cell_id
    return cell


# -- the injected cell


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), JSON_VALUES))
def test_parameters_source_round_trips_json_values(inputs: dict[str, Any]) -> None:
    inputs = {name: value for name, value in inputs.items() if not keyword.iskeyword(name)}
    source = parameters_source(inputs)
    assert source.startswith("# Parameters\n")
    assert run_source(source) == inputs


def test_parameters_source_is_papermill_shaped() -> None:
    source = parameters_source({"name": 'it\'s "quoted"', "count": 3, "flags": [True, None]})
    assert source == ("# Parameters\nname = 'it\\'s \"quoted\"'\ncount = 3\nflags = [True, None]\n")


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def test_subclasses_of_json_types_become_plain_values() -> None:
    source = parameters_source({"color": Color.RED, "level": Level.HIGH, "pair": (1, 2.5)})
    assert run_source(source) == {"color": "red", "level": 3, "pair": [1, 2.5]}
    assert "Color" not in source
    assert "Level" not in source


@pytest.mark.parametrize("name", ["1x", "class", "a-b", "with space", "", "None"])
def test_input_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(ConfigurationError, match="not a valid Python identifier"):
        parameters_source({name: 1})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "finite"),
        (math.inf, "finite"),
        ([1, -math.inf], "finite"),
        (object(), "JSON-compatible"),
        ({1, 2}, "JSON-compatible"),
        (b"bytes", "JSON-compatible"),
        ({1: "a"}, "non-string key"),
        ({"ok": {2: "b"}}, "non-string key"),
    ],
)
def test_input_values_must_be_json_compatible(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parameters_source({"x": value})


def test_deeply_nested_inputs_are_refused() -> None:
    value: list[Any] = []
    for _ in range(200):
        value = [value]
    with pytest.raises(ConfigurationError, match="nested too deeply"):
        parameters_source({"x": value})


# -- reading and parameterizing


def test_injects_after_the_parameters_cell() -> None:
    notebook = read_notebook(
        notebook_text(
            [
                code("import os", cell_id="imports"),
                code("x = 0", tags=("parameters",), cell_id="params"),
                code("print(x)", cell_id="use"),
                code("y = 0", tags=("parameters",), cell_id="second-params"),
            ]
        )
    )
    parameterize_notebook(notebook, {"x": 5})
    ids = [cell["id"] for cell in notebook["cells"]]
    assert ids == ["imports", "params", "injected-parameters", "use", "second-params"]
    injected = notebook["cells"][2]
    assert injected["cell_type"] == "code"
    assert injected["metadata"]["tags"] == [INJECTED_TAG]
    assert injected["source"] == "# Parameters\nx = 5\n"


def test_injects_at_the_top_without_a_parameters_cell() -> None:
    notebook = read_notebook(notebook_text([code("print(x)", cell_id="use")]))
    parameterize_notebook(notebook, {"x": "hi"})
    assert [cell["id"] for cell in notebook["cells"]] == ["injected-parameters", "use"]
    assert notebook["cells"][0]["source"] == "# Parameters\nx = 'hi'\n"


def test_replaces_an_earlier_injection_like_papermill() -> None:
    notebook = read_notebook(
        notebook_text(
            [
                code("x = 0", tags=("parameters",), cell_id="params"),
                code("x = 1", tags=(INJECTED_TAG,), cell_id="injected-parameters"),
                code("print(x)", cell_id="use"),
            ]
        )
    )
    parameterize_notebook(notebook, {"x": 2})
    sources = [cell["source"] for cell in notebook["cells"]]
    assert sources == ["x = 0", "# Parameters\nx = 2\n", "print(x)"]


def test_without_inputs_no_cell_is_added_and_stale_ones_go() -> None:
    notebook = read_notebook(
        notebook_text(
            [
                code("x = 1", tags=(INJECTED_TAG,), cell_id="old"),
                code("print(x)", cell_id="use"),
            ]
        )
    )
    parameterize_notebook(notebook, {})
    assert [cell["id"] for cell in notebook["cells"]] == ["use"]


def test_injected_cell_id_never_collides() -> None:
    notebook = read_notebook(
        notebook_text(
            [
                code("x = 0", tags=("parameters",), cell_id="params"),
                code("print(x)", cell_id="injected-parameters"),
            ]
        )
    )
    parameterize_notebook(notebook, {"x": 1})
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == 3
    assert ids[2] == "injected-parameters"


def test_old_notebooks_are_upgraded_with_unique_ids() -> None:
    cells = [code("a = 1"), code("b = 2"), code("c = 3", cell_id="dup"), code("d", cell_id="dup")]
    for cell in cells[:2]:
        cell.pop("id", None)
    notebook = read_notebook(notebook_text(cells, minor=4))
    ids = [cell["id"] for cell in notebook["cells"]]
    assert notebook["nbformat_minor"] == 5
    assert len(set(ids)) == 4
    assert ids[2] == "dup"


def test_v3_notebooks_are_converted() -> None:
    v3 = {
        "metadata": {"name": "old"},
        "nbformat": 3,
        "nbformat_minor": 0,
        "worksheets": [
            {
                "cells": [
                    {
                        "cell_type": "code",
                        "input": "print(1)",
                        "language": "python",
                        "outputs": [],
                        "collapsed": False,
                        "metadata": {},
                    }
                ],
                "metadata": {},
            }
        ],
    }
    notebook = read_notebook(json.dumps(v3))
    assert notebook["nbformat"] == 4
    assert [cell["source"] for cell in notebook["cells"]] == ["print(1)"]


@pytest.mark.parametrize(
    "text",
    [
        "not json at all",
        "[]",
        json.dumps({"cells": "nope", "metadata": {}, "nbformat": 4, "nbformat_minor": 5}),
        notebook_text([{"cell_type": "bogus", "id": "x", "metadata": {}, "source": ""}]),
        json.dumps({"nbformat": 99}),
    ],
)
def test_invalid_notebooks_are_configuration_errors(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"report\.ipynb is not a valid Jupyter notebook"):
        read_notebook(text, source="report.ipynb")


def test_write_notebook_produces_valid_notebooks(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "t.ipynb",
        [Cell("# Title", cell_type="markdown"), Cell("x = 1", tags="parameters"), "print(x)"],
    )
    notebook = read_notebook(path.read_bytes())
    assert [cell["id"] for cell in notebook["cells"]] == ["cell-0", "cell-1", "cell-2"]
    assert notebook["cells"][1]["metadata"]["tags"] == ["parameters"]
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


# -- outputs and errors


def test_cell_outputs_of_each_kind() -> None:
    cell = {
        "id": "abc",
        "outputs": [
            {"output_type": "stream", "name": "stdout", "text": ["one\n", "two\n"]},
            {"output_type": "stream", "name": "stderr", "text": "warn\n"},
            {
                "output_type": "execute_result",
                "execution_count": 1,
                "data": {"text/plain": "42"},
                "metadata": {},
            },
            {
                "output_type": "display_data",
                "data": {"text/html": "<b>x</b>", "text/plain": "x"},
                "metadata": {"isolated": True},
            },
            {
                "output_type": "error",
                "ename": "ValueError",
                "evalue": "boom",
                "traceback": ["\x1b[31mValueError\x1b[39m: boom"],
            },
        ],
    }
    outputs = cell_outputs(cell, 7)
    assert [output.output_type for output in outputs] == [
        "stream",
        "stream",
        "execute_result",
        "display_data",
        "error",
    ]
    assert all(output.cell_id == "abc" and output.cell_index == 7 for output in outputs)
    assert outputs[0].name == "stdout"
    assert outputs[0].text == "one\ntwo\n"
    assert outputs[1].name == "stderr"
    assert outputs[2].plain_text == "42"
    assert outputs[3].data["text/html"] == "<b>x</b>"
    assert outputs[3].metadata == {"isolated": True}
    assert outputs[4].ename == "ValueError"
    assert outputs[4].evalue == "boom"
    # Outputs stay exactly as Jupyter stores them (colours included).
    assert outputs[4].traceback == ("\x1b[31mValueError\x1b[39m: boom",)


def test_error_info_strips_colours() -> None:
    cell = {
        "id": "c1",
        "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "x"},
            {
                "output_type": "error",
                "ename": "KeyError",
                "evalue": "\x1b[1m'k'\x1b[0m",
                "traceback": ["\x1b[31m---\x1b[39m", "\x1b[31mKeyError\x1b[39m: 'k'"],
            },
        ],
    }
    info = _error_info(cell, 3, RuntimeError("unused"))
    # The message is the value alone: readers print "name: message".
    assert info == RunErrorInfo(
        message="'k'",
        name="KeyError",
        traceback=("---", "KeyError: 'k'"),
        cell_id="c1",
        cell_index=3,
    )


def test_error_info_falls_back_to_the_exception() -> None:
    class Failure(Exception):
        ename = "ZeroDivisionError"
        evalue = "division by zero"

    info = _error_info({"id": "c2", "outputs": []}, 1, Failure())
    assert info.message == "division by zero"
    assert info.name == "ZeroDivisionError"
    assert info.cell_index == 1
    bare = _error_info({"outputs": []}, 0, RuntimeError())
    assert bare.message == "RuntimeError"
    assert bare.cell_id is None


# -- configuration


def test_run_options() -> None:
    options = LocalRunOptions(save_to="~/out.ipynb", cell_timeout=2)
    assert options.save_to == Path("~/out.ipynb").expanduser()
    assert options.cell_timeout == 2
    assert LocalRunOptions().save_to is None


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, True, "5"])
def test_cell_timeout_is_validated(timeout: Any) -> None:
    with pytest.raises(ConfigurationError, match="cell_timeout"):
        LocalRunOptions(cell_timeout=timeout)


@pytest.mark.parametrize("path", ["", "  ", 3])
def test_save_to_is_validated(path: Any) -> None:
    with pytest.raises(ConfigurationError, match="path"):
        LocalRunOptions(save_to=path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"startup_timeout": 0}, "startup_timeout"),
        ({"startup_timeout": math.nan}, "startup_timeout"),
        ({"interrupt_grace": -1}, "interrupt_grace"),
        ({"kernel_name": ""}, "kernel_name"),
        ({"kernel_name": 3}, "kernel_name"),
        ({"working_dir": ""}, "path"),
    ],
)
def test_backend_settings_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LocalBackend(**kwargs)


@pytest.mark.parametrize("module", ["nbclient", "nbformat", "jupyter_client.manager"])
def test_missing_optional_dependencies_say_which_and_how_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigurationError) as caught:
        LocalBackend()
    message = str(caught.value)
    assert "nbclient, nbformat, jupyter_client and ipykernel" in message
    assert f"{module!r} is missing" in message
    assert "pip install 'notebookops[local]'" in message
