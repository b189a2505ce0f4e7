"""`bundleserve gateway`: the name-addressed front of a cluster's Endpoints.

Configuration fails before anything listens, with a one-line reason: not in a cluster, unreadable API keys. The
Endpoint watch starts with the app; /readyz answers 200 once the first listing arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from bundleserve import logs
from bundleserve.dialects.adapter import FAST_ROUTES
from bundleserve.dialects.base import read_public_url
from bundleserve.edge.config import (
    DEFAULT_RESULTS_DIR,
    ConfigError,
    parse_url_schemes,
    read_keys_file,
    read_url_policy,
)
from bundleserve.edge.connections import ConnectionLimits, limits_from_env
from bundleserve.edge.loop import run
from bundleserve.gateway.activator import settings_from_env as hold_settings_from_env
from bundleserve.gateway.app import GATEWAY, GatewayConfig, build_gateway_app
from bundleserve.gateway.fastpath import GatewayEdge
from bundleserve.gateway.kube import EndpointWatch, KubeAccess, KubeConfigError
from bundleserve.gateway.registry import Registry
from bundleserve.queue.callbacks import insecure_credentials_allowed
from bundleserve.queue.config import QueueLimits
from bundleserve.queue.service import SubmitChecks

log = logging.getLogger("bundleserve.gateway")


def config_from_env(redis_url: str | None, env: dict[str, str]) -> GatewayConfig:
    """The same variables as the router's (docs/router.md): one Secret and one store configure both."""
    keys_file = env.get("BUNDLESERVE_API_KEYS_FILE")
    try:
        connections = limits_from_env(env)
        queue_limits = QueueLimits.from_env(env)
        hold = hold_settings_from_env(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return GatewayConfig(
        connections=connections,
        queue_limits=queue_limits,
        public_url=read_public_url(env),
        hold=hold,
        submit_checks=SubmitChecks(
            url_schemes=parse_url_schemes(env.get("BUNDLESERVE_URL_SCHEMES")),
            destinations=read_url_policy(env),
            allow_insecure_credentials=insecure_credentials_allowed(env),
        ),
        redis_url=redis_url or env.get("BUNDLESERVE_REDIS_URL") or None,
        keys_file=read_keys_file(Path(keys_file)) if keys_file else None,
        results_dir=Path(env.get("BUNDLESERVE_RESULTS_DIR") or DEFAULT_RESULTS_DIR),
        results_url=env.get("BUNDLESERVE_RESULTS_URL") or None,
    )


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
    logs.configure()
    try:
        config = config_from_env(args.redis_url, dict(os.environ))
        access = KubeAccess.in_cluster()
    except (ConfigError, KubeConfigError) as error:
        print(f"bundleserve gateway: {error}", file=sys.stderr)
        return 2
    namespaces = list(args.namespaces) if args.namespaces else None
    app = build_cluster_app(config, access, namespaces)
    scope = ", ".join(namespaces) if namespaces else "all namespaces"
    log.info("bundleserve gateway listening on http://%s:%d (Endpoints of %s)", args.host, args.port, scope)
    try:
        run(serve(app, config.connections, args.host, args.port))
    except OSError as error:
        print(f"bundleserve gateway: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
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
        if server is None:
            raise RuntimeError("the gateway's aiohttp runner has no server after setup")
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
