"""A call backend for one endpoint whose model runs behind its router: the parsed invocation, handed on in one hop.

A dialect that parsed and gated a request at the gateway (SageMaker, Launch, OpenAI) calls this exactly as it calls a
router's `InvocationCore` (`dialects.base.CallBackend`): `predict` and `stream` send the invocation over the internal
hop (`edge.hop`: `POST /internal/v1/endpoints/{name}/invoke[-stream]`, the invocation's body and fields as they are),
authenticated with the gateway's own key for that endpoint, and turn the router's answer back into the core's types:
`ModelReply`, `StreamChunk`s, or the `ApiError` the router raised (`api.errors.error_from_body`). So the router runs
the gate, deadline, admission and model call once, the gateway parses the dialect once, and the dialect renders the
same types wherever it is mounted.

Errors: the router's refusals as their `ApiError` classes; no router reachable (after `UpstreamPool.send`'s attempts):
Unavailable (503, Retry-After 1); the connection lost mid-stream: ModelError (the stream ends with the dialect's
failure event).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from bundleserve.api.endpoint import IMPLICIT_VARIANT, Mode
from bundleserve.api.errors import ApiError, ModelError, Unavailable
from bundleserve.api.invocation import CUSTOM_ATTRIBUTES_HEADER, Invocation, ModelReply, StreamChunk
from bundleserve.edge import hop
from bundleserve.gateway.proxy import read_capped
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.gateway.upstream import FIRST_ATTEMPT, Answer, Attempts, UpstreamLost, UpstreamPool, router_address

_CUSTOM_ATTRIBUTES = CUSTOM_ATTRIBUTES_HEADER.lower().encode()
#: Bytes of a router's error answer read to rebuild the error.
_MAX_ERROR_BODY = 64 * 1024


#: The activator's hook (`gateway.activator.Activator.admitted`): the call's turn, after a hold at zero replicas.
Admit = Callable[[EndpointEntry, float | None], AbstractAsyncContextManager[object]]


def _no_hold(entry: EndpointEntry, request_timeout: float | None) -> AbstractAsyncContextManager[object]:
    return nullcontext(entry)


class RouterHop:
    """`CallBackend` of one endpoint, over the gateway's pooled raw client (`gateway.upstream`) to its router."""

    def __init__(
        self,
        pool: UpstreamPool,
        entry: EndpointEntry,
        authorization: str | None,
        admit: Admit = _no_hold,
    ) -> None:
        self.pool = pool
        self.entry = entry
        self.admit = admit
        self.address, self.predict_head, self.stream_head = _hop_heads(entry.router_url, entry.name)
        self.authorization = b"" if authorization is None else b"Authorization: %s\r\n" % authorization.encode()

    def request(self, start: bytes, inv: Invocation) -> bytes:
        """The hop request's head for `inv` (`start`: `predict_head` or `stream_head`), its blank line included."""
        fields = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in hop.encode_headers(inv).items())
        return start + fields + self.authorization + b"Content-Length: %d\r\n\r\n" % len(inv.body)

    def unreachable(self) -> Unavailable:
        """No router answered (after the pool's attempts), or the answer broke before it was complete."""
        return Unavailable(
            f"endpoint {self.entry.name} is not reachable (no ready router answered)", headers={"Retry-After": "1"}
        )

    async def _send(self, start: bytes, inv: Invocation, after: Attempts = FIRST_ATTEMPT) -> Answer:
        try:
            return await self.pool.send(self.address, self.request(start, inv), inv.body, after=after)
        except OSError:
            raise self.unreachable() from None

    async def predict(self, inv: Invocation, *, after: Attempts = FIRST_ATTEMPT) -> ModelReply:
        """The call (`after`: the attempts a relay made already, `gateway.fastpath`)."""
        async with self.admit(self.entry, inv.timeout_seconds):
            answer = await self._send(self.predict_head, inv, after)
            try:
                body = await answer.read()
            except UpstreamLost:
                raise self.unreachable() from None
            finally:
                answer.release()
        return model_reply(answer.status, answer.headers, body)

    def stream(self, inv: Invocation) -> AbstractAsyncContextManager[AsyncIterator[StreamChunk]]:
        return self._stream(inv)

    @asynccontextmanager
    async def _stream(self, inv: Invocation) -> AsyncIterator[AsyncIterator[StreamChunk]]:
        async with self.admit(self.entry, inv.timeout_seconds):  # in flight until the stream ends
            answer = await self._send(self.stream_head, inv)
            try:
                if answer.status != 200:
                    raise hop.error_of(answer.status, await _bounded(answer), _headers(answer.headers))
                frames = _Frames(answer)
                first = await frames.next()  # a failure before the first chunk raises here, on enter, as in the core
                yield frames.iterate(first)
            finally:
                # Back to the pool when the stream was read to its end; closed otherwise, so the router sees the
                # disconnect and stops the model.
                answer.release()


@functools.lru_cache(maxsize=1024)
def _hop_heads(router_url: str, name: str) -> tuple[tuple[str, int], bytes, bytes]:
    """(host, port) of a router URL, and the start of the hop's predict and stream requests to it for endpoint
    `name` (request line and `Host`): built once per router and endpoint, not per call."""
    address, host_line = router_address(router_url)
    predict = b"POST " + hop.PREDICT_PATH.format(name=name).encode() + b" HTTP/1.1\r\n" + host_line
    stream = b"POST " + hop.STREAM_PATH.format(name=name).encode() + b" HTTP/1.1\r\n" + host_line
    return address, predict, stream


