"""The worker loop of one router process: read the endpoint's stream, run up to `concurrency` tasks, finish each once.

Free slots claim new entries with one script (XREADGROUP + pickup); with nothing to claim the loop blocks on XREAD
(no polling) until the stream grows. Under load each completion claims the next task for its slot in the same round
trip. A reclaim loop takes over entries abandoned by dead consumers (XAUTOCLAIM after the visibility timeout).
Each task ends in exactly one of:
a terminal transition (SUCCESS / FAILURE / EXPIRED, atomic and idempotent), a requeue for a retry, or - when this
process drains - a release back to the stream so another replica takes it at once.

Leases: every completion and requeue is fenced on the worker and attempt that started the task, and a heartbeat
extends the lease of every task this worker holds (running or in hand), so a slow model call or a long result upload
is never reclaimed while its worker lives, and a stale worker cannot overwrite the outcome of the one that took over.
An unexpected exception in a slot fails nothing silently: the slot hands back the tasks it held; one in the read loop
is logged and the loop goes on; `healthy` turns False if the loop ever ends without a stop (readiness reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import RedisError

from bundleserve.api.errors import ApiError
from bundleserve.api.invocation import TaskStatus, loads_json
from bundleserve.queue import keys
from bundleserve.queue.broker import Lease, Started, TaskQueue
from bundleserve.queue.callbacks import CallbackSender, Outcome
from bundleserve.queue.invoke import PICKLE_CONTENT_TYPE, Invoke, ModelReply, TaskFailure
from bundleserve.queue.outbox import CallbackOutbox
from bundleserve.queue.results import ResultStore
from bundleserve.queue.s3results import S3Objects, failure_url, output_url
from bundleserve.queue.tasks import CallbackTarget, TaskRecord, TaskRequest, failure_document

log = logging.getLogger(__name__)

#: Model answers that a retry cannot fix (the request itself is wrong).
_PERMANENT_STATUS = frozenset({400, 404, 405, 413, 415, 422})


class Gate(Protocol):
    """When this process may take tasks (the router: the model is ready and the router is not draining)."""

    def is_open(self) -> bool: ...

    async def wait(self) -> None: ...


@dataclass
class WorkerEvents:
    """Hooks for metrics; the worker calls them and never depends on a metrics library."""

    on_finished: Callable[[TaskStatus, float], None] = lambda status, seconds: None
    on_retry: Callable[[], None] = lambda: None
    on_callback: Callable[[Outcome], None] = lambda outcome: None
    #: A task this worker brought to a terminal state (the record as now stored).
    on_terminal: Callable[[TaskRecord], None] = lambda record: None


@dataclass(eq=False)
class _Slot:
    """The state of one running slot: claimed tasks in hand, completions on their way to Redis."""

    buffer: deque[Started] = field(default_factory=deque)
    completions: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass(frozen=True)
class _Finish:
    status: TaskStatus
    fields: Mapping[str, Any]
    dead_reason: str = ""
    retryable: bool = False


def _parses(body: bytes) -> bool:
    """Whether `body` is one JSON document (bounded: inline results are at most `inline_result_max_bytes`)."""
    try:
        json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return False
    return True


def _timed_out(limit: float) -> _Finish:
    return _Finish(
        TaskStatus.FAILURE,
        {"traceback": f"the invocation timed out after {limit:g} s", "status_code": 504},
        dead_reason="timeout",
    )


def _failed(status_code: int, traceback: str) -> _Finish:
    """A failed attempt: retried unless its status says another attempt cannot help (`_PERMANENT_STATUS`)."""
    permanent = status_code in _PERMANENT_STATUS
    return _Finish(
        TaskStatus.FAILURE,
        {"traceback": traceback, "status_code": status_code},
        dead_reason="model_error" if permanent else "max_attempts",
        retryable=not permanent,
    )


def _traceback_of(reply: ModelReply) -> str:
    """The model's traceback (bundle runtime error body), else its message, else the raw body."""
    text = reply.body.decode(errors="replace")
    try:
        error = loads_json(text).get("error", {})
        return str(error.get("traceback") or error.get("message") or text)
    except (ValueError, AttributeError):
        return text or f"the model answered HTTP {reply.status_code}"


