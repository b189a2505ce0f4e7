"""The gateway's fast edge: its hot paths on a plain asyncio protocol.

`POST /v1/endpoints/{name}/predict|stream` are proxied to the endpoint's router; `POST /v1/endpoints/{name}/async`
queues the task, `GET /v1/tasks/{id}[?wait=S]` answers its status and `GET /v1/tasks/{id}/result` its stored result,
and `GET /v1/endpoints[/{name}]` describes (the SDK's first request on the connection it then calls on), all through
the gateway's own methods (`Gateway.submitted`, `Gateway.status_document`, `TaskOwners.result`,
`Gateway.description`), which its aiohttp routes call too. The dialects' operations in
`GatewayEdge.dialects` (SageMaker's sync and streaming invocations, Launch's sync and streaming tasks, OpenAI's
completions) are served here too, by the same code as their aiohttp routes (`edge.exchange`): the head phase runs
once the head is parsed (a refusal is answered here, in the dialect's shape, after the body is read and dropped), the
body phase once the body is read; the call goes to the endpoint's router over the internal hop (`gateway.forwarding`).
A refusal of the edge's own for such a request (the body deadline) is in the dialect's shape too (`Prepared.refuse`).

The same idea as the router's fast edge (`router.fastpath`): aiohttp's per-request machinery and its client cost more
than a proxy hop may, so the listening socket speaks HTTP/1.1 itself for the hot routes and hands the connection over
to aiohttp (the gateway's application, `gateway.app`) at the first request that is anything else: other routes and
methods, a query string, a body without a Content-Length or larger than `BUFFER_BYTES`, `Expect`, `Upgrade`, HTTP/1.0,
and every request the gateway's gate refuses (aiohttp then answers it, so refusals read exactly as before). The handler
gets the transport and every byte not yet consumed, so it sees the rest of the connection as if it had accepted it.

A request taken here: gate (`Gateway.gate`: API key and its namespaces, name, mode), body read whole (at most
`BUFFER_BYTES`, within the body deadline), then the request goes unchanged to the endpoint's router through the pooled
raw client (`gateway.upstream`; method, path and body as they came, hop-by-hop headers dropped, the client's
`Authorization` replaced by the endpoint's gateway key, `X-Forwarded-*` added), with the same attempts as the aiohttp
proxy; on a warm pool and an endpoint that does not scale from zero, from the client connection's callback itself,
the answer coming back from the router connection's (`_Relayed`: no task, no future; what it cannot finish alone, a
connection that broke unanswered or a 503, goes on in `_proxy` with the attempts left). The router's answer is
streamed back as it arrives: with its Content-Length when it has one, else chunked
(event streams, flushed per chunk); reading from the router pauses while the client's socket buffer is full. A client
that goes away closes the router connection, which the router propagates to the model.

Limits: requests are answered one at a time per connection, in order (pipelining-safe); a head larger than 64 KiB
and a body not complete within the body deadline are closed (408); an idle connection is closed after the keep-alive
time, as on the router's fast edge.
"""

from __future__ import annotations

import asyncio
import contextvars
import http
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import httptools
from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ApiError, RequestTimeout, Unavailable
from bundleserve.api.invocation import IDEMPOTENCY_HEADER, SDK_INVOCATION_ID_HEADER, Invocation, ModelReply
from bundleserve.api.variants import VARIANT_HEADER
from bundleserve.dialects.base import WholeCall
from bundleserve.edge.errors import Answer as EdgeAnswer
from bundleserve.edge.errors import error_answer, too_large
from bundleserve.edge.exchange import FastRoutes, Head, Prepared, Reply, headers_of
from bundleserve.edge.fast import Flow, SweptEdge, answer_and_close, write_reply
from bundleserve.edge.http1 import Date, render, reply_head
from bundleserve.gateway.forwarding import EndpointCalls, RouterHop, model_reply
from bundleserve.gateway.proxy import BUFFER_BYTES, HOP_BY_HOP, REFUSED
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.gateway.upstream import (
    FIRST_ATTEMPT,
    Answer,
    Attempts,
    NoAnswer,
    RouterConnection,
    UpstreamLost,
    UpstreamPool,
    router_address,
)

if TYPE_CHECKING:
    from bundleserve.gateway.app import Gateway

log = logging.getLogger(__name__)

