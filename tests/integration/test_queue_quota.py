"""Byte quotas per endpoint (issue 17, finding 6) on a real valkey-server with a small `maxmemory` and `noeviction`,
as the chart runs Redis: one endpoint filling its backlog gets 429 (QueueFull) at its byte cap, and another
endpoint's submissions keep being accepted. Before, the cap counted tasks only: the first endpoint filled the shared
Redis and every endpoint's submissions failed (503, QueueUnavailable: maxmemory)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bundleserve.api.invocation import TaskStatus
from bundleserve.queue import keys
from bundleserve.queue.broker import QueueFull, TaskQueue
from bundleserve.queue.config import MIB, Durability, QueueConfig
from bundleserve.queue.purge import purge_queue
from bundleserve.queue.tasks import TaskRequest
from tests.support.valkey import Valkey

CAP = 4 * MIB


@pytest.fixture
async def small_redis(tmp_path: Path) -> AsyncIterator[aioredis.Redis]:
    server = Valkey(tmp_path / "small", extra=["--maxmemory", "16mb", "--maxmemory-policy", "noeviction"]).start()
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.aclose()
    server.stop()


def config(name: str) -> QueueConfig:
    return QueueConfig(endpoint=name, namespace="quota", durability=Durability.MEMORY, max_backlog_bytes=CAP)


async def test_one_endpoint_cannot_fill_the_shared_redis(small_redis: aioredis.Redis) -> None:
    greedy, other = TaskQueue(small_redis, config("greedy")), TaskQueue(small_redis, config("other"))
    body = {"blob": "x" * (256 * 1024)}
    accepted: list[str] = []
    try:
        with pytest.raises(QueueFull, match="bytes of unfinished tasks") as full:
            for _ in range(200):  # 50 MB if nothing stopped it: three times the server's maxmemory
                accepted.append(await greedy.submit(TaskRequest(args=body)))
        assert full.value.cap == CAP
        assert 10 <= len(accepted) <= CAP // (256 * 1024)
        counter = int(await small_redis.get(keys.byte_counter(greedy.config.queue_id)) or 0)
        assert CAP - 300 * 1024 < counter <= CAP
        # The other endpoint is not starved: its submissions are accepted.
        for _ in range(5):
            await other.submit(TaskRequest(args=body))

        # Finishing tasks gives their bytes back (every way an entry leaves the backlog goes through one step).
        started, _ = await greedy.claim("w", len(accepted))
        for item in started:
            made, _ = await greedy.complete(item.delivery, item.lease("w"), TaskStatus.SUCCESS, {"result": "1"})
            assert made
        assert int(await small_redis.get(keys.byte_counter(greedy.config.queue_id)) or 0) == 0
        await greedy.submit(TaskRequest(args=body))
    finally:
        for queue in (greedy, other):
            await queue.close()
            await purge_queue(small_redis, queue.config.queue_id)


async def test_a_requeued_task_is_counted_again(small_redis: aioredis.Redis) -> None:
    queue = TaskQueue(small_redis, config(f"requeue-{time.monotonic_ns()}"))
    counter = keys.byte_counter(queue.config.queue_id)
    try:
        await queue.submit(TaskRequest(args={"x": "y" * 1000}))
        held = int(await small_redis.get(counter) or 0)
        assert held > 1000
        (item,), _ = await queue.claim("w", 1)
        assert await queue.requeue(item.delivery, item.lease("w"), {})
        assert int(await small_redis.get(counter) or 0) == held
    finally:
        await queue.close()
        await purge_queue(small_redis, queue.config.queue_id)
