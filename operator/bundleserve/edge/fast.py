"""The connection bookkeeping of a fast edge (`router.fastpath`, `gateway.fastpath`): one base, because both edges
keep their connections the same way and the router and the gateway may not import each other.

A fast edge is the protocol factory given to `loop.create_server`; each of its connections speaks HTTP/1.1 itself for
the hot routes. What they share lives here: the set of open connections, the shutdown flag, and one timer for all
of them (none per request) that closes connections idle past the keep-alive time and answers 408 to bodies not
complete within the body deadline (slowloris; docs/router.md, "The fast edge and hostile clients"). What a request is,
and how it is answered, stays with each edge.
"""

from __future__ import annotations

import asyncio
import time
from typing import Generic, Protocol, TypeVar

from aiohttp import web

from bundleserve.edge.exchange import Reply
from bundleserve.edge.http1 import reply_head


class SweptConnection(Protocol):
    """What the sweep reads of and asks of a fast edge's connection."""

    @property
    def idle_since(self) -> float:
        """`time.monotonic()` when the connection opened or its last answer went out."""

    @property
    def body_since(self) -> float:
        """`time.monotonic()` when the head of the request being read was taken."""

    @property
    def in_body(self) -> bool:
        """A request head is taken and its body is not complete yet (and no answer is running)."""

    def body_timed_out(self, seconds: float) -> None:
        """The body deadline passed: answer 408 and close."""

    def close_when_idle(self) -> None:
        """Close now unless a request is being read or answered."""


ConnectionT = TypeVar("ConnectionT", bound=SweptConnection)


class SweptEdge(Generic[ConnectionT]):
    """A fast edge's connections, their two deadlines and its shutdown; subclasses add `__call__` (the factory)."""

    def __init__(self, server: web.Server, *, idle_seconds: float, body_seconds: float) -> None:
        self.server = server  # aiohttp's RequestHandler factory, for handovers
        self.connections: set[ConnectionT] = set()
        self.closing = False
        self.idle_seconds = idle_seconds  # keep-alive timeout
        self.body_seconds = body_seconds  # a body must be complete this long after its head (slowloris)
        self._sweep_every = min(idle_seconds, body_seconds) / 4
        self._sweeper: asyncio.TimerHandle | None = None

    def opened(self, connection: ConnectionT) -> None:
        self.connections.add(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive timeout, and answer 408 to bodies that did not
        arrive within the body deadline (one timer for all, none per request)."""
        self._sweeper = None
        now = time.monotonic()
        idle_limit, body_limit = now - self.idle_seconds, now - self.body_seconds
        for connection in list(self.connections):
            if connection.in_body and connection.body_since < body_limit:
                connection.body_timed_out(self.body_seconds)
            elif connection.idle_since < idle_limit:
                connection.close_when_idle()
        if self.connections:
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)

    def close(self) -> None:
        """Shutdown: close idle connections now, busy ones after their current answer."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close_when_idle()

    def hand_over(
        self, connection: ConnectionT, transport: asyncio.Transport | None, unread: bytearray, *, reading_paused: bool
    ) -> None:
        """`connection` leaves this edge: its transport and unconsumed bytes go to aiohttp for good (`hand_over`)."""
        self.connections.discard(connection)
        if transport is None:  # closed meanwhile: nothing to hand over
            return
        hand_over(transport, self.server, unread, reading_paused=reading_paused)


#: After a final error answer, how long a fast edge still reads (and drops) what the client sends.
LINGER_SECONDS = 5.0


def answer_and_close(transport: asyncio.Transport, answer: bytes) -> asyncio.TimerHandle | None:
    """Write a final answer (an error after which the connection's bytes cannot be trusted) and close: half-closed
    first where the transport can, and closed after `LINGER_SECONDS`, so a client that is busy sending reads the
    answer instead of a reset; the returned timer closes it (None: closed now). The edge drops what still arrives."""
    transport.write(answer)
    if transport.can_write_eof():
        transport.write_eof()
        return asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
    transport.close()
    return None


def hand_over(transport: asyncio.Transport, server: web.Server, unread: bytearray, *, reading_paused: bool) -> None:
    """Give a fast edge's connection and its bytes not yet consumed (`unread`, emptied) to aiohttp for good: the
    handler sees the rest of the connection exactly as if it had accepted it."""
    handler = server()
    if reading_paused:
        transport.resume_reading()
    transport.set_protocol(handler)
    handler.connection_made(transport)
    data = bytes(unread)
    unread.clear()
    if data:
        handler.data_received(data)


class Flow:
    """A connection's write side as a fast edge streams a reply: `wait` returns once the client's socket buffer has
    room again (asyncio's `pause_writing`/`resume_writing`), so a slow reader holds back the stream, not our memory."""

    __slots__ = ("_resumed",)

    def __init__(self) -> None:
        self._resumed: asyncio.Future[None] | None = None

    def pause(self) -> None:
        if self._resumed is None:
            self._resumed = asyncio.get_running_loop().create_future()

    def resume(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    async def wait(self) -> None:
        if self._resumed is not None:
            await self._resumed


async def write_reply(
    transport: asyncio.Transport, flow: Flow, reply: Reply, *, keep_alive: bool, extra: bytes = b""
) -> None:
    """A dialect's `Reply` on a fast edge's connection: a whole body in one write, a stream chunked and flushed per
    chunk (each write waits for `flow`). `extra`: header lines the edge adds (each ending in CRLF). The reply's
    call is finished (`Reply.finish`) whatever happens.

    A stream's head goes out with its first chunk, in one write (one packet less per stream): the dialects' streams
    have their first chunk at hand when the reply is made (the backend's stream is entered on the model's first
    event), so this delays nothing."""
    try:
        if reply.chunks is None:
            transport.write(reply_head(reply, keep_alive=keep_alive, length=len(reply.body), extra=extra) + reply.body)
            return
        head = reply_head(reply, keep_alive=keep_alive, length=None, extra=extra)
        async for chunk in reply.chunks:
            if chunk:
                if transport.is_closing():
                    return
                framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                if head:
                    framed, head = head + framed, b""
                transport.write(framed)
                await flow.wait()
        transport.write(head + b"0\r\n\r\n")
    finally:
        await reply.finish()
