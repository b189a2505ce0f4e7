"""The operator's probe and metrics port: /healthz (the event loop answers and kopf runs), /readyz (kopf has started
watching), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bundleserve.controller.metrics import OperatorMetrics


def build_app(metrics: OperatorMetrics, ready: asyncio.Event, stopping: asyncio.Event) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        if stopping.is_set():
            return web.json_response({"status": "stopping"}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set() and not stopping.is_set():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting" if not stopping.is_set() else "stopping"}, status=503)

    async def metrics_route(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_route)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
