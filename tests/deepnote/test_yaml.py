"""The YAML-subset reader used for Deepnote snapshots, and the fake server's emitter."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notebookops.backends.deepnote import SnapshotYamlError, parse_yaml
from notebookops.testing.deepnote import dump_yaml

# The example from Deepnote's file-format reference, plus the forms YAML emitters produce.
SNAPSHOT = """\
%YAML 1.2
---
# A snapshot
version: 1.0.0
metadata:
  createdAt: "2025-01-08T10:00:00.000Z" # Required: ISO 8601 timestamp
  checksum: 'sha256:abc''s'
project:
  id: 2e814690-4f02-465c-8848-5567ab9253b7
  name: My Analysis Project
  notebooks:
  - id: e132b172
    name: Main
    blocks:
      - id: b75d
        type: code
        content: |
          print("Hello World!")

          # not a comment
        sortingKey: a0
        metadata: {}
        outputs:
          - name: stdout
            output_type: stream
            text: |
              Hello World!
          - data:
              text/plain: "<DataFrame with 100 rows>"
              application/vnd.deepnote.dataframe.v3+json:
                columns: [a, "b", 1, {x: 1}]
                rows: [
                  {a: 1, "b": null},
                  {a: 2.5, 'b': ~}, # trailing comment
                ]
            output_type: execute_result
            execution_count: 1
          - ename: ValueError
            evalue: "invalid input"
            output_type: error
            traceback:
            - "Traceback (most recent call last):"
            - - nested
              - list
            -
              key: value