_PREFIXES = (b"POST /v1/endpoints/", b"GET /v1/tasks/", b"GET /v1/endpoints")
_TARGET = re.compile(
    rb"POST (/v1/endpoints/([A-Za-z0-9][A-Za-z0-9.-]{0,252})/(predict|stream|async)) HTTP/1\.1\r\n"
    rb"|GET /v1/tasks/([A-Za-z0-9_-]{1,128})(?:\?wait=([0-9.]{1,16}))? HTTP/1\.1\r\n"
    rb"|GET /v1/endpoints(/[A-Za-z0-9][A-Za-z0-9.-]{0,252})? HTTP/1\.1\r\n"
    rb"|GET /v1/tasks/([A-Za-z0-9._-]{1,300})/result HTTP/1\.1\r\n"
)
_DESCRIBE = b"GET /v1/endpoints"
_MODES = {b"predict": Mode.SYNC, b"stream": Mode.STREAMING, b"async": Mode.ASYNC}
_JSON = "application/json"
_MAX_HEAD = 65536
_HOP = frozenset(name.encode() for name in HOP_BY_HOP) | {b"authorization"}
_NOT_FAST = (b"transfer-encoding", b"expect", b"upgrade")
_VARIANT_NAME = VARIANT_HEADER.encode()
_VARIANT = _VARIANT_NAME.lower()
#: A call's retries share one of these (the first preferred, as `gateway.variants.request_key`); the variant is drawn
#: from it (`gateway.variants.stable_draw`).
_IDEMPOTENCY, _INVOCATION_ID = IDEMPOTENCY_HEADER.lower().encode(), SDK_INVOCATION_ID_HEADER.lower().encode()
_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()) for status in http.HTTPStatus
}
_CHUNKED_END = b"0\r\n\r\n"
_JSON_HEADERS = {"Content-Type": _JSON}


@dataclass(slots=True)
class _Request:
    """One request taken by the fast edge, its head parsed and its body counted in."""

    entry: EndpointEntry | None  # None: a task status (addressed by task id alone)
    path: bytes
    headers: list[tuple[bytes, bytes]]
    length: int
    keep_alive: bool
    #: The production variant the request goes to (named, or picked by weight) and its routers' base URL; for an
    #: async submission the variant the client named, if any (its queue is picked when the task is queued).
    variant: str = ""
    router_url: str = ""
    mode: Mode | None = None
    task_id: str = ""
    wait: str | None = None
    #: A stored result's download (`GET /v1/tasks/{task_id}/result`), not the task's status.
    result: bool = False
    #: The context the gate ran in (it holds the credential's scope, which a status lookup reads).
    context: contextvars.Context | None = None
    #: A dialect's operation past its head phase (`edge.exchange`), answered by its body phase; or a reply made
    #: from the head alone (a dialect's refusal in its shape, an endpoint's description), answered once the body is
    #: read and dropped.
    prepared: Prepared | None = None
    ready: Reply | None = None


class _Head:
    """httptools callbacks for one request head (a fresh parser per request: the head is all it is fed)."""

    __slots__ = ("complete", "headers")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True

    @classmethod
    def of(cls, head: bytes) -> _Head | None:
        """The headers of a complete request head; None when httptools refuses it (aiohttp then answers it)."""
        parsed = cls()
        try:
            httptools.HttpRequestParser(parsed).feed_data(head)
        except httptools.HttpParserError:
            return None
        return parsed if parsed.complete else None


class GatewayEdge(SweptEdge["GatewayConnection"]):
    """The protocol factory given to `loop.create_server`; shared by the connections of one gateway (their
    bookkeeping and deadlines: `edge.fast.SweptEdge`)."""

    def __init__(
        self,
        gateway: Gateway,
        server: web.Server,
        pool: UpstreamPool,
        *,
        idle_seconds: float = 75.0,
        body_seconds: float = 60.0,
        dialects: FastRoutes | None = None,
    ) -> None:
        super().__init__(server, idle_seconds=idle_seconds, body_seconds=body_seconds)
        self.gateway = gateway
        self.pool = pool
        #: The dialects' operations served here too (SageMaker's, Launch's and OpenAI's sync calls and streams).
        self.dialects = dialects or FastRoutes()
        self.prefixes = _PREFIXES + tuple(
            b"%s %s" % (route.method.encode(), route.prefix.encode()) for route in self.dialects.routes
        )

    def __call__(self) -> GatewayConnection:
        return GatewayConnection(self)


