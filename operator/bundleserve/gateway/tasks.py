"""The gateway's async side: one `TaskService` per endpoint (queue/service.py), resolved by name.

Submissions go straight into the endpoint's queue; status and stored results come from the queue's records and the
result store. Nothing here needs a running router, which is why async requests are accepted at zero replicas (the
backlog is what brings workers up). The services have no local worker (`worker` stays None): the gateway only
submits and reads.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from bundleserve.api.errors import Unavailable
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.queue.broker import RedisError, TaskQueue, find_task
from bundleserve.queue.config import QueueConfig, QueueLimits
from bundleserve.queue.connection import connect, describe
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.results import ResultStore, for_namespace, open_result_store
from bundleserve.queue.service import SubmitChecks, TaskService
from bundleserve.queue.tasks import TaskRecord

log = logging.getLogger("bundleserve.gateway.tasks")


class EndpointQueues:
    """One Redis client and one completion listener for every endpoint; a `TaskService` per endpoint on first use."""

    def __init__(
        self,
        redis_url: str,
        *,
        results_dir: Path,
        results_url: str | None = None,
        checks: SubmitChecks | None = None,
        limits: QueueLimits | None = None,
    ) -> None:
        self.redis = connect(redis_url)  # the queue's one client factory: connect and reply timeouts
        self.checks = checks
        self.waiter = CompletionWaiter(self.redis)
        self.store: ResultStore = open_result_store(results_dir, results_url)
        self._services: dict[tuple[str, str], tuple[QueueConfig, TaskService]] = {}
        #: The deployment's queue knobs, read once at start (no environment read when a submission builds a config).
        self.limits = limits or QueueLimits()

    def service(self, entry: EndpointEntry) -> TaskService:
        """The endpoint's task service with its current settings (a changed spec gets a fresh one)."""
        key = (entry.namespace, entry.name)
        config = QueueConfig.from_endpoint(entry.endpoint, self.limits)
        known = self._services.get(key)
        if known is None or known[0] != config:
            known = self._services[key] = (
                config,
                TaskService(TaskQueue(self.redis, config), self.store_of(entry.namespace), self.waiter, self.checks),
            )
        return known[1]

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
        for _, service in self._services.values():
            with contextlib.suppress(Exception):
                await service.queue.close()
        await self.redis.aclose()
