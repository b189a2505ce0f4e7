"""Admission control of one replica: at most `concurrency` requests in the model, at most `max_queued` waiting (FIFO).

Pure asyncio, no HTTP. A request beyond limit + queue is refused at once (`Overloaded`, 429 with Retry-After) instead of
joining an unbounded queue; a waiter that gives up (timeout, client gone) leaves the queue without consuming a slot.
The fast path (a free slot and nobody waiting) takes no await and allocates nothing.

Bodies (issue 17): a request holds its body from the moment it is read, before it can queue, so bodies are admitted
too, before the first byte is read: at most `concurrency + max_queued` bodies are being read, queued or in the model
at once (`reserve_body`/`release_body`); one more is refused with 429 before its body is read. With each body held
once, that bounds the router's memory by the Endpoint's own limits (controller.builders.deployment.router_memory_limit).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from bundleserve.api.errors import Overloaded


class AdmissionController:
    """A FIFO semaphore with a bounded waiting line; `in_model` never exceeds `concurrency`."""

    __slots__ = ("_waiters", "bodies", "concurrency", "in_model", "max_queued")

    def __init__(self, concurrency: int, max_queued: int) -> None:
        if concurrency < 1 or max_queued < 0:
            raise ValueError("concurrency must be >= 1 and max_queued >= 0")
        self.concurrency = concurrency
        self.max_queued = max_queued
        self.in_model = 0
        self.bodies = 0  # request bodies being read, queued or in the model
        self._waiters: deque[asyncio.Future[None]] = deque()

    def reserve_body(self) -> None:
        """Admit one more request body before it is read; `Overloaded` when as many bodies as the line and the
        model slots hold are in memory already."""
        if self.bodies >= self.concurrency + self.max_queued:
            raise Overloaded(
                f"overloaded: {self.bodies} request bodies in progress "
                f"(concurrency {self.concurrency} + maxQueued {self.max_queued})",
                retry_after_seconds=1,
            )
        self.bodies += 1

    def release_body(self) -> None:
        self.bodies -= 1

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot without waiting when one is free and nobody is ahead in the line."""
        if self.in_model < self.concurrency and not self._waiters:
            self.in_model += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; raise `Overloaded` when the line is full.

        Cancellation (the caller's timeout or a client disconnect) while waiting removes the waiter; if the slot was
        handed over at the same moment, it is passed on to the next waiter, so no slot leaks.
        """
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_queued:
            raise Overloaded(
                f"overloaded: {self.concurrency} requests in the model and {self.max_queued} queued",
                retry_after_seconds=1,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed to us just as we gave up: give it to the next in line.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Free a slot: hand it straight to the first live waiter (FIFO), or return it to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # in_model stays the same: the slot changes hands
                return
        self.in_model -= 1
