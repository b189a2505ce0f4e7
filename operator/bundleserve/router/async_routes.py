"""The async API of a router: submit, task status (with long-poll), stored results; plus the worker loop.

`setup(app, state)` is called by `build_app` when the endpoint serves the async mode. Submissions are accepted even
while the model loads or the router drains: the queue is in Redis, and any replica's worker picks the task up.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from bundleserve.api.errors import (
    ApiError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from bundleserve.api.invocation import PredictRequest
from bundleserve.outbound.destinations import AddressPolicy
from bundleserve.queue.broker import QueueFull, QueueUnavailable, RedisError, Started, TaskQueue
from bundleserve.queue.callbacks import (
    SECRET_DIR_ENV,
    auth_from_secret_dir,
    check_callback_target,
    insecure_credentials_allowed,
)
from bundleserve.queue.config import QueueConfig
from bundleserve.queue.connection import connect, describe
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.recent import RecentResults
from bundleserve.queue.results import InvalidKey, ResultStore
from bundleserve.queue.tasks import CallbackTarget, TaskRecord, TaskRequest
from bundleserve.queue.worker import Worker
from bundleserve.router.calls import parse_request
from bundleserve.router.fetch import check_url
from bundleserve.router.invoke import error_response, result_store
from bundleserve.router.state import RouterState
from bundleserve.router.worker import AsyncMetrics, add_worker

log = logging.getLogger("bundleserve.router.async")

#: The longest a status request may hold the connection (`?wait=`); clients re-poll after it.
MAX_WAIT_SECONDS = 300.0
_JSON = "application/json"


def parse_submission(
    body: bytes, *, kwargs_only: bool, url_schemes: frozenset[str], url_policy: AddressPolicy | None = None
) -> PredictRequest:
    """Validate an async submission (predict body + callback fields); InvalidRequest with a readable reason."""
    if not body:
        raise InvalidRequest("the request body is empty: send a JSON object with args or url")
    request = parse_request(body)
    if kwargs_only and request.url is None and not isinstance(request.args, dict):
        raise InvalidRequest("args must be a JSON object (the keyword arguments of the model's function)")
    if request.url is not None:
        check_url(request.url, url_schemes)
    if request.callback_auth is not None and request.callback_url is None:
        raise InvalidRequest("callback_auth needs callback_url")
    if request.callback_url is not None:
        check_callback_target(
            request.callback_url,
            request.callback_auth,
            AddressPolicy() if url_policy is None else url_policy,
            allow_insecure_credentials=insecure_credentials_allowed(),
        )
    return request


def _plain_args(body: bytes) -> bool:
    """True for a body that is exactly `{"args": {...}}` (valid whatever the bundle kind)."""
    if not body.startswith(b'{"args"'):
        return False
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return type(document) is dict and len(document) == 1 and type(document.get("args")) is dict


def parse_wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise InvalidRequest(f"wait must be a number of seconds, got {raw!r}") from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise InvalidRequest(f"wait must be between 0 and {MAX_WAIT_SECONDS:g} seconds")
    return wait


def task_body(record: TaskRecord) -> bytes:
    """The status document; an inline result is spliced in as stored (it is JSON already)."""
    terminal = record.status.terminal
    result = record.result_json.encode() if terminal and record.result_json else b"null"
    head = {"task_id": record.task_id, "status": record.status.value}
    tail = {
        "result_url": record.result_url if terminal else None,
        "traceback": record.traceback if terminal else None,
        "status_code": record.status_code if terminal else None,
    }
    return (
        json.dumps(head, separators=(",", ":"))[:-1].encode()
        + b',"result":'
        + result
        + b","
        + json.dumps(tail, separators=(",", ":"))[1:].encode()
    )


class AsyncApi:
    def __init__(self, state: RouterState, redis: aioredis.Redis, queue: TaskQueue, store: ResultStore) -> None:
        self.state = state
        self.redis = redis
        self.queue = queue
        self.store = store
        self.waiter = CompletionWaiter(redis)
        self._counters: dict[str, Any] = {}
        self.recent = RecentResults(max_age_seconds=min(300.0, queue.config.result_ttl_seconds))
        spec = state.settings.endpoint.spec
        self.kwargs_only = spec.bundle.is_python
        self.max_bytes = spec.invocation.max_payload_bytes

    @property
    def metrics(self) -> AsyncMetrics | None:
        found: AsyncMetrics | None = self.state.extras.get("async_metrics")
        return found

    def _authorize(self, request: web.Request) -> None:
        keys = self.state.api_keys
        if keys is not None and not keys.allows(request.headers.get("Authorization")):
            raise Unauthorized(
                "a valid API key is required (Authorization: Bearer KEY)",
                headers={"WWW-Authenticate": 'Bearer, Basic realm="bundleserve"'},
            )

    def _count(self, outcome: str) -> None:
        counter = self._counters.get(outcome)
        if counter is None and self.metrics is not None:
            counter = self._counters[outcome] = self.metrics.submissions.labels(self.state.settings.name, outcome)
        if counter is not None:
            counter.inc()

    async def submit(self, request: web.Request) -> web.Response:
        try:
            name = request.match_info["name"]
            if name != self.state.settings.name:
                raise NotFound(f"this router serves endpoint {self.state.settings.name!r}, not {name!r}")
            self._authorize(request)
            if request.content_length is not None and request.content_length > self.max_bytes:
                raise PayloadTooLarge(f"the request body is larger than the limit of {self.max_bytes} bytes")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge(f"the request body is larger than the limit of {self.max_bytes} bytes") from None
            try:
                if _plain_args(body):  # the common `{"args": {...}}`: stored as sent, no re-encoding
                    task_id = await self._submit_plain(body)
                else:
                    submission = parse_submission(
                        body,
                        kwargs_only=self.kwargs_only,
                        url_schemes=self.state.settings.url_schemes,
                        url_policy=self.state.settings.url_policy,
                    )
                    callback = (
                        CallbackTarget(submission.callback_url, submission.callback_auth)
                        if submission.callback_url
                        else None
                    )
                    task_id = await self.queue.submit(TaskRequest.from_predict(submission), callback)
            except QueueUnavailable as error:
                raise Unavailable(str(error), headers={"Retry-After": "1"}) from None
            except QueueFull as error:
                raise Overloaded(str(error), retry_after_seconds=error.retry_after_seconds) from None
        except ApiError as error:
            self._count("invalid" if error.status < 500 else "unavailable")
            return error_response(error)
        self._count("accepted")
        return web.Response(status=202, body=b'{"task_id":"' + task_id.encode() + b'"}', content_type=_JSON)

    async def _submit_plain(self, body: bytes) -> str:
        """Submit; when this replica's worker has an idle slot, it takes the task in the same step (light load)."""
        worker: Worker | None = self.state.extras.get("async_worker")
        if worker is None or not worker.reserve():
            return await self.queue.submit_encoded(body)
        claimed: list[Started] | None = None  # None until the reply arrived: adopt hands back a lost claim
        try:
            task_id, claimed = await self.queue.submit_claiming(body, claim_for=worker.consumer)
        finally:
            worker.adopt(claimed)
        return task_id

    def finished_here(self, record: TaskRecord) -> None:
        """The local worker finished a task: remember it and wake its long-polls now."""
        self.recent.put(record)
        self.waiter.notify(record.task_id)

    async def _record(self, task_id: str) -> TaskRecord:
        recent = self.recent.get(task_id)
        if recent is not None:
            return recent
        try:
            record = await self.queue.get(task_id)
        except (RedisError, OSError) as error:
            log.warning("reading task %s failed: %s", task_id, error)
            raise Unavailable(describe(error), headers={"Retry-After": "1"}) from None
        endpoint = self.state.settings.endpoint
        if record is None or (record.namespace, record.endpoint) != (endpoint.namespace, endpoint.name):
            raise NotFound(f"no task {task_id!r} (unknown, or its result expired)")
        return record

    async def status(self, request: web.Request) -> web.Response:
        self._authorize(request)
        task_id = request.match_info["task_id"]
        wait = parse_wait(request.query.get("wait"))
        recent = self.recent.get(task_id)
        if recent is not None:
            return web.Response(body=task_body(recent), content_type=_JSON)
        if wait <= 0:
            return web.Response(body=task_body(await self._record(task_id)), content_type=_JSON)
        latest: list[TaskRecord] = []

        async def finished() -> bool:
            latest[:] = [await self._record(task_id)]
            return latest[0].status.terminal

        with contextlib.suppress(TimeoutError):  # could not subscribe in time: answer with the current state
            await self.waiter.wait_for(self.queue.channel, task_id, finished, wait)
        record = latest[0] if latest else await self._record(task_id)
        return web.Response(body=task_body(record), content_type=_JSON)

    async def result(self, request: web.Request) -> web.Response:
        self._authorize(request)
        task_id = request.match_info["task_id"]
        try:
            found = await self.store.get(task_id)
        except InvalidKey:
            found = None
        if found is None:
            raise NotFound(f"no stored result for {task_id!r} (unknown, inline, or expired)")
        data, content_type = found
        return web.Response(body=data, content_type=content_type.split(";")[0])


