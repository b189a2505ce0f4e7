"""The operator's shared state and work: the per-Endpoint reconcile queue (one run at a time, bursts coalesced),
the built-in queue-depth scaler and the delete finalizer's queue purge. The kopf registrations that call into it are
in handlers.py; this module holds no kopf decorators, so it can be driven directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from pydantic import ValidationError

from bundleserve.api.endpoint import Mode
from bundleserve.api.variants import ServedVariant, served_variants
from bundleserve.controller import cleanup, kube
from bundleserve.controller.builders import BuildContext, Scaler, scaler_for
from bundleserve.controller.config import KedaMode, OperatorConfig
from bundleserve.controller.kube import KubeClient, KubeError
from bundleserve.controller.labels import deployment_name
from bundleserve.controller.metrics import OperatorMetrics
from bundleserve.controller.reconcile import BacklogReader, parse, reconcile
from bundleserve.controller.scaler import ScaleMemory, decide, gate_replicas
from bundleserve.queue import demand, keys
from bundleserve.queue.acl import QueueUsers
from bundleserve.queue.backlog import open_backlog_reader
from bundleserve.queue.config import queue_ids
from bundleserve.queue.purge import purge_endpoint_queue

log = logging.getLogger(__name__)
Key = tuple[str, str]


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@dataclass
class OperatorState:
    """Everything the handlers share; filled in at startup (the API client needs the running loop)."""

    config: OperatorConfig
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    kube: KubeClient | None = None
    keda: bool = False
    read_backlog: BacklogReader | None = None
    #: The demand gateways report for endpoints that scale from zero (queue/demand.py).
    read_demand: Callable[[str], Awaitable[demand.Demand]] | None = None
    #: Endpoints a wake message is being handled for (a burst of wakes makes one scale-up).
    waking: set[Key] = field(default_factory=set)
    #: The master Redis connection that creates and deletes the Endpoints' own ACL users (controller/secrets.py).
    queue_users: QueueUsers | None = None
    #: The queue server's durability settings read with the master credential, passed to routers as env.
    redis_observed: tuple[tuple[str, str], ...] = ()
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    rerun: set[Key] = field(default_factory=set)
    queued: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    scale_memory: dict[Key, ScaleMemory] = field(default_factory=dict)

    @property
    def drift_interval(self) -> float:
        return self.config.drift_seconds

    @property
    def scaler_interval(self) -> float:
        return self.config.scaler_seconds

    @property
    def cleanup_cap(self) -> float:
        return self.config.cleanup_max_seconds

    @property
    def context(self) -> BuildContext:
        return BuildContext(config=self.config, keda=self.keda, redis_observed=self.redis_observed)

    @property
    def client(self) -> KubeClient:
        if self.kube is None:
            raise RuntimeError("the operator has not started")
        return self.kube

    async def start(self) -> None:
        def login() -> kopf.ConnectionInfo:
            return kube.login(self.config.kubeconfig)

        self.kube = KubeClient.from_connection(login(), relogin=login)
        self.closers.append(self.kube.close)
        if self.config.keda is KedaMode.ON:
            self.keda = True
        elif self.config.keda is KedaMode.AUTO:
            self.keda = await self.kube.serves("keda.sh/v1alpha1")
        if self.config.redis_url:
            timeout = self.config.redis_timeout_seconds
            self.read_backlog, close = await open_backlog_reader(self.config.redis_url, timeout=timeout)
            self.closers.append(close)
            self.read_demand, close_demand = await demand.open_demand_reader(self.config.redis_url, timeout=timeout)
            self.closers.append(close_demand)
            listener = asyncio.create_task(
                demand.listen_for_wakes(self.config.redis_url, self.wake, timeout=timeout),
                name="bundleserve-wake-listener",
            )
            self.closers.append(lambda: _cancel(listener))
            self.queue_users = QueueUsers(self.config.redis_url, timeout=timeout)
            self.closers.append(self.queue_users.close)
            try:
                self.redis_observed = tuple(sorted((await self.queue_users.observed_config()).items()))
            except Exception as error:  # routers then decide from what they can read themselves
                log.warning("cannot read the queue server's durability settings: %s", error)
        log.info("operator state ready (keda=%s, queue=%s)", self.keda, "yes" if self.read_backlog else "no")

    async def stop(self) -> None:
        for task in list(self.queued.values()):
            task.cancel()
        for close in reversed(self.closers):
            await close()
        self.closers.clear()

    # -- reconcile ------------------------------------------------------------------------------------------------

    async def reconcile_key(self, key: Key) -> None:
        """Reconcile one Endpoint from a fresh read (never from a possibly stale event body)."""
        self.metrics.pending.inc()
        try:
            await self._reconcile_key(key)
        finally:
            self.metrics.pending.dec()

    async def _reconcile_key(self, key: Key) -> None:
        namespace, name = key
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            body = await self.client.get("Endpoint", namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return  # gone or going: owner references take the children with it
            started = time.perf_counter()
            try:
                result = await reconcile(
                    body,
                    self.client,
                    self.context,
                    read_backlog=self.read_backlog,
                    ensure_user=self.queue_users.ensure if self.queue_users is not None else None,
                )
            except KubeError:
                self.metrics.reconcile_errors.labels(namespace, name, "ApiError").inc()
                raise
            finally:
                self.metrics.reconcile_seconds.labels(namespace, name).observe(time.perf_counter() - started)
        for verb, kind, _ in result.writes:
            self.metrics.api_writes.labels(verb, kind).inc()
        if result.writes:
            log.info("reconciled %s/%s: %s", namespace, name, ", ".join(f"{v} {k}/{n}" for v, k, n in result.writes))
        if result.problem is not None:
            self.metrics.reconcile_errors.labels(namespace, name, result.problem.reason).inc()
        ready = next((c["status"] == "True" for c in result.status["conditions"] if c["type"] == "Ready"), False)
        self.metrics.set_ready(namespace, name, ready)
        for event in result.transitions:
            kopf.event(
                kopf.Body(cast(kopf.RawBody, body)),
                type=event["type"],
                reason=event["reason"],
                message=event["message"],
            )

    def request(self, key: Key) -> None:
        """Reconcile soon; bursts for the same Endpoint collapse into at most one extra run."""
        if key in self.queued:
            self.rerun.add(key)
            return
        self.metrics.pending.inc()
        self.queued[key] = asyncio.create_task(self._drain(key))

    async def _drain(self, key: Key) -> None:
        try:
            while True:
                self.rerun.discard(key)
                try:
                    await self.reconcile_key(key)
                except KubeError as error:
                    log.warning("reconcile of %s/%s failed (%s); retrying", key[0], key[1], error)
                    await asyncio.sleep(1.0)
                    self.rerun.add(key)
                if key not in self.rerun:
                    return
        finally:
            self.queued.pop(key, None)
            self.metrics.pending.dec()

    # -- scaler ---------------------------------------------------------------------------------------------------

    def uses_own_scaler(self, body: Any) -> bool:
        try:
            endpoint = parse(dict(body))
        except ValidationError:
            return False
        own = (Scaler.OPERATOR, Scaler.DEMAND)
        return any(scaler_for(v.endpoint, self.keda) in own for v in served_variants(endpoint))

    async def scale(self, key: Key, body: Any, *, up_only: bool = False) -> None:
        """One step of the operator's own scalers, for each variant they own: the queue-depth scaler (its own queue's
        backlog sizes its own Deployment) or the demand gate (the endpoint's demand, which the gateway reports per
        endpoint, wakes every variant). `up_only`: a wake message, which may arrive at any operator replica, never
        scales down."""
        if self.read_backlog is None:
            return
        endpoint = parse(dict(body))
        for variant in served_variants(endpoint):
            if scaler_for(variant.endpoint, self.keda) in (Scaler.OPERATOR, Scaler.DEMAND):
                await self._scale_variant(key, variant, up_only=up_only)

    async def _scale_variant(self, key: Key, variant: ServedVariant, *, up_only: bool) -> None:
        if self.read_backlog is None:
            return
        namespace, name = key
        target = deployment_name(name, variant.child_variant)
        deployment = await self.client.get("Deployment", namespace, target)
        if deployment is None:
            return
        current = int(deployment.get("spec", {}).get("replicas", 1))
        spec = variant.endpoint.spec
        backlog = 0
        if spec.serves(Mode.ASYNC):
            pending, in_flight = await self.read_backlog(keys.queue_id(namespace, name, variant.child_variant))
            backlog = pending + in_flight
        wanted: int | None
        if scaler_for(variant.endpoint, self.keda) is Scaler.DEMAND:
            if self.read_demand is None:
                return
            seen = await self.read_demand(keys.queue_id(namespace, name))  # the gateway's demand: per endpoint
            wanted = gate_replicas(current, seen, backlog, spec.scaling)
            woken = "woken; " if up_only else ""
            why = f"{woken}demand: {'active' if seen.active else 'idle'}, {seen.held} held, backlog {backlog}"
        else:
            memory = self.scale_memory.setdefault((namespace, target), ScaleMemory())
            wanted = decide(current, backlog, spec.scaling, time.monotonic(), memory)
            why = f"backlog {backlog}"
        if wanted is None or wanted == current or (up_only and wanted < current):
            return
        await self.client.merge_patch("Deployment", namespace, target, {"spec": {"replicas": wanted}})
        self.metrics.api_writes.labels("patch", "Deployment").inc()
        self.metrics.scaler_replicas.labels(namespace, target).set(wanted)
        log.info("scaled %s/%s from %d to %d (%s)", namespace, target, current, wanted, why)

    def wake(self, queue: str) -> None:
        """A gateway began holding a call for the endpoint `queue`: scale it up now, not at the next tick."""
        namespace, _, name = queue.partition("/")
        key = (namespace, name)
        if key in self.waking or self.kube is None:
            return
        self.waking.add(key)
        task = asyncio.create_task(self._wake(key), name=f"bundleserve-wake-{namespace}-{name}")
        task.add_done_callback(lambda _: self.waking.discard(key))

    async def _wake(self, key: Key) -> None:
        try:
            body = await self.client.get("Endpoint", *key)
            if body is not None and not body["metadata"].get("deletionTimestamp"):
                await self.scale(key, body, up_only=True)
        except Exception as error:  # API or Redis errors: the scaler's next tick retries; the listener must live on
            log.warning("waking %s/%s failed: %s (the scaler's next tick retries)", key[0], key[1], error)

    # -- delete ---------------------------------------------------------------------------------------------------

    async def clean_up(self, key: Key, body: Any, waited_seconds: float) -> None:
        namespace, name = key
        self.metrics.set_ready(namespace, name, None)
        self.scale_memory.pop(key, None)
        try:
            endpoint = parse(dict(body))
        except ValidationError:
            return  # never valid: nothing of ours can exist
        for variant in served_variants(endpoint):
            self.scale_memory.pop((namespace, deployment_name(name, variant.child_variant)), None)
        in_flight = 0
        if self.read_backlog is not None and endpoint.spec.serves(Mode.ASYNC):
            try:
                for queue in queue_ids(endpoint):
                    in_flight += (await self.read_backlog(queue))[1]
            except Exception as error:
                if waited_seconds < cleanup.wait_bound_seconds(endpoint, self.cleanup_cap):
                    raise kopf.TemporaryError(f"queue unreachable: {error}", delay=5) from None
                kopf.warn(body, reason="QueueCleanupFailed", message=f"queue left in place: {error}")
                return
        step = cleanup.next_step(
            endpoint,
            queue_configured=self.read_backlog is not None,
            in_flight=in_flight,
            waited_seconds=waited_seconds,
            cap=self.cleanup_cap,
        )
        if step is cleanup.CleanupStep.SKIP:
            await self._delete_queue_user(key)  # a retained queue keeps its keys, not the user that reached them
            return
        if step is cleanup.CleanupStep.WAIT:
            raise kopf.TemporaryError(f"{in_flight} task(s) still in flight", delay=min(5.0, self.cleanup_cap))
        if step is cleanup.CleanupStep.PURGE_AFTER_TIMEOUT:
            message = f"purging the queue with {in_flight} task(s) still in flight after {waited_seconds:.0f}s"
            kopf.warn(body, reason="QueueCleanupTimedOut", message=message)
            await self._degraded_on_delete(key, "QueueCleanupTimedOut", message)
        removed = 0
        for queue in {keys.queue_id(namespace, name), *queue_ids(endpoint)}:  # its own and its variants' queues
            removed += await purge_endpoint_queue(
                self.config.redis_url or "", queue, timeout=self.config.redis_timeout_seconds
            )
        log.info("deleted the queue of %s/%s (%d keys)", namespace, name, removed)
        await self._delete_queue_user(key)

    async def _delete_queue_user(self, key: Key) -> None:
        """The Endpoint's Redis user goes with it (its Secret goes with the Endpoint by owner reference)."""
        if self.queue_users is not None:
            with contextlib.suppress(Exception):  # a leftover user reaches only keys nobody writes any more
                await self.queue_users.delete(keys.queue_id(*key))

    async def _degraded_on_delete(self, key: Key, reason: str, message: str) -> None:
        condition = {"type": "Degraded", "status": "True", "reason": reason, "message": message}
        with contextlib.suppress(KubeError):  # best effort: the object is going away
            await self.client.patch_endpoint_status(key[0], key[1], {"conditions": [condition]})
