"""Per-Endpoint Redis ACL users (queue/acl.py) on real servers (valkey-server and Debian's redis-server 7.0): an
endpoint's credential works for its own queue and is refused on every key, channel and command of another endpoint
or of the server as a whole. Issue 17, finding 1 (before: one shared password reached every namespace's tasks).

The whole of tests/integration/test_async_queue.py also runs as the endpoint's own user (its `redis` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from bundleserve.queue import acl, keys
from bundleserve.queue.broker import QueueUnavailable, TaskQueue, find_task
from bundleserve.queue.config import Durability, QueueConfig
from bundleserve.queue.tasks import CallbackTarget, TaskRequest
from tests.support.valkey import Valkey

A, B = keys.queue_id("team-a", "echo"), keys.queue_id("team-b", "echo")


def config(queue: str) -> QueueConfig:
    namespace, name = queue.split("/")
    return QueueConfig(endpoint=name, namespace=namespace, durability=Durability.MEMORY)


@pytest.fixture
async def users(each_redis_server: Valkey) -> AsyncIterator[dict[str, aioredis.Redis]]:
    """The master client (as the operator and the gateway hold it) and one client per endpoint user."""
    master = aioredis.Redis.from_url(each_redis_server.url)
    clients: dict[str, aioredis.Redis] = {"master": master}
    for queue in (A, B):
        password = acl.new_password()
        await acl.ensure_user(master, queue, password)
        clients[queue] = aioredis.Redis.from_url(acl.endpoint_url(each_redis_server.url, queue, password))
    yield clients
    for queue in (A, B):
        await clients[queue].aclose()
        await acl.delete_user(master, queue)
    await master.flushall()
    await master.aclose()


async def refused(call: Callable[[], Awaitable[Any]]) -> str:
    with pytest.raises((NoPermissionError, ResponseError)) as error:
        await call()
    assert "NOPERM" in str(error.value) or "no permissions" in str(error.value).lower(), error.value
    return str(error.value)


async def test_an_endpoint_user_reaches_its_own_queue_and_nothing_of_another(users: dict[str, aioredis.Redis]) -> None:
    own = TaskQueue(users[A], config(A))
    theirs = TaskQueue(users[B], config(B))
    try:
        mine = await own.submit(TaskRequest(args={"a": 1}), CallbackTarget("https://hooks.example/a"))
        other = await theirs.submit(TaskRequest(args={"secret": 1}), CallbackTarget("https://u:p@hooks.example/b"))
        assert (await own.get(mine)) is not None
        assert await own.enqueue_callback(mine)

        a = users[A]
        # B's task record, stream, dead letters, outbox and channel: read and write refused.
        await refused(lambda: a.hgetall(keys.task(B, other)))
        await refused(lambda: a.hset(keys.task(B, other), "status", "SUCCESS"))
        await refused(lambda: a.delete(keys.task(B, other)))
        await refused(lambda: a.xrange(keys.stream(B)))
        await refused(lambda: a.xadd(keys.stream(B), {"t": "x"}))
        await refused(lambda: a.zrange(keys.callback_outbox(B), 0, -1))
        await refused(lambda: a.publish(keys.done_channel(B), other))
        pubsub = a.pubsub()
        try:

            async def subscribe() -> None:  # the server's answer to SUBSCRIBE arrives as the next message
                await pubsub.subscribe(keys.done_channel(B))
                await pubsub.get_message(timeout=5)

            await refused(subscribe)
        finally:
            await pubsub.aclose()
        # A queue object of B over A's credential cannot submit (the script's keys are B's).
        stolen = TaskQueue(a, config(B))
        with pytest.raises(QueueUnavailable):
            await stolen.submit(TaskRequest(args={}))
        await stolen.close()
        # Lua scripts are checked too: a script touching B's key under A's user fails.
        await refused(lambda: a.eval("return redis.call('HGETALL', KEYS[1])", 1, keys.task(B, other)))
        # Nothing that lists or names other keys or channels, administers or empties the server.
        for command in (
            ("SCAN", 0),
            ("KEYS", "*"),
            ("RANDOMKEY",),
            ("DBSIZE",),
            ("PUBSUB", "CHANNELS"),
            ("CONFIG", "GET", "requirepass"),
            ("ACL", "SETUSER", acl.username(A), "~*"),
            ("ACL", "LIST"),
            ("FLUSHALL",),
            ("FUNCTION", "FLUSH"),
            ("SCRIPT", "FLUSH"),
            ("CLIENT", "LIST"),
            ("MONITOR",),
            ("SAVE",),
            ("SWAPDB", 0, 1),
            ("SELECT", 1),
        ):
            await refused(lambda command=command: a.execute_command(*command))  # type: ignore[misc]
        # Finding a task by id probes only the queues it is given (the gateway passes those the caller may see).
        found = await find_task(users["master"], [A], other)
        assert found is None
        found = await find_task(users["master"], [A, B], other)
        assert found is not None and found[0] == B
    finally:
        await own.close()
        await theirs.close()


async def test_deleting_the_user_ends_its_access_and_a_new_password_replaces_the_old(
    each_redis_server: Valkey, users: dict[str, aioredis.Redis]
) -> None:
    master = users["master"]
    old = acl.new_password()
    await acl.ensure_user(master, A, old)
    new = acl.new_password()
    await acl.ensure_user(master, A, new)  # rotation: `reset` drops the old password
    with pytest.raises(AuthenticationError):
        client = aioredis.Redis.from_url(acl.endpoint_url(each_redis_server.url, A, old))
        try:
            await client.ping()
        finally:
            await client.aclose()
    assert await acl.delete_user(master, A)
    client = aioredis.Redis.from_url(acl.endpoint_url(each_redis_server.url, A, new))
    try:
        with pytest.raises(AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()
    await asyncio.sleep(0)  # the fixture's teardown deletes the users again (no error for a missing one)


async def test_an_endpoint_user_reaches_its_variants_queues_and_no_other_endpoints(
    users: dict[str, aioredis.Redis],
) -> None:
    """A production variant's queue (`<namespace>/<name>/<variant>`) is the endpoint's own: its user submits and
    reads there. The pattern that opens it must not open a same-prefixed endpoint (`echo-2`, `echox`) of the
    namespace, nor another namespace's variants."""
    variant = QueueConfig(endpoint="echo", namespace="team-a", durability=Durability.MEMORY, variant="canary")
    assert variant.queue_id == "team-a/echo/canary"
    queue = TaskQueue(users[A], variant)
    try:
        task = await queue.submit(TaskRequest(args={"v": 1}), None)
        assert (await find_task(users[A], [variant.queue_id], task)) is not None
    finally:
        await queue.close()
    for foreign in ("team-a/echo-2", "team-a/echox/canary", "team-b/echo/canary"):
        await refused(lambda foreign=foreign: users[A].set(keys.task(foreign, "0" * 32), "x"))
        await refused(lambda foreign=foreign: users[A].publish(keys.done_channel(foreign), "x"))
