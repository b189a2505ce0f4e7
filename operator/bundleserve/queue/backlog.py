"""Queue depth of an endpoint, for metrics, the endpoint's `status.queue` and the autoscaler.

Finished entries are deleted from the stream, so XLEN counts exactly the tasks not yet finished: `in_flight` are
those delivered to a consumer and not yet acknowledged (the group's pending list), `pending` the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bundleserve.queue import keys
from bundleserve.queue.config import DEFAULT_REDIS_TIMEOUT_SECONDS
from bundleserve.queue.connection import connect


@dataclass(frozen=True)
class Backlog:
    pending: int
    in_flight: int

    @property
    def total(self) -> int:
        return self.pending + self.in_flight


async def backlog(redis: aioredis.Redis, queue_id: str) -> Backlog:
    """The backlog of the queue `queue_id` (`keys.queue_id(namespace, name)`)."""
    stream = keys.stream(queue_id)
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xpending(stream, keys.GROUP)
    length, pending_info = await pipe.execute(raise_on_error=False)
    if isinstance(length, Exception):
        raise length
    if isinstance(pending_info, ResponseError) and "NOGROUP" in str(pending_info):
        in_flight = 0
    elif isinstance(pending_info, Exception):
        raise pending_info
    else:
        in_flight = int(pending_info["pending"])
    return Backlog(pending=max(int(length) - in_flight, 0), in_flight=in_flight)


async def open_backlog_reader(
    redis_url: str, *, timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS
) -> tuple[Callable[[str], Awaitable[tuple[int, int]]], Callable[[], Awaitable[None]]]:
    """`(read, close)`: `read(queue_id)` is `(pending, in_flight)` over one connection pool (the operator's queue
    scaler reads every async endpoint's backlog with it; `timeout`: the Redis client's)."""
    client = connect(redis_url, timeout=timeout)

    async def read(queue_id: str) -> tuple[int, int]:
        found = await backlog(client, queue_id)
        return found.pending, found.in_flight

    async def close() -> None:
        await client.aclose()

    return read, close
