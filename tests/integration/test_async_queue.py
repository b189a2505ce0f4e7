"""The queue package against a real valkey server, with the model replaced by an injected `invoke` coroutine."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bundleserve.api.invocation import TaskStatus
from bundleserve.queue import acl, keys
from bundleserve.queue.backlog import backlog
from bundleserve.queue.broker import QueueUnavailable, TaskQueue, get_task
from bundleserve.queue.config import Durability, QueueConfig, observed_config_from_env
from bundleserve.queue.connection import observed_config
from bundleserve.queue.invoke import PICKLE_CONTENT_TYPE, ModelReply, TaskFailure
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.results import FilesystemResultStore
from bundleserve.queue.tasks import TaskRecord, TaskRequest
from bundleserve.queue.worker import Worker
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until

_names = itertools.count()
Invoke = Callable[[TaskRequest, float], Awaitable[ModelReply]]


def json_reply(value: Any, status: int = 200) -> ModelReply:
    return ModelReply(status, json.dumps(value).encode(), "application/json")


async def echo(request: TaskRequest, timeout: float) -> ModelReply:
    return json_reply(request.args)


@pytest.fixture
async def observed(each_redis_server: Valkey) -> tuple[tuple[str, str], ...]:
    """The server's durability settings as the operator reads them with the master credential and passes them on
    (as env, which a router's settings read into `QueueLimits.observed_server_config`)."""
    master = aioredis.Redis.from_url(each_redis_server.url)
    try:
        return observed_config_from_env(await observed_config(master))
    finally:
        await master.aclose()


@pytest.fixture
async def redis(each_redis_server: Valkey, config: QueueConfig) -> AsyncIterator[aioredis.Redis]:
    """Every test of this module runs on valkey-server and on Debian's redis-server 7.0, connected as the endpoint's
    own ACL user (queue/acl.py) as a router in a cluster is: what the queue does must fit inside that user's rights.
    The user cannot read CONFIG; like the operator, `make_queue` passes what the master credential reads."""
    master = aioredis.Redis.from_url(each_redis_server.url)
    password = acl.new_password()
    await acl.ensure_user(master, config.queue_id, password)
    client = aioredis.Redis.from_url(acl.endpoint_url(each_redis_server.url, config.queue_id, password))
    yield client
    await client.aclose()
    await acl.delete_user(master, config.queue_id)
    await master.aclose()


@pytest.fixture
def config() -> QueueConfig:
    return QueueConfig(
        endpoint=f"queue-test-{next(_names)}-{int(time.time() * 1000) % 100000}",
        invocation_timeout_seconds=5,
        visibility_grace_seconds=0.5,
        request_ttl_seconds=60,
        result_ttl_seconds=60,
        durability=Durability.MEMORY,
    )


class Running:
    """A worker loop running in the test's event loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run())

    async def stop(self) -> None:
        await self.worker.stop()
        await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def make_queue(
    redis: aioredis.Redis, observed: tuple[tuple[str, str], ...]
) -> AsyncIterator[Callable[[QueueConfig], TaskQueue]]:
    made: list[TaskQueue] = []

    def make(config: QueueConfig) -> TaskQueue:
        made.append(TaskQueue(redis, replace(config, observed_server_config=observed)))
        return made[-1]

    yield make
    for queue in made:
        await queue.close()


@pytest.fixture
async def start_worker(
    make_queue: Callable[[QueueConfig], TaskQueue], tmp_path: Path
) -> AsyncIterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(config: QueueConfig, invoke: Invoke = echo, **options: Any) -> Running:
        worker = Worker(make_queue(config), invoke, FilesystemResultStore(tmp_path / "results"), **options)
        running.append(Running(worker))
        return running[-1]

    yield start
    for item in running:
        await item.stop()


async def finished(redis: aioredis.Redis, queue: str, task_id: str, timeout: float = 10) -> TaskRecord:
    async def terminal() -> TaskRecord | None:
        record = await get_task(redis, queue, task_id)
        return record if record and record.status.terminal else None

    return await async_wait_until(terminal, timeout=timeout, what=f"task {task_id} to finish")


async def test_a_submitted_task_runs_and_its_result_is_inline(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue
):
    queue = make_queue(config)
    task_id = await queue.submit(TaskRequest(args={"x": 1}))
    assert (await get_task(redis, config.queue_id, task_id)).status is TaskStatus.PENDING  # type: ignore[union-attr]
    start_worker(config)
    record = await finished(redis, config.queue_id, task_id)
    assert record.status is TaskStatus.SUCCESS
    assert record.result == {"x": 1}
    assert record.attempts == 1
    assert record.to_response().status_code == 200
    assert await redis.ttl(keys.task(config.queue_id, task_id)) <= config.result_ttl_seconds
    assert await backlog(redis, config.queue_id) == type(await backlog(redis, config.queue_id))(0, 0)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"hello world", ""), (b"not json {", "application/json"), (b"[" * 100_000, "")],
    ids=["no-content-type", "mislabelled", "nested-too-deep"],
)
async def test_a_reply_that_is_not_json_is_stored_as_text(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue, body: bytes, content_type: str
):
    """Issue 17 (7): a model answering text without a content type (or mislabelled) had its body stored as JSON:
    the status document was invalid and the callback never settled."""

    async def text(request: TaskRequest, timeout: float) -> ModelReply:
        return ModelReply(200, body, content_type)

    start_worker(config, text)
    task_id = await make_queue(config).submit(TaskRequest(args={}))
    record = await finished(redis, config.queue_id, task_id)
    assert record.status is TaskStatus.SUCCESS
    assert record.result == body.decode()
    json.loads(json.dumps(record.callback_body()))  # the callback body (and the status document) are valid JSON


async def test_fsync_durability_confirms_with_waitaof(redis: aioredis.Redis, config: QueueConfig, make_queue):
    queue = make_queue(replace(config, durability=Durability.FSYNC, fsync_timeout_ms=3000))
    task_id = await queue.submit(TaskRequest(args={}))
    assert (await get_task(redis, config.queue_id, task_id)) is not None


async def test_backlog_counts_pending_and_in_flight(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue
):
    release = asyncio.Event()

    async def blocked(request: TaskRequest, timeout: float) -> ModelReply:
        await release.wait()
        return json_reply(None)

    queue = make_queue(replace(config, concurrency=2))
    assert (await backlog(redis, config.queue_id)).total == 0
    ids = [await queue.submit(TaskRequest(args={"i": i})) for i in range(5)]
    assert await backlog(redis, config.queue_id) == type(await backlog(redis, config.queue_id))(5, 0)
    start_worker(queue.config, blocked)

    async def two_in_flight() -> bool:
        found = await backlog(redis, config.queue_id)
        return found.in_flight == 2 and found.pending == 3

    await async_wait_until(two_in_flight, what="two tasks in flight")
    release.set()
    for task_id in ids:
        assert (await finished(redis, config.queue_id, task_id)).status is TaskStatus.SUCCESS
    assert (await backlog(redis, config.queue_id)).total == 0


async def test_submission_order_is_kept_with_one_slot(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue
):
    seen: list[int] = []

    async def record(request: TaskRequest, timeout: float) -> ModelReply:
        seen.append(request.args["i"])
        return json_reply(None)

    queue = make_queue(replace(config, concurrency=1))
    ids = [await queue.submit(TaskRequest(args={"i": i})) for i in range(20)]
    start_worker(queue.config, record)
    await finished(redis, config.queue_id, ids[-1])
    assert seen == list(range(20))


async def test_poison_task_fails_after_max_attempts_and_the_queue_keeps_flowing(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue
):
    calls: dict[str, int] = {}

    async def poison_or_echo(request: TaskRequest, timeout: float) -> ModelReply:
        calls[str(request.args)] = calls.get(str(request.args), 0) + 1
        if request.args.get("poison"):
            body = {"error": {"code": "model_error", "message": "boom", "traceback": "Traceback: ValueError: boom"}}
            return json_reply(body, status=500)
        return json_reply(request.args)

    queue = make_queue(replace(config, max_attempts=3))
    poison = await queue.submit(TaskRequest(args={"poison": True}))
    good = [await queue.submit(TaskRequest(args={"i": i})) for i in range(10)]
    start_worker(queue.config, poison_or_echo)
    record = await finished(redis, config.queue_id, poison)
    assert record.status is TaskStatus.FAILURE
    assert record.traceback == "Traceback: ValueError: boom"
    assert record.status_code == 500
    assert record.attempts == 3
    assert calls[str({"poison": True})] == 3
    for task_id in good:
        assert (await finished(redis, config.queue_id, task_id)).status is TaskStatus.SUCCESS
    dead = await redis.xrange(keys.dead_letter(config.queue_id))
    assert [(fields[b"t"].decode(), fields[b"reason"]) for _, fields in dead] == [(poison, b"max_attempts")]


async def test_a_model_400_fails_at_once(redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue):
    async def invalid(request: TaskRequest, timeout: float) -> ModelReply:
        return json_reply({"error": {"code": "invalid_arguments", "message": "unexpected argument 'y'"}}, 400)

    queue = make_queue(config)
    task_id = await queue.submit(TaskRequest(args={"y": 1}))
    start_worker(config, invalid)
    record = await finished(redis, config.queue_id, task_id)
    assert (record.status, record.attempts, record.status_code) == (TaskStatus.FAILURE, 1, 400)
    assert record.traceback == "unexpected argument 'y'"


async def test_a_typed_failure_is_recorded_as_it_is_without_decoding_a_body(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue
):
    """The worker-core seam (`queue.invoke.TaskFailure`): the router's core hands its error over typed; its status
    decides the retry (400 permanent, 500 retried) and `timed_out` ends the task as the worker's own timeout does."""
    calls: dict[str, int] = {}

    async def failing(request: TaskRequest, timeout: float) -> ModelReply | TaskFailure:
        kind = request.args["kind"]
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "invalid":
            return TaskFailure(400, "unexpected argument 'y'")
        if kind == "crash":
            return TaskFailure(500, "Traceback: ValueError: boom")
        return TaskFailure(504, "the url input took too long", timed_out=True)

    queue = make_queue(replace(config, max_attempts=2, invocation_timeout_seconds=7))
    ids = {kind: await queue.submit(TaskRequest(args={"kind": kind})) for kind in ("invalid", "crash", "slow")}
    start_worker(queue.config, failing)
    invalid, crash, slow = [await finished(redis, config.queue_id, ids[kind]) for kind in ("invalid", "crash", "slow")]
    assert (invalid.status_code, invalid.traceback, invalid.attempts) == (400, "unexpected argument 'y'", 1)
    assert (crash.status_code, crash.traceback, crash.attempts) == (500, "Traceback: ValueError: boom", 2)
    assert (slow.status_code, slow.attempts) == (504, 1)
    assert "timed out after 7 s" in (slow.traceback or "")
    assert calls == {"invalid": 1, "crash": 2, "slow": 1}
    assert all(record.status is TaskStatus.FAILURE for record in (invalid, crash, slow))


async def test_invocation_timeout_is_enforced_per_task(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue
):
    async def slow(request: TaskRequest, timeout: float) -> ModelReply:
        await asyncio.sleep(request.args["sleep"])
        return json_reply("late")

    queue = make_queue(replace(config, invocation_timeout_seconds=2))
    by_request = await queue.submit(TaskRequest(args={"sleep": 30}, timeout_seconds=0.3))
    by_endpoint = await queue.submit(TaskRequest(args={"sleep": 30}))
    quick = await queue.submit(TaskRequest(args={"sleep": 0}))
    begun = time.monotonic()
    start_worker(queue.config, slow)
    first = await finished(redis, config.queue_id, by_request)
    assert (first.status, first.status_code) == (TaskStatus.FAILURE, 504)
    assert "timed out after 0.3 s" in (first.traceback or "")
    second = await finished(redis, config.queue_id, by_endpoint)
    assert "timed out after 2 s" in (second.traceback or "")
    assert second.attempts == 1  # a timeout is not retried
    assert time.monotonic() - begun < 6
    assert (await finished(redis, config.queue_id, quick)).result == "late"


async def test_a_task_older_than_request_ttl_expires_without_running(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue
):
    ran: list[Any] = []

    async def record(request: TaskRequest, timeout: float) -> ModelReply:
        ran.append(request.args)
        return json_reply(None)

    queue = make_queue(config)
    old = await queue.submit(TaskRequest(args={"old": True}))
    await redis.hset(keys.task(config.queue_id, old), "created_at", repr(time.time() - config.request_ttl_seconds - 1))
    fresh = await queue.submit(TaskRequest(args={"old": False}))
    start_worker(config, record)
    expired = await finished(redis, config.queue_id, old)
    assert expired.status is TaskStatus.EXPIRED
    assert "requestTTLSeconds" in (expired.traceback or "")
    assert (await finished(redis, config.queue_id, fresh)).status is TaskStatus.SUCCESS
    assert ran == [{"old": False}]


async def test_large_and_pickled_results_go_to_the_result_store(
    redis: aioredis.Redis, config: QueueConfig, start_worker, tmp_path: Path, make_queue
):
    async def big_or_pickled(request: TaskRequest, timeout: float) -> ModelReply:
        if request.return_pickled:
            return ModelReply(200, b"\x80\x05pickled", PICKLE_CONTENT_TYPE)
        return json_reply("x" * request.args["size"])

    queue = make_queue(replace(config, inline_result_max_bytes=1000, max_result_bytes=10_000))
    small = await queue.submit(TaskRequest(args={"size": 10}))
    large = await queue.submit(TaskRequest(args={"size": 5000}))
    oversized = await queue.submit(TaskRequest(args={"size": 20_000}))
    pickled = await queue.submit(TaskRequest(args={}, return_pickled=True))
    start_worker(queue.config, big_or_pickled)
    store = FilesystemResultStore(tmp_path / "results")
    assert (await finished(redis, config.queue_id, small)).result == "x" * 10
    record = await finished(redis, config.queue_id, large)
    assert (record.result, record.result_url) == (None, f"/v1/tasks/{large}/result")
    assert await store.get(large) == (json.dumps("x" * 5000).encode(), "application/json")
    too_big = await finished(redis, config.queue_id, oversized)
    assert (too_big.status, too_big.status_code) == (TaskStatus.FAILURE, 413)
    assert await store.get(oversized) is None
    record = await finished(redis, config.queue_id, pickled)
    assert record.result_url == f"/v1/tasks/{pickled}/result"
    assert await store.get(pickled) == (b"\x80\x05pickled", PICKLE_CONTENT_TYPE)


async def test_completion_is_idempotent(redis: aioredis.Redis, config: QueueConfig, make_queue):
    queue = make_queue(config)
    await queue.ensure_group()
    task_id = await queue.submit(TaskRequest(args={}))
    [delivery] = await queue.read("a", 1, 100)
    [started] = await queue.start("a", [delivery])
    assert started.outcome == "run"
    lease = started.lease("a")
    assert await queue.complete(delivery, lease, TaskStatus.SUCCESS, {"result": "1"}) == (True, [])
    assert await queue.complete(delivery, lease, TaskStatus.FAILURE, {"traceback": "late"}) == (False, [])
    assert await queue.requeue(delivery, lease, {"traceback": "late"}) is False
    record = await get_task(redis, config.queue_id, task_id)
    assert record is not None and (record.status, record.result) == (TaskStatus.SUCCESS, 1)
    assert await redis.xlen(keys.stream(config.queue_id)) == 0


async def test_an_abandoned_task_is_reclaimed_after_the_visibility_timeout(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue
):
    queue = make_queue(replace(config, invocation_timeout_seconds=1, visibility_grace_seconds=0.5))
    await queue.ensure_group()
    task_id = await queue.submit(TaskRequest(args={"v": 7}))
    [delivery] = await queue.read("dead-consumer", 1, 100)  # delivered to a consumer that then "dies"
    await queue.start("dead-consumer", [delivery])
    begun = time.monotonic()
    start_worker(queue.config, reclaim_interval_seconds=0.2)
    record = await finished(redis, config.queue_id, task_id)
    assert (record.status, record.result, record.attempts) == (TaskStatus.SUCCESS, {"v": 7}, 2)
    assert time.monotonic() - begun >= 1.0


async def test_long_poll_wakes_on_completion(redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue):
    release = asyncio.Event()

    async def gated(request: TaskRequest, timeout: float) -> ModelReply:
        await release.wait()
        return json_reply("done")

    queue = make_queue(config)
    task_id = await queue.submit(TaskRequest(args={}))
    start_worker(config, gated)
    waiter = CompletionWaiter(redis)

    async def terminal() -> bool:
        record = await get_task(redis, config.queue_id, task_id)
        return record is not None and record.status.terminal

    try:
        timed_out = asyncio.create_task(waiter.wait_for(queue.channel, task_id, terminal, 0.3))
        await asyncio.wait_for(timed_out, 5)
        assert not await terminal()
        waiting = asyncio.create_task(waiter.wait_for(queue.channel, task_id, terminal, 30))
        await asyncio.sleep(0)
        released_at = time.monotonic()
        release.set()
        await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - released_at < 1.0
        assert await terminal()
    finally:
        await waiter.close()


async def test_a_stopping_worker_hands_its_running_tasks_back_at_once(
    redis: aioredis.Redis, config: QueueConfig, make_queue, start_worker, tmp_path: Path
):
    gate = asyncio.Event()

    async def stuck(request: TaskRequest, timeout: float) -> ModelReply:
        await gate.wait()
        return json_reply("never")

    queue = make_queue(replace(config, concurrency=2, invocation_timeout_seconds=60))
    ids = [await queue.submit(TaskRequest(args={"i": i})) for i in range(2)]
    first = Worker(make_queue(queue.config), stuck, FilesystemResultStore(tmp_path / "r"), drain_timeout_seconds=0.2)
    running = asyncio.create_task(first.run())

    async def both_started() -> bool:
        records = [await get_task(redis, config.queue_id, task_id) for task_id in ids]
        return all(r is not None and r.status is TaskStatus.STARTED for r in records)

    await async_wait_until(both_started, what="both tasks started")
    await first.stop()
    await asyncio.wait_for(running, 10)
    for task_id in ids:
        released = await get_task(redis, config.queue_id, task_id)
        assert released is not None and (released.status, released.attempts) == (TaskStatus.PENDING, 0)
    begun = time.monotonic()
    start_worker(queue.config)  # long before the 60 s visibility timeout
    for task_id in ids:
        record = await finished(redis, config.queue_id, task_id)
        assert (record.status, record.attempts) == (TaskStatus.SUCCESS, 1)
    assert time.monotonic() - begun < 5


async def test_stop_returns_promptly_while_the_gate_is_closed(config: QueueConfig, make_queue, tmp_path: Path):
    class NeverOpen:
        def is_open(self) -> bool:
            return False

        async def wait(self) -> None:
            await asyncio.Event().wait()

    worker = Worker(make_queue(config), echo, FilesystemResultStore(tmp_path / "r"), gate=NeverOpen())
    running = asyncio.create_task(worker.run())
    await async_wait_until(lambda: _true(worker._interruptible), what="the worker waiting at its gate")
    await worker.stop()
    await asyncio.wait_for(running, 3)


async def _true(value: bool) -> bool:
    return value


async def test_a_completion_claims_the_next_task_for_the_same_slot(
    redis: aioredis.Redis, config: QueueConfig, make_queue
):
    queue = make_queue(config)
    await queue.ensure_group()
    first = await queue.submit(TaskRequest(args={"n": 1}))
    second = await queue.submit(TaskRequest(args={"n": 2}))
    [started], _ = await queue.claim("c", 1)
    assert (started.delivery.task_id, started.outcome) == (first, "run")
    made, claimed = await queue.complete(
        started.delivery, started.lease("c"), TaskStatus.SUCCESS, {"result": "1"}, claim_for="c", claim_count=1
    )
    assert made
    assert [(s.delivery.task_id, s.outcome, s.attempts, s.request) for s in claimed] == [
        (second, "run", 1, TaskRequest(args={"n": 2}))
    ]
    assert (await backlog(redis, config.queue_id)).in_flight == 1
    made, claimed = await queue.complete(
        claimed[0].delivery, claimed[0].lease("c"), TaskStatus.SUCCESS, {"result": "2"}, claim_for="c", claim_count=1
    )
    assert (made, claimed) == (True, [])
    assert (await backlog(redis, config.queue_id)).total == 0


async def test_stopping_mid_stream_leaves_no_task_started_or_in_flight(
    redis: aioredis.Redis, config: QueueConfig, make_queue, tmp_path: Path
):
    async def quick(request: TaskRequest, timeout: float) -> ModelReply:
        await asyncio.sleep(0.002)
        return json_reply(request.args)

    queue = make_queue(replace(config, concurrency=4))
    ids = [await queue.submit(TaskRequest(args={"i": i})) for i in range(400)]
    worker = Worker(make_queue(queue.config), quick, FilesystemResultStore(tmp_path / "r"))
    assert worker.prefetch_below_seconds > 0.002  # quick tasks: slots keep one in hand
    running = asyncio.create_task(worker.run())

    async def some_done() -> bool:
        return (await backlog(redis, config.queue_id)).total < 300

    await async_wait_until(some_done, what="some tasks done")
    await worker.stop()
    await asyncio.wait_for(running, 10)
    statuses = Counter()
    for task_id in ids:
        record = await get_task(redis, config.queue_id, task_id)
        assert record is not None
        statuses[record.status] += 1
    assert set(statuses) <= {TaskStatus.SUCCESS, TaskStatus.PENDING}, statuses
    assert statuses[TaskStatus.SUCCESS] >= 100
    left = await backlog(redis, config.queue_id)
    assert (left.in_flight, left.pending) == (0, statuses[TaskStatus.PENDING])


async def test_an_idle_submitter_claims_its_own_task_in_the_same_step(
    redis: aioredis.Redis, config: QueueConfig, make_queue
):
    queue = make_queue(config)
    await queue.ensure_group()
    await queue.claim("c", 10)  # drain what is there
    task_id, claimed = await queue.submit_claiming(b'{"args":{"k":2}}', claim_for="c")
    assert [(s.delivery.task_id, s.outcome, s.attempts, s.request) for s in claimed] == [
        (task_id, "run", 1, TaskRequest(args={"k": 2}))
    ]
    record = await get_task(redis, config.queue_id, task_id)
    assert record is not None and record.status is TaskStatus.STARTED


async def test_fsync_durability_on_a_redis_without_aof_refuses_with_a_clear_reason(tmp_path: Path):
    plain = Valkey(tmp_path / "no-aof").start()
    client = aioredis.Redis.from_url(plain.url)
    queue = TaskQueue(client, QueueConfig(endpoint="noaof", durability=Durability.FSYNC))
    try:
        await client.config_set("appendonly", "no")
        with pytest.raises(QueueUnavailable, match="BUNDLESERVE_QUEUE_DURABILITY=memory"):
            await queue.submit(TaskRequest(args={}))
    finally:
        await queue.close()
        await client.aclose()
        plain.stop()


async def test_touch_resets_the_idle_time_a_reclaim_looks_at(config: QueueConfig, make_queue):
    queue = make_queue(replace(config, invocation_timeout_seconds=1, visibility_grace_seconds=0.2))
    await queue.ensure_group()
    await queue.submit(TaskRequest(args={}))
    [started], _ = await queue.claim("holder", 1)

    async def idle_long_enough() -> bool:
        pending = await queue.redis.xpending_range(queue.stream, keys.GROUP, "-", "+", 1)
        return pending[0]["time_since_delivered"] > 1300

    await async_wait_until(idle_long_enough, timeout=5, what="the entry to become reclaimable")
    assert await queue.touch("holder", [started]) == [True]
    assert await queue.reclaim("other", 10) == []


async def test_a_tasks_own_request_ttl_shortens_the_endpoints_and_never_extends_it(
    redis: aioredis.Redis, config: QueueConfig, start_worker, make_queue, tmp_path: Path
):
    """Regression: `TaskService.submit` dropped `request_ttl_seconds` (SageMaker's RequestTTLSeconds), so every task
    waited as long as the endpoint's requestTTLSeconds (60 s here)."""
    from bundleserve.api.invocation import Invocation
    from bundleserve.queue.service import TaskService

    waiter = CompletionWaiter(redis)
    service = TaskService(make_queue(config), FilesystemResultStore(tmp_path / "results"), waiter)
    try:

        async def submit(args: bytes, ttl: float | None) -> str:
            return await service.submit(
                Invocation(body=args), callback=None, request_ttl_seconds=ttl, invocation_timeout_seconds=None
            )

        short = await submit(b'{"n": 1}', 5)
        default = await submit(b'{"n": 2}', None)
        longer = await submit(b'{"n": 3}', 3600)
        for task_id, waited in ((short, 10), (default, 10), (longer, config.request_ttl_seconds + 1)):
            await redis.hset(keys.task(config.queue_id, task_id), "created_at", repr(time.time() - waited))
        start_worker(config)
        expired = await finished(redis, config.queue_id, short)
        assert expired.status is TaskStatus.EXPIRED
        assert "(5 s)" in (expired.traceback or "")
        assert (await finished(redis, config.queue_id, default)).status is TaskStatus.SUCCESS
        assert (
            await finished(redis, config.queue_id, longer)
        ).status is TaskStatus.EXPIRED  # the endpoint's 60 s still bound it
    finally:
        await waiter.close()
