"""Deleting an endpoint's queue: its stream, dead letters, callback outbox and the records of the tasks they name.

The operator calls this from the Endpoint's delete finalizer (`controller.cleanup` decides when); it lives here
because only the queue package talks to Redis.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from bundleserve.queue import keys
from bundleserve.queue.config import DEFAULT_REDIS_TIMEOUT_SECONDS
from bundleserve.queue.connection import connect


async def purge_endpoint_queue(redis_url: str, queue_id: str, *, timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS) -> int:
    """Purge the queue `queue_id` over a connection of its own (`timeout`: the Redis client's); the number of keys
    removed."""
    client = connect(redis_url, timeout=timeout)
    try:
        return await purge_queue(client, queue_id)
    finally:
        await client.aclose()


async def purge_queue(redis: aioredis.Redis, queue_id: str, *, batch: int = 500) -> int:
    """Delete the stream, dead-letter stream and callback outbox of the queue `queue_id` (`keys.queue_id(namespace,
    name)`) and the records of the tasks they reference; returns the number of keys removed."""
    streams = [keys.stream(queue_id), keys.dead_letter(queue_id)]
    removed = 0
    for stream in streams:
        start = "-"
        while True:
            entries = await redis.xrange(stream, min=start, max="+", count=batch) or []
            task_keys = []
            for entry_id, fields in entries:
                task_id = (fields or {}).get(b"t") or (fields or {}).get("t")
                if task_id:
                    task_keys.append(keys.task(queue_id, task_id.decode() if isinstance(task_id, bytes) else task_id))
                start = f"({entry_id.decode() if isinstance(entry_id, bytes) else entry_id}"
            if task_keys:
                removed += int(await redis.unlink(*task_keys))
            if len(entries) < batch:
                break
    removed += int(await redis.unlink(*streams, keys.callback_outbox(queue_id), keys.byte_counter(queue_id)))
    return removed
