"""The gateway's raw, pooled HTTP/1.1 client to the endpoints' routers (the hot paths' upstream).

aiohttp's client costs more per request than a proxy hop may (docs/benchmarks.md, "Gateway"); like the router's
model client (`router.model_client`) this one keeps idle keep-alive connections per router address, writes a request
in one `write` and parses the answer with httptools. It never holds a body whole unless asked to (`read`): the
answer's bytes are handed on as they arrive (`chunks`), and reading stops while the consumer is slow
(`pause`/`resume`, the gateway's fast edge follows its client's write buffer).

Attempts (`send`): a router that answered nothing (connection refused or reset, or closed before any answer) or
refused with 503 before its model saw the call is tried again with the same delays as `gateway.proxy.send`
(`RETRY_DELAYS`, a 503 `REFUSED_ATTEMPTS` times): the request is in memory, so it can be sent again.

Errors: `NoAnswer` (an OSError) when every attempt found nobody; `UpstreamLost` (a ConnectionError) when the
connection broke after the answer began.

Two ways to use it. `send` is the general one: a coroutine that makes the attempts and returns an `Answer` to read.
`relay` is the proxy's shortest path: on a pooled connection that is idle right now, the request is written at once
and the answer is handed to a `Relay`'s methods from the connection's own callbacks, as httptools parses it (no task,
no future: a proxied call costs the gateway two reads and two writes, docs/benchmarks.md). Whatever that path cannot
finish alone (no idle connection, no answer, a 503 refusal) is the caller's to retry with `send`, which it is told
where to go on from (`Attempts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from bundleserve.gateway.proxy import REFUSED, REFUSED_ATTEMPTS, RETRY_DELAYS

log = logging.getLogger(__name__)

_LARGE_BODY = 64 * 1024
#: Chunks waiting for a slow consumer before the connection stops reading.
_PAUSE_AT = 64


class NoAnswer(OSError):
    """No router answered the call (every attempt was refused, reset or closed before an answer)."""


class UpstreamLost(ConnectionError):
    """The router's connection broke after its answer began (the rest of the answer is lost)."""


@functools.lru_cache(maxsize=1024)
def router_address(router_url: str) -> tuple[tuple[str, int], bytes]:
    """(host, port) of a router's base URL and the `Host` header line a request to it carries, parsed once per URL."""
    parts = urlsplit(router_url)
    host, port = parts.hostname or "localhost", parts.port or 80
    return (host, port), b"Host: %s:%d\r\n" % (host.encode(), port)


class Relay(Protocol):
    """What `UpstreamPool.relay` feeds: one answer, from the connection's callbacks, in this order: `on_head` once,
    `on_body` per piece, then `on_end`; or `on_lost` at any point (then nothing more)."""

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None) -> None:
        """The answer's status line and headers arrived (`content_length`: None for a chunked answer)."""

    def on_body(self, chunk: bytes) -> None:
        """A piece of the body (de-chunked), as it arrived."""

    def on_end(self) -> None:
        """The answer is complete; the connection is back in the pool."""

    def on_lost(self, error: BaseException, *, answered: bool) -> None:
        """The connection broke (`answered`: after the head arrived); it is closed, not pooled."""


@dataclass(frozen=True, slots=True)
class Attempts:
    """Where `send` goes on from after attempts made elsewhere (`relay`): how many were made, how many of them the
    router refused with 503, and whether the pooled connections looked stale (the next attempt opens a new one)."""

    made: int = 0
    refusals: int = 0
    fresh: bool = False


#: Nothing tried yet.
FIRST_ATTEMPT = Attempts()


