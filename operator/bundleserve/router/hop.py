"""The router's end of the internal hop (`edge.hop`): run the invocation a front already parsed, exactly once.

The gateway parsed the client's call in its dialect, checked the caller's credential (API key or SigV4 signature),
the endpoint's name, mode and body limit, and built the `Invocation`; here nothing of the dialect is parsed again.
The router still applies what only it can: its own gate (the gateway's key for this endpoint, the mode, draining and
readiness), the body limit of what actually arrives (its memory bound), then the one `InvocationCore` path
(deadline, admission, url fetch, model call, error mapping). The reply is the model's bytes; a refusal is the native
error shape, which the gateway turns back into the same `ApiError`.
"""

from __future__ import annotations

from time import perf_counter

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ApiError, ModelError
from bundleserve.api.invocation import CUSTOM_ATTRIBUTES_HEADER, Invocation
from bundleserve.edge import hop
from bundleserve.edge.errors import error_response as _plain_error_response
from bundleserve.router.core import InvocationCore


def error_response(error: ApiError) -> web.Response:
    """The native error answer, naming the error's class where its code does not (`edge.hop.error_headers`)."""
    response = _plain_error_response(error)
    response.headers.update(hop.error_headers(error))
    return response


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
        try:
            reply = await self.core.predict(inv, started=started)  # the core counts its own outcomes
        except ApiError as error:
            return error_response(error)
        response = web.Response(body=reply.body, content_type=None)
        response.headers["Content-Type"] = reply.content_type
        if reply.custom_attributes is not None:
            response.headers[CUSTOM_ATTRIBUTES_HEADER] = reply.custom_attributes
        return response

    async def invoke_stream(self, request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        try:
            inv = await self._invocation(request, Mode.STREAMING)
        except ApiError as error:
            self.core.refused(error, started, Mode.STREAMING)
            return error_response(error)
        response: web.StreamResponse | None = None
        try:
            async with self.core.stream(inv, started=started) as chunks:
                response = web.StreamResponse(headers={"Content-Type": hop.STREAM_CONTENT_TYPE})
                await response.prepare(request)
                try:
                    async for chunk in chunks:
                        await response.write(hop.data_frame(chunk.data))
                except ModelError as error:  # mid-stream: the one final failure frame (a Timeout is one too)
                    await response.write(hop.failure_frame(error))
        except ApiError as error:
            if response is None:  # before the first chunk: an ordinary error answer
                return error_response(error)
            await response.write(hop.failure_frame(error))
        await response.write_eof()
        return response


def add_routes(app: web.Application, core: InvocationCore) -> None:
    routes = HopRoutes(core)
    app.router.add_post(hop.PREDICT_PATH, routes.invoke)
    app.router.add_post(hop.STREAM_PATH, routes.invoke_stream)
