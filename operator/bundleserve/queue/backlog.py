"""Queue depth of an endpoint, for metrics, the endpoint's `status.queue` and the autoscaler.

Finished entries are deleted from the stream, so XLEN counts exactly the tasks not yet finished: `in_flight` are
those delivered to a consumer and not yet acknowledged (the group's pending list), `pending` the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bundleserve.queue import keys


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
