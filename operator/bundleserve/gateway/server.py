"""`bundleserve gateway`: the name-addressed front of a cluster's Endpoints.

Configuration fails before anything listens, with a one-line reason: not in a cluster, unreadable API keys. The
Endpoint watch starts with the app; /readyz answers 200 once the first listing arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from bundleserve import logs
from bundleserve.dialects.adapter import FAST_ROUTES
from bundleserve.edge.config import ConfigError
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.edge.loop import run
from bundleserve.gateway.app import GATEWAY, GatewayConfig, build_gateway_app
from bundleserve.gateway.fastpath import GatewayEdge
from bundleserve.gateway.kube import EndpointWatch, KubeAccess, KubeConfigError
from bundleserve.gateway.registry import Registry
from bundleserve.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def build_cluster_app(config: GatewayConfig, access: KubeAccess, namespaces: list[str] | None) -> web.Application:
    registry = Registry()
    app = build_gateway_app(registry, config)
    gateway = app[GATEWAY]
    gateway.synced = False

    def synced() -> None:
        if not gateway.synced:
            log.info("endpoint registry listed: %d endpoint(s)", len(registry.entries()))
        gateway.synced = True

    watch = EndpointWatch(access, registry, namespaces, on_synced=synced)

    async def watching(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(watch.run(), name="bundleserve-endpoint-watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(watching)
    return app


def main(args: argparse.Namespace) -> int:
    """The composition root of `bundleserve gateway`: its settings read once, then every part built from them."""
    logs.configure()
    try:
        settings = GatewaySettings.from_args(args)
    except (ConfigError, KubeConfigError) as error:
        print(f"bundleserve gateway: {error}", file=sys.stderr)
        return 2
    namespaces = list(settings.namespaces) if settings.namespaces else None
    app = build_cluster_app(settings.app, settings.kube, namespaces)
    scope = ", ".join(namespaces) if namespaces else "all namespaces"
    log.info("bundleserve gateway listening on http://%s:%d (Endpoints of %s)", settings.host, settings.port, scope)
    try:
        run(serve(app, settings.app.connections, settings.host, settings.port))
    except OSError as error:
        print(
            f"bundleserve gateway: cannot listen on {settings.host}:{settings.port}: {error.strerror}", file=sys.stderr
        )
        return 1
    return 0


class Front:
    """The gateway listening: the fast edge (`gateway.fastpath`) on the socket, aiohttp behind it for every other
    request, on one port. `start` binds (or adopts `sock`); `stop` closes the listener and every connection."""

    def __init__(self, app: web.Application, limits: ConnectionLimits) -> None:
        self.app = app
        self.limits = limits
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True, **limits.server_kwargs()
        )
        self.edge: GatewayEdge | None = None
        self.listener: asyncio.Server | None = None

    async def start(self, host: str | None = None, port: int | None = None, sock: socket.socket | None = None) -> None:
        await self.runner.setup()
        server = self.runner.server
        if server is None:  # aiohttp's setup() always makes one; a change there must fail loudly, not later
            raise RuntimeError("the gateway's aiohttp runner has no server after setup()")
        gateway = self.app[GATEWAY]
        limits = self.limits
        self.edge = GatewayEdge(
            gateway,
            server,
            gateway.pool,
            idle_seconds=limits.idle_seconds,
            body_seconds=limits.body_seconds,
            dialects=self.app.get(FAST_ROUTES),
        )
        loop = asyncio.get_running_loop()
        if sock is not None:
            self.listener = await loop.create_server(self.edge, sock=sock, backlog=2048)
        else:
            self.listener = await loop.create_server(self.edge, host, port or 0, backlog=2048, reuse_address=True)

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.edge is not None:
            self.edge.close()
        await self.runner.cleanup()


async def serve(app: web.Application, limits: ConnectionLimits, host: str, port: int) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    front = Front(app, limits)
    try:
        await front.start(host, port)
        await stop.wait()
    finally:
        await front.stop()
