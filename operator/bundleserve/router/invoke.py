"""The native sync and streaming routes: a thin adapter (parse -> `InvocationCore` -> render).

This is the hot path; it avoids per-request allocations it can: constant response parts are pre-encoded and a JSON
result of a Python bundle is spliced into the response without being decoded. Everything between parsing and
rendering (gate, body limit, time limit, admission, url fetch, model call, error mapping) is the core's
(`router.core`), shared with the fast edge (`router.fastpath`), the dialects and the async worker.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from time import perf_counter

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ApiError, ModelError
from bundleserve.api.invocation import (
    IDEMPOTENCY_HEADER,
    Invocation,
    ModelReply,
    StreamChunk,
)
from bundleserve.dialects.base import public_base_url
from bundleserve.dialects.native.calls import parse_invocation
from bundleserve.edge.errors import Answer, as_reply, as_response, error_answer
from bundleserve.edge.exchange import Head, Prepared, Reply
from bundleserve.edge.sse import as_json, failure_event, success_event
from bundleserve.queue.results import keep_sync_result
from bundleserve.router.core import InvocationCore
from bundleserve.router.state import RouterState, result_store

_SUCCESS_HEAD = b'{"status":"SUCCESS","result":'
_SUCCESS_TAIL = b',"result_url":null,"traceback":null,"status_code":200}'
_JSON_TYPE = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


_FORWARDING = (
    ("Host", b"host"),
    ("X-Forwarded-Proto", b"x-forwarded-proto"),
    ("X-Forwarded-Host", b"x-forwarded-host"),
)


def public_url_of_raw(headers: Mapping[bytes, bytes], configured: str | None) -> str:
    """`dialects.base.public_base_url` for the fast edge's raw (lower-cased, bytes) request headers."""
    forwarding = {name: headers[key].decode("latin-1") for name, key in _FORWARDING if key in headers}
    return public_base_url(forwarding, configured=configured)


class PickledResults:
    """Keeps a sync `return_pickled` result in the endpoint's result store, for every dialect (native, Launch).

    A runnable image answers plain JSON or text, so its result is pickled here; a Python bundle's reply is a pickle
    already. Returns the path of the result route (`url_for`), which dialects make absolute.
    """

    def __init__(self, state: RouterState) -> None:
        self.state = state

    async def keep(self, reply: ModelReply) -> str:
        settings = self.state.settings
        ttl = float(settings.endpoint.spec.async_settings.result_ttl_seconds)
        return await keep_sync_result(result_store(self.state), settings.endpoint.namespace, settings.name, reply, ttl)


class Invoker:
    """The native predict and stream handlers of one endpoint, over its invocation core."""

    def __init__(self, core: InvocationCore) -> None:
        self.core = core
        self.state = core.state
        self.name = core.name
        self.max_bytes = core.max_bytes
        self.is_python = core.is_python
        self.sync_metrics = core.sync_metrics
        #: Native SSE as a stream over the core (`stream_operation`).
        self.sse = StreamRendering(self._stream_invocation, _SSE_HEADERS, _events, error_answer)

    def gate(self, name: str | None, authorization: str | None) -> None:
        """The core's gate for the sync mode (the fast edge calls it before reading a body)."""
        self.core.gate(name, authorization, Mode.SYNC)

    # -- predict --------------------------------------------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp edge of predict (the fast path, `router.fastpath`, is the other one; both share the rest)."""
        started = perf_counter()
        core = self.core
        try:
            core.gate(request.match_info.get("name"), request.headers.get("Authorization"), Mode.SYNC)
            body = await core.read_body(request)
        except ApiError as error:
            return as_response(self.refuse(error, started))
        prepared = self.prepare(body, started, request.headers.get(IDEMPOTENCY_HEADER))
        del body  # held once from here on: as the invocation's args text
        return as_response(
            await self.answer_prepared(
                prepared,
                started,
                lambda: public_base_url(
                    request.headers, scheme=request.scheme, configured=self.state.settings.public_url
                ),
            )
        )

    def refuse(self, error: ApiError, started: float) -> Answer:
        """Count a predict refused before the core ran and render the error."""
        self.core.refused(error, started)
        return error_answer(error)

    async def answer_predict(
        self,
        body: bytes,
        started: float,
        public_url: Callable[[], str] | None = None,
        idempotency: str | None = None,
    ) -> Answer:
        """Everything after the body was read: parse, call the core, render. `public_url()` gives the client-facing
        base URL that makes a stored result's `result_url` absolute (asked only when there is one); `idempotency`:
        the request's Idempotency-Key header."""
        return await self.answer_prepared(self.prepare(body, started, idempotency), started, public_url)

    def prepare(self, body: bytes, started: float, idempotency: str | None = None) -> Invocation | Answer:
        """Parse a predict body (synchronously: the edges drop the body right after, so a request holds its input
        once, as the invocation's args text); an error Answer for a body that is refused."""
        try:
            return parse_invocation(body, kwargs_only=self.is_python, idempotency=idempotency)
        except ApiError as error:
            return self.refuse(error, started)

    async def answer_prepared(
        self,
        prepared: Invocation | Answer,
        started: float,
        public_url: Callable[[], str] | None = None,
    ) -> Answer:
        """Call the core with a prepared invocation and render its reply or error."""
        if isinstance(prepared, Answer):
            return prepared
        invocation = prepared
        del prepared
        try:
            reply = await self.core.predict(invocation, started=started)
            if invocation.return_pickled:
                return await self._pickled_answer(reply, public_url)
            return self._result_answer(reply)
        except ApiError as error:
            return error_answer(error)

    def _result_answer(self, reply: ModelReply) -> Answer:
        if self.is_python and reply.body and reply.content_type.startswith(_JSON_TYPE):
            body = _SUCCESS_HEAD + reply.body + _SUCCESS_TAIL
        else:
            body = _SUCCESS_HEAD + json.dumps(reply.result()).encode() + _SUCCESS_TAIL
        return Answer(200, body)

    async def _pickled_answer(self, reply: ModelReply, public_url: Callable[[], str] | None) -> Answer:
        url = await PickledResults(self.state).keep(reply)
        if url.startswith("/") and public_url is not None:  # the file store's route; S3 URLs are absolute already
            url = public_url() + url
        body = {
            "status": "SUCCESS",
            "result": None,
            "result_url": url,
            "traceback": None,
            "status_code": 200,
        }
        return Answer(200, json.dumps(body).encode())

    # -- stream: an operation of the dialect seam (`edge.exchange`), served by the fast edge and aiohttp alike -----

    def _stream_invocation(self, head: Head, body: bytes) -> Invocation:
        return parse_invocation(body, kwargs_only=self.is_python)

    def stream(self, head: Head) -> Prepared | Reply:
        """Native SSE's head phase (`stream_operation`): one SUCCESS event per model event, a FAILURE event for a
        failure after the first one; errors before the first event are plain HTTP errors."""
        return stream_operation(self.core, self.sse, head)


