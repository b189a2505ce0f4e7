"""The async worker inside the router: the queue's `Worker` wired to the router's invocation core (the same model call,
admission control, drain state, readiness and metrics as the sync path).

Async tasks share the model's `concurrency` slots with sync calls (one admission controller), take no task while the
model is not ready or the router drains (a task picked up then would only burn an attempt), and count as in-progress
work for the drain, so SIGTERM lets running tasks finish; tasks not finished in time go back to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from bundleserve.api.errors import ApiError, Timeout
from bundleserve.api.invocation import ModelReply, TaskStatus
from bundleserve.queue.backlog import backlog
from bundleserve.queue.broker import RedisError, TaskQueue
from bundleserve.queue.callbacks import CallbackSender, Outcome
from bundleserve.queue.invoke import Invoke, TaskFailure
from bundleserve.queue.results import ResultStore
from bundleserve.queue.service import TaskService
from bundleserve.queue.tasks import TaskRecord, TaskRequest
from bundleserve.queue.worker import Worker, WorkerEvents
from bundleserve.router.core import InvocationCore
from bundleserve.router.metrics import LATENCY_BUCKETS
from bundleserve.router.model_client import ReplyTooLarge
from bundleserve.router.state import RouterState, s3_objects

log = logging.getLogger(__name__)
BACKLOG_REFRESH_SECONDS = 5.0
CLEANUP_EVERY_ROUNDS = 60  # every 5 minutes


class AsyncMetrics:
    """Async-path metrics in the router's registry (endpoint label only; never a task id)."""

    def __init__(self, state: RouterState) -> None:
        registry, endpoint = state.metrics.registry, state.settings.name
        self.endpoint = endpoint
        self.submissions = Counter(
            "bundleserve_async_submissions_total",
            "Async submissions, by outcome (accepted, invalid, unavailable).",
            ("endpoint", "outcome"),
            registry=registry,
        )
        self.tasks = Counter(
            "bundleserve_async_tasks_total",
            "Tasks this replica brought to a terminal state, by status.",
            ("endpoint", "status"),
            registry=registry,
        )
        self.retries = Counter(
            "bundleserve_async_task_retries_total",
            "Attempts that failed with a retryable error and were put back in the queue.",
            ("endpoint",),
            registry=registry,
        ).labels(endpoint)
        self.duration = Histogram(
            "bundleserve_async_task_duration_seconds",
            "Time of the last attempt of a finished task (model call and result storage).",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(endpoint)
        self.callbacks = Counter(
            "bundleserve_async_callbacks_total",
            "Callback deliveries, by outcome (delivered, failed).",
            ("endpoint", "outcome"),
            registry=registry,
        )
        self.pending = Gauge(
            "bundleserve_async_queue_pending",
            "Tasks in the endpoint's queue not yet picked up by any replica.",
            ("endpoint",),
            registry=registry,
        ).labels(endpoint)
        self.in_flight = Gauge(
            "bundleserve_async_queue_in_flight",
            "Tasks picked up by some replica and not yet finished.",
            ("endpoint",),
            registry=registry,
        ).labels(endpoint)

    def events(self, on_terminal: Callable[[TaskRecord], None] | None = None) -> WorkerEvents:
        def finished(status: TaskStatus, seconds: float) -> None:
            self.tasks.labels(self.endpoint, status.value).inc()
            if status is TaskStatus.SUCCESS:
                self.duration.observe(seconds)

        def callback(outcome: Outcome) -> None:
            self.callbacks.labels(self.endpoint, "delivered" if outcome.delivered else "failed").inc()

        events = WorkerEvents(on_finished=finished, on_retry=self.retries.inc, on_callback=callback)
        if on_terminal is not None:
            events.on_terminal = on_terminal
        return events


def router_invoke(core: InvocationCore, max_result_bytes: int) -> Invoke:
    """The worker's model call: the invocation core's `predict`, like every sync call (one path).

    The core's errors cross the seam typed (`queue.invoke.TaskFailure`), with the status that decides the worker's
    retry: the model's own status for a model error (a 500 is retried), 400 for arguments the runtime rejected and
    413 for a result over the limit (both permanent), 503 when the model is unreachable (retried). The attempt's time
    limit is the worker's one timer: the core arms none for it (`timed_by_caller`).
    """

    async def invoke(request: TaskRequest, timeout_seconds: float) -> ModelReply | TaskFailure:
        try:
            return await core.predict(
                request.to_invocation(), timed_by_caller=True, patient=True, max_reply_bytes=max_result_bytes
            )
        except ReplyTooLarge as error:
            return TaskFailure(413, _traceback(error))
        except Timeout as error:  # a limit inside the call (not the worker's): the attempt timed out all the same
            return TaskFailure(504, _traceback(error), timed_out=True)
        except ApiError as error:
            return TaskFailure(int(error.details.get("status_code") or error.status), _traceback(error))

    return invoke


def _traceback(error: ApiError) -> str:
    return str(error.details.get("traceback") or error.message)


class ReadyGate:
    """The worker claims tasks only while the model is ready and the router is not stopping (SIGTERM)."""

    def __init__(self, state: RouterState) -> None:
        self.state = state

    def is_open(self) -> bool:
        return self.state.readiness.ready and not self.state.drain.stopping

    async def wait(self) -> None:
        while not self.is_open():
            await asyncio.sleep(0.05)  # in-process flags, not a Redis poll


def worker_context(
    state: RouterState, core: InvocationCore, tasks: TaskService, metrics: AsyncMetrics
) -> contextlib.AbstractAsyncContextManager[Worker]:
    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[Worker]:
        queue, store = tasks.queue, tasks.store
        settings = state.settings
        callbacks = CallbackSender(
            destinations=settings.url_policy,  # the url inputs' destination guard
            allow_insecure_credentials=settings.callbacks.allow_insecure_credentials,
            ca_file=settings.callbacks.ca_file,
        )
        worker = Worker(
            queue,
            router_invoke(core, queue.config.max_result_bytes),
            store,
            callbacks=callbacks,
            events=metrics.events(tasks.finished_here),
            gate=ReadyGate(state),
            drain_timeout_seconds=state.settings.grace_seconds,
            objects=s3_objects(state),
        )
        state.drain.track(lambda: worker.in_flight)  # a slot's task holds the model until it is finished
        task = asyncio.create_task(worker.run(), name="bundleserve-async-worker")
        refresher = asyncio.create_task(_housekeeping(queue, store, metrics), name="bundleserve-async-housekeeping")
        try:
            yield worker
        finally:
            refresher.cancel()
            await worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await callbacks.close()

    return running()


async def _housekeeping(queue: TaskQueue, store: ResultStore, metrics: AsyncMetrics) -> None:
    """Refresh the backlog gauges; now and then delete expired stored results."""
    rounds = 0
    while True:
        try:
            found = await backlog(queue.redis, queue.config.queue_id)
            metrics.pending.set(found.pending)
            metrics.in_flight.set(found.in_flight)
        except (RedisError, OSError) as error:
            log.debug("backlog refresh failed: %s", error)
        if rounds % CLEANUP_EVERY_ROUNDS == 0:
            try:
                removed = await store.cleanup_expired()
                if removed:
                    log.info("deleted %d expired stored result(s)", removed)
            except OSError as error:
                log.warning("cleaning up expired results failed: %s", error)
        rounds += 1
        await asyncio.sleep(BACKLOG_REFRESH_SECONDS)


def add_worker(
    app: web.Application, state: RouterState, core: InvocationCore, tasks: TaskService, metrics: AsyncMetrics
) -> None:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with worker_context(state, core, tasks, metrics) as worker:
            state.worker = tasks.worker = worker
            try:
                yield
            finally:
                state.worker = tasks.worker = None

    app.cleanup_ctx.append(context)
