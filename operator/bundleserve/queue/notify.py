"""Long-poll support: wake `GET /v1/tasks/{id}?wait=N` the moment its task finishes, without polling Redis.

The terminal-transition scripts PUBLISH the task id on the endpoint's `done` channel. One pub/sub connection per
process listens to the channels of the endpoints it serves and resolves the futures of local waiters. A waiter
registers before it reads the record, so a completion between the read and the wait is not missed. When the pub/sub
connection drops, every waiter is woken to re-read (a spurious wake-up costs one read; a missed one would cost `wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class CompletionWaiter:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._confirmed: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._pubsub: aioredis.client.PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._wake_all()

    async def watch(self, channel: str, timeout: float = 5.0) -> None:
        """Listen to an endpoint's `done` channel (idempotent); returns once Redis confirmed the subscription."""
        confirmed = self._confirmed.get(channel)
        if confirmed is not None and confirmed.is_set():
            return
        if confirmed is None:
            confirmed = self._confirmed[channel] = asyncio.Event()
            if self._listener is None:
                self._listener = asyncio.create_task(self._listen(), name="bundleserve-completion-listener")
            elif self._pubsub is not None and self._connected.is_set():
                with contextlib.suppress(RedisError, OSError):  # the listener resubscribes after a reconnect
                    await self._pubsub.subscribe(channel)
        await asyncio.wait_for(confirmed.wait(), timeout)

    async def wait_for(self, channel: str, task_id: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
        """Return when `check()` is true (the task is terminal) or after `timeout` seconds, whichever first."""
        await self.watch(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            async with self._registered(task_id) as future:
                if await check():
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, remaining)

    @contextlib.asynccontextmanager
    async def _registered(self, task_id: str) -> AsyncIterator[asyncio.Future[None]]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[task_id].add(future)
        try:
            yield future
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[task_id]

    def notify(self, task_id: str) -> None:
        """Wake local waiters of a task this process just finished (before Redis's message arrives)."""
        self._wake(task_id)

    def _wake(self, task_id: str) -> None:
        for future in self._waiters.pop(task_id, ()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        for task_id in list(self._waiters):
            self._wake(task_id)

    def _on_message(self, message: dict[str, object]) -> None:
        data = message.get("data")
        text = data.decode() if isinstance(data, bytes) else str(data)
        if message.get("type") == "message":
            self._wake(text)
        elif message.get("type") == "subscribe":
            channel = message.get("channel")
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            if name in self._confirmed:
                self._confirmed[name].set()

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self._pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*self._confirmed)
                self._connected.set()
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._on_message(message)
                        backoff = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                log.warning("completion listener lost its Redis connection (%s); reconnecting", error)
                self._connected.clear()
                for event in self._confirmed.values():
                    event.clear()
                self._wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
