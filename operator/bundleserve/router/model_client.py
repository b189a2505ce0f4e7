"""A fast HTTP/1.1 client for the model container on localhost (see docs/contracts.md, "Router -> model container").

The router's hot path: a keep-alive pool of raw asyncio connections parsed with httptools. aiohttp's client costs
more per request than the whole rest of the router; this one writes each request in one `write` from pre-encoded
bytes and parses the answer in C. Used by the sync/streaming handlers and by the async worker.

Cancelling a call (timeout, client gone) closes its connection, which is how the model learns the caller went away;
a connection is reused only after a complete response. Transport failures map to the native API's errors:
cannot connect -> `Unavailable` (503), connection lost before the answer -> `ModelError` (424, no status_code),
a reply larger than the caller's `max_body` -> `ReplyTooLarge` (424, refused from its Content-Length or as soon as
the limit is passed, so an oversized answer is never buffered). Replies of any status are returned as they are: what
a non-2xx answer means is decided by the invocation core (`router.core.model_failure`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import cast
from urllib.parse import urlsplit

import httptools

from bundleserve.api.errors import ModelError, Unavailable
from bundleserve.api.invocation import (
    CUSTOM_ATTRIBUTES_HEADER,
    INPUT_HEADER,
    PICKLE_CONTENT_TYPE,
    RETURN_HEADER,
    ModelReply,
)

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
PICKLE = PICKLE_CONTENT_TYPE
_RAW_INPUT = f"{INPUT_HEADER}: raw\r\n".encode()
_PICKLED_RETURN = f"{RETURN_HEADER}: pickle\r\n".encode()
#: Stop reading from the model while this many streamed chunks wait for a slow client.
_PAUSE_AT = 64
_LARGE_BODY = 64 * 1024


class ModelUnreachable(Unavailable):
    """No connection to the model could be made (503): it is not running, or not listening yet."""


class ModelConnectionLost(ModelError):
    """The model closed the connection before answering (424): it most likely crashed, so readiness is checked again
    at once (a task retried before the probe noticed would only burn an attempt on a dead model)."""


class ReplyTooLarge(ModelError):
    """The model's reply is larger than the limit the caller set; refused before it is buffered (424)."""

    code = "reply_too_large"


