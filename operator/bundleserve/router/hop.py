"""The router's end of the internal hop (`edge.hop`): run the invocation a front already parsed, exactly once.

The gateway parsed the client's call in its dialect, checked the caller's credential (API key or SigV4 signature),
the endpoint's name, mode and body limit, and built the `Invocation`; here nothing of the dialect is parsed again.
The router still applies what only it can: its own gate (the gateway's key for this endpoint, the mode, draining and
readiness), the body limit of what actually arrives (its memory bound), then the one `InvocationCore` path
(deadline, admission, url fetch, model call, error mapping). The reply is the model's bytes; a refusal is the native
error shape, which the gateway turns back into the same `ApiError`.

The call route is served by the router's fast edge itself (`router.fastpath`, as hot as native predict); the stream
route is an operation of the dialect seam (`edge.exchange`: `HopRoutes.invoke_stream` is its head phase), so the
fast edge serves it like every dialect's stream, and aiohttp through the same code (`dialects.adapter`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from time import perf_counter

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ApiError
from bundleserve.api.invocation import CUSTOM_ATTRIBUTES_HEADER, Invocation, StreamChunk
from bundleserve.dialects import adapter
from bundleserve.edge import hop
from bundleserve.edge.errors import Answer, as_response, error_answer
from bundleserve.edge.exchange import Head, Prepared, Reply
from bundleserve.router.core import InvocationCore
from bundleserve.router.invoke import StreamRendering, stream_operation


def hop_answer(error: ApiError) -> Answer:
    """The native error answer, naming the error's class where its code does not (`edge.hop.error_headers`)."""
    answer = error_answer(error)
    kind = hop.error_headers(error)
    return replace(answer, headers={**answer.headers, **kind}) if kind else answer


def error_response(error: ApiError) -> web.Response:
    return as_response(hop_answer(error))


def prepare_hop(
    core: InvocationCore, headers: Mapping[bytes, bytes], body: bytes, started: float
) -> Invocation | Answer:
    """The invocation of a hop request whose gate passed and body was read (the fast edge's raw headers); a refused
    one's error answer."""
    content_type, fields = headers.get(b"content-type"), headers.get(hop.INVOCATION_HEADER_RAW)
    try:
        return hop.decode(
            None if content_type is None else content_type.decode("latin-1"),
            None if fields is None else fields.decode("latin-1"),
            body,
        )
    except ApiError as error:
        core.refused(error, started)
        return hop_answer(error)


async def answer_hop(core: InvocationCore, inv: Invocation, started: float) -> Answer:
    """Run the invocation through the core: the model's reply as it is, or the error (the core counts both)."""
    try:
        reply = await core.predict(inv, started=started)
    except ApiError as error:
        return hop_answer(error)
    headers = {} if reply.custom_attributes is None else {CUSTOM_ATTRIBUTES_HEADER: reply.custom_attributes}
    return Answer(200, reply.body, headers, content_type=reply.content_type)


class HopRoutes:
    """`POST /internal/v1/endpoints/{name}/invoke` and `.../invoke-stream` of one router."""

    def __init__(self, core: InvocationCore) -> None:
        self.core = core

    async def _invocation(self, request: web.Request, mode: Mode) -> Invocation:
        core = self.core
        core.gate(request.match_info["name"], request.headers.get("Authorization"), mode)
        body = await core.read_body(request)
        return hop.decode(request.headers.get("Content-Type"), request.headers.get(hop.INVOCATION_HEADER), body)

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        try:
            inv = await self._invocation(request, Mode.SYNC)
        except ApiError as error:
            self.core.refused(error, started)
            return error_response(error)
        return as_response(await answer_hop(self.core, inv, started))

    def invoke_stream(self, head: Head) -> Prepared | Reply:
        """The stream route's head phase (`router.invoke.stream_operation`): one data frame per model chunk, one final
        failure frame for a failure after the first chunk; a refusal, or a failure before the first chunk, in the
        native error shape."""
        return stream_operation(self.core, _HOP_STREAM, head)


def _decode(head: Head, body: bytes) -> Invocation:
    return hop.decode(head.headers.get("Content-Type"), head.headers.get(hop.INVOCATION_HEADER), body)


async def _frames(chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield hop.data_frame(chunk.data)
    except ApiError as error:  # mid-stream (a ModelError, a Timeout): the one final failure frame
        yield hop.failure_frame(error)


_HOP_STREAM = StreamRendering(_decode, {"Content-Type": hop.STREAM_CONTENT_TYPE}, _frames, hop_answer)


def add_routes(app: web.Application, core: InvocationCore) -> None:
    routes = HopRoutes(core)
    app.router.add_post(hop.PREDICT_PATH, routes.invoke)
    app.router.add_routes([adapter.route("POST", hop.STREAM_PATH, routes.invoke_stream)])
    fast = adapter.fast_routes(app)
    if fast is not None:
        fast.add("POST", hop.STREAM_PATH, routes.invoke_stream)
