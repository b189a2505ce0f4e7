"""Server-sent events: parse the model's event stream and frame the native API's events (pure, no I/O).

The model sends `data: <json>\n\n` per chunk and, on failure after the first byte, `event: error` + `data: <error json>`.
Clients get `data: {"status": "SUCCESS", "result": <chunk>}` per chunk, and one final FAILURE event on failure.
A chunk's JSON is spliced into the event as bytes, never decoded and re-encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bundleserve.api.invocation import loads_json

_SUCCESS_PREFIX = b'data: {"status":"SUCCESS","result":'
_EVENT_END = b"}\n\n"


class EventTooLarge(ValueError):
    """One event of the model's stream is larger than the parser's `max_event`."""


@dataclass(frozen=True, slots=True)
class Event:
    data: bytes
    event: str = "message"


class EventParser:
    """Incremental SSE parser: feed arbitrary byte chunks, get complete events (chunk boundaries do not matter).

    Line ends are CRLF, LF or a lone CR (the SSE specification allows all three). A CR that ends a chunk is a line
    end at once (an event it completes is not held back until the model's next chunk); a LF opening the next chunk
    is then the second half of that CRLF and is dropped.
    """

    __slots__ = ("_buffer", "_skip_lf", "max_event")

    def __init__(self, max_event: int | None = None) -> None:
        self._buffer = b""
        self._skip_lf = False
        #: Bytes one event may take (None: no limit); an event still incomplete past it raises EventTooLarge, so a
        #: model that never ends its event cannot make the router buffer without bound.
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        *blocks, rest = buffer.split(b"\n\n")
        self._buffer = rest
        if self.max_event is not None and (
            len(rest) > self.max_event or any(len(block) > self.max_event for block in blocks)
        ):
            raise EventTooLarge(f"a streamed event is larger than the limit of {self.max_event} bytes")
        events = []
        for block in blocks:
            event = parse_block(block)
            if event is not None:
                events.append(event)
        return events


def parse_block(block: bytes) -> Event | None:
    """One event from the lines between blank lines; comments and blocks without data are skipped."""
    name = "message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", errors="replace")
    if not data:
        return None
    return Event(b"\n".join(data), name)


def success_chunk(data: bytes) -> bytes | None:
    """The chunk JSON inside the data of one of our SUCCESS events (`success_event`), spliced out without decoding;
    None for any other event (a FAILURE)."""
    head = _SUCCESS_PREFIX[len(b"data: ") :]
    if data.startswith(head) and data.endswith(b"}"):
        return data[len(head) : -1]
    return None


def success_event(chunk_json: bytes) -> bytes:
    """A SUCCESS event around a chunk that is already JSON."""
    return _SUCCESS_PREFIX + chunk_json + _EVENT_END


def failure_event(message: str, *, traceback: str | None = None, status_code: int | None = None) -> bytes:
    body: dict[str, Any] = {
        "status": "FAILURE",
        "result": None,
        "traceback": traceback,
        "status_code": status_code,
        "error": {"code": "model_error", "message": message},
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def as_json(data: bytes) -> bytes:
    """`data` if it is JSON, else the JSON string of its text (runnable images may stream plain text)."""
    try:
        loads_json(data)
    except ValueError:
        return json.dumps(data.decode("utf-8", errors="replace")).encode()
    return data