class GatewayConnection(asyncio.Protocol):
    """One client connection while it only sends fast-path requests."""

    def __init__(self, edge: GatewayEdge) -> None:
        self.edge = edge
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.request: _Request | None = None  # head taken, body not complete
        self.task: asyncio.Task[None] | None = None
        self.answer: Answer | None = None  # the router's answer being relayed by `_proxy`
        #: The call on the shortest path (`_relay`, `_whole_call`), answered by the router connection's callbacks.
        self.relayed: _Relayed | _CallRelayed | None = None
        self.writing_paused = False
        self.flow = Flow()  # a dialect's stream waits on it while the client's socket buffer is full
        self.reading_paused = False
        self.idle_since = 0.0
        self.body_since = 0.0
        self.peer = b""

    # -- asyncio protocol -----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        self.idle_since = time.monotonic()
        self.edge.opened(self)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return  # answered and closing (lingering): dropped
        self.buffer += data
        if not self.answering:
            self._process()
        elif len(self.buffer) > _MAX_HEAD + BUFFER_BYTES and self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()  # a client pipelining without end waits until its answers went out
            self.reading_paused = True

    def eof_received(self) -> bool:
        return False  # a half-closed client gets no more answers: close (cancels a running request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.connections.discard(self)
        self.transport = None
        if self.task is not None:
            self.task.cancel()  # closes the router connection: the router sees the client leave
        if self.relayed is not None:
            self.relayed.abandon()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.flow.pause()
        if self.answer is not None:
            self.answer.pause()
        if self.relayed is not None:
            self.relayed.pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.flow.resume()
        if self.answer is not None:
            self.answer.resume()
        if self.relayed is not None:
            self.relayed.resume()

    @property
    def answering(self) -> bool:
        """A request is being answered: by a task, or on the shortest path by the sockets' callbacks (`_Relayed`)."""
        return self.task is not None or self.relayed is not None

    @property
    def in_body(self) -> bool:
        """A head is taken and its body is not complete (read by the edge's sweep only, for the body deadline)."""
        return self.request is not None and not self.answering

    def close_when_idle(self) -> None:
        if not self.answering and self.request is None and self.transport is not None:
            self.transport.close()

    # -- framing --------------------------------------------------------------------------------------------------

    def _process(self) -> None:
        """Take complete requests from the buffer, one at a time, until one is being answered or bytes run out."""
        while not self.answering and self.transport is not None:
            if self.request is None and not self._head():
                return
            request = self.request
            if request is None:  # _head took none: it returned False
                return
            if len(self.buffer) < request.length:
                return
            body = bytes(self.buffer[: request.length])
            del self.buffer[: request.length]
            self.request = None
            loop = asyncio.get_running_loop()
            if request.ready is not None:
                self._answer_now(request.ready, request.keep_alive)
            elif request.prepared is not None:
                prepared = request.prepared
                if not (isinstance(prepared, WholeCall) and self._whole_call(request, prepared, body)):
                    self.task = loop.create_task(self._dialect(request, body), context=request.context)
            elif request.entry is not None and request.mode is not Mode.ASYNC:
                if not self._relay(request, body):
                    self.task = loop.create_task(self._proxy(request, body))
            else:
                self.task = loop.create_task(self._answer_here(request, body), context=request.context)

    def _head(self) -> bool:
        """Take the head of a request the fast edge serves; hand the connection over for anything else."""
        buffer = self.buffer
        prefixes = self.edge.prefixes
        if not buffer.startswith(prefixes):
            if any(len(buffer) < len(prefix) and prefix.startswith(buffer) for prefix in prefixes):
                return False  # could still become a fast request
            self._hand_over()
            return False
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                self._hand_over()  # aiohttp refuses an oversized head in the one error shape
            return False
        # The gate runs in a context of its own (`_Request.context`): the credential's scope it records must not leak
        # into the context aiohttp's handler tasks copy after a hand-over.
        request = self._parse(bytes(buffer[: end + 4]))
        if request is None:
            self._hand_over()
            return False
        del buffer[: end + 4]
        self.request = request
        self.body_since = time.monotonic()
        return True

    def _parse(self, head: bytes) -> _Request | None:
        """The request when the fast edge can serve it as it is (else None: aiohttp will)."""
        target = _TARGET.match(head)
        if target is None:
            return self._parse_dialect(head)
        parsed = _Head.of(head)
        if parsed is None:
            return None
        headers = parsed.headers
        length = None
        keep_alive = True
        authorization = None
        requested = idempotency = invocation_id = None
        for name, value in headers:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"authorization":
                authorization = value
            elif name == _VARIANT:
                requested = value.decode("latin-1")
            elif name == _IDEMPOTENCY:
                idempotency = value.decode("latin-1")
            elif name == _INVOCATION_ID:
                invocation_id = value.decode("latin-1")
            elif name == b"connection":
                keep_alive = b"close" not in value.lower()
            elif name in _NOT_FAST:
                return None
        keep_alive = keep_alive and not self.edge.closing
        credential = None if authorization is None else authorization.decode("utf-8", "surrogateescape")
        gateway = self.edge.gateway
        context = contextvars.copy_context()  # the gate's record of the scope stays in this request's context
        if head.startswith(_DESCRIBE):  # an endpoint's description, or the listing: answered from the head
            if length:
                return None
            described = target.group(6)
            try:
                document = context.run(
                    gateway.description, None if described is None else described[1:].decode(), credential
                )
            except ApiError:
                return None  # refused: aiohttp's route answers it (the same gate, the same rendering)
            return _Request(None, b"", headers, 0, keep_alive, ready=Reply(200, _JSON_HEADERS, document))
        task_id = target.group(4) or target.group(7)
        if task_id is not None:  # a task's status, or its stored result (the SDK downloads it where it calls): no body
            if length:
                return None
            try:
                context.run(gateway.gate, None, credential, None)
            except ApiError:
                return None
            wait = None if target.group(5) is None else target.group(5).decode()
            result = target.group(7) is not None
            return _Request(
                None, b"", headers, 0, keep_alive, task_id=task_id.decode(), wait=wait, result=result, context=context
            )
        if length is None or length > BUFFER_BYTES:
            return None
        mode = _MODES[target.group(3)]
        if mode is Mode.ASYNC and gateway.queues is None:
            return None  # aiohttp answers the 503 (no Redis configured)
        try:
            entry = context.run(gateway.gate, target.group(2).decode(), credential, mode)
        except ApiError:
            return None  # refused: aiohttp's route answers it (the same gate, the same rendering)
        if entry is None or length > entry.max_payload_bytes:
            return None
        if mode is Mode.ASYNC:
            return _Request(entry, target.group(1), headers, length, keep_alive, requested or "", mode=mode)
        try:
            routed, variant = gateway.variant_entry(entry, requested, idempotency or invocation_id)
        except ApiError:
            return None  # an unknown variant: aiohttp's route refuses it in the documented shape
        return _Request(
            entry, target.group(1), headers, length, keep_alive, variant, routed.router_url, mode=mode, context=context
        )

    def _parse_dialect(self, head: bytes) -> _Request | None:
        """A dialect's operation the fast edge serves (`GatewayEdge.dialects`), its head phase run here: a refusal
        is answered here too, in the dialect's shape (None: aiohttp takes the request)."""
        line = head[: head.find(b"\r\n")].split(b" ")
        if len(line) != 3 or line[2] != b"HTTP/1.1" or b"%" in line[1]:
            return None  # a percent-encoded path: aiohttp decodes its parameters
        path, _, query = line[1].decode("latin-1").partition("?")
        method = line[0].decode("latin-1")
        found = self.edge.dialects.match(method, path)
        if found is None:
            return None
        parsed = _Head.of(head)
        if parsed is None:
            return None
        length = None
        keep_alive = True
        for name, value in parsed.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"connection":
                keep_alive = b"close" not in value.lower()
            elif name in _NOT_FAST:
                return None
        if length is None and method == "GET":
            length = 0  # a poll: no body
        if length is None or length > BUFFER_BYTES:
            return None
        operation, params = found
        gateway = self.edge.gateway
        context = contextvars.copy_context()  # the gate's record of the scope stays in this request's context
        request = Head(method, path, query, headers_of(parsed.headers), params, public_url=gateway.config.public_url)
        outcome = context.run(operation, request)
        keep_alive = keep_alive and not self.edge.closing
        if isinstance(outcome, Reply):
            return _Request(None, b"", [], length, keep_alive, context=context, ready=outcome)
        if length > outcome.max_body_bytes:
            refusal = outcome.refuse(too_large(length, outcome.max_body_bytes))
            return _Request(None, b"", [], length, keep_alive, context=context, ready=refusal)
        return _Request(None, b"", [], length, keep_alive, context=context, prepared=outcome)

    def body_timed_out(self, seconds: float) -> None:
        """The body deadline passed (the edge's sweep): a trickling client (slowloris) gets 408 and is closed; a
        dialect's request in its dialect's shape (`Prepared.refuse`)."""
        message = f"the request body was not complete within {seconds:g} s (BUNDLESERVE_BODY_TIMEOUT_SECONDS)"
        error = RequestTimeout(message)
        request, self.request = self.request, None
        if request is not None and request.prepared is not None:
            reply = request.prepared.refuse(error)
            self._close_with(reply_head(reply, keep_alive=False, length=len(reply.body)) + reply.body)
        else:
            self._fail(error)

    # -- proxying -------------------------------------------------------------------------------------------------

    async def _dialect(self, request: _Request, body: bytes) -> None:
        """A dialect's operation: its body phase (the call goes to the endpoint's router over the internal hop,
        `gateway.forwarding.EndpointCalls`), its reply written as it comes."""
        keep = request.keep_alive
        reply: Reply | None = None
        written = False
        try:
            prepared = request.prepared
            if prepared is None:
                raise RuntimeError("a dialect's request is prepared here")
            reply = await prepared.answer(body)
            del body
            transport = self.transport
            if transport is None:  # the client left while the call ran
                keep = False
            else:
                keep = keep and not self.edge.closing
                written = True
                await write_reply(transport, self.flow, reply, keep_alive=keep)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours: log it, answer in the documented shape if nothing was sent yet
            log.exception("unexpected error on the gateway's fast path")
            keep = False
            if not written:
                self.write(render(error_answer(ApiError("internal error")), keep_alive=False))
        finally:
            if reply is not None:
                await reply.finish()
        self._done(keep)

    async def _answer_here(self, request: _Request, body: bytes) -> None:
        """An async submission, a task status or a stored result, answered by the gateway itself (no router)."""
        gateway = self.edge.gateway
        keep = request.keep_alive
        try:
            if request.entry is not None:
                idempotency = next((v for k, v in request.headers if k == b"idempotency-key"), None)
                document = await gateway.submitted(
                    request.entry,
                    body,
                    None if idempotency is None else idempotency.decode("latin-1"),
                    request.variant or None,
                )
                answer = json_answer(202, document)
            elif request.result:
                data, content_type = await gateway.task_owner().result(request.task_id)
                answer = EdgeAnswer(200, data, content_type=content_type)
            else:
                forwarding = {
                    name: value.decode("latin-1")
                    for key, value in request.headers
                    if (name := _FORWARDING.get(key)) is not None
                }
                answer = json_answer(200, await gateway.status_document(request.task_id, request.wait, forwarding))
        except ApiError as error:
            answer = error_answer(error)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours: log it, answer in the documented shape
            log.exception("unexpected error on the gateway's fast path")
            answer, keep = error_answer(ApiError("internal error")), False
        self.write(render(answer, keep_alive=keep and not self.edge.closing))
        self._done(keep)

    def _upstream_head(self, request: _Request) -> tuple[tuple[str, int], bytes]:
        gateway = self.edge.gateway
        entry = request.entry
        if entry is None:  # a task status never reaches here: it is answered from the queue, not proxied
            raise RuntimeError("a proxied request names its endpoint")
        address, host = router_address(request.router_url or entry.router_url)
        lines = [b"POST ", request.path, b" HTTP/1.1\r\n", host]
        forwarded_host = forwarded_proto = False
        prior_for = None
        client_host = b""
        for name, value in request.headers:
            if name in _HOP:
                if name == b"host":
                    client_host = value
                continue
            if name == b"x-forwarded-for":
                prior_for = value
                continue
            forwarded_host = forwarded_host or name == b"x-forwarded-host"
            forwarded_proto = forwarded_proto or name == b"x-forwarded-proto"
            lines += (name, b": ", value, b"\r\n")
        if not forwarded_host and client_host:
            lines += (b"X-Forwarded-Host: ", client_host, b"\r\n")
        if not forwarded_proto:
            lines.append(b"X-Forwarded-Proto: http\r\n")
        if self.peer:
            lines += (b"X-Forwarded-For: ", prior_for + b", " + self.peer if prior_for else self.peer, b"\r\n")
        authorization = gateway.upstream_authorization(entry)
        if authorization is not None:
            lines += (b"Authorization: ", authorization.encode(), b"\r\n")
        lines.append(b"Content-Length: %d\r\n\r\n" % request.length)
        return address, b"".join(lines)

    def _relay(self, request: _Request, body: bytes) -> bool:
        """The shortest path (`_Relayed`): the request written to an idle pooled router connection now, from this
        callback, when nothing needs to wait first (an endpoint that may be at zero replicas goes through the
        activator, in `_proxy`); False: `_proxy` takes it."""
        entry = request.entry
        if entry is None or not self.edge.gateway.activator.passes(entry):
            return False
        address, head = self._upstream_head(request)
        return self._send_relayed(_Relayed(self, request, address, head, body), address, head, body)

    def _send_relayed(
        self, relayed: _Relayed | _CallRelayed, address: tuple[str, int], head: bytes, body: bytes
    ) -> bool:
        """Write a call on an idle pooled router connection (`UpstreamPool.relay`), its answer to `relayed`'s
        callbacks; False: no idle connection at hand (nothing was sent)."""
        upstream = self.edge.pool.relay(address, head, body, relayed)
        if upstream is None:
            return False
        relayed.upstream = upstream
        self.relayed = relayed
        if self.writing_paused:
            upstream.pause()
        return True

    def _whole_call(self, request: _Request, prepared: WholeCall, body: bytes) -> bool:
        """A dialect's sync call (`dialects.base.WholeCall`) taken apart: its invocation built here, sent to the
        router on the shortest path when it can be (`_CallRelayed`), else by `_call`; False: not one to take apart
        (`_dialect` answers it)."""
        calls = prepared.backend
        if not isinstance(calls, EndpointCalls):
            return False
        context = request.context or contextvars.copy_context()  # the gate's context, as `_dialect` runs in
        keep = request.keep_alive
        loop = asyncio.get_running_loop()
        try:
            invocation = context.run(prepared.invocation, body)
            del body
            if invocation.return_pickled:  # the result is kept for download first (I/O): the whole body phase
                self.task = loop.create_task(self._call(prepared, invocation, None, keep), context=context)
                return True
            hop = context.run(calls.hop, invocation)  # the production variant the call goes to
        except ApiError as error:
            self._answer_now(prepared.refuse(error), keep)
            return True
        except Exception:  # a bug of ours: log it, answer in the dialect's shape
            log.exception("unexpected error on the gateway's fast path")
            self._answer_now(prepared.refuse(ApiError("internal error")), False)
            return True
        if not self.edge.gateway.activator.passes(hop.entry):  # may be at zero replicas: held by the activator
            self.task = loop.create_task(self._call(prepared, invocation, hop, keep), context=context)
            return True
        relayed = _CallRelayed(self, prepared, hop, invocation, keep)
        head = hop.request(hop.predict_head, invocation)
        if not self._send_relayed(relayed, hop.address, head, invocation.body):  # no idle connection: `send` opens one
            self.task = loop.create_task(self._call(prepared, invocation, hop, keep), context=context)
        return True

    async def _call(
        self,
        prepared: WholeCall,
        invocation: Invocation,
        hop: RouterHop | None,
        keep: bool,
        after: Attempts = FIRST_ATTEMPT,
    ) -> None:
        """A whole call the shortest path did not finish: through the activator and `UpstreamPool.send`'s attempts
        (`after`: those the shortest path made), or (no `hop`) the dialect's own body phase past the invocation."""
        try:
            if hop is None:
                reply = await prepared.answer_invocation(invocation)
            else:
                try:
                    outcome: ModelReply | ApiError = await hop.predict(invocation, after=after)
                except ApiError as error:
                    outcome = error
                reply = prepared.rendered(outcome)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours: log it, answer in the dialect's shape
            log.exception("unexpected error on the gateway's fast path")
            reply, keep = prepared.refuse(ApiError("internal error")), False
        del invocation
        self.answered(reply, keep)

    def answered(self, reply: Reply, keep: bool) -> None:
        """Write a whole call's reply and go on with the connection (the next pipelined request, `_done`)."""
        keep = keep and not self.edge.closing
        self.write(reply_head(reply, keep_alive=keep, length=len(reply.body)) + reply.body)
        self._done(keep)

    def _answer_now(self, reply: Reply, keep: bool) -> None:
        """A reply known without a call (a reply made from the head: a refusal, a description; a whole call refused
        by its body phase), answered from `_process` itself: its loop then takes the next pipelined request.
        (`answered` would take it through `_done` instead, one level of recursion per request: a client pipelining
        hundreds of such requests would exhaust the stack.)"""
        keep = keep and not self.edge.closing
        answer = reply_head(reply, keep_alive=keep, length=len(reply.body)) + reply.body
        if keep:
            self.write(answer)
            self.idle_since = time.monotonic()
        else:
            self._close_with(answer)

    def call_over(self, relayed: _CallRelayed, outcome: ModelReply | ApiError) -> None:
        """The relayed whole call has its outcome: rendered in the dialect's shape and written."""
        if self.relayed is not relayed:
            return
        self.relayed = None
        keep = relayed.keep
        try:
            reply = relayed.prepared.rendered(outcome)
        except Exception:  # a bug of ours: log it, answer in the dialect's shape
            log.exception("unexpected error on the gateway's fast path")
            reply, keep = relayed.prepared.refuse(ApiError("internal error")), False
        self.answered(reply, keep)

    def retry_call(self, relayed: _CallRelayed, after: Attempts) -> None:
        """The shortest path found no answer, or a 503 refusal: `_call` goes on with the attempts left."""
        if self.relayed is not relayed or self.transport is None:
            return
        self.relayed = None
        self.task = asyncio.get_running_loop().create_task(
            self._call(relayed.prepared, relayed.invocation, relayed.hop, relayed.keep, after)
        )

    def relay_over(self, relayed: _Relayed, keep: bool) -> None:
        """The relayed call is answered (or handed to `_proxy` by `retry`)."""
        if self.relayed is relayed:
            self.relayed = None
            self._done(keep)

    def retry(self, relayed: _Relayed, after: Attempts) -> None:
        """The shortest path found no answer, or a 503 refusal: `_proxy` goes on with the attempts left."""
        if self.relayed is not relayed or self.transport is None:
            return
        self.relayed = None
        self.task = asyncio.get_running_loop().create_task(
            self._proxy(
                relayed.request, relayed.request_body, after=after, upstream=(relayed.address, relayed.request_head)
            )
        )

    async def _proxy(
        self,
        request: _Request,
        body: bytes,
        *,
        after: Attempts = FIRST_ATTEMPT,
        upstream: tuple[tuple[str, int], bytes] | None = None,
    ) -> None:
        """A proxied call through the activator and `UpstreamPool.send`'s attempts (`after`: those `_relay` made,
        `upstream`: the address and head it built)."""
        keep = request.keep_alive
        answer: Answer | None = None
        try:
            # an endpoint at zero replicas: held here while one starts (gateway.activator)
            entry = request.entry
            if entry is None:  # _process sends only requests naming their endpoint here
                raise RuntimeError("a proxied request names its endpoint")
            async with self.edge.gateway.activator.admitted(entry):
                address, head = upstream or self._upstream_head(request)
                try:
                    answer = await self.edge.pool.send(address, head, body, after=after)
                except NoAnswer:
                    error = Unavailable(
                        f"endpoint {entry.name} is not reachable (no ready router answered)",
                        headers={"Retry-After": "1"},
                    )
                    self.write(render(error_answer(error), keep_alive=keep))
                else:
                    del body
                    self.answer = answer
                    if self.writing_paused:
                        answer.pause()
                    keep = await self._forward_answer(answer, keep, request.variant)
        except ApiError as refused:  # the activator's: the hold is full, the deadline passed, the endpoint went away
            if answer is None:
                self.write(render(error_answer(refused), keep_alive=keep))
            else:  # not the activator's (it answers before any answer exists): a bug, as below
                log.exception("unexpected error on the gateway's fast path")
                keep = False
        except UpstreamLost:
            keep = False  # the answer began and broke: the client's connection ends too (it cannot be completed)
            if self.transport is not None:
                self.transport.close()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours: log it, answer in the documented shape if nothing was sent yet
            log.exception("unexpected error on the gateway's fast path")
            keep = False
            if answer is None:
                self.write(render(error_answer(ApiError("internal error")), keep_alive=False))
        finally:
            self.answer = None
            if answer is not None:
                answer.release()  # back to the pool only when read to its end; closed otherwise
        self._done(keep)

    async def _forward_answer(self, answer: Answer, keep: bool, variant: str) -> bool:
        """Write the router's answer to the client as it arrives, naming the variant that answered; whether the
        connection stays open."""
        keep = keep and not self.edge.closing
        length = answer.content_length
        lines = answer_head(answer.status, answer.headers, variant, keep=keep, length=length)
        if length is not None:
            if length <= BUFFER_BYTES:
                lines.append(await answer.read())  # one write: head and a small body
                self.write(b"".join(lines))
                return keep
            self.write(b"".join(lines))
            async for chunk in answer.chunks():
                self.write(chunk)
            return keep
        self.write(b"".join(lines))
        async for chunk in answer.chunks():  # an event stream: each chunk flushed as it comes
            if chunk:
                self.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.write(_CHUNKED_END)
        return keep

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        """Close the client's connection now (an answer that began cannot be completed)."""
        if self.transport is not None:
            self.transport.close()

    def _done(self, keep: bool) -> None:
        self.task = None
        self.idle_since = time.monotonic()
        transport = self.transport
        if transport is None:
            return
        if not keep:
            transport.close()
            return
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        if self.buffer:
            self._process()  # pipelined requests waited in the buffer

    def _fail(self, error: ApiError) -> None:
        """Answer an error in the native shape and close (`_close_with`)."""
        self._close_with(render(error_answer(error), keep_alive=False))

    def _close_with(self, answer: bytes) -> None:
        """Answer and close (the rest of the connection's bytes cannot be trusted); bytes still arriving are dropped
        for a bounded time (`edge.fast.answer_and_close`)."""
        self.edge.connections.discard(self)
        transport = self.transport
        if transport is None:
            return
        self.buffer.clear()
        self.transport = None  # what still arrives is dropped (data_received keeps no bytes without a transport)
        answer_and_close(transport, answer)

    def _hand_over(self) -> None:
        """Give the connection and its unconsumed bytes to aiohttp for good."""
        transport, self.transport = self.transport, None
        self.edge.hand_over(self, transport, self.buffer, reading_paused=self.reading_paused)


