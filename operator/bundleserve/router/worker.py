"""The async worker inside the router: the queue's `Worker` wired to the router's model client, admission control,
drain state, readiness and metrics.

Async tasks share the model's `concurrency` slots with sync calls (one admission controller), take no task while the
model is not ready or the router drains (a task picked up then would only burn an attempt), and count as in-progress
work for the drain, so SIGTERM lets running tasks finish; tasks not finished in time go back to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from bundleserve.api.errors import ApiError, Overloaded
from bundleserve.api.invocation import TaskStatus
from bundleserve.queue.backlog import backlog
from bundleserve.queue.broker import RedisError, TaskQueue
from bundleserve.queue.callbacks import CallbackSender, Outcome
from bundleserve.queue.invoke import Invoke, ModelReply
from bundleserve.queue.results import ResultStore
from bundleserve.queue.tasks import TaskRecord, TaskRequest
from bundleserve.queue.worker import Worker, WorkerEvents
from bundleserve.router.metrics import LATENCY_BUCKETS
from bundleserve.router.model_client import JSON, ModelClient, encode_args
from bundleserve.router.state import RouterState

log = logging.getLogger("bundleserve.router.worker")
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


def router_invoke(state: RouterState) -> Invoke:
    """Call the model the way the sync path does; router errors become replies (their status decides retry)."""
    model: ModelClient = state.model
    spec = state.settings.endpoint.spec
    path = state.settings.routes.predict
    pickle_ok = spec.bundle.is_python
    max_bytes = spec.invocation.max_payload_bytes

    async def invoke(request: TaskRequest, timeout_seconds: float) -> ModelReply:
        state.drain.enter()
        try:
            body, content_type, raw = encode_args(request.args), JSON, False
            if request.url is not None:
                if state.fetcher is None:
                    from bundleserve.router.fetch import UrlFetcher

                    state.fetcher = UrlFetcher()
                body, content_type = await state.fetcher.fetch(
                    request.url, schemes=state.settings.url_schemes, max_bytes=max_bytes
                )
                raw = True
            await _admit(state)
            try:
                extra = ModelClient.extra_headers(raw, request.return_pickled and pickle_ok, None)
                reply = await model.request(b"POST", path, body, content_type=content_type, extra=extra)
            finally:
                state.admission.release()
            return ModelReply(reply.status, reply.body, reply.content_type)
        except ApiError as error:
            if error.status == 503:
                state.readiness.lost()
            return ModelReply(error.status, _error_json(error), "application/json")
        finally:
            state.drain.leave()

    return invoke


async def _admit(state: RouterState) -> None:
    """A model slot, shared with sync calls; a full waiting line means wait and try again (a task is patient)."""
    delay = 0.01
    while True:
        try:
            await state.admission.acquire()
            return
        except Overloaded:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


def _error_json(error: ApiError) -> bytes:
    return json.dumps(error.body()).encode()


class ReadyGate:
    """The worker claims tasks only while the model is ready and the router is not draining."""

    def __init__(self, state: RouterState) -> None:
        self.state = state

    def is_open(self) -> bool:
        return self.state.readiness.ready and not self.state.drain.draining

    async def wait(self) -> None:
        while not self.is_open():
            await asyncio.sleep(0.05)  # in-process flags, not a Redis poll


def worker_context(
    state: RouterState,
    queue: TaskQueue,
    store: ResultStore,
    metrics: AsyncMetrics,
    on_terminal: Callable[[TaskRecord], None] | None = None,
) -> contextlib.AbstractAsyncContextManager[Worker]:
    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[Worker]:
        callbacks = CallbackSender(destinations=state.settings.url_policy)  # the url inputs' destination guard
        worker = Worker(
            queue,
            router_invoke(state),
            store,
            callbacks=callbacks,
            events=metrics.events(on_terminal),
            gate=ReadyGate(state),
            drain_timeout_seconds=state.settings.grace_seconds,
        )
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
    app: web.Application,
    state: RouterState,
    queue: TaskQueue,
    store: ResultStore,
    *,
    on_terminal: Callable[[TaskRecord], None] | None = None,
) -> None:
    metrics = AsyncMetrics(state)
    state.extras["async_metrics"] = metrics

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with worker_context(state, queue, store, metrics, on_terminal) as worker:
            state.extras["async_worker"] = worker
            yield

    app.cleanup_ctx.append(context)
