"""Where a chunked request body ends, found incrementally and without buffering the body (pure, no I/O).

The fast edge (router.fastpath) feeds httptools exactly the bytes of one request so that the bytes behind it (a
pipelined request, or one to hand over to aiohttp) stay untouched. httptools does not say where a message ended, so
this scanner walks the chunked framing itself: it consumes chunk data as it arrives (never waiting for, nor searching,
a CRLF inside it), looks for a line end only inside a size or trailer line (bounded by `MAX_LINE`), and knows every
chunk's declared size before its data comes, so a body that announces more than the limit is refused before a byte of
it is read. Each byte is scanned at most once per arrival, plus at most `MAX_LINE` bytes of a pending line.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Longest chunk-size line (size plus extensions) or trailer line, without its CRLF.
MAX_LINE = 4096
#: Most bytes of trailer fields after the last chunk.
MAX_TRAILER = 16384
_HEX = frozenset(b"0123456789abcdefABCDEF")


class FramingError(ValueError):
    """The chunked framing is malformed (the rest of the connection cannot be trusted)."""


class BodyTooLarge(ValueError):
    """The chunks announced more bytes than the limit."""


class _State(enum.Enum):
    SIZE = 1  # inside a chunk-size line
    DATA = 2  # inside chunk data
    DATA_END = 3  # the CRLF after chunk data
    TRAILER = 4  # trailer lines after the last (empty) chunk
    DONE = 5


def parse_chunk_size(line: bytes) -> int:
    """The size of a chunk-size line (`1a2b;ext=1`), hex only, at most 16 digits."""
    size, _, _ = line.partition(b";")
    size = size.rstrip(b" \t")
    if not size or len(size) > 16 or not _HEX.issuperset(size):
        raise FramingError(f"malformed chunk size line {line[:40]!r}")
    return int(size, 16)


@dataclass(slots=True)
class ChunkedScanner:
    """The framing state of one chunked body; `scan` is called with the unconsumed bytes each time some arrive."""

    limit: int
    declared: int = 0  # the sum of the chunk sizes announced so far
    _state: _State = _State.SIZE
    _remaining: int = 0  # bytes of the current chunk's data still to come
    _trailer: int = 0

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def scan(self, data: bytes | bytearray) -> int:
        """How many bytes at the start of `data` belong to the body (framing included). Stops at the end of the
        message or where more bytes are needed; an incomplete line is left unconsumed (and rescanned next time).

        Raises FramingError for malformed framing and BodyTooLarge as soon as the announced sizes pass `limit`.
        """
        position, size = 0, len(data)
        while position < size:
            state = self._state
            if state is _State.DATA:
                taken = min(self._remaining, size - position)
                position += taken
                self._remaining -= taken
                if self._remaining == 0:
                    self._state = _State.DATA_END
            elif state is _State.DATA_END:
                crlf = data[position : position + 2]
                if crlf != b"\r\n"[: len(crlf)]:
                    raise FramingError("chunk data is longer than its declared size")
                if len(crlf) < 2:
                    break
                position += 2
                self._state = _State.SIZE
            elif state is _State.SIZE or state is _State.TRAILER:
                end = data.find(b"\r\n", position, position + MAX_LINE + 2)
                if end < 0:
                    if size - position > MAX_LINE:
                        raise FramingError(f"a chunk line is longer than {MAX_LINE} bytes")
                    break
                line = bytes(data[position:end])
                position = end + 2
                if state is _State.SIZE:
                    self._chunk(parse_chunk_size(line))
                elif not line:
                    self._state = _State.DONE
                    break
                else:
                    self._trailer += len(line) + 2
                    if self._trailer > MAX_TRAILER:
                        raise FramingError(f"the chunked trailer is larger than {MAX_TRAILER} bytes")
            else:  # DONE: the bytes behind the message are not ours
                break
        return position

    def _chunk(self, chunk_size: int) -> None:
        if chunk_size == 0:
            self._state = _State.TRAILER
            return
        self.declared += chunk_size
        if self.declared > self.limit:
            raise BodyTooLarge(f"the chunks announce more than {self.limit} bytes")
        self._state = _State.DATA
        self._remaining = chunk_size
