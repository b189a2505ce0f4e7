"""Admission control of one replica: at most `concurrency` requests in the model, at most `max_queued` waiting (FIFO).

Pure asyncio, no HTTP. A request beyond limit + queue is refused at once (`Overloaded`, 429 with Retry-After) instead of
joining an unbounded queue; a waiter that gives up (timeout, client gone) leaves the queue without consuming a slot.
The fast path (a free slot and nobody waiting) takes no await and allocates nothing.

Bodies (issue 17): a request holds its body from the moment it is read, before it can queue, so bodies are admitted
too, before the first byte is read: at most `concurrency + max_queued` bodies are being read, queued or in the model
at once (`reserve_body`/`release_body`); one more is refused with 429 before its body is read. With each body held
once, that bounds the router's memory by the Endpoint's own limits (controller.builders.deployment.router_memory_limit).
An async submission holds its body only while it is read and stored, and a burst of submissions (the SDK's
`predict_batch`) is no overload of the model: it waits for a body place (`wait_for_body`, bounded), unread bytes
staying in the socket, instead of being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from bundleserve.api.errors import Overloaded


class AdmissionController:
    """A FIFO semaphore with a bounded waiting line; `in_model` never exceeds `concurrency`."""

    __slots__ = ("_body_waiters", "_waiters", "bodies", "concurrency", "in_model", "max_queued")

    def __init__(self, concurrency: int, max_queued: int) -> None:
        if concurrency < 1 or max_queued < 0:
            raise ValueError("concurrency must be >= 1 and max_queued >= 0")
        self.concurrency = concurrency
        self.max_queued = max_queued
        self.in_model = 0
        self.bodies = 0  # request bodies being read, queued or in the model
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._body_waiters: deque[asyncio.Future[None]] = deque()

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

    async def wait_for_body(self, timeout: float) -> None:
        """Admit one more body, waiting up to `timeout` seconds (FIFO) for a place; `Overloaded` after that."""
        if self.bodies < self.concurrency + self.max_queued and not self._body_waiters:
            self.bodies += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._body_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter  # release_body counted the place for us when it woke this waiter
        except TimeoutError:
            self._leave_body_line(waiter)
            raise Overloaded(
                f"overloaded: no request body place came free within {timeout:.0f}s "
                f"(concurrency {self.concurrency} + maxQueued {self.max_queued})",
                retry_after_seconds=1,
            ) from None
        except BaseException:
            self._leave_body_line(waiter)
            raise

    def _leave_body_line(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            self.release_body()  # woken at the moment it gave up: the place passes on
        else:
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._body_waiters.remove(waiter)

    def release_body(self) -> None:
        while self._body_waiters:
            waiter = self._body_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place goes to the first waiter: `bodies` stays as it is
                return
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
