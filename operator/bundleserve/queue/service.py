"""The async task service of one endpoint's queue: submit, status (long-poll), stored result.

Shared by the router (bound to its own endpoint) and the gateway (one per endpoint it resolves by name), and used by
every dialect's async adapter (native, SageMaker, Launch) through the `dialects.base.TaskBackend` Protocol: adapters
parse and render, this service talks to the queue. Errors are `ApiError`s: Redis down -> Unavailable (503, the task
never runs), an unsafe result key -> InvalidRequest (400), unknown or expired -> NotFound (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field, replace

from bundleserve.api.errors import InvalidRequest, NotFound, Overloaded, Unavailable
from bundleserve.api.invocation import JSON_CONTENT_TYPE, Invocation
from bundleserve.outbound.destinations import AddressPolicy
from bundleserve.outbound.urls import check_url
from bundleserve.queue import keys
from bundleserve.queue.broker import QueueFull, QueueUnavailable, RedisError, Started, TaskQueue
from bundleserve.queue.callbacks import check_callback_target
from bundleserve.queue.config import QueueConfig
from bundleserve.queue.connection import describe
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.recent import RecentResults
from bundleserve.queue.results import InvalidKey, ResultStore, check_key
from bundleserve.queue.results import sync_result_owner as result_owner
from bundleserve.queue.s3results import S3Location, S3ResultStore, S3Url
from bundleserve.queue.tasks import CallbackTarget, TaskRecord, TaskRequest
from bundleserve.queue.worker import Worker

log = logging.getLogger(__name__)

#: The longest a status request may hold the connection (`?wait=`); clients re-poll after it.
MAX_WAIT_SECONDS = 300.0
#: How long a retry waits for the first attempt of the same call to be queued (it takes one Redis round trip).
_CLAIM_SECONDS = 10.0


def plain_args(inv: Invocation) -> bool:
    """An invocation that is exactly `{"args": {...}}` on the wire: stored as sent, without re-encoding."""
    return (
        not inv.raw
        and inv.url is None
        and not inv.return_pickled
        and inv.timeout_seconds is None
        and inv.custom_attributes is None
        and inv.request_id is None
        and inv.accept is None
        and inv.idempotency_key is None
        and inv.content_type == JSON_CONTENT_TYPE
    )


@dataclass(frozen=True)
class S3AsyncPaths:
    """Where one endpoint's SageMaker async outputs and failures go: two `s3://bucket/prefix` paths."""

    output: str
    failure: str


def s3_async_paths(location: S3Location, config: QueueConfig) -> S3AsyncPaths:
    """The endpoint's S3OutputPath/S3FailurePath; unset, under the result store's bucket, in the namespace's prefix
    (`<prefix><namespace>/sagemaker/<name>`, `location` being the configured root), and the failure path defaults to
    the output path (objects differ by suffix)."""
    default = f"s3://{location.bucket}/{location.within(config.namespace).prefix}sagemaker/{config.endpoint}"
    output = config.s3_output_path or default
    return S3AsyncPaths(output=output, failure=config.s3_failure_path or output)


@dataclass(frozen=True)
class SubmitChecks:
    """What every async submission must pass before it is stored, whatever the dialect (native, SageMaker, Launch)
    or front (router, gateway): a refusal here is a 400 and the task never exists. Checked once, in `submit`, so no
    adapter can forget it; the worker's fetch and the callback sender check destinations again on every connection.
    """

    #: The `url` input schemes the endpoint accepts (BUNDLESERVE_URL_SCHEMES).
    url_schemes: frozenset[str] = frozenset({"http", "https"})
    #: The destination guard's policy, for callback hosts given as IP literals.
    destinations: AddressPolicy = field(default_factory=AddressPolicy)
    #: Whether callback credentials may go over plain http (BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS).
    allow_insecure_credentials: bool = False

    def check(self, inv: Invocation, callback: CallbackTarget | None, *, s3_results: S3Location | None = None) -> None:
        """`s3_results`: where the deployment stores results in S3 (None: it does not). Then a SageMaker InputLocation
        (`url_body`) may be an `s3://` object, read by the worker through the store's client, but never one inside
        the store itself: the deployment's credentials can read every task's stored results and outputs there, and
        a client must not be able to have them fed to its own task."""
        if inv.url is not None and inv.url_body and inv.url.startswith("s3://"):
            if s3_results is None:
                raise InvalidRequest("s3:// input locations need S3 storage configured on this deployment")
            source = S3Url.parse(inv.url)
            if source.bucket == s3_results.bucket and source.key.startswith(s3_results.prefix):
                raise InvalidRequest(
                    f"an input location inside the result store (s3://{s3_results.bucket}/{s3_results.prefix}) is "
                    "refused: upload inputs to another bucket or prefix"
                )
        elif inv.url is not None:
            check_url(inv.url, self.url_schemes)
        if callback is not None:
            check_callback_target(
                callback.url,
                callback.auth,
                self.destinations,
                allow_insecure_credentials=self.allow_insecure_credentials,
            )


