"""A pure, incremental parser for Server-Sent Events (the WHATWG event-stream format).

Bytes go in as they arrive, split anywhere (even inside a CRLF or a UTF-8 sequence); complete
events come out. No I/O, no event loop: the HTTP glue lives in ``_http.py``.
"""

from __future__ import annotations

import codecs

import attrs

__all__ = ["SSEEvent", "SSEParser"]


@attrs.frozen
class SSEEvent:
    """One dispatched event. ``id`` is the last event id seen so far on the stream (per spec)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Incremental event-stream parser.

    ``feed`` returns the events completed by the new bytes; ``close`` flushes nothing (per the
    spec, an event not terminated by a blank line is discarded) but reports whether bytes were
    left over, so callers can tell a stream that was cut mid-frame.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._pending_cr = False
        self._event = ""
        self._data: list[str] = []
        self._has_data = False
        self._last_id: str | None = None
        self._retry: int | None = None
        self._first_chunk = True
        self._mid_event = False

    @property
    def last_event_id(self) -> str | None:
        return self._last_id

    @property
    def has_partial_event(self) -> bool:
        """True if the stream so far ends inside an unterminated event."""
        return bool(self._buffer) or self._mid_event

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(chunk)
        if self._first_chunk and text:
            self._first_chunk = False
            if text.startswith("\ufeff"):
                text = text[1:]
        return self._feed_text(text)

    def close(self) -> bool:
        """End of stream. Returns True when an unterminated event was discarded."""
        tail = self._decoder.decode(b"", final=True)
        events = self._feed_text(tail)
        assert not events  # a final decode can only complete a line, never a blank line
        cut = self.has_partial_event
        self._buffer = ""
        self._reset_event()
        return cut

    def _feed_text(self, text: str) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = False
        data = self._buffer + text
        start = 0
        length = len(data)
        index = 0
        while index < length:
            char = data[index]
            if char == "\r" or char == "\n":
                line = data[start:index]
                if char == "\r":
                    if index + 1 < length:
                        if data[index + 1] == "\n":
                            index += 1
                    else:
                        # A CR at the end of this chunk may be the first half of a CRLF.
                        self._pending_cr = True
                event = self._process_line(line)
                if event is not None:
                    events.append(event)
                start = index + 1
            index += 1
        self._buffer = data[start:]
        return events

    def _process_line(self, line: str) -> SSEEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        self._mid_event = True
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "id":
            if "\x00" not in value:
                self._last_id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        self._mid_event = False
        if not self._has_data:
            # Per spec, an event with no data is not dispatched (but its id still counts).
            self._reset_event()
            return None
        event = SSEEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self._last_id,
            retry=self._retry,
        )
        self._reset_event()
        return event

    def _reset_event(self) -> None:
        self._event = ""
        self._data = []
        self._has_data = False
        self._retry = None
