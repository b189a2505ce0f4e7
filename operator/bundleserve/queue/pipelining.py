"""Automatic pipelining on one dedicated connection: every Redis command issued in the same event-loop tick goes out in
one write, and writes never wait for earlier replies (Redis answers in order; one reader task hands the replies back).

At light load a command waits for nothing (the batch is sent at the end of the current tick). Under load, dozens of
submissions, status reads and completions share a system call, which matters on machines where each socket write is
expensive. Commands are encoded with hiredis (C) and replies parsed by redis-py's hiredis parser; redis-py's
per-command machinery is skipped on this hot path. Never send blocking commands (XREADGROUP BLOCK) through it.

A batch may end with a `trailer` whose reply every caller of the batch receives: `WAITAOF 1 0 T` after a batch of
submissions makes all of them durable with one fsync wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


@dataclass
class _Batch:
    futures: list[asyncio.Future[tuple[Any, Any]]]
    has_trailer: bool
    replies: list[Any] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.replies) == len(self.futures) + self.has_trailer

    def resolve(self) -> None:
        trailer = self.replies[-1] if self.has_trailer else None
        for future, reply in zip(self.futures, self.replies, strict=False):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            elif isinstance(trailer, Exception):
                future.set_exception(trailer)
            else:
                future.set_result((reply, trailer))

    def fail(self, error: Exception) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(error)


class AutoPipeline:
    def __init__(self, redis: aioredis.Redis, *, trailer: Sequence[Any] | None = None, max_batch: int = 512) -> None:
        self.redis = redis
        self._trailer = hiredis.pack_command(tuple(trailer)) if trailer else b""
        self.max_batch = max_batch
        self._queued: list[tuple[bytes, asyncio.Future[tuple[Any, Any]]]] = []
        self._scheduled = False
        self._expected: deque[_Batch] = deque()
        self._connection: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._have_replies = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._senders: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet answered."""
        return len(self._expected)

    async def call(self, *args: Any) -> tuple[Any, Any]:
        """(reply, trailer reply or None); a Redis error reply is raised, as `execute_command` would."""
        if self._closed:
            raise RedisConnectionError("the pipeline is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, Any]] = loop.create_future()
        self._queued.append((hiredis.pack_command(args), future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def execute_command(self, *args: Any) -> Any:
        reply, _ = await self.call(*args)
        return reply

    def _flush(self) -> None:
        self._scheduled = False
        queued, self._queued = self._queued, []
        for start in range(0, len(queued), self.max_batch):
            task = asyncio.create_task(self._send(queued[start : start + self.max_batch]))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _connect(self) -> AbstractConnection:
        if self._connection is None:
            pool = self.redis.connection_pool
            connection = pool.connection_class(**pool.connection_kwargs)
            await connection.connect()  # type: ignore[no-untyped-call]
            self._connection = connection
            self._reader = asyncio.create_task(self._read_replies(connection))
        return self._connection

    async def _send(self, queued: list[tuple[bytes, asyncio.Future[tuple[Any, Any]]]]) -> None:
        async with self._send_lock:  # batches leave in order, so replies match the expected queue
            live = [(packed, future) for packed, future in queued if not future.done()]
            if not live:
                return
            batch = _Batch([future for _, future in live], bool(self._trailer))
            try:
                connection = await self._connect()
                self._expected.append(batch)
                self._have_replies.set()
                await connection.send_packed_command(
                    b"".join(packed for packed, _ in live) + self._trailer, check_health=False
                )
            except Exception as error:
                batch.fail(error)
                await self._reset(error)

    async def _read_replies(self, connection: AbstractConnection) -> None:
        try:
            while True:
                if not self._expected:
                    self._have_replies.clear()
                    await self._have_replies.wait()
                    continue
                try:
                    reply = await connection.read_response()
                except ResponseError as error:
                    reply = error
                batch = self._expected[0]
                batch.replies.append(reply)
                if batch.complete:
                    self._expected.popleft()
                    batch.resolve()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if self._connection is connection:
                self._reader = None  # this task ends here: _reset must not cancel it
                await self._reset(error)

    async def _reset(self, error: Exception) -> None:
        """The connection broke: fail everything waiting on it; the next command reconnects."""
        connection, self._connection = self._connection, None
        reader, self._reader = self._reader, None
        while self._expected:
            self._expected.popleft().fail(error)
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._senders):
            with contextlib.suppress(Exception):
                await task
        await self._reset(RedisConnectionError("the pipeline was closed"))
