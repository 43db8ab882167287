"""The pure SSE parser: spec behaviour and split-invariance."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from notebookops._sse import SSEEvent, SSEParser


def parse(*chunks: bytes) -> tuple[list[SSEEvent], bool]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser.close()


def test_basic_events_and_types() -> None:
    events, cut = parse(b'event: stdout\ndata: {"text":"hi"}\n\nevent: result\ndata: {}\n\n')
    assert events == [
        SSEEvent(event="stdout", data='{"text":"hi"}'),
        SSEEvent(event="result", data="{}"),
    ]
    assert not cut


def test_default_event_name_multiline_and_no_space() -> None:
    events, _ = parse(b"data:line1\ndata: line2\n\n")
    assert events == [SSEEvent(event="message", data="line1\nline2")]


def test_comments_keepalives_and_unknown_fields_are_ignored() -> None:
    events, _ = parse(b": keepalive\n\nfoo: bar\ndata: x\n\n")
    assert events == [SSEEvent(data="x")]


def test_crlf_and_cr_line_endings() -> None:
    assert parse(b"data: a\r\n\r\n")[0] == [SSEEvent(data="a")]
    assert parse(b"data: a\r\rdata: b\r\r")[0] == [SSEEvent(data="a"), SSEEvent(data="b")]


def test_crlf_split_across_chunks() -> None:
    events, _ = parse(b"data: a\r", b"\n\r", b"\n")
    assert events == [SSEEvent(data="a")]


def test_ids_persist_and_retry_is_read() -> None:
    events, _ = parse(b"id: 5-0\nevent: step\ndata: {}\n\ndata: second\nretry: 300\n\n")
    assert events[0] == SSEEvent(event="step", data="{}", id="5-0")
    assert events[1] == SSEEvent(data="second", id="5-0", retry=300)


def test_event_without_data_is_not_dispatched() -> None:
    events, _ = parse(b"event: ping\n\nid: 9\n\ndata: x\n\n")
    assert events == [SSEEvent(data="x", id="9")]


def test_bom_and_utf8_split_inside_a_character() -> None:
    payload = "\ufeffdata: héllo ✓\n\n".encode()
    split = payload.index("✓".encode()) + 1
    events, _ = parse(payload[:split], payload[split:])
    assert events == [SSEEvent(data="héllo ✓")]


def test_stream_cut_mid_event_is_reported() -> None:
    events, cut = parse(b"data: complete\n\ndata: partial")
    assert events == [SSEEvent(data="complete")]
    assert cut
    events, cut = parse(b"data: complete\n\nevent: x\ndata: y\n")
    assert cut


STREAM = (
    b": hello\r\n"
    b'id: 1-0\nevent: step\ndata: {"a": 1}\n\n'
    b"event: presence\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data: caf\xc3\xa9\rretry: 10\r\r"
    b": keepalive\n\n"
    b"event: result\ndata: {}\n\n"
)


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_byte_split_gives_the_same_events(cuts: list[int]) -> None:
    whole, _ = parse(STREAM)
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert parse(*chunks)[0] == whole
    assert len(whole) == 4


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_arbitrary_bytes_never_crash_and_split_invariant(data: bytes, cuts: list[int]) -> None:
    whole, _ = parse(data)
    points = sorted({c for c in cuts if c <= len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert parse(*chunks)[0] == whole
