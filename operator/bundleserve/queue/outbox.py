"""The durable callback outbox: delivery jobs live in Redis, so a router that dies mid-retry loses no callback.

A task that reaches its terminal state with a callback target gets `callback_status: pending` and its id in the
endpoint's outbox (a sorted set scored by the next attempt's due time, `keys.callback_outbox`) in the same Lua step
as the transition. Every replica's worker runs `CallbackOutbox.run`: it claims due jobs atomically with a lease
(the score moves to now + lease, so no other replica takes the same attempt while it runs), makes one attempt,
and records it fenced on the attempt number; it then re-schedules the job with backoff and jitter, or removes it
once delivered or finally failed. Delivery is at least once: a replica killed after the POST but before recording
lets another replica repeat that attempt after the lease.

The job holds only the task id: the target and its credentials are read from the task record (where the request's
callback already lives) or, for the endpoint's default, from the Secret mounted into the router; they are never
copied elsewhere in Redis and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from bundleserve.queue import keys, scripts
from bundleserve.queue.broker import TaskQueue, get_task
from bundleserve.queue.callbacks import Attempt, CallbackSender, Outcome
from bundleserve.queue.tasks import CallbackTarget

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class CallbackOutbox:
    """Claims and delivers due callback jobs of one endpoint; any number of replicas may run one each."""

    def __init__(
        self,
        queue: TaskQueue,
        sender: CallbackSender,
        *,
        default_target: CallbackTarget | None = None,
        on_outcome: Callable[[Outcome], None] = lambda outcome: None,
        poll_seconds: float = 0.25,
        lease_seconds: float | None = None,
        batch: int = 32,
    ) -> None:
        self.queue = queue
        self.sender = sender
        self.default_target = default_target
        self.on_outcome = on_outcome
        self.poll_seconds = poll_seconds
        #: Longer than one attempt can take (the HTTP timeout bounds it), so a live holder always records first.
        self.lease_seconds = lease_seconds or 2 * sender.policy.timeout_seconds + 1.0
        self.batch = batch
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """A job became due now (a task just finished): claim without waiting for the next poll."""
        self._wake.set()

    async def run(self) -> None:
        delay = self.poll_seconds
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                for task_id in await self.claim():
                    self._start(task_id)
                delay = self.poll_seconds
            except (RedisError, OSError) as error:
                log.warning("callback outbox of %s not reachable (%s); retrying", self.queue.config.endpoint, error)
                delay = min(delay * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; attempts still running after `timeout` are cancelled (their jobs stay, under lease)."""
        self._stopping.set()
        self._wake.set()
        if self._running:
            _done, pending = await asyncio.wait(set(self._running.values()), timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.sender.close()  # its HTTP session; a later attempt would open a new one

    async def claim(self) -> list[str]:
        """Due jobs, each leased to this process; jobs this process is still attempting are not due (leased)."""
        free = self.batch - len(self._running)
        if free <= 0:
            return []
        reply = await scripts.claim_callbacks(
            self.queue.redis,
            [self.queue.callback_outbox],
            [_now_ms(), int(self.lease_seconds * 1000), free],
        )
        return [item.decode() if isinstance(item, bytes) else str(item) for item in reply]

    def _start(self, task_id: str) -> None:
        if task_id in self._running:
            return
        task = asyncio.create_task(self._attempt_logged(task_id))
        self._running[task_id] = task
        task.add_done_callback(lambda _: self._running.pop(task_id, None))

    async def _attempt_logged(self, task_id: str) -> None:
        try:
            await self.attempt(task_id)
        except (RedisError, OSError) as error:  # the job stays leased; it is retried when the lease ends
            log.warning("could not record a callback attempt of task %s: %s", task_id, error)
        except Exception:
            log.exception("callback attempt of task %s crashed", task_id)

    async def attempt(self, task_id: str) -> bool:
        """Make the next attempt of a claimed job and record it; True if this call recorded it."""
        redis = self.queue.redis
        record = await get_task(redis, self.queue.config.queue_id, task_id)
        raw_target = await redis.hget(keys.task(self.queue.config.queue_id, task_id), "callback")
        fields: dict[str, Any]
        if record is None or record.callback_status != "pending":
            await redis.zrem(self.queue.callback_outbox, task_id)
            return False
        target = CallbackTarget.loads(raw_target) if raw_target else self.default_target
        number = record.callback_attempts + 1
        policy = self.sender.policy
        if target is None:
            result = Attempt(False, False, "no callback target")
        else:
            result = await self.sender.attempt(target, record.callback_body())
        settled = result.delivered or not result.retryable or number >= policy.max_attempts
        outcome = Outcome(result.delivered, number, result.error)
        if settled:
            fields = outcome.fields()
            due: int | str = ""
        else:
            fields = {"callback_error": result.error or ""}
            due = _now_ms() + int(policy.delay(number) * 1000)
        args = [task_id, number, due, *(item for pair in fields.items() for item in pair)]
        recorded = bool(
            await scripts.record_callback(
                redis, [keys.task(self.queue.config.queue_id, task_id), self.queue.callback_outbox], args
            )
        )
        if recorded and settled:
            self.on_outcome(outcome)
        return recorded
