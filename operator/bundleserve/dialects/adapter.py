"""aiohttp's side of the dialect seam (`edge.exchange`): one handler that runs an operation's two phases.

A dialect operation is written once (`HeadPhase`: head phase -> `Prepared`, body phase -> `Reply`); this adapter serves
it on an aiohttp route, and the fast edges (`router.fastpath`, `gateway.fastpath`) serve the same operation from
their own sockets when it is in the server's `FastRoutes` (`FAST_ROUTES` on the application, filled where the
dialect is mounted). So there is one implementation of each operation, whichever transport takes the request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from bundleserve.api.errors import ApiError
from bundleserve.dialects.base import PUBLIC_URL
from bundleserve.edge.exchange import FastRoutes, Head, HeadPhase, Reply, headers_of

#: The dialect operations this server's fast edge serves itself (router and gateway each build one).
FAST_ROUTES = web.AppKey("fast_routes", FastRoutes)


def head_of(request: web.Request) -> Head:
    """The request's head as the seam's `Head` (headers decoded as the fast edges decode them: latin-1)."""
    return Head(
        request.method,
        request.rel_url.raw_path,
        request.rel_url.raw_query_string,
        headers_of(request.raw_headers),
        request.match_info,
        secure=request.secure,
        public_url=request.app.get(PUBLIC_URL),
    )


def handler(operation: HeadPhase) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler that runs `operation`'s head phase, reads the body, runs its body phase, writes the reply."""

    async def handle(request: web.Request) -> web.StreamResponse:
        prepared = operation(head_of(request))
        if isinstance(prepared, Reply):
            return await send(request, prepared)
        try:
            body = await prepared.read_body(request)
        except ApiError as error:  # the backend's body limit (or body place): rendered by the dialect
            return await send(request, prepared.refuse(error))
        return await send(request, await prepared.answer(body))

    return handle


async def send(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Write a `Reply` through aiohttp: a whole body as a Response, chunks as a StreamResponse flushed per chunk."""
    if reply.chunks is None:
        await reply.finish()
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    try:
        await response.prepare(request)
        async for chunk in reply.chunks:
            await response.write(chunk)
    except ConnectionResetError:
        return response
    finally:
        await reply.finish()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def route(method: str, path: str, operation: HeadPhase) -> web.RouteDef:
    """The aiohttp route of an operation."""
    return web.route(method, path, handler(operation))


def fast_routes(app: web.Application) -> FastRoutes | None:
    """The application's fast routes (None: this server has no fast edge for dialects)."""
    return app.get(FAST_ROUTES)
