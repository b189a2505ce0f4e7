"""`edge.fast.write_reply`: how a dialect's `Reply` is framed on a fast edge's connection.

The transport here records what the edge writes (a stand-in for asyncio's transport: `write` and `is_closing` are
all `write_reply` uses); the bytes are then read back with httptools, the parser the edges use, so the framing is
checked as a client reads it. The same framing over real sockets is covered by the dialects' integration tests
(test_router_dialects_fast_edge.py, test_openai_dialect.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httptools

from bundleserve.edge.exchange import Reply
from bundleserve.edge.fast import Flow, write_reply


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


class Parsed:
    def __init__(self, data: bytes) -> None:
        self.body: list[bytes] = []
        self.complete = False
        parser = httptools.HttpResponseParser(self)
        parser.feed_data(data)
        self.status = parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


async def _chunks(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_a_streams_head_goes_out_with_its_first_chunk() -> None:
    transport = Recorder()
    reply = Reply(200, {"Content-Type": "text/event-stream"}, chunks=_chunks(b"data: one\n\n", b"data: two\n\n"))
    await write_reply(transport, Flow(), reply, keep_alive=True)  # type: ignore[arg-type]
    assert len(transport.writes) == 3  # head + first chunk, second chunk, the end
    assert transport.writes[0].startswith(b"HTTP/1.1 200 ") and transport.writes[0].endswith(b"data: one\n\n\r\n")
    parsed = Parsed(b"".join(transport.writes))
    assert (parsed.status, parsed.complete) == (200, True)
    assert b"".join(parsed.body) == b"data: one\n\ndata: two\n\n"


async def test_a_stream_without_chunks_is_a_complete_empty_answer() -> None:
    transport = Recorder()
    reply = Reply(200, {"Content-Type": "text/event-stream"}, chunks=_chunks(b""))
    await write_reply(transport, Flow(), reply, keep_alive=True)  # type: ignore[arg-type]
    parsed = Parsed(b"".join(transport.writes))
    assert (parsed.status, parsed.complete, parsed.body) == (200, True, [])
