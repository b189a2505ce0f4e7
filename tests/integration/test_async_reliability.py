"""Reliability of the async queue: worker processes killed with SIGKILL mid-task, Redis killed and restarted (AOF).

Worker processes run this module: `python -m tests.integration.test_async_reliability REDIS_URL ENDPOINT MODEL_URL`
(the queue's worker loop with the stand-alone HTTP invoke, against the fake model subprocess).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bundleserve.api.invocation import TaskStatus
from bundleserve.queue.backlog import backlog
from bundleserve.queue.broker import QueueUnavailable, TaskQueue, get_task
from bundleserve.queue.config import Durability, QueueConfig
from bundleserve.queue.invoke import ModelReply
from bundleserve.queue.results import FilesystemResultStore
from bundleserve.queue.tasks import TaskRecord, TaskRequest
from bundleserve.queue.worker import Worker
from tests.integration.test_router_fake_model import start_model
from tests.support.model_invoke import http_invoke
from tests.support.processes import Server
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until, wait_until


def kill_test_config(endpoint: str) -> QueueConfig:
    return QueueConfig(
        endpoint=endpoint,
        # long enough for a task held at a round's barrier while a killed worker restarts (the kills are what this
        # test is about, not timeouts); a killed worker's tasks are reclaimed 15.5 s after its last heartbeat
        invocation_timeout_seconds=15,
        visibility_grace_seconds=0.5,
        max_attempts=20,  # attempts are not what this test is about: a task may be hit by several kills
        concurrency=8,
        durability=Durability.MEMORY,
    )


async def worker_main(redis_url: str, endpoint: str, model_url: str, results: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as session:
        worker = Worker(
            TaskQueue(client, kill_test_config(endpoint)),
            http_invoke(session, model_url),
            FilesystemResultStore(Path(results)),
            reclaim_interval_seconds=0.25,
            block_ms=500,
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.stop()))
        print("worker ready", flush=True)
        await worker.run()
        await worker.queue.close()
    await client.aclose()


def start_worker(directory: Path, redis_url: str, endpoint: str, model_url: str, index: int) -> Server:
    argv = [sys.executable, "-m", "tests.integration.test_async_reliability", redis_url, endpoint, model_url]
    log = directory / f"worker-{index}.log"
    server = Server([*argv, str(directory / "results")], log_path=log)
    wait_until(lambda: "worker ready" in server.log(), timeout=15, what="worker process ready")
    return server


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, url = start_model(tmp_path_factory.mktemp("reliability-model"))
    try:
        yield url
    finally:
        server.stop()


async def collect_done(client: aioredis.Redis, channel: str, seen: Counter[str], ready: asyncio.Event) -> None:
    """Count every terminal transition (the scripts publish exactly one message per transition)."""
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    ready.set()
    try:
        async for message in pubsub.listen():
            if message["type"] == "message":
                seen[message["data"].decode()] += 1
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


@pytest.fixture
async def redis_client(valkey_server: Valkey) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(valkey_server.url)
    yield client
    await client.aclose()


@pytest.mark.slow
async def test_sigkilled_workers_lose_no_task_and_finish_each_exactly_once(
    tmp_path: Path, valkey_server: Valkey, model: str, redis_client: aioredis.Redis
):
    endpoint = f"killtest{os.getpid()}"
    config = kill_test_config(endpoint)
    queue = TaskQueue(redis_client, config)
    seen: Counter[str] = Counter()
    ready = asyncio.Event()
    listener = asyncio.create_task(collect_done(redis_client, queue.channel, seen, ready))
    await ready.wait()
    rng = random.Random(1234)
    # The kills are scheduled by the test, not by the clock: the first ROUNDS x PER_ROUND tasks wait at a barrier of
    # the model named after their round, so when both workers are saturated at round k's barrier (16 calls waiting),
    # a SIGKILL is certain to lose tasks in flight; then the barrier opens and the next round starts. However slow the
    # machine, every kill hits held tasks, and the rest of the 500 run freely.
    rounds, per_round, saturated = 6, 60, 2 * kill_test_config(endpoint).concurrency
    expected = {}
    for i in range(500):
        args: dict[str, object] = {"i": i, "sleep": rng.choice((0.0, 0.01, 0.05))}
        if i < rounds * per_round:
            args["hold"] = f"{endpoint}-round-{i // per_round}"
        expected[await queue.submit(TaskRequest(args=args))] = args
    workers = [start_worker(tmp_path, valkey_server.url, endpoint, model, n) for n in range(2)]
    kills = 0
    try:
        async with aiohttp.ClientSession() as gates:
            for round_number in range(rounds):
                gate = f"{model}/gates/{endpoint}-round-{round_number}"

                async def both_workers_held(gate: str = gate) -> bool:
                    async with gates.get(gate) as answer:
                        return int((await answer.json())["waiting"]) >= saturated

                await async_wait_until(both_workers_held, timeout=60, what=f"both workers held at round {round_number}")
                victim = rng.randrange(2)
                workers[victim].kill()  # SIGKILL to the process group: no cleanup runs
                workers[victim].stop()  # only closes its log file: the process is gone
                kills += 1
                async with gates.post(gate) as opened:
                    assert opened.status == 200
                workers[victim] = start_worker(tmp_path, valkey_server.url, endpoint, model, 2 + kills)

        async def all_done() -> bool:
            return len(seen) == len(expected)

        await async_wait_until(all_done, timeout=60, what="every task to finish")
    finally:
        for worker in workers:
            worker.stop()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await queue.close()
    assert kills == rounds
    duplicated = {task_id: count for task_id, count in seen.items() if count != 1}
    assert duplicated == {}, "terminal transitions must happen exactly once"
    assert set(seen) == set(expected)
    retried = 0
    for task_id, args in expected.items():
        record = await get_task(redis_client, config.queue_id, task_id)
        assert record is not None
        assert (record.status, record.result) == (TaskStatus.SUCCESS, args), task_id
        retried += record.attempts > 1
    assert retried > 0, "the kills should have hit tasks in flight"
    assert await backlog(redis_client, config.queue_id) == type(await backlog(redis_client, config.queue_id))(0, 0)


async def echo(request: TaskRequest, timeout: float) -> ModelReply:
    await asyncio.sleep(0.002)
    return ModelReply(200, str(request.args["i"]).encode(), "application/json")


@pytest.mark.slow
async def test_redis_killed_and_restarted_under_load_loses_no_accepted_task(any_redis: Valkey, tmp_path: Path):
    """fsync durability (the default): a task Redis acknowledged survives a SIGKILL of Redis, on Valkey (WAITAOF before
    the 202) and on Redis 7.0 (no WAITAOF: `appendfsync always` fsyncs before the reply)."""
    valkey = any_redis
    client = aioredis.Redis.from_url(valkey.url, socket_timeout=2, socket_connect_timeout=1)
    config = QueueConfig(
        endpoint="restart",
        invocation_timeout_seconds=2,
        visibility_grace_seconds=0.5,
        durability=Durability.FSYNC,
        fsync_timeout_ms=1000,
    )
    queue = TaskQueue(client, config)
    worker = Worker(
        queue, echo, FilesystemResultStore(tmp_path / "results"), block_ms=300, reclaim_interval_seconds=0.3
    )
    running = asyncio.create_task(worker.run())
    accepted: dict[str, int] = {}
    refused = 0
    stop = asyncio.Event()

    async def submitter(offset: int) -> None:
        nonlocal refused
        i = offset
        while not stop.is_set():
            try:
                accepted[await queue.submit(TaskRequest(args={"i": i}))] = i
            except QueueUnavailable:
                refused += 1
                await asyncio.sleep(0.02)
            i += 10

    submitters = [asyncio.create_task(submitter(n)) for n in range(10)]
    try:
        await async_wait_until(lambda: _true(len(accepted) > 300), timeout=20, what="load before the crash")
        valkey.stop(kill=True)  # SIGKILL: nothing is flushed on the way down
        before_restart = len(accepted)
        await asyncio.sleep(0.3)  # Redis stays down for a moment while clients keep trying
        valkey.start()
        await async_wait_until(
            lambda: _true(len(accepted) > before_restart + 300), timeout=20, what="load after the restart"
        )
        stop.set()
        await asyncio.gather(*submitters)

        async def finished(task_id: str) -> TaskRecord | None:
            record = await get_task(client, config.queue_id, task_id)
            return record if record and record.status.terminal else None

        missing: list[str] = []
        deadline = time.monotonic() + 30
        for task_id, i in accepted.items():
            record = await async_wait_until(
                lambda task_id=task_id: finished(task_id),  # type: ignore[misc]
                timeout=max(deadline - time.monotonic(), 0.1),
                what=f"task {task_id}",
            )
            if record is None or record.result != i:
                missing.append(task_id)
        assert missing == []
        assert refused > 0, "submissions during the outage must be refused, not acknowledged"
    finally:
        stop.set()
        await asyncio.gather(*submitters, return_exceptions=True)
        await worker.stop()
        await asyncio.wait_for(running, 15)
        await queue.close()
        await client.aclose()


async def _true(value: bool) -> bool:
    return value


def _main(argv: list[str]) -> None:
    import uvloop

    redis_url, endpoint, model_url, results = argv
    uvloop.run(worker_main(redis_url, endpoint, model_url, results))


if __name__ == "__main__":
    _main(sys.argv[1:])