class RouterConnection(asyncio.Protocol):
    """One keep-alive connection to a router; httptools calls the `on_*` methods while `data_received` feeds it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, address: tuple[str, int], pool: UpstreamPool) -> None:
        self.loop = loop
        self.address = address
        self.pool = pool  # where a relayed exchange returns the connection when its answer is complete
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.keep_alive = True
        self.head: asyncio.Future[None] | None = None
        self.chunks: list[bytes | None] = []
        self.waiter: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None
        self.complete = False
        self.paused = False
        #: The answer goes to this relay's methods instead of `head`/`chunks` (`UpstreamPool.relay`).
        self.relay: Relay | None = None

    def begin(self, relay: Relay | None = None) -> None:
        """A new exchange: its answer goes to `relay`'s methods, or (None) to `head` and `chunks`."""
        self.status = 0
        self.headers = []
        self.content_length = None
        self.relay = relay
        self.head = None if relay is not None else self.loop.create_future()
        self.chunks = []
        self.waiter = None
        self.failure = None
        self.complete = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamLost(f"invalid HTTP from the router: {error}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.keep_alive = False
        if not self.complete:
            self._fail(exc or ConnectionResetError("the router closed the connection"))

    def _fail(self, error: BaseException) -> None:
        self.keep_alive = False
        relay = self.relay
        if relay is not None:
            self.relay = None
            if self.transport is not None:
                self.transport.close()
            relay.on_lost(error, answered=self.status != 0)
            return
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
            return
        self.failure = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(name) == 14 and name.lower() == b"content-length":
            self.content_length = int(value)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.relay is not None:
            self.relay.on_head(self.status, self.headers, self.content_length)
        elif self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.relay is not None:
            self.relay.on_body(body)
            return
        self.chunks.append(body)
        if len(self.chunks) >= _PAUSE_AT:
            self.pause()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        relay = self.relay
        if relay is not None:
            self.relay = None
            self.pool.release(self)
            relay.on_end()
            return
        self.chunks.append(None)
        self._wake()

    def abandon(self) -> None:
        """The relay's consumer is gone (its client left): close, so the router sees the call's client leave."""
        self.relay = None
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


class Answer:
    """A router's answer: status and headers at once, the body as it arrives. `release()` when done (the
    connection goes back to the pool when the answer was read to its end, and is closed otherwise)."""

    __slots__ = ("_connection", "_pool", "headers", "status")

    def __init__(self, pool: UpstreamPool, connection: RouterConnection) -> None:
        self._pool = pool
        self._connection = connection
        self.status = connection.status
        self.headers = connection.headers

    @property
    def content_length(self) -> int | None:
        return self._connection.content_length

    def header(self, name: bytes) -> bytes | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrived; None at its end; UpstreamLost when the connection broke."""
        connection = self._connection
        while not connection.chunks:
            if connection.failure is not None:
                raise UpstreamLost(str(connection.failure) or "the router's connection broke")
            connection.waiter = connection.loop.create_future()
            await connection.waiter
        chunk = connection.chunks.pop(0)
        if connection.paused and len(connection.chunks) < _PAUSE_AT // 2:
            connection.resume()
        return chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (de-chunked); ends at the answer's end."""
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def read(self) -> bytes:
        """The whole body (the caller bounds it: a Content-Length it checked, or a router it trusts)."""
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pause(self) -> None:
        self._connection.pause()

    def resume(self) -> None:
        self._connection.resume()

    def release(self) -> None:
        self._pool.release(self._connection)


class UpstreamPool:
    """Idle connections per router address (host, port), reused while fresh."""

    def __init__(self, *, max_idle: int = 256, idle_seconds: float = 30.0, connect_seconds: float = 5.0) -> None:
        self._idle: dict[tuple[str, int], list[RouterConnection]] = {}
        self._max_idle = max_idle
        self._idle_seconds = idle_seconds
        self._connect_seconds = connect_seconds
        self._closed = False

    def _idle_connection(self, address: tuple[str, int]) -> RouterConnection | None:
        """A pooled connection to `address` that is still fresh (stale ones are closed on the way), or None."""
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.lost and now - connection.idle_since < self._idle_seconds:
                return connection
            if connection.transport is not None:
                connection.transport.close()
        return None

    async def _connect(self, address: tuple[str, int], *, fresh: bool) -> RouterConnection:
        if not fresh:
            connection = self._idle_connection(address)
            if connection is not None:
                return connection
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_seconds):
            _, protocol = await loop.create_connection(lambda: RouterConnection(loop, address, self), *address)
        return protocol

    def release(self, connection: RouterConnection) -> None:
        idle = self._idle.setdefault(connection.address, [])
        reusable = connection.complete and connection.keep_alive and not connection.lost and not self._closed
        if reusable and len(idle) < self._max_idle:
            connection.resume()
            connection.idle_since = time.monotonic()
            connection.waiter = None
            idle.append(connection)
            return
        if connection.transport is not None:
            connection.transport.close()

    async def _attempt(self, address: tuple[str, int], request: tuple[bytes, ...], fresh: bool) -> RouterConnection:
        """One attempt: the request written and the answer's head read. A pooled connection the router closed in
        the meantime fails before any answer; the caller's attempts cover it."""
        connection = await self._connect(address, fresh=fresh)
        connection.begin()
        transport, head = connection.transport, connection.head
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the pooled connection was closed")
        if head is None:  # begin() sets it: a bug of ours
            raise RuntimeError("an upstream exchange began without its head future")
        if len(request) == 1:
            transport.write(request[0])
        else:
            transport.writelines(request)
        try:
            await head
        except BaseException:
            if connection.transport is not None:
                connection.transport.close()
            raise
        return connection

    def relay(self, address: tuple[str, int], head: bytes, body: bytes, relay: Relay) -> RouterConnection | None:
        """The request written at once on an idle pooled connection, its answer fed to `relay` (the module's
        docstring); None when no idle connection is at hand (nothing was sent: `send` it)."""
        connection = self._idle_connection(address)
        if connection is None:
            return None
        transport = connection.transport
        if transport is None or transport.is_closing():
            return None
        connection.begin(relay)
        if len(body) < _LARGE_BODY:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        return connection

    async def send(
        self, address: tuple[str, int], head: bytes, body: bytes, *, after: Attempts = FIRST_ATTEMPT
    ) -> Answer:
        """The router's answer to one request (`head` ends with its blank line), after the attempts described in
        the module's docstring (`after`: those already made by `relay`); NoAnswer when none answered."""
        request = (head + body,) if len(body) < _LARGE_BODY else (head, body)
        refusals = after.refusals
        fresh = after.fresh
        for delay in (0.0, *RETRY_DELAYS)[after.made :]:
            if delay:
                await asyncio.sleep(delay)
            try:
                connection = await self._attempt(address, request, fresh)
            except (OSError, TimeoutError) as error:
                log.info("no answer from %s:%d (%s: %s); again in %.2fs", *address, type(error).__name__, error, delay)
                fresh = True  # the idle ones may all be stale: the next attempt opens a new connection
                continue
            answer = Answer(self, connection)
            if connection.status != REFUSED or refusals >= REFUSED_ATTEMPTS:
                return answer
            refusals += 1
            with contextlib.suppress(UpstreamLost):
                await answer.read()  # a small error document; the connection stays usable
            answer.release()
            log.info("%s:%d refused the call (503: not ready or shutting down)", *address)
        raise NoAnswer(f"no router answered at {address[0]}:{address[1]}")

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                if connection.transport is not None:
                    connection.transport.close()
        self._idle.clear()