class TaskService:
    """Async invocations of one endpoint (its `TaskQueue`), with the local worker's shortcuts when there is one."""

    def __init__(
        self, queue: TaskQueue, store: ResultStore, waiter: CompletionWaiter, checks: SubmitChecks | None = None
    ) -> None:
        self.checks = SubmitChecks() if checks is None else checks
        self.queue = queue
        self.store = store
        self.waiter = waiter
        self.recent = RecentResults(max_age_seconds=min(300.0, queue.config.result_ttl_seconds))
        #: The worker of this process for the same queue (router only): it may take a task in the submit's step.
        self.worker: Worker | None = None

    # -- submit ---------------------------------------------------------------------------------------------------

    async def submit(
        self,
        inv: Invocation,
        *,
        callback: CallbackTarget | None = None,
        request_ttl_seconds: float | None = None,
        invocation_timeout_seconds: float | None = None,
        s3_paths: S3AsyncPaths | None = None,
    ) -> str:
        """Queue `inv`; the task id once Redis holds the task. Raises Unavailable (503) when it does not: then the
        task never runs.

        `s3_paths` (SageMaker, from `s3_paths()`): the worker writes the task's output and failure objects there.

        `invocation_timeout_seconds` shortens the endpoint's `async.invocationTimeoutSeconds` for this task, and
        `request_ttl_seconds` (SageMaker's RequestTTLSeconds) the endpoint's `async.requestTTLSeconds`: a task still
        waiting for a worker after that long ends EXPIRED without running. Neither ever extends the endpoint's value.
        """
        self.checks.check(inv, callback, s3_results=self.store.root if isinstance(self.store, S3ResultStore) else None)
        if inv.idempotency_key is not None:
            return await self._submit_once(
                inv.idempotency_key, inv, callback, request_ttl_seconds, invocation_timeout_seconds, s3_paths
            )
        return await self._submit(inv, callback, request_ttl_seconds, invocation_timeout_seconds, s3_paths)

    async def _submit_once(
        self,
        idempotency_key: str,
        inv: Invocation,
        callback: CallbackTarget | None,
        request_ttl_seconds: float | None,
        invocation_timeout_seconds: float | None,
        s3_paths: S3AsyncPaths | None,
    ) -> str:
        """A submission with an idempotency key: its retries (any replica, router or gateway) get the first
        attempt's task id. The record in Redis (`keys.idempotency`) holds `FINGERPRINT:pending` while the first
        attempt submits, then `FINGERPRINT:TASK_ID` for the task's whole life; a retry that finds it pending waits
        for the id (up to _CLAIM_SECONDS, then 503). A key reused with another request is a 400."""
        key = keys.idempotency(self.queue.config.queue_id, idempotency_key)
        digest = TaskRequest.from_invocation(inv).dumps() + (callback.dumps() if callback is not None else "")
        fingerprint = hashlib.sha256(digest.encode()).hexdigest()
        redis = self.queue.redis
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLAIM_SECONDS
        try:
            while True:
                if await redis.set(key, f"{fingerprint}:pending", nx=True, ex=int(_CLAIM_SECONDS)):
                    try:
                        task_id = await self._submit(
                            inv, callback, request_ttl_seconds, invocation_timeout_seconds, s3_paths
                        )
                    except BaseException:
                        with contextlib.suppress(RedisError, OSError):
                            await redis.delete(key)  # nothing was queued: a retry may submit
                        raise
                    await redis.set(key, f"{fingerprint}:{task_id}", ex=self.queue.config.record_ttl_seconds)
                    return task_id
                value = await redis.get(key)
                if value is not None:
                    text = value.decode() if isinstance(value, bytes) else str(value)
                    found, _, task_id = text.partition(":")
                    if found != fingerprint:
                        raise InvalidRequest(
                            "this idempotency key was already used for a different request; use a new key"
                        )
                    if task_id != "pending":
                        return task_id
                if loop.time() > deadline:
                    raise Unavailable(
                        "an earlier attempt of this call is still being submitted", headers={"Retry-After": "1"}
                    )
                await asyncio.sleep(0.05)  # the first attempt is between its claim and its task id
        except (RedisError, OSError) as error:
            log.warning("submitting a task failed: %s", error)
            raise Unavailable(describe(error), headers={"Retry-After": "1"}) from None

    async def _submit(
        self,
        inv: Invocation,
        callback: CallbackTarget | None,
        request_ttl_seconds: float | None,
        invocation_timeout_seconds: float | None,
        s3_paths: S3AsyncPaths | None,
    ) -> str:
        timeout = inv.timeout_seconds
        if invocation_timeout_seconds is not None and (timeout is None or invocation_timeout_seconds < timeout):
            timeout = invocation_timeout_seconds
        try:
            plain = callback is None and request_ttl_seconds is None and timeout == inv.timeout_seconds
            if plain and s3_paths is None and plain_args(inv):
                return await self._submit_plain(b'{"args":' + inv.body + b"}")
            request = TaskRequest.from_invocation(inv)
            if timeout != inv.timeout_seconds:
                request = replace(request, timeout_seconds=timeout)
            if s3_paths is not None:
                request = replace(request, s3_output_path=s3_paths.output, s3_failure_path=s3_paths.failure)
            return await self.queue.submit(request, callback, request_ttl_seconds=request_ttl_seconds)
        except QueueUnavailable as error:
            raise Unavailable(str(error), headers={"Retry-After": "1"}) from None
        except QueueFull as error:
            raise Overloaded(str(error), retry_after_seconds=error.retry_after_seconds) from None
        except (RedisError, OSError) as error:
            log.warning("submitting a task failed: %s", error)  # connection details go to the log, never to clients
            raise Unavailable(describe(error), headers={"Retry-After": "1"}) from None

    async def _submit_plain(self, body: bytes) -> str:
        """Submit; when this process's worker has an idle slot, it takes the task in the same step (light load)."""
        worker = self.worker
        if worker is None or not worker.reserve():
            return await self.queue.submit_encoded(body)
        claimed: list[Started] | None = None  # None until the reply arrived: adopt hands back a lost claim
        try:
            task_id, claimed = await self.queue.submit_claiming(body, claim_for=worker.consumer)
        finally:
            worker.adopt(claimed)
        return task_id

    def s3_paths(self) -> S3AsyncPaths | None:
        """This endpoint's SageMaker output and failure paths when results are stored in S3; None: they are not,
        and SageMaker's locations are the http(s) routes instead."""
        if not isinstance(self.store, S3ResultStore):
            return None
        return s3_async_paths(self.store.root, self.queue.config)

    # -- status ---------------------------------------------------------------------------------------------------

    def finished_here(self, record: TaskRecord) -> None:
        """The local worker finished a task: remember it and wake its long-polls now."""
        self.recent.put(record)
        self.waiter.notify(record.task_id)

    async def _record(self, task_id: str) -> TaskRecord | None:
        recent = self.recent.get(task_id)
        if recent is not None:
            return recent
        try:
            record = await self.queue.get(task_id)
        except (RedisError, OSError) as error:
            log.warning("reading task %s failed: %s", task_id, error)
            raise Unavailable(describe(error), headers={"Retry-After": "1"}) from None
        config = self.queue.config
        if record is None or (record.namespace, record.endpoint) != (config.namespace, config.endpoint):
            return None  # another endpoint's task is as unknown here as a missing one
        return record

    async def status(self, task_id: str, *, wait_seconds: float = 0.0) -> TaskRecord | None:
        """The task (None: unknown or expired). With `wait_seconds`, hold until it is terminal or the wait is over."""
        if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
            raise InvalidRequest(f"wait must be between 0 and {MAX_WAIT_SECONDS:g} seconds")
        record = await self._record(task_id)
        if record is None or wait_seconds <= 0 or record.status.terminal:
            return record
        latest: list[TaskRecord | None] = [record]

        async def finished() -> bool:
            latest[0] = await self._record(task_id)
            found = latest[0]
            return found is None or found.status.terminal

        with contextlib.suppress(TimeoutError):  # could not subscribe in time: answer with the current state
            await self.waiter.wait_for(self.queue.channel, task_id, finished, wait_seconds)
        return latest[0]

    # -- result ---------------------------------------------------------------------------------------------------

    async def result(self, task_id: str) -> tuple[bytes, str]:
        """A stored (large or pickled) result of this endpoint and its media type: a task of another endpoint, or
        another endpoint's sync result, is as unknown here as a missing one (a result key is no credential)."""
        config = self.queue.config
        if keys.is_task_id(task_id) and await self._record(task_id) is None:
            raise NotFound(f"no stored result for {task_id!r} (unknown, inline, or expired)")
        return await stored_result(self.store, task_id, owner=(config.namespace, config.endpoint))


async def stored_result(
    store: ResultStore, task_id: str, *, owner: tuple[str, str] | None = None, tasks: bool = True
) -> tuple[bytes, str]:
    """A stored result by key, for every route that serves one (the async API and the sync `return_pickled` path):
    an unsafe key is the client's mistake (400), a missing one 404. With `owner` (namespace, name), a sync result
    key (`results.sync_result_key`) of another endpoint, or any other key that is no task id, is 404 too; `tasks`
    False refuses task ids as well (a router without the async API holds none)."""
    try:
        check_key(task_id)
    except InvalidKey:
        raise InvalidRequest(f"{task_id!r} is not a valid task id") from None
    if owner is not None and result_owner(task_id) != owner and not (tasks and keys.is_task_id(task_id)):
        raise NotFound(f"no stored result for {task_id!r} (unknown, inline, or expired)")
    try:
        found = await store.get(task_id)
    except InvalidKey:
        raise InvalidRequest(f"{task_id!r} is not a valid task id") from None
    if found is None:
        raise NotFound(f"no stored result for {task_id!r} (unknown, inline, or expired)")
    data, content_type = found
    return data, content_type.split(";")[0]
