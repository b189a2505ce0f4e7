"""Automatic pipelining: Redis commands issued in the same event-loop tick go out as one pipeline (one write, one
round trip). At light load a command waits for nothing (the batch is flushed at the end of the current tick); under
load dozens of submissions, status reads and completions share a round trip, which is what makes the queue fast on
machines where every socket write is a costly system call.

A batch may end with a `trailer` command whose reply every caller of the batch receives: `WAITAOF 1 0 T` after a
batch of submissions makes all of them durable with one fsync wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

_Call = tuple[Sequence[Any], "asyncio.Future[tuple[Any, Any]]"]


class AutoPipeline:
    def __init__(self, redis: aioredis.Redis, *, trailer: Sequence[Any] | None = None, max_batch: int = 256) -> None:
        self.redis = redis
        self.trailer = tuple(trailer) if trailer else None
        self.max_batch = max_batch
        self._pending: list[_Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, *args: Any) -> tuple[Any, Any]:
        """(reply, trailer reply or None); a Redis error reply is raised, as `execute_command` would."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, Any]] = loop.create_future()
        self._pending.append((args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def execute_command(self, *args: Any) -> Any:
        reply, _ = await self.call(*args)
        return reply

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_batch):
            task = asyncio.create_task(self._send(pending[start : start + self.max_batch]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        live = [(args, future) for args, future in batch if not future.done()]
        if not live:
            return
        pipe = self.redis.pipeline(transaction=False)
        for args, _ in live:
            pipe.execute_command(*args)
        if self.trailer is not None:
            pipe.execute_command(*self.trailer)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as error:
            for _, future in live:
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else asyncio.CancelledError())
            if not isinstance(error, Exception):
                raise
            return
        trailer_reply = replies[-1] if self.trailer is not None else None
        for (_, future), reply in zip(live, replies, strict=False):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            elif isinstance(trailer_reply, Exception):
                future.set_exception(trailer_reply)
            else:
                future.set_result((reply, trailer_reply))
