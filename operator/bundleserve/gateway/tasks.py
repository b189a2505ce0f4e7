"""The gateway's async side: one `TaskService` per endpoint (queue/service.py), resolved by name.

Submissions go straight into the endpoint's queue; status and stored results come from the queue's records and the
result store. Nothing here needs a running router, which is why async requests are accepted at zero replicas (the
backlog is what brings workers up). The services have no local worker (`worker` stays None): the gateway only
submits and reads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.errors import NotFound, Unavailable
from bundleserve.api.invocation import Invocation
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.gateway.variants import pick_variant, stable_draw
from bundleserve.queue import keys
from bundleserve.queue.broker import RedisError, TaskQueue, find_task
from bundleserve.queue.config import QueueConfig, QueueLimits
from bundleserve.queue.connection import connect, describe
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.results import ResultStore, for_namespace, open_result_store
from bundleserve.queue.service import S3AsyncPaths, SubmitChecks, TaskService
from bundleserve.queue.tasks import CallbackTarget, TaskRecord

log = logging.getLogger(__name__)


class EndpointQueues:
    """One Redis client and one completion listener for every endpoint; a `TaskService` per endpoint on first use."""

    def __init__(
        self,
        redis_url: str,
        *,
        results_dir: Path,
        results_url: str | None = None,
        results_s3_endpoint: str | None = None,
        checks: SubmitChecks | None = None,
        limits: QueueLimits | None = None,
    ) -> None:
        #: The deployment's queue knobs and Redis timeout, read once at start by the gateway's settings (no
        #: environment read when a submission builds a config).
        self.limits = limits or QueueLimits()
        # the queue's one client factory: connect and reply timeouts
        self.redis = connect(redis_url, timeout=self.limits.redis_timeout_seconds)
        self.checks = checks
        self.waiter = CompletionWaiter(self.redis)
        self.store: ResultStore = open_result_store(results_dir, results_url, s3_endpoint=results_s3_endpoint)
        #: (namespace, name, variant) -> (the Endpoint it was built from, its queue config, its service)
        self._services: dict[tuple[str, str, str | None], tuple[Endpoint, QueueConfig, TaskService]] = {}

    def service(self, entry: EndpointEntry, variant: str | None = None) -> TaskService:
        """The task service of the endpoint's queue, or of one declared variant's queue, with its current settings
        (a changed spec gets a fresh one). Built once per Endpoint document: the registry replaces the document when
        the spec changes, so the same object means the same config, and a request builds nothing."""
        key = (entry.namespace, entry.name, variant)
        known = self._services.get(key)
        if known is not None and known[0] is entry.endpoint:
            return known[2]
        config = QueueConfig.from_endpoint(entry.endpoint, self.limits, variant=variant)
        if known is None or known[1] != config:
            service = TaskService(
                TaskQueue(self.redis, config), self.store_of(entry.namespace), self.waiter, self.checks
            )
        else:  # the same settings in a new document (a status-only update): the same service
            service = known[2]
        self._services[key] = (entry.endpoint, config, service)
        return service

    def backend(
        self, entry: EndpointEntry, draw: Callable[[], float], requested: str | None = None
    ) -> TaskService | VariantTasks:
        """The endpoint's tasks: its own queue, or for an endpoint with variants all of theirs (a submission goes
        to `requested` or a weighted pick). UnknownVariant for a name the endpoint does not have."""
        if not entry.variants:
            pick_variant(entry.routes, requested, 0.0)  # only AllTraffic may be named
            return self.service(entry)
        return VariantTasks(self, entry, draw, requested)

    def store_of(self, namespace: str) -> ResultStore:
        """The result store of a namespace's endpoints (in S3: that namespace's prefix, `results.for_namespace`)."""
        return for_namespace(self.store, namespace)

    async def owner(self, task_id: str, queues: list[str]) -> tuple[str, TaskRecord] | None:
        """(queue id, record) of the task among `queues` (those the caller may see): a task id says nothing about
        where it belongs, and each record lives under its endpoint's key prefix."""
        try:
            return await find_task(self.redis, queues, task_id)
        except (RedisError, OSError) as error:
            log.warning("reading task %s failed: %s", task_id, error)  # connection details stay in the log
            raise Unavailable(describe(error), headers={"Retry-After": "1"}) from None

    async def close(self) -> None:
        await self.waiter.close()
        for *_, service in self._services.values():
            with contextlib.suppress(Exception):
                await service.queue.close()
        await self.redis.aclose()


class VariantTasks:
    """The `TaskBackend` of an endpoint with production variants: each variant has its own queue (keys.queue_id), so
    a task runs on the variant it was given when it was submitted (the named one, else a weighted pick, as sync
    calls), and reads by task id find it in whichever variant's queue holds it."""

    def __init__(
        self, queues: EndpointQueues, entry: EndpointEntry, draw: Callable[[], float], requested: str | None
    ) -> None:
        self.queues = queues
        self.entry = entry
        self.draw = draw
        self.requested = requested
        if requested is not None:
            pick_variant(entry.variants, requested, 0.0)  # an unknown name is refused before anything is read
        #: queue id -> variant name
        self.variants = {keys.queue_id(entry.namespace, entry.name, v.name): v.name for v in entry.variants}

    def pick(self, key: str | None) -> str:
        """The variant of a submission; one with an idempotency key draws from it, so its retries reach the same
        queue, whose idempotency record makes them one task."""
        draw = stable_draw(key) if key is not None else self.draw()
        return pick_variant(self.entry.variants, self.requested, draw).name

    async def submit(
        self,
        inv: Invocation,
        *,
        callback: CallbackTarget | None,
        request_ttl_seconds: float | None,
        invocation_timeout_seconds: float | None,
        s3_paths: S3AsyncPaths | None = None,
    ) -> str:
        return await self.queues.service(self.entry, self.pick(inv.idempotency_key)).submit(
            inv,
            callback=callback,
            request_ttl_seconds=request_ttl_seconds,
            invocation_timeout_seconds=invocation_timeout_seconds,
            s3_paths=s3_paths,
        )

    def s3_paths(self) -> S3AsyncPaths | None:
        return self.queues.service(self.entry, self.entry.variants[0].name).s3_paths()  # endpoint-level settings

    async def owner(self, task_id: str) -> TaskService | None:
        found = await self.queues.owner(task_id, list(self.variants))
        return None if found is None else self.queues.service(self.entry, self.variants[found[0]])

    async def status(self, task_id: str, *, wait_seconds: float) -> TaskRecord | None:
        service = await self.owner(task_id)
        return None if service is None else await service.status(task_id, wait_seconds=wait_seconds)

    async def result(self, task_id: str) -> tuple[bytes, str]:
        service = await self.owner(task_id)
        if service is None:
            raise NotFound(f"no stored result for {task_id!r} (unknown, inline, or expired)")
        return await service.result(task_id)