def _with_default_callback_auth(config: QueueConfig, state: RouterState) -> QueueConfig:
    """The endpoint's default callback takes its credentials from the Secret mounted into the router."""
    callback = state.settings.endpoint.spec.async_settings.callback
    if config.default_callback is None or callback is None or callback.auth is None:
        return config
    auth = auth_from_secret_dir(callback.auth.kind)
    if auth is None:
        log.warning(
            "endpoint %s: the callback Secret %s is not mounted at $%s; default callbacks go without credentials",
            state.settings.name,
            callback.auth.secret_name,
            SECRET_DIR_ENV,
        )
        return config
    return replace(config, default_callback=CallbackTarget(config.default_callback.url, auth))


def _unavailable(reason: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return error_response(Unavailable(reason))

    return handler


def setup(app: web.Application, state: RouterState) -> None:
    """Add the async routes and, when a Redis URL is configured, the worker loop (via `app.cleanup_ctx`)."""
    name_path = "/v1/endpoints/{name}/async"
    redis_url = state.settings.redis_url
    if not redis_url:
        reason = "the async API needs a Redis URL (--redis-url or BUNDLESERVE_REDIS_URL)"
        log.warning("endpoint %s serves async but %s", state.settings.name, reason)
        app.router.add_post(name_path, _unavailable(reason))
        app.router.add_get("/v1/tasks/{task_id}", _unavailable(reason))
        return
    config = _with_default_callback_auth(QueueConfig.from_endpoint(state.settings.endpoint), state)
    redis = connect(redis_url)
    queue = TaskQueue(redis, config)
    store = result_store(state)
    api = AsyncApi(state, redis, queue, store)
    state.extras["async_api"] = api
    app.router.add_post(name_path, api.submit)
    app.router.add_get("/v1/tasks/{task_id}", api.status)
    app.router.add_get("/v1/tasks/{task_id}/result", api.result)

    async def clients(app: web.Application) -> AsyncIterator[None]:
        yield
        await api.waiter.close()
        await queue.close()
        await redis.aclose()

    app.cleanup_ctx.append(clients)  # registered first: closed after the worker below stopped
    add_worker(app, state, queue, store, on_terminal=api.finished_here)
