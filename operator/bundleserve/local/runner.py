"""`bundleserve run FILE.yaml ...`: run Endpoint manifests on this machine, the embedded default.

Start order: Redis (when an endpoint serves async and no --redis-url is given), then per endpoint the model and
its router, then the front door on --port. Stop order is the reverse, and each router drains before its model
stops, as in a pod. Ctrl-C or SIGTERM stops everything; a child that dies stops the run with its last output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.manifest import ManifestError, load_endpoints
from bundleserve.local.front import build_front
from bundleserve.local.plan import EndpointPlan, PlanError, needs_redis, plan_endpoints
from bundleserve.local.redis import EmbeddedRedis, RedisStartError, free_port
from bundleserve.local.supervisor import Child, ChildFailed

log = logging.getLogger("bundleserve.local")

READY_TIMEOUT_SECONDS = 120.0  # a model's load() may train or read weights
STOP_GRACE_SECONDS = 30.0


def write_endpoint_files(plans: list[EndpointPlan]) -> None:
    """One normalised manifest per endpoint: the router's --endpoint-file, with local paths made absolute."""
    for plan in plans:
        plan.endpoint_file.parent.mkdir(parents=True, exist_ok=True)
        manifest = plan.endpoint.to_manifest()
        plan.endpoint_file.write_text(yaml.safe_dump(manifest, sort_keys=False))


class LocalRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data_dir: Path = args.data_dir.resolve()
        self.redis: EmbeddedRedis | None = None
        self.children: list[tuple[Child, Child]] = []  # (model, router) per endpoint
        self.runner: web.AppRunner | None = None

    async def start(self, found: list[tuple[Path, Endpoint]]) -> None:
        redis_url: str | None = self.args.redis_url
        if redis_url is None and needs_redis([e for _, e in found]):
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            await self.redis.start()
            redis_url = self.redis.url
            log.info("embedded Redis-protocol server on %s (AOF in %s)", redis_url, self.redis.data_dir)
        plans = plan_endpoints(
            found,
            endpoints_dir=self.data_dir / "endpoints",
            results_dir=self.data_dir / "results",
            redis_url=redis_url,
            allocate_port=free_port,
        )
        write_endpoint_files(plans)
        async with aiohttp.ClientSession() as session:
            for plan in plans:
                model, router = Child(plan.model), Child(plan.router)
                self.children.append((model, router))
                await model.start()
                await router.start()
            await asyncio.gather(
                *(c.wait_ready(session, READY_TIMEOUT_SECONDS) for pair in self.children for c in pair)
            )
        self.runner = web.AppRunner(build_front(plans, redis_url), access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.args.host, self.args.port).start()
        names = ", ".join(p.name for p in plans)
        log.info("bundleserve local mode ready on http://%s:%d (endpoints: %s)", self.args.host, self.args.port, names)

    async def watch(self, stop: asyncio.Event) -> None:
        """Return when asked to stop; raise when a child died on its own."""
        while not stop.is_set():
            for pair in self.children:
                for child in pair:
                    if child.exited:
                        raise ChildFailed(f"{child.spec.name} exited with status {child.returncode}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        # routers first (they drain in-flight requests), then the models behind them
        await asyncio.gather(*(router.stop(STOP_GRACE_SECONDS) for _, router in self.children))
        await asyncio.gather(*(model.stop(STOP_GRACE_SECONDS) for model, _ in self.children))
        if self.redis is not None:
            await self.redis.stop()


async def run(args: argparse.Namespace, found: list[tuple[Path, Endpoint]]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    local = LocalRun(args)
    try:
        await local.start(found)
        await local.watch(stop)
        log.info("stopping")
        return 0
    except (ChildFailed, RedisStartError, PlanError) as error:
        log.error("%s", error)
        return 1
    finally:
        await local.stop()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        found = load_endpoints(args.files)  # read once, and fail before anything starts
    except ManifestError as error:
        print(f"bundleserve run: {error}", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    return asyncio.run(run(args, found))