def answer_head(
    status: int, headers: list[tuple[bytes, bytes]], variant: str, *, keep: bool, length: int | None
) -> list[bytes]:
    """The client's answer head (its pieces, to be joined) for a router's answer: the router's headers without the
    hop-by-hop ones, the variant that answered, a Date, and the framing: `length`, or chunked when None."""
    lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    lines += (_VARIANT_NAME, b": ", variant.encode(), b"\r\n")
    dated = False
    for name, value in headers:
        lower = name.lower()
        if lower in _HOP:  # a router's `Connection: close` ends its own connection (the pool's), not this one
            continue
        dated = dated or lower == b"date"
        lines += (name, b": ", value, b"\r\n")
    if not dated:
        lines.append(Date.header())
    if not keep:
        lines.append(b"Connection: close\r\n")
    if length is not None:
        lines.append(b"Content-Length: %d\r\n\r\n" % length)
    else:
        lines.append(b"Transfer-Encoding: chunked\r\n\r\n")
    return lines


class _OnRouterConnection:
    """A call on the shortest path holds its router connection (`upstream`) and follows its client: the router's
    answer is not read while the client's socket buffer is full, and a client that leaves closes it."""

    __slots__ = ("upstream",)

    def __init__(self) -> None:
        self.upstream: RouterConnection | None = None

    def pause(self) -> None:
        """The client's socket buffer is full: stop reading the router's answer until it drained."""
        if self.upstream is not None:
            self.upstream.pause()

    def resume(self) -> None:
        if self.upstream is not None:
            self.upstream.resume()

    def abandon(self) -> None:
        """The client left: the router's connection is closed (the router sees its client leave)."""
        if self.upstream is not None:
            self.upstream.abandon()