...
"""


def test_snapshot_example() -> None:
    doc = parse_yaml(SNAPSHOT)
    assert doc["version"] == "1.0.0"
    assert doc["metadata"] == {"createdAt": "2025-01-08T10:00:00.000Z", "checksum": "sha256:abc's"}
    block = doc["project"]["notebooks"][0]["blocks"][0]
    assert block["content"] == 'print("Hello World!")\n\n# not a comment\n'
    assert block["metadata"] == {}
    stream, result, error = block["outputs"]
    assert stream == {"name": "stdout", "output_type": "stream", "text": "Hello World!\n"}
    frame = result["data"]["application/vnd.deepnote.dataframe.v3+json"]
    assert frame == {
        "columns": ["a", "b", 1, {"x": 1}],
        "rows": [{"a": 1, "b": None}, {"a": 2.5, "b": None}],
    }
    assert result["execution_count"] == 1
    assert error["traceback"] == [
        "Traceback (most recent call last):",
        ["nested", "list"],
        {"key": "value"},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: ~", None),
        ("a: null", None),
        ("a:", None),
        ("a: true", True),
        ("a: False", False),
        ("a: 12", 12),
        ("a: -3", -3),
        ("a: 0o17", 15),
        ("a: 0x1f", 31),
        ("a: 1.5e3", 1500.0),
        ("a: .5", 0.5),
        ("a: -.inf", -math.inf),
        ("a: 1.0.0", "1.0.0"),
        ("a: 2025-01-08T10:00:00Z", "2025-01-08T10:00:00Z"),
        ("a: http://x.y/z#frag", "http://x.y/z#frag"),
        ("a: value # comment", "value"),
        ("a: 'it''s'", "it's"),
        ('a: "tab\\there\\x41\\u00e9\\U0001F600\\N\\_"', "tab\there\x41é😀\x85\xa0"),
        ('a: "\\ud83d\\ude00 pair"', "😀 pair"),
        ('"quoted key": 1', 1),
        ("'single key': 1", 1),
    ],
)
def test_scalars(text: str, expected: Any) -> None:
    value = next(iter(parse_yaml(text).values()))
    assert value == expected


def test_nan() -> None:
    assert math.isnan(parse_yaml("a: .nan")["a"])


def test_multi_line_plain_and_quoted_scalars_fold() -> None:
    doc = parse_yaml(
        "a: this is a long plain\n  scalar that wraps\n\n  with a paragraph\n"
        'b: "double quoted\n  wraps too \\\n  joined"\n'
        "c: 'single\n\n  quoted'\n"
    )
    assert doc == {
        "a": "this is a long plain scalar that wraps\nwith a paragraph",
        "b": "double quoted wraps too joined",
        "c": "single\nquoted",
    }


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        ("|", "  a\n  b\n\n", "a\nb\n"),
        ("|-", "  a\n  b\n\n", "a\nb"),
        ("|+", "  a\n  b\n\n", "a\nb\n\n"),
        ("|2", "    indented\n  plain\n", "  indented\nplain\n"),
        (">", "  folded\n  line\n\n  next\n    more\n  end\n", "folded line\nnext\n  more\nend\n"),
        (">-", "  a\n  b\n", "a b"),
        ("|", "\n", ""),
        ("|+", "\n\n", "\n\n"),
        ("| # comment", "  x\n", "x\n"),
    ],
)
def test_block_scalars(header: str, body: str, expected: str) -> None:
    assert parse_yaml(f"k: {header}\n{body}")["k"] == expected


def test_block_scalar_in_a_sequence_and_at_the_root() -> None:
    assert parse_yaml("- |\n  one\n- two\n") == ["one\n", "two"]
    assert parse_yaml("--- |\n  root\n") == "root\n"


def test_sequence_at_key_indentation_and_nested_entries() -> None:
    doc = parse_yaml("a:\n- 1\n- - 2\n  - 3\nb: []\nc: {}\n")
    assert doc == {"a": [1, [2, 3]], "b": [], "c": {}}


def test_empty_documents() -> None:
    assert parse_yaml("") is None
    assert parse_yaml("# only a comment\n") is None
    assert parse_yaml("---\n...\n") is None


def test_crlf_and_bom() -> None:
    assert parse_yaml("\ufeffa: 1\r\nb: 2\r\n") == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &anchor 1", "anchors"),
        ("a: *alias", "anchors"),
        ("a: !!str 1", "tags"),
        ("&x a: 1", "anchors"),
        ("? complex\n: key", "complex"),
        ("a:\n\tb: 1", "tabs"),
        ('a: "unterminated', "unterminated"),
        ("a: 'unterminated\n", "unterminated"),
        ("a: [1, 2", "unterminated"),
        ("a: [1, , 2]", "empty entry"),
        ("a: [a: 1]", "single-pair"),
        ("a: {[1]: 2}", "collection keys"),
        ("a: {b: 1]", "expected ',' or '}'"),
        ("a: [1] x", "after a flow"),
        ('a: "x" y', "after a quoted"),
        ('a: "\\q"', "unknown escape"),
        ('a: "\\x4"', "bad \\\\x escape"),
        ("a: |x\n  b", "header"),
        ("a: 1\n  b: 2", "mapping key inside"),
        ("a: 1\n- b", "expected 'key: value'"),
        ("a: 1\n---\nb: 2", "several"),
        ("a: 1\n...\nb: 2", "after the document"),
        ("a:\n    b: 1\n  c: 2", "bad indentation|after the document"),
        ("a: {b: [", "unterminated"),
    ],
)
def test_refused_or_broken_yaml(text: str, message: str) -> None:
    with pytest.raises(SnapshotYamlError, match=message):
        parse_yaml(text)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    text = "".join(" " * (2 * depth) + "- \n" for depth in range(300)) + " " * 600 + "x\n"
    with pytest.raises(SnapshotYamlError, match="deeply"):
        parse_yaml(text)
    with pytest.raises(SnapshotYamlError, match="deep"):
        parse_yaml("a: " + "[" * 300 + "]" * 300)


def test_not_text() -> None:
    with pytest.raises(SnapshotYamlError):
        parse_yaml(b"a: 1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.text(alphabet="ab \n#:-'\"|>", max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_round_trip_through_the_fake_servers_emitter(value: Any) -> None:
    assert parse_yaml(dump_yaml(value)) == value


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=" \t\n-:#'\"[]{}|>!&*?ab1.~\\", max_size=60))
def test_garbage_raises_only_snapshot_yaml_error(text: str) -> None:
    try:
        parse_yaml(text)
    except SnapshotYamlError:
        pass
