"""The native async API of a router: submit, task status (with long-poll), stored results; plus the worker loop.

A thin adapter over the endpoint's `TaskService` (`bundleserve.queue.service`), gated by the invocation core.
`setup(app, state, core)` is called by `build_app` when the endpoint serves the async mode. Submissions are accepted
even while the model loads or the router drains: the queue is in Redis, and any replica's worker picks the task up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ApiError, NotFound, Unavailable
from bundleserve.api.invocation import CALLBACK_SECRET_DIR_ENV, IDEMPOTENCY_HEADER
from bundleserve.dialects.base import public_base_url
from bundleserve.dialects.native.tasks import accepted_body, parse_wait, submit_native, task_body
from bundleserve.edge.errors import error_response
from bundleserve.queue.broker import TaskQueue
from bundleserve.queue.callbacks import auth_from_secret_dir
from bundleserve.queue.config import QueueConfig
from bundleserve.queue.connection import Redis, connect
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.service import SubmitChecks, TaskService
from bundleserve.queue.tasks import CallbackTarget
from bundleserve.router.core import InvocationCore
from bundleserve.router.state import RouterState, result_store
from bundleserve.router.worker import AsyncMetrics, add_worker

log = logging.getLogger(__name__)

_JSON = "application/json"


class AsyncApi:
    """The native async routes: parse, call the endpoint's `TaskService`, render. No Redis here."""

    def __init__(self, core: InvocationCore, tasks: TaskService, metrics: AsyncMetrics) -> None:
        self.core = core
        self.tasks = tasks
        self.metrics = metrics
        self._counters = {
            outcome: metrics.submissions.labels(core.name, outcome)
            for outcome in ("accepted", "invalid", "unavailable")
        }
        self.kwargs_only = core.is_python
        self.url_schemes = core.state.settings.url_schemes
        self.url_policy = core.state.settings.url_policy

    async def submit(self, request: web.Request) -> web.Response:
        core = self.core
        try:
            core.gate(request.match_info["name"], request.headers.get("Authorization"), Mode.ASYNC)
            body = await core.read_body(request, wait_for_place=True)  # a burst of submissions waits, not 429
            task_id = await submit_native(
                self.tasks, body, kwargs_only=self.kwargs_only, idempotency=request.headers.get(IDEMPOTENCY_HEADER)
            )
        except ApiError as error:
            self._counters["invalid" if error.status < 500 else "unavailable"].inc()
            return error_response(error)
        self._counters["accepted"].inc()
        return web.Response(status=202, body=accepted_body(task_id), content_type=_JSON)

    async def status(self, request: web.Request) -> web.Response:
        self.core.authorize(request.headers.get("Authorization"))
        task_id = request.match_info["task_id"]
        record = await self.tasks.status(task_id, wait_seconds=parse_wait(request.query.get("wait")))
        if record is None:
            raise NotFound(f"no task {task_id!r} (unknown, or its result expired)")
        public_url = public_base_url(
            request.headers, scheme=request.scheme, configured=self.core.state.settings.public_url
        )
        variant = self.core.state.settings.declared_variant
        return web.Response(body=task_body(record, public_url, variant=variant), content_type=_JSON)

    async def result(self, request: web.Request) -> web.Response:
        self.core.authorize(request.headers.get("Authorization"))
        data, content_type = await self.tasks.result(request.match_info["task_id"])
        return web.Response(body=data, content_type=content_type)


def _with_default_callback_auth(config: QueueConfig, state: RouterState) -> QueueConfig:
    """The endpoint's default callback takes its credentials from the Secret mounted into the router."""
    callback = state.settings.endpoint.spec.async_settings.callback
    if config.default_callback is None or callback is None or callback.auth is None:
        return config
    secret_dir = state.settings.callbacks.secret_dir
    auth = auth_from_secret_dir(callback.auth.kind, secret_dir)
    if auth is None:
        log.warning(
            "endpoint %s: the callback Secret %s is not mounted at %s ($%s); default callbacks go without credentials",
            state.settings.name,
            callback.auth.secret_name,
            secret_dir,
            CALLBACK_SECRET_DIR_ENV,
        )
        return config
    return replace(config, default_callback=CallbackTarget(config.default_callback.url, auth))


def _unavailable(reason: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return error_response(Unavailable(reason))

    return handler


def build_tasks(state: RouterState) -> tuple[TaskService, Redis] | None:
    """The endpoint's task service on its Redis (None without a Redis URL)."""
    redis_url = state.settings.redis_url
    if not redis_url:
        return None
    config = QueueConfig.from_endpoint(
        state.settings.endpoint, state.settings.queue_limits, variant=state.settings.declared_variant
    )
    config = _with_default_callback_auth(config, state)
    redis = connect(redis_url, timeout=state.settings.queue_limits.redis_timeout_seconds)
    checks = SubmitChecks(
        url_schemes=state.settings.url_schemes,
        destinations=state.settings.url_policy,
        allow_insecure_credentials=state.settings.callbacks.allow_insecure_credentials,
    )
    return TaskService(TaskQueue(redis, config), result_store(state), CompletionWaiter(redis), checks), redis


def setup(app: web.Application, state: RouterState, core: InvocationCore) -> TaskService | None:
    """Add the native async routes and, when a Redis URL is configured, the worker loop (via `app.cleanup_ctx`).

    Returns the task service, which the router hands to the dialects' async adapters too.
    """
    name_path = "/v1/endpoints/{name}/async"
    tasks, redis, metrics = state.tasks, state.queue_redis, state.async_metrics
    if tasks is None or redis is None or metrics is None:  # built by `router.app.build_state`: no Redis URL
        reason = "the async API needs a Redis URL (--redis-url or BUNDLESERVE_REDIS_URL)"
        log.warning("endpoint %s serves async but %s", state.settings.name, reason)
        app.router.add_post(name_path, _unavailable(reason))
        app.router.add_get("/v1/tasks/{task_id}", _unavailable(reason))
        return None
    api = AsyncApi(core, tasks, metrics)
    app.router.add_post(name_path, api.submit)
    app.router.add_get("/v1/tasks/{task_id}", api.status)
    app.router.add_get("/v1/tasks/{task_id}/result", api.result)

    async def clients(app: web.Application) -> AsyncIterator[None]:
        yield
        await tasks.waiter.close()
        await tasks.queue.close()
        await redis.aclose()

    app.cleanup_ctx.append(clients)  # registered first: closed after the worker below stopped
    add_worker(app, state, core, tasks, metrics)
    return tasks
