"""Demand for replicas of endpoints that scale from zero, carried from the gateways to the operator through Redis.

Why Redis: the gateways already hold the master Redis credential and the operator already reads queue backlogs
there, so the demand of sync and streaming traffic travels the same way as the async backlog does (as Knative's
activator reports the requests it holds to the autoscaler). Two names per endpoint (`queue.keys`):

- `demand` (a string with a TTL): a gateway refreshes it while it holds or forwards calls to the endpoint, with a
  TTL of the endpoint's `scaleToZeroAfterSeconds`, so it exists exactly while the endpoint had traffic within its
  idle time; the value is how many calls that gateway holds for a replica (the last writer wins: it sizes only the
  first step from zero, the HPA takes it from there).
- `wake` (a pub/sub channel): published when a gateway starts holding a call, so the operator scales up at once
  instead of at its next scaler tick (the tick reads `demand` anyway, so a lost message costs at most one tick).

Errors: redis' own `RedisError` (and OSError) for the callers to handle; nothing here retries except the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bundleserve.queue import keys
from bundleserve.queue.config import DEFAULT_REDIS_TIMEOUT_SECONDS
from bundleserve.queue.connection import connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemandReport:
    """One endpoint's demand as one gateway sees it now."""

    queue: str
    #: Calls this gateway holds for a replica of the endpoint.
    held: int
    #: The endpoint's scaleToZeroAfterSeconds: how long the report stands without a refresh.
    ttl_seconds: float


@dataclass(frozen=True)
class Demand:
    """What the operator reads: whether the endpoint had traffic within its idle time, and how many calls wait."""

    active: bool
    held: int


def _ttl_ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


async def report(redis: aioredis.Redis, reports: Iterable[DemandReport]) -> None:
    """Refresh the demand of several endpoints in one round trip."""
    pipe = redis.pipeline(transaction=False)
    count = 0
    for item in reports:
        pipe.set(keys.demand(item.queue), item.held, px=_ttl_ms(item.ttl_seconds))
        count += 1
    if count:
        await pipe.execute()


async def wake(redis: aioredis.Redis, item: DemandReport) -> None:
    """Record the demand and tell the operator now (the key first: the operator reads it when the message arrives)."""
    pipe = redis.pipeline(transaction=False)
    pipe.set(keys.demand(item.queue), item.held, px=_ttl_ms(item.ttl_seconds))
    pipe.publish(keys.wake_channel(item.queue), str(item.held))
    await pipe.execute()


async def read(redis: aioredis.Redis, queue: str) -> Demand:
    value = await redis.get(keys.demand(queue))
    if value is None:
        return Demand(active=False, held=0)
    try:
        held = max(0, int(value))
    except ValueError:
        held = 0
    return Demand(active=True, held=held)


async def listen_for_wakes(
    redis_url: str,
    on_wake: Callable[[str], None],
    *,
    retry_seconds: float = 1.0,
    timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS,
) -> None:
    """Forever (cancel to stop): `on_wake(queue_id)` for every wake message of any endpoint. A dropped connection is
    reopened after `retry_seconds`; messages published meanwhile are lost, which the scaler's tick covers."""
    while True:
        client = connect(redis_url, timeout=timeout)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(keys.WAKE_PATTERN)
            while True:
                message = await pubsub.get_message(timeout=2.0)  # under the socket timeout
                if message is None:
                    continue
                channel = message.get("channel")
                name = channel.decode() if isinstance(channel, bytes) else str(channel)
                queue = keys.queue_of_wake_channel(name)
                if queue is not None:
                    on_wake(queue)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as error:
            log.warning("wake listener: %s; reconnecting in %.0f s", error, retry_seconds)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(retry_seconds)


async def open_demand_reader(
    redis_url: str, *, timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS
) -> tuple[Callable[[str], Awaitable[Demand]], Callable[[], Awaitable[None]]]:
    """`(read, close)`: `read(queue_id)` is the endpoint's `Demand`, over one connection pool (the operator's
    demand gate reads every scale-from-zero endpoint's demand with it; `timeout`: the Redis client's)."""
    client = connect(redis_url, timeout=timeout)

    async def read_one(queue: str) -> Demand:
        return await read(client, queue)

    async def close() -> None:
        await client.aclose()

    return read_one, close
