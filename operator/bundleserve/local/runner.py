"""`bundleserve run FILE.yaml ...`: run Endpoint manifests on this machine, the embedded default.

Start order: the front port is bound first (a port in use is one line and exit 2, before anything starts), then
Redis (when an endpoint serves async and no --redis-url is given), then per endpoint the model and its router,
then the gateway starts listening on the bound port: every dialect of every endpoint on one port, as in a cluster.

Stop order is the reverse, and each router drains before its model stops, as in a pod. Ctrl-C or SIGTERM stops
everything at any moment, also while models are still loading. A child that dies, or a model whose `load()` raises,
ends the run with exit status 1 and one message naming the endpoint and the error (decision: a half-working local
run hides mistakes; fix the bundle and start again). No process outlives the run (see `local.supervisor`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bundleserve import logs
from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.api.manifest import ManifestError, load_endpoints
from bundleserve.dialects.base import read_public_url
from bundleserve.dialects.sagemaker import sigv4
from bundleserve.edge.config import check_results_url, read_url_policy
from bundleserve.edge.connections import ConnectionLimits, limits_from_env
from bundleserve.gateway.activator import HoldSettings
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.readiness import poll_readiness
from bundleserve.gateway.registry import EndpointEntry, Registry, VariantRoute
from bundleserve.gateway.server import Front
from bundleserve.local.plan import (
    EndpointPlan,
    PlanError,
    local_gateway_sagemaker_env,
    local_router_env,
    needs_redis,
    plan_endpoints,
)
from bundleserve.local.redis import EmbeddedRedis, RedisStartError, free_port
from bundleserve.local.supervisor import Child, ChildFailed
from bundleserve.queue.callbacks import insecure_credentials_allowed
from bundleserve.queue.config import QueueLimits
from bundleserve.queue.s3results import endpoint_from_env
from bundleserve.queue.service import SubmitChecks

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0  # a model's load() may train or read weights
STOP_GRACE_SECONDS = 30.0


class PortInUse(RuntimeError):
    """The front port cannot be bound; nothing has been started."""


def bind_front(host: str, port: int) -> socket.socket:
    """Bind (not yet listen) the front port, so a conflict is reported before any child starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is already in use (choose another with --port)") from None
        raise PortInUse(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def write_endpoint_files(plans: list[EndpointPlan]) -> None:
    """One normalised manifest per endpoint: the router's --endpoint-file, with local paths made absolute."""
    for plan in plans:
        plan.endpoint_file.parent.mkdir(parents=True, exist_ok=True)
        manifest = plan.variant.endpoint.to_manifest()
        plan.endpoint_file.write_text(yaml.safe_dump(manifest, sort_keys=False))


def registry_entries(plans: list[EndpointPlan]) -> list[EndpointEntry]:
    """One gateway entry per Endpoint, with each declared variant's local router as a route of its own."""
    by_endpoint: dict[str, list[EndpointPlan]] = {}
    for plan in plans:
        by_endpoint.setdefault(plan.name, []).append(plan)
    return [
        EndpointEntry(
            endpoint=group[0].endpoint,
            router_url=group[0].router_url,
            ready=True,
            variants=tuple(
                VariantRoute(p.variant.name, p.variant.weight, p.router_url) for p in group if p.variant.declared
            ),
        )
        for group in by_endpoint.values()
    ]


def ready_message(base: str, plans: list[EndpointPlan]) -> str:
    """The ready line plus copy-paste examples for the clients people already have (pure, tested)."""
    names = ", ".join(dict.fromkeys(p.name for p in plans))
    lines = [f"bundleserve local mode ready on {base} (endpoints: {names})", f"  API page: {base}/docs"]
    by_mode = {mode: next((p.name for p in plans if p.endpoint.spec.serves(mode)), None) for mode in Mode}
    sync, stream, queued = by_mode[Mode.SYNC], by_mode[Mode.STREAMING], by_mode[Mode.ASYNC]
    if sync:
        lines += [
            f"  curl:    curl -s {base}/v1/endpoints/{sync}/predict -d '{{\"args\": {{}}}}'",
            f"  Python:  from bundleserve.client import Client, EndpointRequest; "
            f"Client('{base}').endpoint('{sync}').predict(EndpointRequest(args={{}}))",
            f"  boto3:   import boto3, botocore; boto3.client('sagemaker-runtime', endpoint_url='{base}', "
            f"region_name='local', config=botocore.config.Config(signature_version=botocore.UNSIGNED))"
            f".invoke_endpoint(EndpointName='{sync}', Body=b'{{}}', ContentType='application/json')",
            f"  Launch:  launch.LaunchClient(api_key='local', endpoint='{base}/v1/hosted_inference')"
            f".get_model_endpoint('{sync}').predict(launch.EndpointRequest(args={{}}, return_pickled=False))",
        ]
    if stream:
        lines.append(f"  stream:  curl -sN {base}/v1/endpoints/{stream}/stream -d '{{\"args\": {{}}}}'")
    if queued:
        lines.append(f"  async:   curl -s {base}/v1/endpoints/{queued}/async -d '{{\"args\": {{}}}}'")
    chat = next((p.name for p in plans if p.endpoint.spec.openai is not None), None)
    if chat:
        lines.append(
            f"  OpenAI:  import openai; openai.OpenAI(base_url='{base}/openai/v1', api_key='local')"
            f".chat.completions.create(model='{chat}', messages=[{{'role': 'user', 'content': 'hello'}}])"
        )
    lines.append("  local mode lets url inputs and callbacks reach loopback addresses (a cluster blocks them)")
    return "\n".join(lines)


@dataclass(frozen=True)
class LocalSettings:
    """What `bundleserve run` is configured with, read once by `main` from the manifests, the flags and the
    environment: its gateway's configuration, and the environment its children (models, routers) start from, whose
    own settings read it in turn (each router's `build_settings`)."""

    endpoints: tuple[tuple[Path, Endpoint], ...]
    #: The environment the children inherit (a snapshot taken at start).
    inherited: Mapping[str, str]
    connections: ConnectionLimits
    queue_limits: QueueLimits
    public_url: str | None
    #: The routers inherit the same variable: with S3 storage, both write and read results (and SageMaker's async
    #: objects) in the same bucket, as in a cluster.
    results_url: str | None
    results_s3_endpoint: str | None
    #: Unsigned SageMaker requests admitted unless the environment says otherwise (`local_gateway_sagemaker_env`).
    sagemaker_signing: sigv4.SigV4Config
    #: The gateway checks submissions as the local routers do (`local_router_env`: loopback and plain-http callback
    #: credentials allowed).
    submit_checks: SubmitChecks

    @classmethod
    def from_env(cls, endpoints: list[tuple[Path, Endpoint]], env: Mapping[str, str] | None = None) -> LocalSettings:
        """ValueError naming the variable for a bad value, before anything starts (`env`: the process's own unless
        a test gives one)."""
        env = dict(os.environ) if env is None else dict(env)
        results_url = env.get("BUNDLESERVE_RESULTS_URL") or None
        if results_url:
            check_results_url(results_url)
        local = local_router_env()
        return cls(
            endpoints=tuple(endpoints),
            inherited=env,
            connections=limits_from_env(env),
            queue_limits=QueueLimits.from_env(env),
            public_url=read_public_url(env),
            results_url=results_url,
            results_s3_endpoint=endpoint_from_env(env),
            sagemaker_signing=sigv4.config_from_env(local_gateway_sagemaker_env(env)),
            submit_checks=SubmitChecks(
                destinations=read_url_policy(local), allow_insecure_credentials=insecure_credentials_allowed(local)
            ),
        )

    def gateway_config(self, *, redis_url: str | None, results_dir: Path) -> GatewayConfig:
        """The front door's configuration once Redis runs and the data directory is known."""
        return GatewayConfig(
            connections=self.connections,
            queue_limits=self.queue_limits,
            public_url=self.public_url,
            redis_url=redis_url,
            results_dir=results_dir,
            results_url=self.results_url,
            results_s3_endpoint=self.results_s3_endpoint,
            submit_checks=self.submit_checks,
            sagemaker_signing=self.sagemaker_signing,
            # one process per endpoint, started with the others whatever minReplicas says: nothing to hold or wake
            hold=HoldSettings(enabled=False),
        )


class LocalRun:
    def __init__(self, args: argparse.Namespace, settings: LocalSettings) -> None:
        self.args = args
        self.settings = settings
        self.data_dir: Path = args.data_dir.resolve()
        self.redis: EmbeddedRedis | None = None
        self.children: list[tuple[str, Child, Child]] = []  # (endpoint, model, router)
        self.front: Front | None = None
        self.poller: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        found = list(self.settings.endpoints)
        redis_url: str | None = self.args.redis_url
        if redis_url is None and needs_redis([e for _, e in found]):
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            await self.redis.start()
            redis_url = self.redis.url
            log.info("embedded Redis-protocol server on %s (AOF in %s)", redis_url, self.redis.data_dir)
        results_dir = self.data_dir / "results"
        plans = plan_endpoints(
            found,
            endpoints_dir=self.data_dir / "endpoints",
            results_dir=results_dir,
            redis_url=redis_url,
            allocate_port=free_port,
        )
        write_endpoint_files(plans)
        async with aiohttp.ClientSession() as session:
            for plan in plans:
                model = Child(plan.model, self.settings.inherited)
                router = Child(plan.router, self.settings.inherited)
                self.children.append((plan.name, model, router))
                await model.start()
                await router.start()
            await asyncio.gather(*(self._ready(name, c, session) for name, *pair in self.children for c in pair))
        registry = Registry(registry_entries(plans))
        config = self.settings.gateway_config(redis_url=redis_url, results_dir=results_dir)
        self.front = Front(build_gateway_app(registry, config), config.connections)
        await self.front.start(sock=sock)
        self.poller = asyncio.create_task(poll_readiness(registry), name="bundleserve-local-readiness")
        host, port = sock.getsockname()[:2]
        log.info("%s", ready_message(f"http://{host}:{port}", plans))

    async def _ready(self, endpoint: str, child: Child, session: aiohttp.ClientSession) -> None:
        try:
            await child.wait_ready(session, READY_TIMEOUT_SECONDS)
        except ChildFailed as error:
            raise ChildFailed(f"endpoint {endpoint} failed to start: {error}") from None

    async def watch(self, stop: asyncio.Event) -> None:
        """Return when asked to stop; raise when a child died on its own."""
        while not stop.is_set():
            for endpoint, *pair in self.children:
                for child in pair:
                    if child.exited:
                        raise ChildFailed(
                            f"endpoint {endpoint}: {child.spec.name} exited with status {child.returncode}"
                        )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def stop(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        if self.front is not None:
            await self.front.stop()
        # routers first (they drain in-flight requests), then the models behind them
        await asyncio.gather(*(router.stop(STOP_GRACE_SECONDS) for _, _, router in self.children))
        await asyncio.gather(*(model.stop(STOP_GRACE_SECONDS) for _, model, _ in self.children))
        if self.redis is not None:
            await self.redis.stop()


async def until_stopped(work: asyncio.Future[None], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (then cancel it). True when the work finished."""
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    both: set[asyncio.Future[Any]] = {work, stopping}
    try:
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if work.done():
        work.result()  # re-raise its failure
        return True
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    return False


async def run(args: argparse.Namespace, settings: LocalSettings, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    local = LocalRun(args, settings)
    try:
        if await until_stopped(asyncio.ensure_future(local.start(sock)), stop):
            await local.watch(stop)
        log.info("stopping")
        return 0
    except (ChildFailed, RedisStartError, PlanError) as error:
        log.error("%s", error)
        return 1
    finally:
        await local.stop()
        sock.close()


def main(args: argparse.Namespace) -> int:
    """The composition root of local mode: manifests and environment read once, and checked, before anything
    starts."""
    logs.configure()
    try:
        settings = LocalSettings.from_env(load_endpoints(args.files))
        sock = bind_front(args.host, args.port)
    except (ManifestError, PortInUse, ValueError) as error:
        print(f"bundleserve run: {error}", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    return asyncio.run(run(args, settings, sock))
