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
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from bundleserve import logs
from bundleserve.gateway.activator import settings_from_env as hold_settings_from_env
from bundleserve.gateway.app import GATEWAY, GatewayConfig, build_gateway_app
from bundleserve.gateway.kube import EndpointWatch, KubeAccess, KubeConfigError
from bundleserve.gateway.registry import Registry
from bundleserve.queue.callbacks import insecure_credentials_allowed
from bundleserve.queue.service import SubmitChecks
from bundleserve.router.connections import limits_from_env
from bundleserve.router.settings import (
    DEFAULT_RESULTS_DIR,
    ConfigError,
    parse_url_schemes,
    read_keys_file,
    read_url_policy,
)

log = logging.getLogger("bundleserve.gateway")


def config_from_env(redis_url: str | None, env: dict[str, str]) -> GatewayConfig:
    """The same variables as the router's (docs/router.md): one Secret and one store configure both."""
    keys_file = env.get("BUNDLESERVE_API_KEYS_FILE")
    try:
        connections = limits_from_env(env)
        hold = hold_settings_from_env(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return GatewayConfig(
        connections=connections,
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
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        **config.connections.server_kwargs(),
    )
    return 0
