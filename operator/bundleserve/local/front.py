"""Local mode's front door: one port that addresses endpoints by name, like the gateway does in a cluster.

It forwards `/v1/endpoints/{name}/...` to that endpoint's router and `/v1/tasks/{id}...` to the router of the
endpoint the task belongs to (read from the task record in the shared Redis: a router answers only for its own
endpoint's tasks, as a sidecar does in a cluster). Bodies and responses are streamed, so server-sent events reach
the client chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from bundleserve.api.errors import ApiError, NotFound, Unavailable
from bundleserve.local.plan import EndpointPlan
from bundleserve.queue.broker import get_task
from bundleserve.router.core import too_large

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Content-Length", "Host",
    )
)  # fmt: skip


@dataclass(frozen=True)
class Route:
    plan: EndpointPlan

    @property
    def base_url(self) -> str:
        return self.plan.router_url

    @property
    def max_payload_bytes(self) -> int:
        return self.plan.endpoint.spec.invocation.max_payload_bytes


FRONT_ROUTES = web.AppKey("front_routes", dict)
FRONT_SESSION = web.AppKey("front_session", aiohttp.ClientSession)
FRONT_REDIS = web.AppKey("front_redis", aioredis.Redis)


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


@web.middleware
async def error_shape(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response(error.body(), status=error.status, headers=error.headers)


async def _forward(request: web.Request, route: Route) -> web.StreamResponse:
    limit = route.max_payload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length, limit)
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise too_large(None, limit)
    session = request.app[FRONT_SESSION]
    url = route.base_url + request.rel_url.raw_path_qs
    try:
        upstream_cm = session.request(
            request.method, url, data=body, headers=forwarded_headers(request.headers), auto_decompress=False
        )
        async with upstream_cm as upstream:
            response = web.StreamResponse(status=upstream.status, headers=forwarded_headers(upstream.headers))
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientConnectionError:
        raise Unavailable(f"endpoint {route.plan.name} is not reachable (its router is down)") from None


async def endpoint_call(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    route = request.app[FRONT_ROUTES].get(name)
    if route is None:
        raise NotFound(f"unknown endpoint {name!r}")
    return await _forward(request, route)


async def task_call(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["task_id"]
    redis = request.app.get(FRONT_REDIS)
    record = await get_task(redis, task_id) if redis is not None else None
    route = request.app[FRONT_ROUTES].get(record.endpoint) if record is not None else None
    if route is None:
        raise NotFound(f"no task {task_id!r} (unknown, or its result expired)")
    return await _forward(request, route)


async def list_endpoints(request: web.Request) -> web.Response:
    items = [
        {"name": name, "modes": [m.value for m in r.plan.endpoint.spec.modes], "url": f"/v1/endpoints/{name}"}
        for name, r in request.app[FRONT_ROUTES].items()
    ]
    return web.json_response({"endpoints": items})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when every endpoint's router says it is ready (its model answered its ready route)."""
    session = request.app[FRONT_SESSION]

    async def ready(route: Route) -> bool:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.get(route.base_url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        return False

    routes = request.app[FRONT_ROUTES]
    states = await asyncio.gather(*(ready(r) for r in routes.values()))
    not_ready = [name for name, ok in zip(routes, states, strict=True) if not ok]
    if not_ready:
        raise Unavailable(f"not ready: {', '.join(not_ready)}")
    return web.json_response({"status": "ready"})


def build_front(plans: list[EndpointPlan], redis_url: str | None) -> web.Application:
    app = web.Application(middlewares=[error_shape], client_max_size=0)
    app[FRONT_ROUTES] = {plan.name: Route(plan) for plan in plans}

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(redis_url) if redis_url else None
        if client is not None:
            app[FRONT_REDIS] = client
        yield
        if client is not None:
            await client.aclose()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            app[FRONT_SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/endpoints", list_endpoints)
    app.router.add_route("*", "/v1/endpoints/{name}/{tail:.*}", endpoint_call)
    app.router.add_route("*", "/v1/tasks/{task_id}{tail:.*}", task_call)
    return app