class _Relayed(_OnRouterConnection):
    """One proxied call on the shortest path (`GatewayConnection._relay`), fed by the router connection's callbacks
    (`gateway.upstream.Relay`): no task and no future between the client's bytes and the router's. A small answer
    with a Content-Length goes out in one write when complete; a larger one as it arrives; one without a length
    (an event stream) chunked, each piece flushed. Before the router's head arrives the call can still be sent
    again (`retry`: no answer, or a 503 refusal, which it reads and drops); after it, a broken connection ends the
    client's too (as `_proxy` does)."""

    __slots__ = (
        "address", "client", "keep", "parts", "refused", "request", "request_body", "request_head", "streaming",
    )  # fmt: skip

    def __init__(
        self, client: GatewayConnection, request: _Request, address: tuple[str, int], head: bytes, body: bytes
    ) -> None:
        super().__init__()
        self.client = client
        self.request = request
        self.address = address
        self.request_head = head
        self.request_body = body  # kept until the router's head arrives: a retry sends it again
        self.keep = request.keep_alive
        self.parts: list[bytes] | None = None  # a small whole answer, gathered for one write
        self.streaming = False  # no Content-Length: chunked to the client
        self.refused = False  # a 503 before the model saw the call: read, dropped, and sent again

    # `gateway.upstream.Relay`, called by the router connection's callbacks

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None) -> None:
        if status == REFUSED:
            self.refused = True
            return
        self.request_body = b""
        self.keep = self.keep and not self.client.edge.closing
        lines = answer_head(status, headers, self.request.variant, keep=self.keep, length=content_length)
        if content_length is not None and content_length <= BUFFER_BYTES:
            self.parts = lines
            return
        self.streaming = content_length is None
        self.client.write(b"".join(lines))

    def on_body(self, chunk: bytes) -> None:
        if self.refused:
            return
        if self.parts is not None:
            self.parts.append(chunk)
        elif self.streaming:
            if chunk:
                self.client.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.client.write(chunk)

    def on_end(self) -> None:
        if self.refused:
            self.client.retry(self, Attempts(made=1, refusals=1))
            return
        if self.parts is not None:
            self.client.write(b"".join(self.parts))
        elif self.streaming:
            self.client.write(_CHUNKED_END)
        self.client.relay_over(self, self.keep)

    def on_lost(self, error: BaseException, *, answered: bool) -> None:
        if not answered or self.refused:
            log.info("no answer from %s:%d (%s: %s); trying again", *self.address, type(error).__name__, error)
            self.client.retry(self, Attempts(made=1, refusals=int(self.refused), fresh=True))
            return
        self.client.abort()  # the answer began and broke: the client's connection ends too
        self.client.relay_over(self, False)


