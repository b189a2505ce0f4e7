"""The endpoint's durable queue on Redis Streams: submit, claim (read + reclaim), and the task-state transitions.

One stream and one consumer group per endpoint (names in `keys.py`); each router process is one consumer. Delivery is
at-least-once: an entry stays in its consumer's pending list until a terminal transition or a requeue acknowledges it,
and `reclaim` (XAUTOCLAIM) moves entries idle longer than the visibility timeout to a live consumer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import RedisError as _RedisError

from bundleserve.api.invocation import TaskStatus
from bundleserve.queue import keys, scripts
from bundleserve.queue.config import Durability, QueueConfig
from bundleserve.queue.pipelining import AutoPipeline
from bundleserve.queue.tasks import STATUS_FIELDS, CallbackTarget, TaskRecord, TaskRequest

RedisError = _RedisError


class QueueUnavailable(Exception):
    """Redis did not take the task (down, or it could not confirm durability in time): the client may retry."""


@dataclass(frozen=True)
class Delivery:
    """A stream entry handed to this consumer."""

    entry_id: str
    task_id: str


@dataclass(frozen=True)
class Started:
    """The outcome of picking up one delivery: `run` with the request, or why it must not run."""

    delivery: Delivery
    outcome: str  # run | skip | gone | expired | failed
    attempts: int = 0
    request: TaskRequest | None = None
    callback: CallbackTarget | None = None
    #: When this process picked it up (monotonic): a task kept in hand is touched before it runs if it waited long.
    picked_at: float = field(default_factory=time.monotonic)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flatten(fields: Mapping[str, Any]) -> list[Any]:
    flat: list[Any] = []
    for name, value in fields.items():
        flat.extend((name, "" if value is None else value))
    return flat


def _deliveries(entries: Iterable[Any]) -> list[Delivery]:
    found = []
    for entry_id, values in entries:
        if not values:  # deleted while pending (XAUTOCLAIM reports those separately in Redis 7)
            continue
        task_id = values.get(b"t") or values.get("t")
        if task_id is not None:
            found.append(Delivery(_s(entry_id), _s(task_id)))
    return found


class TaskQueue:
    """All Redis operations of one endpoint's queue."""

    def __init__(self, redis: aioredis.Redis, config: QueueConfig) -> None:
        self.redis = redis
        self.config = config
        self.stream = keys.stream(config.queue_id)
        self.dead = keys.dead_letter(config.queue_id)
        self.channel = keys.done_channel(config.queue_id)
        self.callback_outbox = keys.callback_outbox(config.queue_id)
        #: Commands of concurrent callers share round trips; submissions end their batch with one WAITAOF.
        self.pipe = AutoPipeline(redis)
        waitaof = ("WAITAOF", 1, 0, config.fsync_timeout_ms)
        self.submits = AutoPipeline(redis, trailer=waitaof) if config.durability is Durability.FSYNC else self.pipe

    async def close(self) -> None:
        """Close the pipelines' connections (the caller owns `redis` itself)."""
        await self.pipe.close()
        if self.submits is not self.pipe:
            await self.submits.close()

    async def ensure_group(self) -> None:
        """Create the stream and its group (from the beginning: tasks submitted before any worker existed count)."""
        try:
            await self.redis.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # -- submit -------------------------------------------------------------------------------------------------

    async def submit(self, request: TaskRequest, callback: CallbackTarget | None = None) -> str:
        """Store the record and append the task; returns the task id once Redis holds it as durably as configured."""
        return await self.submit_encoded(request.dumps(), callback)

    async def submit_encoded(self, request_json: str | bytes, callback: CallbackTarget | None = None) -> str:
        """`submit` for a request already in `TaskRequest.dumps` form (the HTTP edge's `{"args": ...}` body as is)."""
        task_id, _ = await self.submit_claiming(request_json, callback)
        return task_id

    async def submit_claiming(
        self, request_json: str | bytes, callback: CallbackTarget | None = None, *, claim_for: str | None = None
    ) -> tuple[str, list[Started]]:
        """Submit; with `claim_for` (a consumer with an idle slot) also pick up the next task for it, in one step."""
        task_id = keys.new_task_id()
        now = repr(time.time())
        fields: dict[str, Any] = {
            "endpoint": self.config.endpoint,
            "namespace": self.config.namespace,
            "status": TaskStatus.PENDING.value,
            "created_at": now,
            "attempts": 0,
            "request": request_json,
        }
        if callback is not None:
            fields["callback"] = callback.dumps()
            fields["callback_status"] = "pending"
        cfg = self.config
        args = [
            task_id,
            cfg.record_ttl_seconds,
            claim_for or "",
            keys.GROUP,
            now,
            cfg.request_ttl_seconds,
            cfg.max_attempts,
            int(cfg.result_ttl_seconds),
            self.channel,
            keys.task(""),
            *_flatten(fields),
        ]
        command = ("EVALSHA", scripts.submit.sha, 3, keys.task(task_id), self.stream, self.dead, *args)
        try:
            try:
                claimed, durable = await self.submits.call(*command)
            except NoScriptError:
                await self.redis.script_load(scripts.submit.source)
                claimed, durable = await self.submits.call(*command)
        except _RedisError as error:
            if "appendonly is disabled" in str(error) or "unknown command" in str(error).lower():
                raise QueueUnavailable(
                    "the queue's Redis cannot confirm a task on disk (WAITAOF needs Redis >= 7.2 or Valkey with "
                    "appendonly yes): enable AOF, or set BUNDLESERVE_QUEUE_DURABILITY=memory"
                ) from error
            raise QueueUnavailable(f"the queue did not accept the task: {error}") from error
        if self.config.durability is Durability.FSYNC and int(durable[0]) < 1:
            raise QueueUnavailable(
                f"the queue did not confirm the task on disk within {self.config.fsync_timeout_ms} ms; retry later"
            )
        return task_id, _started(claimed)

    # -- claim ----------------------------------------------------------------------------------------------------

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        reply = await self.redis.xreadgroup(keys.GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
        if not reply:
            return []
        found: list[Delivery] = []
        item: Any
        for item in reply:
            found.extend(_deliveries(item[1]))
        return found

    async def reclaim(self, consumer: str, count: int) -> list[Delivery]:
        """Claim entries whose consumer has not finished them within the visibility timeout (it is presumed dead)."""
        min_idle_ms = int(self.config.visibility_timeout_seconds * 1000)
        found: list[Delivery] = []
        cursor = "0-0"
        while len(found) < count:
            reply = await self.redis.xautoclaim(
                self.stream, keys.GROUP, consumer, min_idle_time=min_idle_ms, start_id=cursor, count=count
            )
            cursor, entries = _s(reply[0]), reply[1]
            found.extend(_deliveries(entries))
            if len(reply) > 2 and reply[2]:  # ids deleted from the stream while pending: acknowledge them away
                await self.redis.xack(self.stream, keys.GROUP, *reply[2])
            if cursor == "0-0":
                break
        return found

    async def touch(self, consumer: str, delivery: Delivery) -> None:
        """Reset the entry's idle time (XCLAIM to its own consumer), so a reclaim does not take a task about to run."""
        await self.redis.xclaim(self.stream, keys.GROUP, consumer, 0, [delivery.entry_id], justid=True)

    async def owned(self, consumer: str, count: int = 1000) -> list[Delivery]:
        """Entries in this consumer's pending list (used when it stops, to hand them back)."""
        pending = await self.redis.xpending_range(self.stream, keys.GROUP, "-", "+", count, consumername=consumer)
        found: list[Delivery] = []
        for item in pending:
            entry_id = str(_s(item["message_id"]))
            entries: Any = await self.redis.xrange(self.stream, entry_id, entry_id)
            found.extend(_deliveries(entries or []) or [Delivery(entry_id, "")])
        return found

    def _start_args(self, consumer: str) -> list[Any]:
        cfg = self.config
        return [
            keys.GROUP,
            consumer,
            repr(time.time()),
            cfg.request_ttl_seconds,
            cfg.max_attempts,
            int(cfg.result_ttl_seconds),
            self.channel,
        ]

    async def start(self, consumer: str, deliveries: Sequence[Delivery]) -> list[Started]:
        """Atomically decide for each delivery: run it (attempts + 1, STARTED), or finish it without running."""
        if not deliveries:
            return []
        script_keys = [self.stream, self.dead, *(keys.task(d.task_id) for d in deliveries)]
        args = self._start_args(consumer)
        for delivery in deliveries:
            args.extend((delivery.entry_id, delivery.task_id))
        return _started(await scripts.start(self.pipe, script_keys, args))

    async def claim(self, consumer: str, count: int) -> tuple[list[Started], str]:
        """Read up to `count` new entries without blocking and pick them up, in one round trip.

        Returns (picked up, the stream's last id when there was nothing to pick up: wait with `wait_after`).
        """
        args = [*self._start_args(consumer), count, keys.task("")]
        last_id, entries = await scripts.claim(self.pipe, [self.stream, self.dead], args)
        return _started(entries), _s(last_id)

    async def wait_after(self, last_id: str, block_ms: int) -> bool:
        """Block until the stream has an entry after `last_id` (or `block_ms` passed); True if one arrived.

        A plain XREAD, not XREADGROUP: waiting consumes nothing and writes nothing, so the pickup that follows is a
        single claim (one AOF write instead of two at light load).
        """
        reply = await self.redis.xread({self.stream: last_id}, count=1, block=block_ms)
        return bool(reply)

    # -- transitions ----------------------------------------------------------------------------------------------

    async def complete(
        self,
        delivery: Delivery,
        status: TaskStatus,
        fields: Mapping[str, Any],
        *,
        dead_reason: str = "",
        claim_for: str | None = None,
        claim_count: int = 0,
    ) -> tuple[bool, list[Started]]:
        """The terminal transition; (True if this call made it, tasks claimed for `claim_for` in the same trip)."""
        cfg = self.config
        script_keys = [keys.task(delivery.task_id), self.stream, self.dead, self.callback_outbox]
        args = [
            keys.GROUP,
            delivery.entry_id,
            delivery.task_id,
            self.channel,
            int(cfg.result_ttl_seconds),
            dead_reason,
            claim_count if claim_for else 0,
            claim_for or "",
            repr(time.time()),
            cfg.request_ttl_seconds,
            cfg.max_attempts,
            keys.task(""),
            "status",
            status.value,
            "finished_at",
            repr(time.time()),
            *_flatten(fields),
        ]
        made, claimed = await scripts.complete(self.pipe, script_keys, args)
        return bool(made), _started(claimed)

    async def requeue(self, delivery: Delivery, fields: Mapping[str, Any], *, release: bool = False) -> bool:
        """Back to PENDING at the stream's tail: after a retryable failure, or (release) when this worker drains."""
        script_keys = [keys.task(delivery.task_id), self.stream]
        args = [keys.GROUP, delivery.entry_id, delivery.task_id, -1 if release else 0, *_flatten(fields)]
        return bool(await scripts.requeue(self.pipe, script_keys, args))

    async def enqueue_callback(self, task_id: str) -> bool:
        """Put a finished task's callback job in the outbox, due now (idempotent; settled callbacks are left)."""
        script_keys = [keys.task(task_id), self.callback_outbox]
        return bool(await scripts.enqueue_callback(self.redis, script_keys, [task_id, int(time.time() * 1000)]))

    async def update(self, task_id: str, fields: Mapping[str, Any]) -> bool:
        return bool(await scripts.update_if_exists(self.redis, [keys.task(task_id)], _flatten(fields)))

    # -- reads ----------------------------------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        return await get_task(self.pipe, task_id)


def _started(replies: Any) -> list[Started]:
    found = []
    for entry, task_id, outcome, attempts, request, callback in replies:
        delivery = Delivery(_s(entry), _s(task_id))
        target = CallbackTarget.loads(callback) if callback else None
        loaded = TaskRequest.loads(request) if request else None
        found.append(Started(delivery, _s(outcome), int(attempts), loaded, target))
    return found


async def get_task(redis: aioredis.Redis | AutoPipeline, task_id: str) -> TaskRecord | None:
    """The task's public state, or None for an unknown (or expired) id."""
    if not keys.is_task_id(task_id):
        return None
    values = await redis.execute_command("HMGET", keys.task(task_id), *STATUS_FIELDS)
    return TaskRecord.from_fields(task_id, dict(zip(STATUS_FIELDS, values, strict=True)))
