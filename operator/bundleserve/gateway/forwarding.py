"""A call backend for one endpoint whose model runs behind its router: the parsed invocation, handed on in one hop.

A dialect that parsed and gated a request at the gateway (the OpenAI dialect) calls this exactly as it calls a
router's `InvocationCore` (`dialects.base.CallBackend`): `predict` and `stream` send the invocation over the router's
native API (`POST /v1/endpoints/{name}/predict|stream`, `{"args": ...}`), authenticated with the gateway's own API
key, and turn the router's answer back into the core's types: `ModelReply`, `StreamChunk`s, or the `ApiError` the
router raised (`api.errors.error_from_body`). So the router runs the gate, deadline, admission and model call once, the
gateway parses the dialect once, and the dialect renders the same types wherever it is mounted.

Errors: the router's refusals as their `ApiError` classes; no router reachable (after `proxy.send`'s attempts):
Unavailable (503, Retry-After 1);
the connection lost mid-stream: ModelError (the stream ends with the dialect's failure event).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

import aiohttp

from bundleserve.api.errors import ApiError, InvalidRequest, ModelError, Unavailable, error_from_body
from bundleserve.api.invocation import JSON_CONTENT_TYPE, Invocation, ModelReply, StreamChunk
from bundleserve.gateway.proxy import send
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.router.sse import EventParser, success_chunk

#: Bytes of a router's error answer read to rebuild the error.
_MAX_ERROR_BODY = 64 * 1024


def native_body(inv: Invocation) -> bytes:
    """The invocation as a native request body (JSON keyword arguments or a url input; raw bodies have no native
    form)."""
    if inv.raw:
        raise InvalidRequest("a raw body cannot be handed to the router over the native API")
    parts = [b'{"url":' + json.dumps(inv.url).encode() if inv.url is not None else b'{"args":' + (inv.body or b"{}")]
    if inv.timeout_seconds is not None:
        parts.append(b',"timeout_seconds":' + json.dumps(inv.timeout_seconds).encode())
    if inv.return_pickled:
        parts.append(b',"return_pickled":true')
    if inv.request_id is not None:
        parts.append(b',"request_id":' + json.dumps(inv.request_id).encode())
    return b"".join(parts) + b"}"


#: The activator's hook (`gateway.activator.Activator.admitted`): the call's turn, after a hold at zero replicas.
Admit = Callable[[EndpointEntry, float | None], AbstractAsyncContextManager[object]]


def _no_hold(entry: EndpointEntry, request_timeout: float | None) -> AbstractAsyncContextManager[object]:
    return nullcontext(entry)


class RouterHop:
    """`CallBackend` of one endpoint, over the gateway's pooled session to the endpoint's router."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        entry: EndpointEntry,
        authorization: str | None,
        admit: Admit = _no_hold,
    ) -> None:
        self.session = session
        self.entry = entry
        self.admit = admit
        base = f"{entry.router_url}/v1/endpoints/{entry.name}"
        self.predict_url = base + "/predict"
        self.stream_url = base + "/stream"
        self.headers = {"Content-Type": JSON_CONTENT_TYPE}
        if authorization is not None:
            self.headers["Authorization"] = authorization

    def _unreachable(self) -> Unavailable:
        return Unavailable(
            f"endpoint {self.entry.name} is not reachable (no ready router answered)", headers={"Retry-After": "1"}
        )

    async def predict(self, inv: Invocation) -> ModelReply:
        try:
            async with self.admit(self.entry, inv.timeout_seconds):
                response = await send(
                    self.session, "POST", self.predict_url, data=native_body(inv), headers=self.headers
                )
                async with response as upstream:
                    body = await upstream.read()
                    if upstream.status != 200:
                        raise error_from_body(upstream.status, body, upstream.headers)
        except (aiohttp.ClientConnectionError, OSError):
            raise self._unreachable() from None
        try:
            result = json.loads(body)["result"]
        except (ValueError, KeyError, TypeError):
            raise ApiError("the endpoint's router answered a body without a result") from None
        return ModelReply(200, json.dumps(result).encode(), JSON_CONTENT_TYPE)

    def stream(self, inv: Invocation) -> AbstractAsyncContextManager[AsyncIterator[StreamChunk]]:
        return self._stream(inv)

    @asynccontextmanager
    async def _stream(self, inv: Invocation) -> AsyncIterator[AsyncIterator[StreamChunk]]:
        body = native_body(inv)
        async with self.admit(self.entry, inv.timeout_seconds):  # in flight until the stream ends
            try:
                upstream = await send(self.session, "POST", self.stream_url, data=body, headers=self.headers)
            except (aiohttp.ClientConnectionError, OSError):
                raise self._unreachable() from None
            try:
                if upstream.status != 200:
                    raise error_from_body(upstream.status, await _bounded(upstream), upstream.headers)
                events = _NativeEvents(upstream)
                first = await events.next()  # a failure before the first event raises here, on enter, as in the core
                yield events.iterate(first)
            finally:
                # Back to the pool when the stream was read to its end; closed otherwise (aiohttp closes a connection
                # with unread data), so the router sees the disconnect and stops the model.
                upstream.release()


async def _bounded(upstream: aiohttp.ClientResponse) -> bytes:
    try:
        return await upstream.content.read(_MAX_ERROR_BODY)
    except (aiohttp.ClientError, OSError):
        return b""


class _NativeEvents:
    """The router's native SSE: one SUCCESS event per model chunk, a FAILURE event for a failure mid-stream."""

    def __init__(self, upstream: aiohttp.ClientResponse) -> None:
        self.upstream = upstream
        self.parser = EventParser()
        self.pending: list[bytes] = []
        self.failure: ModelError | None = None
        self.ended = False

    async def next(self) -> bytes | None:
        """The next chunk; None at the end; the failure after the chunks that came before it."""
        while not self.pending:
            if self.failure is not None:
                raise self.failure
            if self.ended:
                return None
            try:
                data = await self.upstream.content.readany()
            except (aiohttp.ClientError, OSError):
                raise ModelError(
                    "the connection to the endpoint's router was lost mid-stream", status_code=None, traceback=None
                ) from None
            if not data:
                self.ended = True
                return None
            for event in self.parser.feed(data):
                chunk = success_chunk(event.data)
                if chunk is None:
                    self.failure, self.ended = _failure(event.data), True
                    break
                self.pending.append(chunk)
        return self.pending.pop(0)

    async def iterate(self, first: bytes | None) -> AsyncIterator[StreamChunk]:
        if first is None:
            return
        yield StreamChunk(first)
        while (data := await self.next()) is not None:
            yield StreamChunk(data)


def _failure(data: bytes) -> ModelError:
    """A native FAILURE event as the ModelError it reports."""
    try:
        event = json.loads(data)
        message = str(event["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ModelError("the model failed while streaming", status_code=None, traceback=None)
    return ModelError(message, status_code=event.get("status_code"), traceback=event.get("traceback"))
