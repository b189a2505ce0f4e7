"""The durable callback outbox: a callback survives a SIGKILLed worker, and two replicas never run the same attempt.

Worker processes run this module: `python -m tests.integration.test_async_callback_outbox REDIS_URL ENDPOINT RESULTS`
(the queue's worker loop with an in-process echo model and fast callback retries).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bundleserve.api.invocation import TaskStatus
from bundleserve.outbound.destinations import AddressPolicy, parse_cidrs
from bundleserve.queue import keys
from bundleserve.queue.broker import TaskQueue, get_task
from bundleserve.queue.callbacks import CallbackSender, RetryPolicy
from bundleserve.queue.config import Durability, QueueConfig
from bundleserve.queue.invoke import ModelReply
from bundleserve.queue.outbox import CallbackOutbox
from bundleserve.queue.results import FilesystemResultStore
from bundleserve.queue.tasks import CallbackTarget, TaskRecord, TaskRequest
from bundleserve.queue.worker import Worker
from tests.integration.test_async_callbacks import Target, callback_settled
from tests.support.processes import Server, free_port
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until, wait_until

#: Many quick attempts: the callback is still retrying (pending) whenever the test kills the worker.
KEEP_TRYING = RetryPolicy(max_attempts=1000, base_delay_seconds=0.05, max_delay_seconds=0.2, timeout_seconds=0.5)

#: The receivers of these tests listen on loopback, which the destination guard refuses by default.
LOOPBACK = AddressPolicy(allow=parse_cidrs("127.0.0.0/8,::1", source="tests"))


def outbox_config(endpoint: str) -> QueueConfig:
    return QueueConfig(endpoint=endpoint, durability=Durability.MEMORY, max_attempts=1, concurrency=2)


async def echo(request: TaskRequest, timeout: float) -> ModelReply:
    return ModelReply(200, json.dumps(request.args).encode(), "application/json")


async def worker_main(redis_url: str, endpoint: str, results: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    worker = Worker(
        TaskQueue(client, outbox_config(endpoint)),
        echo,
        FilesystemResultStore(Path(results)),
        callbacks=CallbackSender(destinations=LOOPBACK, policy=KEEP_TRYING),
        block_ms=500,
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.stop()))
    print("worker ready", flush=True)
    await worker.run()
    await worker.queue.close()
    await client.aclose()


def start_worker(directory: Path, redis_url: str, endpoint: str, index: int) -> Server:
    argv = [sys.executable, "-m", "tests.integration.test_async_callback_outbox", redis_url, endpoint]
    server = Server([*argv, str(directory / "results")], log_path=directory / f"worker-{index}.log")
    wait_until(lambda: "worker ready" in server.log(), timeout=15, what="worker process ready")
    return server


@pytest.fixture
async def redis(valkey_server: Valkey) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(valkey_server.url)
    yield client
    await client.aclose()


async def serve(target: Target, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hook", target.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    target.url = f"http://127.0.0.1:{port}/hook"
    return runner


async def test_a_callback_retrying_in_a_killed_worker_is_delivered_by_the_next_one(
    redis: aioredis.Redis, valkey_server: Valkey, tmp_path: Path
) -> None:
    endpoint = f"outbox-kill-{time.monotonic_ns()}"
    port = free_port()  # nothing listens yet: the target refuses connections
    queue = TaskQueue(redis, outbox_config(endpoint))
    first = start_worker(tmp_path, valkey_server.url, endpoint, 1)
    second: Server | None = None
    runner: web.AppRunner | None = None
    try:
        task_id = await queue.submit(TaskRequest(args={"x": 1}), CallbackTarget(f"http://127.0.0.1:{port}/hook"))

        async def retrying() -> TaskRecord | None:
            record = await get_task(redis, queue.config.queue_id, task_id)
            return record if record and record.callback_attempts >= 2 else None

        before = await async_wait_until(retrying, timeout=10, what="callback retries in progress")
        first.kill()  # SIGKILL while the target is down and the delivery job is mid-retry
        killed = await get_task(redis, queue.config.queue_id, task_id)
        assert killed is not None
        assert killed.status is TaskStatus.SUCCESS and killed.callback_status == "pending", killed
        assert await redis.zscore(keys.callback_outbox(queue.config.queue_id), task_id) is not None

        target = Target()
        runner = await serve(target, port)
        second = start_worker(tmp_path, valkey_server.url, endpoint, 2)
        record = await callback_settled(queue, task_id, timeout=10)
        assert record.callback_status == "delivered", record.callback_error
        assert before is not None and record.callback_attempts > before.callback_attempts
        assert target.received == [record.callback_body()]
        assert target.received[0]["status"] == "SUCCESS" and target.received[0]["task_id"] == task_id
        assert await redis.zscore(keys.callback_outbox(queue.config.queue_id), task_id) is None
    finally:
        first.stop()  # already killed: closes its log
        if second is not None:
            second.stop()
        if runner is not None:
            await runner.cleanup()
        await queue.close()


@dataclass
class CountingTarget(Target):
    """Also tracks how many requests are in the handler at once."""

    active: int = 0
    most_active: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            return await super().handle(request)
        finally:
            self.active -= 1


async def test_two_replicas_never_run_the_same_attempt_concurrently(redis: aioredis.Redis) -> None:
    target = CountingTarget(statuses=[500, 500], delay=0.3)
    runner = await serve(target, free_port())
    queue = TaskQueue(redis, outbox_config(f"outbox-lease-{time.monotonic_ns()}"))
    policy = RetryPolicy(max_attempts=5, base_delay_seconds=0.01, max_delay_seconds=0.02, timeout_seconds=2)
    outboxes = [
        CallbackOutbox(queue, CallbackSender(destinations=LOOPBACK, policy=policy), poll_seconds=0.01) for _ in range(2)
    ]
    try:
        task_id = await queue.submit(TaskRequest(args={"x": 2}), CallbackTarget(target.url))
        assert await queue.enqueue_callback(task_id)
        claims: list[list[str]] = list(await asyncio.gather(*(outbox.claim() for outbox in outboxes)))
        assert sorted(len(claimed) for claimed in claims) == [0, 1], claims  # the lease: one claimant only
        await redis.zadd(queue.callback_outbox, {task_id: 0})  # due again, for both loops
        runs: list[asyncio.Task[Any]] = [asyncio.create_task(outbox.run()) for outbox in outboxes]
        record = await callback_settled(queue, task_id, timeout=10)
        for outbox in outboxes:
            await outbox.stop()
        await asyncio.gather(*runs)
    finally:
        await runner.cleanup()
        await queue.close()
    assert record.callback_status == "delivered" and record.callback_attempts == 3
    assert len(target.received) == 3 and target.most_active == 1


def _main(argv: list[str]) -> None:
    redis_url, endpoint, results = argv
    asyncio.run(worker_main(redis_url, endpoint, results))


if __name__ == "__main__":
    _main(sys.argv[1:])
