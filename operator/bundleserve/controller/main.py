"""`bundleserve operator`: run the kopf operator with the health/metrics port.

Scope: `--namespace NS` (repeatable) or `--all-namespaces` (the default when neither is given).
HA: `--peering NAME` runs kopf peering: every replica announces a priority in the peering object and only the highest
one works, the others pause until it is gone (graceful exit: at once; crash: once its keep-alive expires, after
BUNDLESERVE_PEERING_LIFETIME_SECONDS, default 60). Each
replica draws a random priority unless BUNDLESERVE_PEERING_PRIORITY sets one (equal priorities would pause everyone).
Without `--peering` (or with `--standalone`) the operator runs alone. SIGTERM stops it gracefully (kopf's own handling).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys

import kopf

from bundleserve.controller import health
from bundleserve.controller.config import ConfigError, OperatorConfig
from bundleserve.controller.handlers import build_registry
from bundleserve.controller.state import OperatorState

log = logging.getLogger(__name__)


async def run(args: argparse.Namespace, config: OperatorConfig) -> None:
    state = OperatorState(config)
    registry = build_registry(state)
    ready, stopping = asyncio.Event(), asyncio.Event()
    runner = await health.start(health.build_app(state.metrics, ready, stopping), "0.0.0.0", args.health_port)

    async def announce() -> None:
        await ready.wait()
        scope = "all namespaces" if not args.namespaces else "namespaces " + ",".join(args.namespaces)
        log.info(
            "bundleserve operator ready: watching endpoints.bundleserve.dev in %s, health on :%d",
            scope,
            args.health_port,
        )

    announcer = asyncio.create_task(announce())
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = config.peering_lifetime_seconds  # how long a crashed leader blocks the standby
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=not args.namespaces,
            namespaces=args.namespaces or (),
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=peering_priority(config) if args.peering else None,
            ready_flag=ready,
            settings=settings,
        )
    finally:
        stopping.set()
        announcer.cancel()
        await runner.cleanup()
        log.info("bundleserve operator stopped")


def peering_priority(config: OperatorConfig) -> int:
    """The configured priority, else a random one drawn for this process (equal priorities would pause everyone)."""
    if config.peering_priority is not None:
        return config.peering_priority
    return secrets.randbelow(2**31 - 1) + 1


def main(args: argparse.Namespace) -> int:
    if args.peering and args.standalone:
        print("bundleserve operator: --peering and --standalone exclude each other", file=sys.stderr)
        return 2
    try:
        config = OperatorConfig.from_env()  # the composition root's one read of the environment
    except ConfigError as error:
        print(f"bundleserve operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(log_format=kopf.LogFormat.JSON, log_refkey="k8s")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # per-handler chatter; our own lines say what changed
    try:
        asyncio.run(run(args, config))
    except OSError as error:  # e.g. the health port is taken
        print(f"bundleserve operator: {error}", file=sys.stderr)
        return 1
    return 0
