"""Same-named Endpoints in two namespaces sharing one Redis (a real valkey server) have separate queues: streams,
backlogs (as the router, the operator's scaler and KEDA read them) and delete-time cleanups."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bundleserve.api.endpoint import Endpoint
from bundleserve.controller.builders.autoscaling import queue_names
from bundleserve.queue import keys
from bundleserve.queue.backlog import Backlog, backlog, open_backlog_reader
from bundleserve.queue.broker import TaskQueue, get_task
from bundleserve.queue.config import Durability, QueueConfig, QueueLimits
from bundleserve.queue.purge import purge_queue
from bundleserve.queue.tasks import TaskRequest
from tests.support.valkey import Valkey

NAME = f"twin-{int(time.time() * 1000) % 1000000}"


def endpoint_in(namespace: str) -> Endpoint:
    return Endpoint.model_validate(
        {
            "apiVersion": "bundleserve.dev/v1alpha1",
            "kind": "Endpoint",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {"modes": ["async"], "bundle": {"image": "registry.example.com/echo:1"}},
        }
    )


@pytest.fixture
async def redis(valkey_server: Valkey) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(valkey_server.url)
    yield client
    await client.aclose()


async def test_same_named_endpoints_in_two_namespaces_have_separate_queues(
    redis: aioredis.Redis, valkey_server: Valkey
) -> None:
    team_a, team_b = endpoint_in("team-a"), endpoint_in("team-b")
    queue_a = TaskQueue(redis, QueueConfig.from_endpoint(team_a, QueueLimits(), durability=Durability.MEMORY))
    queue_b = TaskQueue(redis, QueueConfig.from_endpoint(team_b, QueueLimits(), durability=Durability.MEMORY))
    read_backlog, close_reader = await open_backlog_reader(valkey_server.url)
    try:
        assert (queue_a.config.endpoint, queue_b.config.endpoint) == (NAME, NAME)
        assert queue_a.stream == f"bundleserve:{{team-a/{NAME}}}:stream"
        assert len({queue_a.stream, queue_b.stream}) == 2
        assert len({queue_a.dead, queue_b.dead}) == 2
        assert len({queue_a.channel, queue_b.channel}) == 2
        # The KEDA trigger and status.queue name the same stream the router's queue writes to.
        assert (queue_names(team_a)[0], queue_names(team_b)[0]) == (queue_a.stream, queue_b.stream)

        for queue in (queue_a, queue_b):
            await queue.ensure_group()
        ids_a = [await queue_a.submit(TaskRequest(args=i)) for i in range(2)]
        ids_b = [await queue_b.submit(TaskRequest(args=i)) for i in range(3)]

        assert (await redis.xlen(queue_a.stream), await redis.xlen(queue_b.stream)) == (2, 3)
        assert await backlog(redis, queue_a.config.queue_id) == Backlog(pending=2, in_flight=0)
        assert await backlog(redis, queue_b.config.queue_id) == Backlog(pending=3, in_flight=0)
        assert await read_backlog(keys.queue_id("team-a", NAME)) == (2, 0)  # the operator's scaler
        assert await read_backlog(keys.queue_id("team-b", NAME)) == (3, 0)
        record = await get_task(redis, queue_b.config.queue_id, ids_b[0])
        assert record is not None and (record.namespace, record.endpoint) == ("team-b", NAME)

        # Deleting team-a's Endpoint purges team-a's queue only.
        removed = await purge_queue(redis, keys.queue_id("team-a", NAME))
        assert removed == 2 + 1 + 1  # two task records, the stream and the byte counter
        assert not await redis.exists(queue_a.stream, *(keys.task(queue_a.config.queue_id, t) for t in ids_a))
        assert await redis.xlen(queue_b.stream) == 3
        assert await redis.exists(*(keys.task(queue_b.config.queue_id, t) for t in ids_b)) == 3
        assert await read_backlog(keys.queue_id("team-b", NAME)) == (3, 0)
    finally:
        await close_reader()
        for queue in (queue_a, queue_b):
            await queue.close()
            await purge_queue(redis, queue.config.queue_id)