def model_reply(status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> ModelReply:
    """The router's whole answer to a hop predict: the model's reply, or (raised) the ApiError the router answered."""
    if status != 200:
        raise hop.error_of(status, body, _headers(raw_headers))
    content_type, custom_attributes = b"", None
    for name, value in raw_headers:
        lower = name.lower()
        if lower == b"content-type":
            content_type = value
        elif lower == _CUSTOM_ATTRIBUTES:
            custom_attributes = value.decode("latin-1")
    return ModelReply(200, body, content_type.decode("latin-1"), custom_attributes)


def _headers(raw: list[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    return CIMultiDict([(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw])


async def _bounded(answer: Answer) -> bytes:
    parts: list[bytes] = []
    size = 0
    with contextlib.suppress(UpstreamLost):
        while size < _MAX_ERROR_BODY and (chunk := await answer.next_chunk()) is not None:
            parts.append(chunk)
            size += len(chunk)
    return b"".join(parts)[:_MAX_ERROR_BODY]


class _Frames:
    """The router's hop stream: one data frame per model chunk, a failure frame for a failure mid-stream."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.reader = hop.FrameReader()
        self.pending: list[bytes] = []
        self.failure: ApiError | None = None
        self.ended = False

    async def next(self) -> bytes | None:
        """The next chunk; None at the end; the failure after the chunks that came before it."""
        while not self.pending:
            if self.failure is not None:
                raise self.failure
            if self.ended:
                return None
            try:
                data = await self.answer.next_chunk()
            except UpstreamLost:
                raise _lost() from None
            if data is None:
                self.ended = True
                if self.reader.pending:
                    raise _lost()
                return None
            for item in self.reader.feed(data):
                if isinstance(item, ApiError):
                    self.failure, self.ended = item, True
                    break
                self.pending.append(item.data)
        return self.pending.pop(0)

    async def iterate(self, first: bytes | None) -> AsyncIterator[StreamChunk]:
        if first is None:
            return
        yield StreamChunk(first)
        while (data := await self.next()) is not None:
            yield StreamChunk(data)


def _lost() -> ModelError:
    return ModelError("the connection to the endpoint's router was lost mid-stream", status_code=None, traceback=None)


class EndpointCalls:
    """`dialects.base.InvocationBackend` of one named endpoint at the gateway: the gateway's gate and body limit
    here, the calls over the internal hop to the endpoint's router (`RouterHop`).

    Built per request by the dialects' resolver (`Gateway.calls(name)`): `gate` resolves the endpoint (and the
    credential's scope) once, and the body limit and the router of that same entry are used for the rest of the
    request. Calling `read_body`, `predict` or `stream` before `gate` is a bug (ApiError "internal error").
    """

    def __init__(self, front: Front, name: str) -> None:
        self.front = front
        self.name = name
        self.entry: EndpointEntry | None = None
        #: The production variant the last call went to (SageMaker's InvokedProductionVariant).
        self.variant = IMPLICIT_VARIANT

    def gate(
        self,
        name: str | None,
        authorization: str | None,
        mode: Mode,
        *,
        authenticated: bool = False,
        scope: frozenset[str] | None = None,
    ) -> None:
        self.entry = self.front.gate(
            self.name if name is None else name, authorization, mode, authenticated=authenticated, scope=scope
        )

    def authorize(self, authorization: str | None) -> None:
        self.front.gate(None, authorization, None)

    @property
    def requires_api_key(self) -> bool:
        return self.front.requires_api_key

    def _entry(self) -> EndpointEntry:
        if self.entry is None:
            raise ApiError("internal error: an endpoint's call before its gate")
        return self.entry

    async def read_body(self, request: web.Request) -> bytes:
        return await read_capped(request, self._entry().max_payload_bytes)

    @property
    def max_body_bytes(self) -> int:
        return self._entry().max_payload_bytes

    def hop(self, inv: Invocation) -> RouterHop:
        """The hop to the routers of the production variant the call names (`inv.variant`), else of one picked by
        weight (drawn from the call's idempotency key when it has one, so its retries reach the same variant);
        UnknownVariant for a name the endpoint does not have."""
        entry = self._entry()
        target, self.variant = self.front.variant_entry(entry, inv.variant, inv.idempotency_key)
        return RouterHop(self.front.pool, target, self.front.upstream_authorization(entry), self.front.admit)

    async def predict(self, inv: Invocation) -> ModelReply:
        return await self.hop(inv).predict(inv)

    def stream(self, inv: Invocation) -> AbstractAsyncContextManager[AsyncIterator[StreamChunk]]:
        return self.hop(inv).stream(inv)


class Front(Protocol):
    """What `EndpointCalls` needs of the gateway (`gateway.app.Gateway`)."""

    def gate(
        self,
        name: str | None,
        authorization: str | None,
        mode: Mode | None,
        *,
        authenticated: bool = False,
        scope: frozenset[str] | None = None,
    ) -> EndpointEntry | None: ...

    @property
    def requires_api_key(self) -> bool: ...

    @property
    def pool(self) -> UpstreamPool: ...

    def upstream_authorization(self, entry: EndpointEntry) -> str | None: ...

    def admit(self, entry: EndpointEntry, request_timeout: float | None) -> AbstractAsyncContextManager[EndpointEntry]:
        """The activator's hold of a call at zero replicas (`gateway.activator`)."""
        ...

    def variant_entry(
        self, entry: EndpointEntry, requested: str | None, key: str | None = None
    ) -> tuple[EndpointEntry, str]: ...