class Worker:
    def __init__(
        self,
        queue: TaskQueue,
        invoke: Invoke,
        store: ResultStore,
        *,
        consumer: str | None = None,
        callbacks: CallbackSender | None = None,
        events: WorkerEvents | None = None,
        gate: Gate | None = None,
        block_ms: int = 2000,
        reclaim_interval_seconds: float | None = None,
        drain_timeout_seconds: float = 10.0,
        objects: S3Objects | None = None,
    ) -> None:
        self.queue = queue
        #: Where tasks with SageMaker S3 paths get their output and failure objects (None: S3 not configured here).
        self.objects = objects
        self.config = queue.config
        self.invoke = invoke
        self.store = store
        self.consumer = consumer or keys.consumer_name()
        self.callbacks = callbacks
        self.events = events or WorkerEvents()
        self.outbox = (
            CallbackOutbox(
                queue,
                callbacks,
                default_target=self.config.default_callback,
                on_outcome=lambda outcome: self.events.on_callback(outcome),
            )
            if callbacks is not None
            else None
        )
        self.gate = gate
        self.block_ms = block_ms
        visibility = self.config.visibility_timeout_seconds
        self.reclaim_interval = reclaim_interval_seconds or min(max(visibility / 4, 0.2), 15.0)
        self.drain_timeout = drain_timeout_seconds
        self._inflight: dict[asyncio.Task[None], Started] = {}
        self._slots: set[_Slot] = set()
        self._reserved = 0
        self._background: set[asyncio.Task[None]] = set()
        #: Slots keep a claimed task in hand only after model calls quicker than this (see `_run`).
        self.prefetch_below_seconds = min(1.0, self.config.visibility_grace_seconds / 4)
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._interruptible = False  # the read loop waits (gate or blocking read) holding no delivery
        #: Leases are extended this often (well within the visibility timeout).
        self.heartbeat_interval = min(max(visibility / 4, 0.1), 30.0)
        #: Consumers idle this long with nothing pending are removed from the group (dead replicas).
        self.consumer_idle_seconds = max(2 * visibility, 3600.0)
        self._crashed: str | None = None
        self._started = False

    @property
    def healthy(self) -> bool:
        """False when this worker cannot do its job: its read loop died, or the queue refuses submissions (its
        Redis cannot keep the configured durability). The router's /readyz fails then (see `problem`)."""
        return self.problem is None

    @property
    def problem(self) -> str | None:
        """Why the worker is not healthy (client-safe text), else None."""
        if self._crashed is not None:
            return self._crashed
        return self.queue.problem

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _free_slots(self) -> int:
        return self.config.concurrency - len(self._inflight) - self._reserved

    def reserve(self) -> bool:
        """Reserve a slot of an idle worker for a task this process is submitting (claimed in the same step).

        Only when nothing runs: that is the light-load case where it saves latency; under load the slots' own
        claims batch better. Give the slot back with `adopt`.
        """
        if self._stopping.is_set() or self._inflight or self._reserved or (self.gate and not self.gate.is_open()):
            return False
        self._reserved += 1
        return True

    def adopt(self, picked: list[Started] | None) -> None:
        """Run what a submission claimed for this worker, and give back the slot reserved for it.

        None: the submission's reply was lost (its handler was cancelled, or Redis timed out), so whatever it claimed
        sits STARTED in the submission consumer: hand it back to the stream first, then free the slot.
        """
        if picked is None:
            task = asyncio.create_task(self._recover_submit_claims())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        self._reserved -= 1
        for started in picked:
            if started.outcome == "run":
                self._start_slot(started)
        others = [started for started in picked if started.outcome != "run"]
        if others:
            task = asyncio.create_task(self._dispatch(others))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._slot_freed.set()

    async def _recover_submit_claims(self) -> None:
        delay = 0.05
        try:
            for _ in range(20):
                try:
                    await self._release_owned(keys.submit_consumer(self.consumer))
                    return
                except (RedisError, OSError) as error:
                    log.warning("handing back tasks of a lost submission failed (%s); retrying", error)
                    await self._pause(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._reserved -= 1
            self._slot_freed.set()

    async def _release_owned(self, consumer: str) -> None:
        """Release entries `consumer` holds in the group that this worker never started (they go back at once)."""
        running = {item.delivery.entry_id for item in self._held()}
        for delivery in await self.queue.owned(consumer):
            if delivery.entry_id not in running:
                await self.queue.requeue(delivery, Lease(self.consumer, None), {"worker": ""}, release=True)

    def _held(self) -> list[Started]:
        """Every task this worker holds a lease on: running in a slot, or in a slot's hand."""
        return [*self._inflight.values(), *(item for slot in self._slots for item in slot.buffer)]

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; Redis outages are waited out (the tasks are in Redis, not here)."""
        await self._until_ready()
        reclaimer = asyncio.create_task(self._reclaim_loop(), name="bundleserve-reclaim")
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="bundleserve-heartbeat")
        outbox = asyncio.create_task(self.outbox.run(), name="bundleserve-callbacks") if self.outbox else None
        self._reader = asyncio.create_task(self._read_loop(), name="bundleserve-read")
        self._reader.add_done_callback(self._reader_ended)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            if not self._stopping.is_set():
                raise asyncio.CancelledError
        finally:
            for helper in (reclaimer, heartbeat):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            await self._drain()
            if self.outbox is not None and outbox is not None:
                await self.outbox.stop()
                outbox.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await outbox

    def _reader_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping.is_set():
            return
        self._crashed = "the async worker's read loop stopped"
        if not task.cancelled() and task.exception() is not None:
            log.error("the async worker's read loop died", exc_info=task.exception())

    async def stop(self) -> None:
        self._stopping.set()
        self._slot_freed.set()
        if self._reader is not None and self._interruptible:
            self._reader.cancel()  # entries delivered to an interrupted read are released by `_drain`

    async def _until_ready(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            try:
                await self.queue.prepare()  # the group, and the durability this server supports (decided once)
                return
            except (RedisError, OSError) as error:
                log.warning("queue not reachable yet (%s); retrying", error)
                await self._pause(delay)
                delay = min(delay * 2, 2.0)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _drain(self) -> None:
        """Let running tasks finish for a while; release the others to the stream instead of waiting for a reclaim."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.drain_timeout)
        for task in list(self._inflight):
            task.cancel()  # the slot hands back what it held (see `_run`)
            with contextlib.suppress(asyncio.CancelledError):
                await task
        completions = {task for slot in self._slots for task in slot.completions} | self._background
        if completions:  # results on their way to Redis: let them land (they retry through a Redis restart)
            await asyncio.wait(completions, timeout=self.config.visibility_timeout_seconds)
        for slot in self._slots:
            await self._hand_back(slot.buffer)
        for consumer in (self.consumer, keys.submit_consumer(self.consumer)):  # delivered to us but never started
            with contextlib.suppress(RedisError, OSError):
                await self._release_owned(consumer)

    async def _hand_back(self, held: deque[Started], *, release: bool = True, reason: str = "") -> None:
        """Put back tasks this worker holds but will not finish (fenced: one reclaimed since is left alone).

        `release`: the attempt does not count (never run here); else it counts and `reason` is kept as the error."""
        fields = {"worker": ""} if release else {"worker": "", "traceback": reason, "status_code": 500}
        while held:
            item = held.popleft()
            with contextlib.suppress(RedisError, OSError):
                await self.queue.requeue(item.delivery, item.lease(self.consumer), fields, release=release)

    # -- claiming -------------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                if self.gate is not None and not self.gate.is_open():
                    self._interruptible = True
                    try:
                        await self.gate.wait()
                    finally:
                        self._interruptible = False
                started, last_id = await self.queue.claim(self.consumer, free)  # read + start in one trip
                if not started:
                    self._interruptible = True
                    try:
                        await self.queue.wait_after(last_id, self.block_ms)
                    finally:
                        self._interruptible = False
                    continue
                await self._dispatch(started)
                delay = 0.05
            except (RedisError, OSError) as error:
                log.warning("reading the queue failed (%s); retrying", error)
                await self._pause(delay)
                delay = min(delay * 2, 2.0)
                with contextlib.suppress(RedisError, OSError):
                    await self.queue.ensure_group()  # a Redis that lost its data has no group
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or an unexpected client error must not stop the worker for good
                log.exception("the async worker's read loop failed; going on")
                await self._pause(delay)
                delay = min(delay * 2, 2.0)

    async def _reclaim_loop(self) -> None:
        rounds = 0
        while not self._stopping.is_set():
            await self._pause(self.reclaim_interval)
            rounds += 1
            if rounds % 20 == 1:
                try:
                    removed = await self.queue.prune_consumers(self.consumer_idle_seconds)
                    if removed:
                        log.info("removed %d dead consumer(s) from the group", removed)
                except (RedisError, OSError) as error:
                    log.warning("pruning consumers failed (%s)", error)
            free = self._free_slots()
            if free <= 0 or self._stopping.is_set():
                continue
            if self.gate is not None and not self.gate.is_open():
                continue
            try:
                deliveries = await self.queue.reclaim(self.consumer, free)
                if deliveries:
                    log.info("reclaimed %d abandoned task(s)", len(deliveries))
                    await self._dispatch(await self.queue.start(self.consumer, deliveries))
            except (RedisError, OSError) as error:
                log.warning("reclaiming failed (%s)", error)
            except Exception:
                log.exception("reclaiming failed")

    async def _heartbeat_loop(self) -> None:
        """Extend the lease of every task this worker holds, while it holds it."""
        while not self._stopping.is_set():
            await self._pause(self.heartbeat_interval)
            held = self._held()
            try:
                kept = await self.queue.touch(self.consumer, held)
            except (RedisError, OSError) as error:
                log.warning("extending task leases failed (%s)", error)
                continue
            except Exception:
                log.exception("extending task leases failed")
                continue
            for item, ok in zip(held, kept, strict=True):
                if not ok:
                    log.warning(
                        "task %s was taken over by another worker; its result here is dropped", item.delivery.task_id
                    )

    async def _dispatch(self, picked: list[Started]) -> None:
        """Run what may run; tasks finished at pickup (expired, out of attempts) only notify.

        Every runnable task gets its slot first, so a failing notification cannot strand a claimed task."""
        for started in picked:
            if started.outcome == "run":
                self._start_slot(started)
        for started in picked:
            if started.outcome in ("expired", "failed"):
                status = TaskStatus.EXPIRED if started.outcome == "expired" else TaskStatus.FAILURE
                expired = status is TaskStatus.EXPIRED
                why = "the request expired in the queue before it ran" if expired else "the task ran out of attempts"
                await self._write_failure(started.delivery.task_id, started.request, status, {"traceback": why})
                self.events.on_finished(status, 0.0)
                try:
                    await self._callback(started.delivery.task_id, started.callback)
                except (RedisError, OSError) as error:
                    log.warning("could not queue the callback of task %s (%s)", started.delivery.task_id, error)

    def _start_slot(self, started: Started) -> None:
        task = asyncio.create_task(self._run(started))
        self._inflight[task] = started
        task.add_done_callback(self._release_slot)

    def _release_slot(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker task crashed", exc_info=task.exception())

    # -- running one task -----------------------------------------------------------------------------------------

    async def _run(self, started: Started) -> None:
        """One slot: run the task, then the tasks claimed with each completion, until the stream has none.

        For quick tasks the slot keeps one claimed task in hand, so the next model call starts while the previous
        completion is still on its way to Redis (as Celery's prefetch does). A task in hand waits for one task; if
        that one was slow, the waiting task's idle time is reset before it runs, so a reclaim never takes it.
        """
        me = asyncio.current_task()
        if me is None:  # `_start` runs this as a task of its own; the task is the key of `_inflight`
            raise RuntimeError("Worker._run must run in an asyncio task")
        slot = _Slot()
        self._slots.add(slot)
        current: Started | None = started
        try:
            while current is not None:
                current = await self._run_one(me, slot, current)
        except (Exception, asyncio.CancelledError) as error:
            # Cancelled (drain) or an unexpected exception: hand back what this slot held, never strand it.
            if not isinstance(error, asyncio.CancelledError):
                log.exception("an async worker slot failed; handing its tasks back")
            held = deque(slot.buffer)
            slot.buffer.clear()
            current = self._inflight.get(me)
            if current is not None and not isinstance(error, asyncio.CancelledError):
                # it failed while running: a retry counts an attempt, so maxAttempts bounds a persistent failure
                reason = f"the worker failed while running it: {type(error).__name__}"
                await asyncio.shield(self._hand_back(deque([current]), release=False, reason=reason))
            elif current is not None:
                held.appendleft(current)
            await asyncio.shield(self._hand_back(held))
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self._slots.discard(slot)

    async def _run_one(self, me: asyncio.Task[None], slot: _Slot, current: Started) -> Started | None:
        """Run `current` and record it; returns the slot's next task (claimed with a completion), or None."""
        self._inflight[me] = current
        finish, seconds = await self._attempt(current)
        quick = seconds < self.prefetch_below_seconds
        if slot.buffer:
            self._complete_in_background(slot, current, finish, seconds, claim=1 if quick else 0)
            following = slot.buffer[0]
            if time.monotonic() - following.picked_at > self.config.visibility_grace_seconds / 2:
                with contextlib.suppress(RedisError, OSError):  # it waited behind a slow task
                    await self.queue.touch(self.consumer, [following])
            return slot.buffer.popleft()
        slot.buffer.extend(await self._complete(current, finish, seconds, claim=2 if quick else 1))
        while not slot.buffer and slot.completions:
            await asyncio.wait(set(slot.completions))
        return slot.buffer.popleft() if slot.buffer else None

    def _complete_in_background(
        self, slot: _Slot, started: Started, finish: _Finish, seconds: float, claim: int
    ) -> None:
        async def complete() -> None:
            try:
                slot.buffer.extend(await self._complete(started, finish, seconds, claim))
            except Exception:
                log.exception("recording task %s failed; handing it back", started.delivery.task_id)
                await self._hand_back(deque([started]))

        task = asyncio.create_task(complete())
        slot.completions.add(task)
        task.add_done_callback(slot.completions.discard)

    async def _attempt(self, started: Started) -> tuple[_Finish, float]:
        """Call the model once and decide the outcome (nothing is written to Redis here)."""
        request, delivery = started.request, started.delivery
        if request is None:  # only a delivery whose outcome is "run" reaches here, and it carries its request
            raise RuntimeError(f"task {delivery.task_id} was started without its request")
        begun = time.monotonic()
        limit = float(self.config.invocation_timeout_seconds)
        if request.timeout_seconds:
            limit = min(limit, request.timeout_seconds)
        try:
            async with asyncio.timeout(limit):  # the attempt's one timer (the Invoke arms none)
                reply = await self.invoke(request, limit)
        except TimeoutError:
            finish = _timed_out(limit)
        except Exception as error:  # transport errors of any client: retried
            finish = _Finish(
                TaskStatus.FAILURE,
                {"traceback": f"could not reach the model: {type(error).__name__}: {error}", "status_code": 502},
                dead_reason="max_attempts",
                retryable=True,
            )
        else:
            if isinstance(reply, TaskFailure):
                finish = _timed_out(limit) if reply.timed_out else _failed(reply.status_code, reply.traceback)
            else:
                finish = await self._outcome(delivery.task_id, request, reply)
        return finish, time.monotonic() - begun

    async def _outcome(self, task_id: str, request: TaskRequest, reply: ModelReply) -> _Finish:
        pickled = request.return_pickled
        if not reply.ok:
            return _failed(reply.status_code, _traceback_of(reply))
        size = len(reply.body)
        if size > self.config.max_result_bytes:
            return _Finish(
                TaskStatus.FAILURE,
                {
                    "traceback": f"the result is {size} bytes, over the limit of {self.config.max_result_bytes}",
                    "status_code": 413,
                },
                dead_reason="result_too_large",
            )
        media_type = reply.content_type.split(";")[0].strip().lower()
        # Stored as JSON only when it is JSON: the record's result is spliced into status documents and callbacks
        # as is, so a text body (without a content type, or mislabelled) would make both invalid.
        is_json = (media_type in ("application/json", "") or media_type.endswith("+json")) and _parses(reply.body)
        if pickled or media_type == PICKLE_CONTENT_TYPE or size > self.config.inline_result_max_bytes:
            content_type = reply.content_type or "application/octet-stream"
            try:
                await self.store.put(task_id, reply.body, content_type, ttl_seconds=self.config.result_ttl_seconds)
            except OSError as error:
                return _Finish(
                    TaskStatus.FAILURE,
                    {"traceback": f"could not store the result: {error}", "status_code": 507},
                    dead_reason="max_attempts",
                    retryable=True,
                )
            fields: dict[str, Any] = {"result": "", "result_url": self.store.url_for(task_id)}
        elif is_json and reply.body:
            fields = {"result": reply.body}
        else:
            fields = {"result": json.dumps(reply.body.decode(errors="replace"))}
        fields.update(status_code=reply.status_code, traceback="")
        if request.s3_output_path is not None:
            unwritten = await self._write_output(task_id, request.s3_output_path, reply)
            if unwritten is not None:
                return unwritten
        return _Finish(TaskStatus.SUCCESS, fields)

    async def _write_output(self, task_id: str, path: str, reply: ModelReply) -> _Finish | None:
        """SageMaker's output object, written before the task is recorded SUCCESS: a client waiting for the object
        (an S3 `object_exists` waiter) sees it exactly when the task is done. Failing to write is retried."""
        if self.objects is None:
            reason = "the task has an S3 output path but this worker has no S3 storage configured"
            return _Finish(TaskStatus.FAILURE, {"traceback": reason, "status_code": 500}, dead_reason="s3_output")
        try:
            await self.objects.write(output_url(path, task_id), reply.body, reply.content_type)
        except (OSError, ValueError, ApiError) as error:  # S3 refused or unreachable; or an unusable path
            return _Finish(
                TaskStatus.FAILURE,
                {"traceback": f"could not write the output object: {error}", "status_code": 507},
                dead_reason="max_attempts",
                retryable=True,
            )
        return None

    async def _write_failure(
        self, task_id: str, request: TaskRequest | None, status: TaskStatus, fields: Mapping[str, Any]
    ) -> None:
        """SageMaker's failure object, once the task is terminally FAILURE or EXPIRED (after the record: the record
        is the truth, the object a notification; a write that fails is logged, the record stays readable)."""
        if request is None or request.s3_failure_path is None:
            return
        if self.objects is None:
            log.error("task %s has an S3 failure path but this worker has no S3 storage configured", task_id)
            return
        status_code = fields.get("status_code")
        document = failure_document(
            status,
            int(status_code) if status_code not in (None, "") else None,
            str(fields.get("traceback") or "") or None,
        )
        try:
            await self.objects.write(failure_url(request.s3_failure_path, task_id), document, "application/json")
        except (OSError, ValueError, ApiError) as error:
            log.error("could not write the failure object of task %s: %s", task_id, error)

    def _may_claim(self) -> bool:
        return not self._stopping.is_set() and (self.gate is None or self.gate.is_open())

    async def _complete(self, started: Started, finish: _Finish, seconds: float, claim: int) -> list[Started]:
        """Record the outcome, retrying Redis errors (a result is never dropped while Redis restarts).

        The completion also claims up to `claim` new tasks for this slot in the same round trip; they are returned.
        """
        delivery = started.delivery
        out_of_attempts = started.attempts >= self.config.max_attempts
        delay = 0.05
        deadline = time.monotonic() + self.config.visibility_timeout_seconds
        while True:
            try:
                if finish.retryable and not out_of_attempts:
                    await self.queue.requeue(delivery, started.lease(self.consumer), finish.fields)
                    self.events.on_retry()
                    return []
                made, claimed = await self.queue.complete(
                    delivery,
                    started.lease(self.consumer),
                    finish.status,
                    self._with_callback(started, finish.fields),
                    dead_reason=finish.dead_reason,
                    claim_for=self.consumer if claim > 0 and self._may_claim() else None,
                    claim_count=claim,
                )
                break
            except (RedisError, OSError) as error:
                if time.monotonic() > deadline:  # the entry stays pending: another worker reclaims and reruns it
                    log.error("could not record task %s (%s); leaving it to be reclaimed", delivery.task_id, error)
                    return []
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                claim = 0  # a retried call must not claim twice
        if made:
            if finish.status is TaskStatus.FAILURE:
                await self._write_failure(delivery.task_id, started.request, finish.status, finish.fields)
            self.events.on_finished(finish.status, seconds)
            self.events.on_terminal(self._record_of(delivery.task_id, started, finish))
            await self._callback(delivery.task_id, started.callback, enqueued=True)
        runnable = [picked for picked in claimed if picked.outcome == "run"]
        await self._dispatch([picked for picked in claimed if picked.outcome != "run"])
        return runnable

    def _record_of(self, task_id: str, started: Started, finish: _Finish) -> TaskRecord:
        fields = finish.fields
        result = fields.get("result")
        status_code = fields.get("status_code")
        return TaskRecord(
            task_id=task_id,
            endpoint=self.config.endpoint,
            namespace=self.config.namespace,
            status=finish.status,
            result_json=(result.decode() if isinstance(result, bytes) else result) or None,
            result_url=fields.get("result_url") or None,
            traceback=fields.get("traceback") or None,
            status_code=int(status_code) if status_code is not None else None,
            attempts=started.attempts,
        )

    def _with_callback(self, started: Started, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        """Mark a callback pending: the completion script then puts its delivery job in the outbox, atomically."""
        if self.outbox is None or (started.callback or self.config.default_callback) is None:
            return fields
        return {**fields, "callback_status": "pending"}

    async def _callback(self, task_id: str, target: CallbackTarget | None, *, enqueued: bool = False) -> None:
        """Wake the outbox after a completion; for transitions made by the pick-up script (expired, out of
        attempts) the job is added here, right after the transition (a crash in between loses that callback)."""
        if self.outbox is None or (target or self.config.default_callback) is None:
            return
        if not enqueued:
            await self.queue.enqueue_callback(task_id)
        self.outbox.wake()
