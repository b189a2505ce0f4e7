"""The one place a queue's Redis client is made: every connection has a socket timeout, so a Redis that stops
answering without closing the connection (a paused process, a black-holed network) fails a command instead of
hanging submits, status reads and completions; and the one place the server's durability support is decided.

Blocking commands keep working: the worker blocks for `Worker.block_ms` (2 s), well below the read timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from bundleserve.queue.config import DEFAULT_REDIS_TIMEOUT_SECONDS, DURABILITY_SETTINGS, OBSERVED_CONFIG_ENV, Durability

#: `Redis` is the client type `connect` returns, for callers that keep one (they never import redis themselves).
__all__ = ["Redis", "answers", "connect", "describe", "plan_durability"]

log = logging.getLogger(__name__)


def connect(url: str, *, timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS) -> aioredis.Redis:
    """A client for the queue's Redis with connect and per-reply timeouts (redis.exceptions.TimeoutError); `timeout`:
    the process's `QueueLimits.redis_timeout_seconds` (BUNDLESERVE_REDIS_TIMEOUT_SECONDS)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        health_check_interval=30,
    )


class DurabilityUnsupported(Exception):
    """The server cannot back the configured durability; the message says what to change."""


@dataclass(frozen=True)
class DurabilityPlan:
    """How submissions are made durable on this server, decided once when the queue starts.

    `waitaof`: end each batch of submissions with `WAITAOF 1 0 T` (Redis >= 7.2, Valkey). Without it (Redis 6.2 and
    7.0) `appendonly yes` with `appendfsync always` is as good: the server fsyncs the AOF before it replies, so the
    script's reply already means "on disk".
    """

    durability: Durability
    waitaof: bool
    reason: str


async def observed_config(redis: aioredis.Redis) -> dict[str, str]:
    """The durability settings as the env of a client that cannot read CONFIG (the operator passes them to routers)."""
    found = {}
    for name in DURABILITY_SETTINGS:
        value = await _config(redis, name, {})
        if value is not None:
            found[OBSERVED_CONFIG_ENV.format(name.upper())] = value
    return found


async def _config(redis: aioredis.Redis, name: str, observed: Mapping[str, str]) -> str | None:
    """The server's setting `name`; when CONFIG is refused, what the operator `observed` (None: unknown)."""
    try:
        found = await redis.config_get(name)
    except ResponseError:  # CONFIG disabled or renamed (managed Redis), or refused to this ACL user
        return observed.get(name) or None
    value = found.get(name) if isinstance(found, dict) else None
    if isinstance(value, bytes):
        value = value.decode()
    return None if value is None else str(value)


async def plan_durability(
    redis: aioredis.Redis, wanted: Durability, observed: Mapping[str, str] | None = None
) -> DurabilityPlan:
    """What the server supports for `wanted`; DurabilityUnsupported when FSYNC cannot be kept (nothing is stored).

    `observed`: the server's settings as the operator read them (`QueueLimits.observed_server_config`), used only
    when this client may not run CONFIG GET."""
    observed = {} if observed is None else observed
    if wanted is Durability.MEMORY:
        return DurabilityPlan(Durability.MEMORY, False, "BUNDLESERVE_QUEUE_DURABILITY=memory")
    try:
        await redis.execute_command("WAITAOF", 0, 0, 1)  # type: ignore[no-untyped-call]
        waitaof = True
    except ResponseError as error:
        text = str(error).lower()
        if "unknown command" not in text and "appendonly" not in text:
            raise
        waitaof = False
    appendonly = await _config(redis, "appendonly", observed)
    if (
        await _config(redis, "appendfsync", observed) == "no"
    ):  # the server never fsyncs itself: nothing would be confirmed
        appendonly = "no"
    if waitaof and appendonly != "no":
        try:  # with numlocal 1 WAITAOF refuses a server whose AOF is off: learn that now, not on a submit
            await redis.execute_command("WAITAOF", 1, 0, 1)  # type: ignore[no-untyped-call]
            return DurabilityPlan(Durability.FSYNC, True, "WAITAOF 1 0 after each batch of submissions")
        except ResponseError:
            appendonly = "no"
    if appendonly == "yes" and await _config(redis, "appendfsync", observed) == "always":
        return DurabilityPlan(Durability.FSYNC, False, "appendfsync always (the server fsyncs before replying)")
    raise DurabilityUnsupported(
        "the queue's Redis cannot confirm a task on disk: it needs appendonly yes, appendfsync always or everysec, and "
        "WAITAOF (Redis >= 7.2, Valkey); on Redis 6.2/7.0 (no WAITAOF) appendfsync always; change the server's "
        "configuration, or set "
        "BUNDLESERVE_QUEUE_DURABILITY=memory to accept tasks held in memory only"
    )


async def answers(url: str) -> bool:
    """Whether the server at `url` answers PING now (a starting server refuses connections: False, no exception)."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(await client.ping())
    except (OSError, RedisError):
        return False
    finally:
        await client.aclose()


def describe(error: RedisError | OSError) -> str:
    """A client-facing cause without connection details (host names and ports only go to the log)."""
    text = str(error)
    if isinstance(error, OutOfMemoryError) or "maxmemory" in text:
        return "the queue's Redis is out of memory (maxmemory reached) and refuses new tasks"
    if isinstance(error, ReadOnlyError) or "MISCONF" in text:
        return "the queue's Redis refuses writes at the moment"
    if isinstance(error, (RedisTimeout, TimeoutError)):
        return "the queue's Redis did not answer in time"
    return "the queue's Redis is not reachable"
