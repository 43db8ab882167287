"""A pure, incremental parser for Server-Sent Events (the WHATWG event-stream format).

Bytes go in as they arrive, split anywhere (even inside a CRLF or a UTF-8 sequence); complete
events come out. No I/O, no event loop: the HTTP glue lives in ``_client.py``.

The work is linear in the bytes received: each chunk is searched for line ends once, and the
pieces of an unfinished line are kept in a list and joined once, when the line ends. One event
(its lines together) may hold at most ``max_event_size`` characters, so a server sending an
endless line cannot grow the client without bound.
"""

from __future__ import annotations

import codecs
import re

import attrs

from ._redact import trim
from .errors import ConfigurationError, ResponseDecodeError

__all__ = ["DEFAULT_MAX_EVENT_SIZE", "SSEEvent", "SSEParser"]

#: The most characters one event may hold (its data lines together, or any single line),
#: 16 MiB: far above any event a vendor sends, small enough that a hostile or broken stream
#: fails fast instead of filling memory.
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024

_LINE_END = re.compile(r"\r\n|\r|\n")


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

    ``max_event_size`` bounds the characters buffered for one event: a line longer than that,
    or data lines adding up to more, raise :class:`~notebookops.errors.ResponseDecodeError`
    (the stream cannot be read further; its ``body`` holds the start of the line). The parser
    refuses rather than truncates: it cannot know what a shortened payload would mean (a cut
    JSON document is garbage), while the caller can tell the user which stream was too large.
    """

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        if (
            isinstance(max_event_size, bool)
            or not isinstance(max_event_size, int)
            or max_event_size < 1
        ):
            raise ConfigurationError(
                f"max_event_size must be a whole number of characters > 0, got {max_event_size!r}"
            )
        self.max_event_size = max_event_size
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        #: The pieces of the line not ended yet, and their total length.
        self._partial: list[str] = []
        self._partial_size = 0
        self._pending_cr = False
        self._event = ""
        self._data: list[str] = []
        #: Characters of data buffered for the event being read (a newline per line joined).
        self._data_size = 0
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
        return bool(self._partial) or self._mid_event

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse the next bytes of the stream; return the events they complete."""
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
        self._partial = []
        self._partial_size = 0
        self._reset_event()
        return cut

    def _feed_text(self, text: str) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = False
        start = 0
        for match in _LINE_END.finditer(text):
            piece = text[start : match.start()]
            self._check_size(len(piece), piece)
            if self._partial:
                self._partial.append(piece)
                line = "".join(self._partial)
                self._partial = []
                self._partial_size = 0
            else:
                line = piece
            event = self._process_line(line)
            if event is not None:
                events.append(event)
            start = match.end()
        if start == len(text) and text.endswith("\r"):
            # A CR at the end of this chunk may be the first half of a CRLF.
            self._pending_cr = True
        if start < len(text):
            rest = text[start:]
            self._check_size(len(rest), rest)
            self._partial.append(rest)
            self._partial_size += len(rest)
        return events

    def _check_size(self, adding: int, piece: str) -> None:
        """Refuse a line that would take the event being read past ``max_event_size``."""
        if self._data_size + self._partial_size + adding <= self.max_event_size:
            return
        head = self._partial[0] if self._partial else piece
        # Nothing more of this stream can be read: free what it holds before raising.
        self._partial = []
        self._partial_size = 0
        self._reset_event()
        raise ResponseDecodeError(
            f"an event-stream event is larger than {self.max_event_size} characters "
            "(SSEParser max_event_size)",
            body=trim(head[:200], 100),
        )

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
            self._data_size += len(value) + 1
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
        self._data_size = 0
        self._has_data = False
        self._retry = None
