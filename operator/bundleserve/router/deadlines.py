"""Request time limits on shared, coarse timers.

`asyncio.timeout` arms and disarms one event-loop timer per request; on uvloop every timer is a libuv handle that is
allocated, started, stopped and closed (the close costs an extra loop iteration). Time limits of seconds do not need
microsecond precision: requests whose deadlines fall into the same `resolution` slot share one timer, and a request
that finishes in time costs a set insertion and removal. A limit fires at most `resolution` late.

Semantics match `asyncio.timeout`: on expiry the task is cancelled, and the block raises `TimeoutError` unless the
task was also cancelled for another reason (a client disconnect stays a cancellation).
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType


class DeadlineWheel:
    """One timer per time slot, however many requests expire in it."""

    __slots__ = ("_loop", "_resolution", "_slots")

    def __init__(self, resolution: float = 0.01) -> None:
        self._resolution = resolution
        self._slots: dict[int, set[Deadline]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def at(self, when: float) -> Deadline:
        """A context manager that cancels the block at loop time `when` (rounded up to the resolution)."""
        return Deadline(self, when)

    def _add(self, deadline: Deadline) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        slot = math.ceil(deadline.when / self._resolution)
        deadline.slot = slot
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = set()
            loop.call_at(slot * self._resolution, self._fire, slot)
        members.add(deadline)

    def _remove(self, deadline: Deadline) -> None:
        members = self._slots.get(deadline.slot)
        if members is not None:
            members.discard(deadline)

    def _fire(self, slot: int) -> None:
        for deadline in self._slots.pop(slot, ()):
            deadline.expire()

    @property
    def pending(self) -> int:
        return sum(len(members) for members in self._slots.values())


class Deadline:
    """`async with wheel.at(when):` - like `asyncio.timeout_at(when)`, on the wheel's shared timers."""

    __slots__ = ("_cancelling", "_task", "_wheel", "expired", "slot", "when")

    def __init__(self, wheel: DeadlineWheel, when: float) -> None:
        self._wheel = wheel
        self.when = when
        self.slot = 0
        self.expired = False
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._wheel._add(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._wheel._remove(self)
        task = self._task
        # Like asyncio.timeout: undo our cancel; a TimeoutError only if nobody else cancelled the task too.
        if (
            self.expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError("deadline passed") from exc

    def expire(self) -> None:
        if not self.expired and self._task is not None and not self._task.done():
            self.expired = True
            self._task.cancel()
