"""The fast edge of the hot routes: `POST /v1/endpoints/{own name}/predict`, the internal hop's call route, and the
seam operations in `FastEdge.dialects` (native stream, the hop's stream route, and SageMaker's, Launch's and OpenAI's
sync and streaming calls, served by the same code as their aiohttp routes, `edge.exchange`), on a plain asyncio
protocol. Without the sync mode, only the seam operations (`native=False`: predict and the hop's call route are then
aiohttp's).

aiohttp.web's per-request machinery costs more than everything the router does, so the listening socket speaks
HTTP/1.1 itself for the hot routes (httptools parses, `Invoker` does the work, shared with the aiohttp edge) and
hands the connection over to an aiohttp `RequestHandler` at the first request that is anything else (async, probes,
metrics, other methods, any request line not shaped like a hot route): the handler gets the transport and every byte
not yet consumed, so it sees the rest of the connection exactly as if it had accepted it. A handed-over connection
stays aiohttp's, which is why every call the gateway sends over its pooled connections (predict, streams, the hop)
is a hot route here.

Framing is done on exact byte ranges so a handover never splits a request: the head ends at the first empty line,
a Content-Length body is sliced, a chunked body's end is found by `router.framing` (which reads the chunk sizes, so
it never searches the body's data). Requests are answered in order, one at a time (pipelining-safe).

Hostile clients (docs/router.md, "The fast edge and hostile clients"): a request the gate refuses (401, 503) is
answered as soon as its head is parsed, before its body is read; a body announced larger than the limit (by
Content-Length or by a chunk size) is refused before it is read; body bytes are handed to the parser as they arrive,
so the connection holds at most the limit plus one packet; a body that is not complete within the body deadline
(BUNDLESERVE_BODY_TIMEOUT_SECONDS) gets 408 and the connection is closed; a head that does not complete is closed by
the keep-alive sweep. After an error the connection is closed; the bytes still arriving are read and dropped for a
bounded time and number of bytes (a "lingering close", so the client reads the answer instead of a reset).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from time import perf_counter
from typing import cast

import httptools
from aiohttp import web

from bundleserve.api.errors import ApiError, InvalidRequest, RequestTimeout
from bundleserve.api.invocation import Invocation
from bundleserve.edge import hop as hop_wire
from bundleserve.edge.errors import Answer, error_answer, too_large
from bundleserve.edge.exchange import FastRoutes, Head, HeadPhase, Prepared, Reply, headers_of
from bundleserve.edge.fast import Flow, SweptEdge, answer_and_close, write_reply
from bundleserve.edge.http1 import render, reply_head
from bundleserve.router.framing import BodyTooLarge, ChunkedScanner, FramingError
from bundleserve.router.hop import answer_hop, hop_answer, prepare_hop
from bundleserve.router.invoke import Invoker, public_url_of_raw

_MAX_HEAD = 65536  # bytes of request line + headers
_LINGER_BYTES = 1024 * 1024  # ... and how many at most
_BODY_SECONDS = 60.0  # default body deadline: from the end of the head to the end of the body
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JOIN_LIMIT = 64 * 1024  # answers larger than this are written behind their head, not joined to it

log = logging.getLogger("bundleserve.router")

#: A dialect operation a request line named: its head phase, method, the path's parameters, path and query.
_DialectRoute = tuple[HeadPhase, str, dict[str, str], str, str]


class FastEdge(SweptEdge["FastConnection"]):
    """The protocol factory given to `loop.create_server`; shared by the connections of one router (their
    bookkeeping and deadlines: `edge.fast.SweptEdge`)."""

    def __init__(
        self,
        invoker: Invoker,
        server: web.Server,
        *,
        idle_seconds: float = 75.0,
        body_seconds: float = _BODY_SECONDS,
        dialects: FastRoutes | None = None,
        native: bool = True,
    ) -> None:
        super().__init__(server, idle_seconds=idle_seconds, body_seconds=body_seconds)
        self.invoker = invoker
        #: Native predict and the hop's call route are served here (the endpoint serves sync calls); else only the
        #: dialects' operations are, and aiohttp answers those two routes as it answers every other.
        self.native = native
        self.prefix = f"POST /v1/endpoints/{invoker.name}/predict ".encode()
        #: The internal hop's call route (`router.hop`): the gateway's hand-over of a call it parsed, as hot as predict.
        self.hop_prefix = f"POST {hop_wire.PREDICT_PATH.format(name=invoker.name)} ".encode()
        #: The dialects' operations served here too (SageMaker's, Launch's and OpenAI's sync calls and streams,
        #: `dialects.adapter.FAST_ROUTES`), by the literal start of their request line.
        self.dialects = dialects or FastRoutes()
        self.dialect_prefixes = tuple(
            b"%s %s" % (route.method.encode(), route.prefix.encode()) for route in self.dialects.routes
        )
        self.prefixes = (*((self.prefix, self.hop_prefix) if native else ()), *self.dialect_prefixes)

    def __call__(self) -> FastConnection:
        return FastConnection(self)


class FastConnection(asyncio.Protocol):
    """One client connection while it only sends fast-path requests."""

    def __init__(self, edge: FastEdge) -> None:
        self.edge = edge
        self.invoker = edge.invoker
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.parser = httptools.HttpRequestParser(self)
        self.task: asyncio.Task[None] | None = None
        self.in_body = False  # head parsed, body not complete
        self.idle_since = 0.0
        self.paused = False
        self.lingering: asyncio.TimerHandle | None = None
        self.lingered = 0  # bytes dropped while lingering
        self.scanned = 0  # bytes of the buffer already searched for the end of the head
        self.body_since = 0.0
        self.hop = False  # the request being read is the internal hop's, not native predict
        self.flow = Flow()  # a dialect's stream waits on it while the client's socket buffer is full
        self._reset()

    def _reset(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        #: A dialect's request (`FastEdge.dialects`): its head phase, method, the path's parameters, path and query;
        #: then its outcome: prepared (the body phase to run), or refused (already rendered in the dialect's shape).
        self.dialect: _DialectRoute | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.prepared: Prepared | None = None
        self.refusal: Reply | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.length: int | None = None  # Content-Length bytes still to come
        self.chunked: ChunkedScanner | None = None
        self.refused: ApiError | None = None
        self.entered = False  # holds the drain
        self.reserved = False  # holds one of the admission's body places
        self.started = 0.0

    # -- httptools callbacks --------------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value
        if self.dialect is not None:  # every value, in order (SigV4 signs them)
            self.raw_headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- asyncio protocol -----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's subclasses
        self.idle_since = time.monotonic()
        self.edge.opened(self)

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            self.lingered += len(data)
            if self.lingered > _LINGER_BYTES and self.transport is not None:
                self.transport.close()
            return
        self.buffer += data
        if self.task is None:
            self._process()
        elif len(self.buffer) > _MAX_HEAD + self.invoker.max_bytes and self.transport is not None:
            self.transport.pause_reading()  # a client pipelining without end waits until its answers went out
            self.paused = True

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def eof_received(self) -> bool:
        return False  # a half-closed client gets no more answers: close (cancels a running request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.connections.discard(self)
        self.transport = None
        if self.lingering is not None:
            self.lingering.cancel()
        if self.task is not None:
            self.task.cancel()  # the model call is abandoned: its connection closes, the model sees the caller leave
        elif self.in_body:  # left while sending the body
            self.invoker.sync_metrics.record("cancelled", perf_counter() - self.started)
            if self.entered:
                self.invoker.state.drain.leave()
                self.entered = False
            if self.reserved:
                self.invoker.state.admission.release_body()
                self.reserved = False

    def close_when_idle(self) -> None:
        if self.task is None and not self.in_body and self.transport is not None:
            self.transport.close()

    # -- framing --------------------------------------------------------------------------------------------------

    def _process(self) -> None:
        """Consume complete requests from the buffer, one at a time, until one is being answered or bytes run out."""
        while self.task is None and self.transport is not None:
            if not self.in_body and not self._head():
                return
            if not self.complete and not self._read_body():
                return
            self.in_body = False
            self._dispatch()

    def _head(self) -> bool:
        buffer = self.buffer
        edge = self.edge
        dialect = False
        if edge.native and buffer.startswith(edge.prefix):
            self.hop = False
        elif edge.native and buffer.startswith(edge.hop_prefix):
            self.hop = True
        elif edge.dialect_prefixes and buffer.startswith(edge.dialect_prefixes):
            self.hop, dialect = False, True
        else:
            if any(len(buffer) < len(prefix) and prefix.startswith(buffer) for prefix in edge.prefixes):
                return False  # could still become a fast request
            self._hand_over()
            return False
        end = buffer.find(b"\r\n\r\n", max(0, self.scanned - 3))  # a trickled head is searched once, not per packet
        if end < 0:
            self.scanned = len(buffer)
            if len(buffer) > _MAX_HEAD:
                if dialect:  # aiohttp refuses an oversized head in the one error shape
                    self._hand_over()
                else:
                    self._fail(InvalidRequest(f"the request head is larger than {_MAX_HEAD} bytes"))
            return False
        self.scanned = 0
        size = end + 4
        if dialect:
            self.dialect = self._dialect_route(bytes(buffer[: buffer.find(b"\r\n")]))
            if self.dialect is None:
                self._hand_over()
                return False
        try:
            self.parser.feed_data(bytes(buffer[:size]))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._fail(InvalidRequest(f"malformed request: {error or 'upgrade is not supported here'}"))
            return False
        del buffer[:size]
        self.started = perf_counter()
        self.body_since = time.monotonic()
        self.in_body = True
        invoker = self.invoker
        if self.dialect is not None:
            return self._dialect_head()
        authorization = self.headers.get(b"authorization")
        try:
            invoker.gate(None, None if authorization is None else authorization.decode("utf-8", "surrogateescape"))
        except ApiError as error:
            self.refused = error  # answered once the body is read, like the aiohttp edge
        else:
            invoker.state.drain.enter()
            self.entered = True
        if self.complete:
            return True  # no body: a refusal is answered in order, and the connection stays usable
        return self._admit_body()

    def _dialect_route(self, line: bytes) -> _DialectRoute | None:
        """The dialect operation a request line names (None: aiohttp serves it)."""
        parts = line.split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or b"%" in parts[1]:
            return None  # a percent-encoded path: aiohttp decodes its parameters
        path, _, query = parts[1].decode("latin-1").partition("?")
        method = parts[0].decode("latin-1")
        found = self.edge.dialects.match(method, path)
        return None if found is None else (found[0], method, found[1], path, query)

    def _dialect_head(self) -> bool:
        """A dialect's head phase (`edge.exchange`): the dialect parses the head and gates; a refusal, rendered in
        its shape, is answered before the body is read (in order, keeping the connection, when there is none)."""
        route = self.dialect
        if route is None:  # _head sets it before calling here
            raise RuntimeError("a dialect's head without its route")
        operation, method, params, path, query = route
        head = Head(
            method, path, query, headers_of(self.raw_headers), params, public_url=self.invoker.state.settings.public_url
        )
        outcome = operation(head)
        if isinstance(outcome, Reply):
            self.refusal = outcome
            if self.complete:
                return True
            self._fail_with(outcome)
            return False
        self.prepared = outcome
        self.invoker.state.drain.enter()
        self.entered = True
        if self.complete:
            return True
        return self._admit_body()

    @property
    def _max_body(self) -> int:
        """The body limit of the request being read: a dialect operation's own (`Prepared.max_body_bytes`), else the
        endpoint's."""
        return self.invoker.max_bytes if self.prepared is None else self.prepared.max_body_bytes

    def _admit_body(self) -> bool:
        """A body place before the body's first byte, its announced size within the limit, `100 Continue`."""
        invoker = self.invoker
        if self.refused is None:
            try:
                invoker.state.admission.reserve_body()  # admitted before its first byte is read (memory bound)
            except ApiError as error:
                self.refused = error
            else:
                self.reserved = True
        if self.refused is not None:  # answered now, before the body is read (RFC 9110, 10.1.1 for Expect)
            self._fail(self.refused, refused=True)
            return False
        length = self.headers.get(b"content-length")
        limit = self._max_body
        if b"transfer-encoding" in self.headers:  # the parser accepts it only with chunked as the final coding
            self.chunked = ChunkedScanner(limit)
        else:
            self.length = int(length or 0)  # the parser validated it
            if self.length > limit:
                self._fail(too_large(self.length, limit), refused=True)
                return False
        if self.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(_CONTINUE)
        return True

    def _read_body(self) -> bool:
        """Hand the body bytes that arrived to the parser at once (the buffer never holds more than one packet of
        body); True when the request is complete."""
        buffer = self.buffer
        try:
            if self.chunked is not None:
                taken = self.chunked.scan(buffer)
            else:
                taken = min(self.length or 0, len(buffer))
                self.length = (self.length or 0) - taken
            if taken:
                self.parser.feed_data(bytes(buffer[:taken]))
                del buffer[:taken]
            done = self.chunked.done if self.chunked is not None else self.length == 0
            if done != self.complete:  # the parser and the framing disagree on where the message ends
                raise FramingError("the parser and the framing disagree on where the body ends")
            return done
        except BodyTooLarge:
            self._fail(too_large(None, self._max_body), refused=True)
            return False
        except FramingError as error:
            self._fail(InvalidRequest(f"malformed request body: {error}"))
            return False
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._fail(InvalidRequest(f"malformed request body: {error}"))
            return False

    def body_timed_out(self, seconds: float) -> None:
        """The body deadline passed (the edge's sweep): a trickling client (slowloris) gets 408 and is closed."""
        if self.task is None and self.in_body:
            message = f"the request body was not complete within {seconds:g} s (BUNDLESERVE_BODY_TIMEOUT_SECONDS)"
            self._fail(RequestTimeout(message), refused=True)

    def _dispatch(self) -> None:
        keep_alive = self.parser.should_keep_alive() and not self.edge.closing
        refused, entered, started, headers = self.refused, self.entered, self.started, self.headers
        reserved = self.reserved
        self.reserved = False
        if self.dialect is not None:
            prepared_call, refusal = self.prepared, self.refusal
            body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
            self.body.clear()
            self.entered = False
            self._reset()
            self.task = asyncio.get_running_loop().create_task(
                self._answer_dialect(prepared_call, refusal, body, entered, reserved, keep_alive)
            )
            return
        prepared: Invocation | Answer | None = None
        if refused is None:
            # parsed here, synchronously, so the raw body is dropped before the call: a request holds its input once
            body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
            self.body.clear()
            if self.hop:
                prepared = prepare_hop(self.invoker.core, headers, body, started)
            else:
                key = headers.get(b"idempotency-key")
                prepared = self.invoker.prepare(body, started, None if key is None else key.decode("latin-1"))
            del body
        self.entered = False
        self._reset()
        self.task = asyncio.get_running_loop().create_task(
            self._answer(prepared, refused, entered, reserved, started, keep_alive, headers, self.hop)
        )

    async def _answer(
        self,
        prepared: Invocation | Answer | None,
        refused: ApiError | None,
        entered: bool,
        reserved: bool,
        started: float,
        keep: bool,
        headers: dict[bytes, bytes],
        hop: bool,
    ) -> None:
        invoker = self.invoker
        try:
            if refused is not None or prepared is None:
                answer = invoker.refuse(refused or ApiError("internal error"), started)
                if hop and refused is not None:
                    answer = hop_answer(refused)
            elif hop and isinstance(prepared, Invocation):
                answer = await answer_hop(invoker.core, prepared, started)
                del prepared
            else:
                answer = await invoker.answer_prepared(
                    prepared, started, lambda: public_url_of_raw(headers, invoker.state.settings.public_url)
                )
                del prepared
        except Exception:  # a bug of ours: log it, answer in the documented shape (as aiohttp's edge does)
            log.exception("unexpected error on the fast path")
            answer = error_answer(ApiError("internal error"))
        finally:
            if entered:
                invoker.state.drain.leave()
            if reserved:
                invoker.state.admission.release_body()
        transport = self.transport
        if transport is None:
            return
        keep = keep and not self.edge.closing and not invoker.state.drain.stopping  # stopping: clients go elsewhere
        if len(answer.body) > _JOIN_LIMIT:  # a large body is written as it is, never copied behind its head
            transport.write(render(replace(answer, body=b""), keep_alive=keep, length=len(answer.body)))
            transport.write(answer.body)
        else:
            transport.write(render(answer, keep_alive=keep))
        del answer
        self._next(transport, keep)

    async def _answer_dialect(
        self,
        prepared: Prepared | None,
        refusal: Reply | None,
        body: bytes,
        entered: bool,
        reserved: bool,
        keep: bool,
    ) -> None:
        """A dialect's operation: its body phase (the core's call), its reply written as it comes."""
        invoker = self.invoker
        reply = refusal
        written = False
        transport = self.transport
        try:
            if reply is None:
                if prepared is None:
                    raise RuntimeError("a dialect's request is prepared or refused")
                reply = await prepared.answer(body)
            del body
            transport = self.transport
            if transport is not None:
                keep = keep and not self.edge.closing and not invoker.state.drain.stopping
                written = True
                await write_reply(transport, self.flow, reply, keep_alive=keep)
        except Exception:  # a bug of ours: log it, answer in the documented shape if nothing was sent yet
            log.exception("unexpected error on the fast path")
            keep = False
            if not written and transport is not None:
                transport.write(render(error_answer(ApiError("internal error")), keep_alive=False))
        finally:
            if reply is not None:
                await reply.finish()
            if entered:
                invoker.state.drain.leave()
            if reserved:
                invoker.state.admission.release_body()
        transport = self.transport
        if transport is not None:
            self._next(transport, keep)

    def _next(self, transport: asyncio.Transport, keep: bool) -> None:
        """The answer is out: close, or go on with the connection's next request."""
        self.task = None
        self.idle_since = time.monotonic()
        if not keep:
            transport.close()
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if self.buffer:
            self._process()  # pipelined requests waited in the buffer

    def _fail(self, error: ApiError, *, refused: bool = False) -> None:
        """Answer an error and close: the rest of the connection's bytes cannot be trusted (or is not wanted).

        `refused`: a request refused before its body was parsed (counted in the metrics). Bytes still arriving are
        read and dropped for at most `edge.fast.LINGER_SECONDS` and _LINGER_BYTES, with our side half-closed, so a client that
        is busy sending reads the answer instead of a reset connection; nothing of them is kept.
        """
        if refused and self.dialect is None:  # the native route's metrics (a dialect's aiohttp route counts none)
            self.invoker.refuse(error, self.started or perf_counter())
        if self.prepared is not None:  # a dialect's request: its shape
            self._fail_with(self.prepared.refuse(error))
        else:
            self._close_with(render(hop_answer(error) if self.hop else error_answer(error), keep_alive=False))

    def _fail_with(self, reply: Reply) -> None:
        """A dialect's refusal (or error) as the connection's last answer (`_fail`)."""
        self._close_with(reply_head(reply, keep_alive=False, length=len(reply.body)) + reply.body)

    def _close_with(self, answer: bytes) -> None:
        self.in_body = False
        if self.entered:
            self.invoker.state.drain.leave()
            self.entered = False
        if self.reserved:
            self.invoker.state.admission.release_body()
            self.reserved = False
        self.edge.connections.discard(self)
        transport = self.transport
        if transport is None:
            return
        self.buffer.clear()
        self.body.clear()
        self.lingering = answer_and_close(transport, answer)
        if self.lingering is None:
            self.transport = None

    def _hand_over(self) -> None:
        """Give the connection and its unconsumed bytes to aiohttp for good."""
        transport, self.transport = self.transport, None
        self.edge.hand_over(self, transport, self.buffer, reading_paused=self.paused)
