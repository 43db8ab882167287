"""Both PostHog event streams, parsed from raw bytes: split frames, multi-line data, comments,
CRLF, error frames and garbage."""

from __future__ import annotations

import json

import pytest

from notebookops._sse import SSEEvent, SSEParser
from notebookops.backends.posthog import (
    CollabPresence,
    CollabStep,
    CollabStreamError,
    CollabUnknownEvent,
    CollabUpdate,
    ExecutionResult,
    KernelOutput,
    KernelStreamError,
)
from notebookops.backends.posthog._requests import decode_collab_event, decode_kernel_event
from notebookops.errors import ResponseDecodeError, ServerError

RESULT = {"status": "ok", "stdout": "a\nb\n", "stderr": "", "execution_count": 1}

KERNEL_STREAM = (
    b'event: stdout\ndata: {"text":"a\\n"}\n\n'
    b": a comment the server may send\n\n"
    b'event: stderr\r\ndata: {"text":"w\\u00e9\\n"}\r\n\r\n'
    b'event: stdout\rdata: {"text":\rdata: "b\\n"}\r\r'
    b"event: result\ndata: " + json.dumps(RESULT).encode() + b"\n\n"
)

COLLAB_STREAM = (
    b'id: 8-0\nevent: step\ndata: {"step":{"stepType":"replace"},"client_id":"c1","user_id":1,'
    b'"user_name":"Ann","cursor_head":5}\n\n'
    b": keepalive\n\n"
    b'event: presence\r\ndata: {"type":"presence","client_id":"c2","user_id":2,\r\n'
    b'data: "user_name":"Bo","version":8,"cursor":{"head":1}}\r\n\r\n'
    b'id: 9-1\nevent: update\ndata: {"type":"update","version":9}\n\n'
    b'id: 9-0\nevent: update\ndata: {"type":"update","client_id":"c1","diff":[{"start":0,'
    b'"end":1,"text":"x"}],"base_crc":123}\n\n'
    b'event: error\ndata: {"error":"stream error"}\n\n'
)


def parse_split(raw: bytes, size: int) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for start in range(0, len(raw), size):
        events.extend(parser.feed(raw[start : start + size]))
    assert parser.close() is False
    return events


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 4096])
def test_kernel_stream_from_raw_bytes(size: int) -> None:
    events = parse_split(KERNEL_STREAM, size)
    decoded = [decode_kernel_event(event) for event in events]
    assert decoded[:3] == [
        KernelOutput(name="stdout", text="a\n"),
        KernelOutput(name="stderr", text="wé\n"),
        KernelOutput(name="stdout", text="b\n"),
    ]
    result = decoded[3]
    assert isinstance(result, ExecutionResult)
    assert result.stdout == "a\nb\n"
    assert len(decoded) == 4


@pytest.mark.parametrize("size", [1, 5, 13, 4096])
def test_collab_stream_from_raw_bytes(size: int) -> None:
    decoded = [decode_collab_event(event) for event in parse_split(COLLAB_STREAM, size)]
    step, presence, patch_update, markdown_update, error = decoded
    assert isinstance(step, CollabStep)
    assert (step.client_id, step.user_name, step.cursor_head, step.id) == ("c1", "Ann", 5, "8-0")
    assert isinstance(presence, CollabPresence)
    assert presence.user_name == "Bo"
    assert presence.cursor == {"head": 1}
    assert presence.id == "8-0"  # no id of its own: the stream's last id (the resume point)
    assert isinstance(patch_update, CollabUpdate)
    assert (patch_update.version, patch_update.diff, patch_update.id) == (9, None, "9-1")
    assert isinstance(markdown_update, CollabUpdate)
    assert markdown_update.diff == [{"start": 0, "end": 1, "text": "x"}]
    assert markdown_update.base_crc == 123
    assert isinstance(error, CollabStreamError)
    assert error.error == "stream error"


def test_kernel_error_frame_raises_with_the_servers_words() -> None:
    [event] = parse_split(
        b'event: error\ndata: {"error":"Failed to execute notebook code."}\n\n', 3
    )
    with pytest.raises(KernelStreamError) as caught:
        decode_kernel_event(event, url="https://ph.example/x")
    assert isinstance(caught.value, ServerError)
    assert caught.value.status == 200
    assert caught.value.error == "Failed to execute notebook code."
    assert "Failed to execute notebook code." in str(caught.value)
    with pytest.raises(KernelStreamError, match="unknown kernel stream error"):
        decode_kernel_event(SSEEvent(event="error", data="{}"))


def test_cut_stream_is_reported_as_partial() -> None:
    parser = SSEParser()
    assert parser.feed(b'event: result\ndata: {"status":') == []
    assert parser.close() is True


@pytest.mark.parametrize(
    "event",
    [
        SSEEvent(event="stdout", data="not json"),
        SSEEvent(event="stdout", data='{"no_text":1}'),
        SSEEvent(event="result", data='{"stdout":"missing status"}'),
        SSEEvent(event="result", data="[1,2]"),
    ],
)
def test_garbled_kernel_frames(event: SSEEvent) -> None:
    with pytest.raises(ResponseDecodeError):
        decode_kernel_event(event)


def test_unknown_kernel_frames_are_skipped() -> None:
    assert decode_kernel_event(SSEEvent(event="heartbeat", data="{}")) is None


@pytest.mark.parametrize(
    "event",
    [
        SSEEvent(event="step", data="{oops"),
        SSEEvent(event="step", data="[1]"),
        SSEEvent(event="step", data='{"client_id":"no step"}'),
    ],
)
def test_garbled_collab_frames(event: SSEEvent) -> None:
    with pytest.raises(ResponseDecodeError):
        decode_collab_event(event)


def test_unknown_collab_events_pass_through() -> None:
    decoded = decode_collab_event(SSEEvent(event="cursor", data="free text", id="3-0"))
    assert decoded == CollabUnknownEvent(event="cursor", data="free text", id="3-0")
