"""The gateway's async side: submissions go straight into the endpoint's queue, status and results come from the
queue's records and the result store. Nothing here needs a running router, which is why async requests are accepted
at zero replicas (the backlog is what brings workers up).

Parsing and rendering reuse the router's async API (`router.async_routes`): one submission format, one status
document. When the shared `TaskService` (queue/service.py) lands, `EndpointQueues` becomes a resolver of it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web

from bundleserve.api.errors import NotFound, Unavailable
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.queue import keys
from bundleserve.queue.broker import QueueUnavailable, RedisError, TaskQueue, get_task
from bundleserve.queue.config import QueueConfig
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.results import InvalidKey, ResultStore, open_result_store
from bundleserve.queue.tasks import CallbackTarget, TaskRecord, TaskRequest
from bundleserve.router.async_routes import parse_submission, parse_wait, task_body
from bundleserve.router.settings import DEFAULT_URL_SCHEMES

_JSON = "application/json"


class EndpointQueues:
    """One Redis client for every endpoint's queue; a `TaskQueue` per endpoint, created on first use."""

    def __init__(self, redis_url: str, *, results_dir: Path, results_url: str | None = None) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, socket_keepalive=True, health_check_interval=30)
        self.waiter = CompletionWaiter(self.redis)
        self.store: ResultStore = open_result_store(results_dir, results_url)
        self._queues: dict[tuple[str, str], tuple[QueueConfig, TaskQueue]] = {}

    def queue(self, entry: EndpointEntry) -> TaskQueue:
        """The endpoint's queue with its current settings (a changed spec gets a fresh queue object)."""
        key = (entry.namespace, entry.name)
        config = QueueConfig.from_endpoint(entry.endpoint)
        known = self._queues.get(key)
        if known is None or known[0] != config:
            known = self._queues[key] = (config, TaskQueue(self.redis, config))
        return known[1]

    async def close(self) -> None:
        await self.waiter.close()
        for _, queue in self._queues.values():
            with contextlib.suppress(Exception):
                await queue.close()
        await self.redis.aclose()

    async def submit(self, entry: EndpointEntry, body: bytes) -> str:
        submission = parse_submission(
            body, kwargs_only=entry.endpoint.spec.bundle.is_python, url_schemes=frozenset(DEFAULT_URL_SCHEMES)
        )
        callback = (
            CallbackTarget(submission.callback_url, submission.callback_auth) if submission.callback_url else None
        )
        try:
            return await self.queue(entry).submit(TaskRequest.from_predict(submission), callback)
        except (QueueUnavailable, RedisError, OSError) as error:
            raise Unavailable(f"the queue did not take the task: {error}", headers={"Retry-After": "1"}) from None

    async def record(self, task_id: str) -> TaskRecord:
        try:
            record = await get_task(self.redis, task_id)
        except (RedisError, OSError) as error:
            raise Unavailable(f"the task store is not reachable: {error}", headers={"Retry-After": "1"}) from None
        if record is None:
            raise NotFound(f"no task {task_id!r} (unknown, or its result expired)")
        return record

    async def status(self, task_id: str, raw_wait: str | None) -> web.Response:
        """The status document; with `wait`, long-poll on the `done` channel of the task's own endpoint queue."""
        wait = parse_wait(raw_wait)
        record = await self.record(task_id)
        if wait > 0 and not record.status.terminal:
            channel = keys.done_channel(keys.queue_id(record.namespace or "default", record.endpoint))
            latest = [record]

            async def finished() -> bool:
                latest[0] = await self.record(task_id)
                return latest[0].status.terminal

            with contextlib.suppress(TimeoutError):
                await self.waiter.wait_for(channel, task_id, finished, wait)
            record = latest[0]
        return web.Response(body=task_body(record), content_type=_JSON)

    async def result(self, task_id: str) -> web.Response:
        try:
            found = await self.store.get(task_id)
        except InvalidKey:
            found = None
        if found is None:
            raise NotFound(f"no stored result for {task_id!r} (unknown, inline, or expired)")
        data, content_type = found
        return web.Response(body=data, content_type=content_type.split(";")[0])