_CUSTOM_ATTRIBUTES = CUSTOM_ATTRIBUTES_HEADER.lower().encode()
_CUSTOM_ATTRIBUTES_SIZE = len(_CUSTOM_ATTRIBUTES)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; httptools calls the `on_*` methods while `data_received` feeds it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self.status = 0
        self.content_type = ""
        self.custom_attributes: str | None = None
        self.keep_alive = True
        self.framed = False
        self.body: list[bytes] = []
        self.size = 0
        self.max_body: int | None = None
        self.headers_done: asyncio.Future[None] | None = None
        self.done: asyncio.Future[None] | None = None
        self.chunks: asyncio.Queue[bytes | BaseException | None] | None = None
        self.paused = False

    def begin(self, *, streaming: bool, max_body: int | None = None) -> None:
        loop = self.loop
        self.status = 0
        self.content_type = ""
        self.custom_attributes = None
        self.framed = False
        self.body = []
        self.size = 0
        self.max_body = max_body
        self.headers_done = loop.create_future() if streaming else None
        self.done = loop.create_future()
        self.chunks = asyncio.Queue() if streaming else None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionError(f"invalid HTTP from the model: {error}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done() and self.status and not self.framed:
            self.on_message_complete()  # a body delimited by the end of the connection
            return
        self._fail(exc or ConnectionError("the model closed the connection"))

    def _fail(self, error: BaseException) -> None:
        self.keep_alive = False
        for future in (self.headers_done, self.done):
            if future is not None and not future.done():
                future.set_exception(error)
        if self.chunks is not None:
            self.chunks.put_nowait(error)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)  # cheap filter first: most headers (Date, Server, ...) are none of these
        if size == 12 and name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")
        elif (size == 14 or size == 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True
            if size == 14 and self.max_body is not None and value.strip().isdigit() and int(value) > self.max_body:
                self._too_large(int(value))
        elif size == _CUSTOM_ATTRIBUTES_SIZE and name.lower() == _CUSTOM_ATTRIBUTES:
            self.custom_attributes = value.decode("latin-1")

    def _too_large(self, size: int | None) -> None:
        """Refuse the rest of an oversized reply: fail the call and drop the connection (nothing more is read)."""
        known = f" ({size} bytes)" if size is not None else ""
        self._fail(
            ReplyTooLarge(
                f"the model's reply{known} is larger than the limit of {self.max_body} bytes",
                status_code=None,
                traceback=None,
            )
        )
        if self.transport is not None:
            self.transport.close()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.chunks is not None:
            self.chunks.put_nowait(body)
            if self.chunks.qsize() >= _PAUSE_AT and self.transport is not None and not self.paused:
                self.paused = True
                self.transport.pause_reading()
        else:
            self.size += len(body)
            if self.max_body is not None and self.size > self.max_body:
                self.body = []
                if self.done is not None and not self.done.done():
                    self._too_large(None)
                return
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.chunks is not None:
            self.chunks.put_nowait(None)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


class ModelStream:
    """The body of a streaming answer, as the raw byte chunks the model sent (SSE framing is the caller's)."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = connection.status
        self.content_type = connection.content_type
        self.custom_attributes = connection.custom_attributes
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        chunks = connection.chunks
        if chunks is None:  # a streaming exchange always has its queue: a bug of ours
            raise RuntimeError("a model stream without its chunk queue")
        while True:
            item = await chunks.get()
            if item is None:
                self.finished = True
                return
            if isinstance(item, BaseException):
                raise ModelError("the model closed the stream before its end", status_code=None, traceback=None)
            if connection.paused and chunks.qsize() < _PAUSE_AT // 2:
                connection.resume()
            yield item


class ModelClient:
    """Keep-alive client of one model container; `predict`/`stream`/`get` follow docs/contracts.md."""

    def __init__(self, base_url: str, *, max_idle: int = 256, idle_seconds: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"model URL must be http://HOST:PORT, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self._host_header = f"{self.host}:{self.port}".encode()
        self._idle: list[_Connection] = []
        self._max_idle = max_idle
        self._idle_seconds = idle_seconds
        self._prefixes: dict[tuple[bytes, str], bytes] = {}
        self._closed = False

    def _prefix(self, method: bytes, path: str) -> bytes:
        key = (method, path)
        prefix = self._prefixes.get(key)
        if prefix is None:
            target = (self.base_path + path).encode()
            prefix = method + b" " + target + b" HTTP/1.1\r\nHost: " + self._host_header + b"\r\n"
            self._prefixes[key] = prefix
        return prefix

    async def _connect(self, *, fresh: bool = False) -> _Connection:
        now = time.monotonic()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if not connection.lost and now - connection.idle_since < self._idle_seconds:
                return connection
            if connection.transport is not None:
                connection.transport.close()
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(lambda: _Connection(loop), self.host, self.port)
        except OSError as error:
            raise ModelUnreachable(f"the model is not reachable: {error.strerror or error}") from None
        return protocol

    def _release(self, connection: _Connection, *, reusable: bool) -> None:
        if (
            reusable
            and connection.keep_alive
            and not connection.lost
            and not self._closed
            and len(self._idle) < self._max_idle
        ):
            connection.idle_since = time.monotonic()
            connection.chunks = None
            self._idle.append(connection)
            return
        for future in (connection.headers_done, connection.done):  # nobody awaits them any more: the loss that
            if future is not None and not future.done():  # follows must not fail them (an exception never retrieved)
                future.cancel()
        if connection.transport is not None:
            connection.transport.close()

    def _send(
        self,
        connection: _Connection,
        method: bytes,
        path: str,
        body: bytes,
        content_type: bytes,
        extra: bytes,
    ) -> None:
        head = (
            self._prefix(method, path)
            + b"Content-Type: "
            + content_type
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n"
            + extra
            + b"\r\n"
        )
        transport = connection.transport
        if transport is None:  # closed between connecting and writing: the model went away
            raise ConnectionResetError("the connection to the model closed before the request was written")
        if len(body) < _LARGE_BODY:
            transport.write(head + body)
        else:
            transport.writelines((head, body))

    async def _connect_and_send(
        self,
        method: bytes,
        path: str,
        body: bytes,
        content_type: bytes,
        extra: bytes,
        *,
        streaming: bool,
        max_body: int | None = None,
    ) -> _Connection:
        """A connection with the request written. A pooled connection the model closed in the meantime fails at the
        write, before anything was sent: that one case is retried once on a fresh connection."""
        connection = await self._connect()
        connection.begin(streaming=streaming, max_body=max_body)
        try:
            self._send(connection, method, path, body, content_type, extra)
        except (RuntimeError, OSError):
            self._release(connection, reusable=False)
            connection = await self._connect(fresh=True)
            connection.begin(streaming=streaming, max_body=max_body)
            self._send(connection, method, path, body, content_type, extra)
        return connection

    @staticmethod
    def extra_headers(raw: bool, pickled: bool, headers: Mapping[str, str] | None = None) -> bytes:
        """The contract's request headers (`X-Bundleserve-Input: raw`, `X-Bundleserve-Return: pickle`) as bytes
        for `request(..., extra=...)`."""
        extra = b""
        if raw:
            extra += _RAW_INPUT
        if pickled:
            extra += _PICKLED_RETURN
        if headers:
            extra += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
        return extra

    async def request(
        self,
        method: bytes,
        path: str,
        body: bytes = b"",
        *,
        content_type: bytes = JSON,
        extra: bytes = b"",
        max_body: int | None = None,
    ) -> ModelReply:
        """One request/response exchange; any status is returned (the caller decides what is an error).

        `max_body` bounds the reply: a larger one raises `ReplyTooLarge` without being buffered.
        """
        connection = await self._connect_and_send(
            method, path, body, content_type, extra, streaming=False, max_body=max_body
        )
        reusable = False
        try:
            done = connection.done
            if done is None:  # every exchange has it: a bug of ours
                raise RuntimeError("a model exchange without its completion future")
            try:
                await done
            except (ConnectionError, OSError):
                raise ModelConnectionLost(
                    "the model closed the connection before answering (did it crash?)", status_code=None, traceback=None
                ) from None
            reusable = True
            parts = connection.body
            connection.body = []  # the reply owns the bytes from here; the connection keeps no reference
            return ModelReply(
                connection.status,
                parts[0] if len(parts) == 1 else b"".join(parts),
                connection.content_type,
                connection.custom_attributes,
            )
        finally:
            self._release(connection, reusable=reusable)

    async def predict(
        self,
        path: str,
        body: bytes,
        *,
        content_type: bytes = JSON,
        raw: bool = False,
        pickled: bool = False,
        headers: Mapping[str, str] | None = None,
        max_body: int | None = None,
    ) -> ModelReply:
        """POST a predict call: `body` is the JSON-encoded args (or the raw input with `raw=True`).

        Returns the reply whatever its status; raises `ModelConnectionLost` (424) for a lost connection or `ReplyTooLarge`,
        `Unavailable` (503) when the model cannot be reached. Bound it with `asyncio.timeout`: cancellation closes
        the connection.
        """
        return await self.request(
            b"POST",
            path,
            body,
            content_type=content_type,
            extra=self.extra_headers(raw, pickled, headers),
            max_body=max_body,
        )

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: bytes,
        *,
        content_type: bytes = JSON,
        raw: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[ModelStream]:
        """POST a stream call; yields a `ModelStream` once the model answered its headers, whatever the status
        (the caller reads a non-2xx answer's error body from the stream).

        Leaving the block before the stream's end (client gone, error) closes the connection, cancelling the model's
        generator.
        """
        extra = self.extra_headers(raw, False, headers)
        connection = await self._connect_and_send(b"POST", path, body, content_type, extra, streaming=True)
        stream: ModelStream | None = None
        try:
            headers_done = connection.headers_done
            if headers_done is None or connection.done is None:  # a streaming exchange has both: a bug of ours
                raise RuntimeError("a model stream without its futures")
            try:
                await headers_done
            except (ConnectionError, OSError):
                raise ModelConnectionLost(
                    "the model closed the connection before answering (did it crash?)", status_code=None, traceback=None
                ) from None
            stream = ModelStream(connection)
            yield stream
        finally:
            self._release(connection, reusable=stream is not None and stream.finished)

    async def get(self, path: str) -> ModelReply:
        return await self.request(b"GET", path, content_type=b"text/plain")

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None:
                connection.transport.close()
