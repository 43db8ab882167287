"""The SSE parser's bounds: work linear in the bytes received, and a cap on one event's size.

Issue 30 item 2: the parser rescanned the buffered partial line on every chunk, so an 8 MB
line fed in 64 KB chunks cost seconds of CPU (and a 50 MB one never finished), and nothing
bounded how much one line could buffer.
"""

from __future__ import annotations

import time

import pytest

from notebookops._sse import DEFAULT_MAX_EVENT_SIZE, SSEEvent, SSEParser
from notebookops.errors import ResponseDecodeError

CHUNK = 64 * 1024
MB = 1024 * 1024


def feed_one_line(size: int) -> tuple[list[SSEEvent], float]:
    """Feed a ``size``-byte data line in 64 KB chunks; return its events and the CPU spent."""
    parser = SSEParser(max_event_size=16 * MB)
    payload = b"data: " + b"x" * size + b"\n\n"
    started = time.process_time()
    events: list[SSEEvent] = []
    for start in range(0, len(payload), CHUNK):
        events.extend(parser.feed(payload[start : start + CHUNK]))
    spent = time.process_time() - started
    assert not parser.close()
    return events, spent


def test_a_long_line_costs_time_linear_in_its_length() -> None:
    # Best of three runs each, so a busy machine (a worker per core) does not decide it.
    small = min(feed_one_line(1 * MB)[1] for _ in range(3))
    events, _ = feed_one_line(8 * MB)
    large = min(feed_one_line(8 * MB)[1] for _ in range(3))
    assert events == [SSEEvent(data="x" * (8 * MB))]
    # Linear work makes the 8 MB line cost about 8 times the 1 MB one; rescanning the partial
    # line at each chunk made it about 64 times. The floor keeps timer resolution out of it.
    assert large <= 24 * max(small, 0.002), f"1 MB: {small:.4f} s, 8 MB: {large:.4f} s"


def test_each_feed_costs_time_linear_in_its_own_chunk() -> None:
    """No single call blocks the event loop for long: the last 64 KB of an 8 MB line costs
    about what the first did."""
    parser = SSEParser()
    chunk = b"x" * CHUNK
    parser.feed(b"data: ")
    costs = []
    for _ in range(128):
        started = time.process_time()
        parser.feed(chunk)
        costs.append(time.process_time() - started)
    assert sum(costs[-8:]) <= 8 * max(sum(costs[:8]), 0.001)


def test_a_line_over_the_cap_raises_a_typed_error() -> None:
    parser = SSEParser(max_event_size=1000)
    assert parser.feed(b"data: " + b"x" * 900) == []
    with pytest.raises(ResponseDecodeError, match="larger than 1000") as caught:
        parser.feed(b"x" * 200)
    assert len(caught.value.body) <= 200  # the start of the line, trimmed, for the log


def test_a_line_over_the_cap_is_refused_even_in_one_chunk() -> None:
    parser = SSEParser(max_event_size=1000)
    with pytest.raises(ResponseDecodeError):
        parser.feed(b"data: " + b"x" * 2000 + b"\n\n")


def test_many_data_lines_making_one_oversize_event_are_refused() -> None:
    # Each line is small, but an event's data lines are joined: the cap is on the event.
    parser = SSEParser(max_event_size=1000)
    for _ in range(19):  # 19 values of 50 characters and their newlines: 969 buffered
        parser.feed(b"data: " + b"y" * 50 + b"\n")
    with pytest.raises(ResponseDecodeError):
        parser.feed(b"data: " + b"y" * 50 + b"\n")


def test_events_up_to_the_cap_pass_and_the_count_starts_again_per_event() -> None:
    parser = SSEParser(max_event_size=1000)
    frame = b"data: " + b"z" * 990 + b"\n\n"
    events = parser.feed(frame * 5)
    assert events == [SSEEvent(data="z" * 990)] * 5
    # Comments and other fields are not part of the event's data, but a line is a line.
    assert parser.feed(b": " + b"c" * 990 + b"\n" + b"event: e\ndata: ok\n\n") == [
        SSEEvent(event="e", data="ok")
    ]


def test_the_default_cap_is_generous_and_documented() -> None:
    assert DEFAULT_MAX_EVENT_SIZE == 16 * MB
    assert SSEParser().max_event_size == DEFAULT_MAX_EVENT_SIZE


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_the_cap_is_validated(bad: object) -> None:
    from notebookops.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="max_event_size"):
        SSEParser(max_event_size=bad)  # type: ignore[arg-type]