@dataclass(frozen=True, slots=True)
class StreamRendering:
    """What tells apart the seam operations over the core's stream (native SSE here, the hop's frames in
    `router.hop`): how the body becomes the invocation, the answer's headers, how the chunks (and a failure after the
    first) are framed, and how a refusal looks."""

    parse: Callable[[Head, bytes], Invocation]
    headers: Mapping[str, str]
    render: Callable[[AsyncIterator[StreamChunk]], AsyncIterator[bytes]]
    refusal: Callable[[ApiError], Answer]


def stream_operation(core: InvocationCore, rendering: StreamRendering, head: Head) -> Prepared | Reply:
    """The head phase of a stream over the core: the core's gate (a refusal is answered before the body is read);
    the body phase is `CoreStream`."""
    started = perf_counter()
    try:
        core.gate(head.params.get("name"), head.headers.get("Authorization"), Mode.STREAMING)
    except ApiError as error:
        core.refused(error, started, Mode.STREAMING)
        return as_reply(rendering.refusal(error))
    return CoreStream(core, rendering, head, started)


class CoreStream:
    """A stream over the core past its gate: the body phase (`edge.exchange.Prepared`). The stream is entered here,
    where a failure before the first chunk is the rendering's whole refusal (the core counted it); each chunk, and a
    failure after the first, is framed by the rendering; the call ends with the reply (`Reply.close`)."""

    __slots__ = ("core", "head", "rendering", "started")

    def __init__(self, core: InvocationCore, rendering: StreamRendering, head: Head, started: float) -> None:
        self.core = core
        self.rendering = rendering
        self.head = head
        self.started = started

    @property
    def max_body_bytes(self) -> int:
        return self.core.max_body_bytes

    def refuse(self, error: ApiError) -> Reply:
        self.core.refused(error, self.started, Mode.STREAMING)
        return as_reply(self.rendering.refusal(error))

    async def read_body(self, request: web.Request) -> bytes:
        return await self.core.read_body(request)

    async def answer(self, body: bytes) -> Reply:
        rendering = self.rendering
        try:
            invocation = rendering.parse(self.head, body)
        except ApiError as error:
            return self.refuse(error)
        del body
        stack = contextlib.AsyncExitStack()
        try:
            chunks = await stack.enter_async_context(self.core.stream(invocation, started=self.started))
        except ApiError as error:
            return as_reply(rendering.refusal(error))
        return Reply(200, rendering.headers, chunks=rendering.render(chunks), close=stack.aclose)


async def _events(chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield success_event(as_json(chunk.data))
    except ModelError as error:  # the core's one failure after the first event
        yield _failure_frame(error)


def _failure_frame(error: ModelError) -> bytes:
    return failure_event(
        error.message, traceback=error.details.get("traceback"), status_code=error.details.get("status_code")
    )