class _CallRelayed(_OnRouterConnection):
    """A dialect's sync call on the shortest path (`GatewayConnection._whole_call`): its invocation written to an
    idle router connection from the client's callback, the router's answer gathered by that connection's callbacks
    and rendered in the dialect's shape when complete (`WholeCall.rendered`). No answer, or a 503 refusal (read and
    dropped), goes on in `_call` with the attempts left; an answer that broke midway is the hop's `unreachable`
    error, as `RouterHop.predict` makes it."""

    __slots__ = ("client", "headers", "hop", "invocation", "keep", "parts", "prepared", "status", "upstream")

    def __init__(
        self, client: GatewayConnection, prepared: WholeCall, hop: RouterHop, invocation: Invocation, keep: bool
    ) -> None:
        super().__init__()
        self.client = client
        self.prepared = prepared
        self.hop = hop
        self.invocation = invocation  # kept until the router's head arrives: a retry sends it again
        self.keep = keep
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []

    # `gateway.upstream.Relay`, called by the router connection's callbacks

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None) -> None:
        self.status, self.headers = status, headers

    def on_body(self, chunk: bytes) -> None:
        if self.status != REFUSED:
            self.parts.append(chunk)

    def on_end(self) -> None:
        if self.status == REFUSED:
            self.client.retry_call(self, Attempts(made=1, refusals=1))
            return
        try:
            outcome: ModelReply | ApiError = model_reply(self.status, self.headers, b"".join(self.parts))
        except ApiError as error:
            outcome = error
        self.client.call_over(self, outcome)

    def on_lost(self, error: BaseException, *, answered: bool) -> None:
        refused = self.status == REFUSED
        if not answered or refused:
            log.info("no answer from %s:%d (%s: %s); trying again", *self.hop.address, type(error).__name__, error)
            self.client.retry_call(self, Attempts(made=1, refusals=int(refused), fresh=True))
            return
        self.client.call_over(self, self.hop.unreachable())


_FORWARDING = {b"host": "Host", b"x-forwarded-proto": "X-Forwarded-Proto", b"x-forwarded-host": "X-Forwarded-Host"}


def json_answer(status: int, body: bytes) -> EdgeAnswer:
    return EdgeAnswer(status, body, content_type=_JSON)
