"""Dynamic batching: concurrent calls joined into one call of the bundle's batch entrypoint, answers split back.

Why here and not in the router: the runtime is where the Python callable is, and every call (a sync request, a stream
is never batched, an async task the router's worker runs) reaches it as one HTTP request; the router only has to let
enough calls through at once (`invocation.concurrency >= batching.maxBatchSize`, a rule of the spec).

Policy (as Triton's dynamic batcher and Ray Serve's `@serve.batch`): a batch is dispatched as soon as it holds
`max_size` calls, or when its oldest call has waited `max_wait` seconds, whichever comes first. One batch runs at a
time (a GPU runs one forward pass at a time); calls that arrive meanwhile form the next batch, and if its oldest call
has already waited out the window it is dispatched the moment the model is free.

Outcomes are per call: `Batcher.submit` returns that call's answer or raises that call's error. The batch runs in the
batcher's own task, so a caller that goes away (its request handler is cancelled) never cancels the batch; a call
cancelled before its batch is dispatched is left out of it. Memory is bounded by the callers: every waiting call is
one request the router admitted (`invocation.concurrency` per replica).

Errors: a call raises its own outcome (the runtime's `BundleError`s: `ModelRaised` for an exception object or a raising
batch, `BatchResultInvalid` for a wrong-shaped answer, `NotSerializable`), or `BatcherClosed` when the runtime stopped
before its batch ran (the HTTP edge answers `503 not_ready`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

#: Event loops sleep on millisecond timers (epoll's timeout, libuv's clock) and wake up to a millisecond late, so the
#: window's timer is set this much short of its end and a window within it of its end counts as over: a call waits
#: *at most* `max_wait` (as documented), not up to a millisecond more.
TIMER_SLACK_SECONDS = 0.001

I = TypeVar("I")  # noqa: E741 - an item, as in the rest of the typing world
R = TypeVar("R")


@dataclass(frozen=True)
class BatchSettings:
    """`spec.invocation.batching` as the runtime sees it (`--max-batch-size`, `--max-batch-wait-ms`)."""

    max_size: int
    max_wait_seconds: float

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"max_size must be at least 1 (got {self.max_size})")
        if self.max_wait_seconds < 0:
            raise ValueError(f"max_wait_seconds must not be negative (got {self.max_wait_seconds})")


#: Runs one batch: the items in, one outcome per item out (a value, or the exception that item fails with). Raising
#: fails every item of the batch with that exception.
RunBatch = Callable[[list[I]], Awaitable[Sequence[R | BaseException]]]


@dataclass(eq=False)
class _Call(Generic[I, R]):
    item: I
    future: asyncio.Future[R]
    arrived: float


class BatcherClosed(RuntimeError):
    """The batcher was closed (the runtime is stopping) before this call's batch ran."""


class Batcher(Generic[I, R]):
    """Collects calls into batches for `run` (see the module docstring). Create it on the loop it serves."""

    def __init__(self, run: RunBatch[I, R], settings: BatchSettings, *, name: str = "batch") -> None:
        self._run = run
        self.settings = settings
        self.name = name
        self._waiting: deque[_Call[I, R]] = deque()
        self._arrival = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Sizes of the batches run so far, newest last (bounded): what tests and logs look at.
        self.recent_sizes: deque[int] = deque(maxlen=1024)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def submit(self, item: I) -> R:
        """This item's outcome once its batch has run: its result, or the exception it failed with, raised."""
        if self._closed:
            raise BatcherClosed(f"{self.name}: the runtime is stopping")
        future: asyncio.Future[R] = self._loop.create_future()
        self._waiting.append(_Call(item, future, self._loop.time()))
        self._arrival.set()
        if self._task is None:
            self._task = self._loop.create_task(self._dispatch_forever(), name=f"batcher {self.name}")
        return await future

    async def close(self) -> None:
        """Stop dispatching; calls still waiting fail with `BatcherClosed`. A running batch is let finish."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._waiting:
            call = self._waiting.popleft()
            if not call.future.done():
                call.future.set_exception(BatcherClosed(f"{self.name}: the runtime stopped before this call ran"))

    def _drop_cancelled(self) -> None:
        if any(call.future.done() for call in self._waiting):
            self._waiting = deque(call for call in self._waiting if not call.future.done())

    async def _wait_for_batch(self) -> None:
        """Return when a batch should go: `max_size` calls are waiting or the oldest one's window has passed."""
        while True:
            self._drop_cancelled()
            if not self._waiting:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            if len(self._waiting) >= self.settings.max_size:
                return
            remaining = self._waiting[0].arrived + self.settings.max_wait_seconds - self._loop.time()
            if remaining <= TIMER_SLACK_SECONDS:
                return
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining - TIMER_SLACK_SECONDS):
                    await self._arrival.wait()

    async def _dispatch_forever(self) -> None:
        while True:
            await self._wait_for_batch()
            batch = [self._waiting.popleft() for _ in range(min(self.settings.max_size, len(self._waiting)))]
            await self._run_one(batch)

    async def _run_one(self, batch: list[_Call[I, R]]) -> None:
        self.recent_sizes.append(len(batch))
        try:
            outcomes = await self._run([call.item for call in batch])
        except asyncio.CancelledError:
            for call in batch:  # close() while a batch awaited on the loop: its callers are told, not left hanging
                if not call.future.done():
                    call.future.set_exception(BatcherClosed(f"{self.name}: the runtime stopped during this batch"))
            raise
        except Exception as error:  # whatever ends the batch is every call's outcome
            outcomes = [error] * len(batch)
        if len(outcomes) != len(batch):  # `run` keeps the contract; this guards the callers against a bug in it
            mismatch = RuntimeError(f"{self.name}: {len(outcomes)} outcomes for a batch of {len(batch)} calls")
            log.error("%s", mismatch)
            outcomes = [mismatch] * len(batch)
        for call, outcome in zip(batch, outcomes, strict=True):
            if call.future.done():  # the caller went away while its batch ran: the answer has no one to go to
                continue
            if isinstance(outcome, BaseException):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)
