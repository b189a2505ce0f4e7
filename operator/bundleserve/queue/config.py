"""Queue settings of one endpoint, derived from its spec (the pieces of `spec.async` and `spec.invocation` the queue
needs) plus the few knobs the spec does not carry (durability of a submission, reclaim grace, result size limits)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.variants import served_variants
from bundleserve.queue import keys
from bundleserve.queue.tasks import CallbackTarget

MIB = 1024 * 1024


class Durability(StrEnum):
    """What a 202 promises. FSYNC: the task is in Redis's AOF on disk (WAITAOF 1 0 where the server has it, else
    `appendfsync always`; see `connection.plan_durability`). MEMORY: Redis has it in memory (a Redis crash may lose
    up to appendfsync's window; a graceful restart loses nothing)."""

    FSYNC = "fsync"
    MEMORY = "memory"


MAX_BACKLOG_ENV = "BUNDLESERVE_QUEUE_MAX_BACKLOG"


MAX_BACKLOG_BYTES_ENV = "BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES"


@dataclass(frozen=True)
class QueueLimits:
    """The queue knobs a deployment sets for every endpoint alike (environment, not spec), read once by a process's
    composition root (`QueueLimits.from_env`) and handed to `QueueConfig.from_endpoint`, so a front that builds an
    endpoint's queue on a request (the gateway) reads no environment there."""

    durability: Durability = Durability.FSYNC
    max_backlog: int = 100_000
    max_backlog_bytes: int = 256 * MIB

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> QueueLimits:
        """BUNDLESERVE_QUEUE_DURABILITY, _MAX_BACKLOG and _MAX_BACKLOG_BYTES; ValueError naming a bad one."""
        env = os.environ if env is None else env
        return cls(
            durability=Durability(env.get("BUNDLESERVE_QUEUE_DURABILITY", Durability.FSYNC.value)),
            max_backlog=max_backlog_from_env(env),
            max_backlog_bytes=max_backlog_bytes_from_env(env),
        )


def max_backlog_bytes_from_env(env: Mapping[str, str] | None = None) -> int:
    raw = (os.environ if env is None else env).get(MAX_BACKLOG_BYTES_ENV, "").strip()
    if not raw:
        return QueueConfig.max_backlog_bytes
    if not raw.isdigit():
        raise ValueError(f"{MAX_BACKLOG_BYTES_ENV} must be a whole number of bytes (0 = no cap), got {raw!r}")
    return int(raw)


def max_backlog_from_env(env: Mapping[str, str] | None = None) -> int:
    raw = (os.environ if env is None else env).get(MAX_BACKLOG_ENV, "").strip()
    if not raw:
        return QueueConfig.max_backlog
    if not raw.isdigit():
        raise ValueError(f"{MAX_BACKLOG_ENV} must be a whole number of tasks (0 = no cap), got {raw!r}")
    return int(raw)


def queue_ids(endpoint: Endpoint) -> list[str]:
    """The queues of an Endpoint: its own, or one per declared production variant (each variant's workers take the
    tasks given to that variant at submission)."""
    return [keys.queue_id(endpoint.namespace, endpoint.name, v.child_variant) for v in served_variants(endpoint)]


@dataclass(frozen=True)
class QueueConfig:
    #: The endpoint's name (what task records and metrics carry).
    endpoint: str
    #: The endpoint's namespace: with the name, the queue's identity in a Redis shared across namespaces.
    namespace: str = "default"
    request_ttl_seconds: float = 21600
    invocation_timeout_seconds: float = 900
    max_attempts: int = 3
    result_ttl_seconds: float = 86400
    concurrency: int = 8
    durability: Durability = Durability.FSYNC
    fsync_timeout_ms: int = 2000
    #: Added to invocationTimeoutSeconds: a task idle in a consumer's pending list this long is reclaimed.
    visibility_grace_seconds: float = 30.0
    inline_result_max_bytes: int = 256 * 1024
    max_result_bytes: int = 256 * MIB
    default_callback: CallbackTarget | None = None
    default_callback_secret: str | None = None
    #: The most unfinished tasks (XLEN of the stream) the queue takes; a submission beyond it gets 429 Overloaded and
    #: is not stored. 0 = no cap. BUNDLESERVE_QUEUE_MAX_BACKLOG.
    max_backlog: int = 100_000
    #: The most bytes the endpoint's unfinished tasks may hold in the shared Redis (requests and callback targets, as
    #: stored); beyond it a submission gets 429 and is not stored, so one endpoint cannot fill the Redis every
    #: endpoint shares (docs/security.md). 0 = no cap. BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES.
    max_backlog_bytes: int = 256 * MIB
    #: SageMaker's S3OutputPath / S3FailurePath of the endpoint (`spec.async.s3OutputPath`, `.s3FailurePath`): where
    #: async results and failures go when results are stored in S3 (`TaskService.s3_paths`).
    s3_output_path: str | None = None
    s3_failure_path: str | None = None
    #: The declared production variant whose queue this is (`keys.queue_id`); None: the endpoint's own queue.
    variant: str | None = None

    @property
    def queue_id(self) -> str:
        return keys.queue_id(self.namespace, self.endpoint, self.variant)

    @property
    def visibility_timeout_seconds(self) -> float:
        return self.invocation_timeout_seconds + self.visibility_grace_seconds

    @property
    def record_ttl_seconds(self) -> int:
        """A pending record must outlive requestTTLSeconds (then becomes EXPIRED) and keep its result for resultTTL."""
        return int(self.request_ttl_seconds + self.invocation_timeout_seconds + self.result_ttl_seconds)

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, limits: QueueLimits | None = None, **overrides: Any) -> QueueConfig:
        """The endpoint's queue settings; `limits`: the deployment's (None: read from the environment now, for a
        caller that builds its queues once at start)."""
        limits = QueueLimits.from_env() if limits is None else limits
        settings = endpoint.spec.async_settings
        callback = settings.callback
        config = cls(
            endpoint=endpoint.name,
            namespace=endpoint.namespace,
            request_ttl_seconds=settings.request_ttl_seconds,
            invocation_timeout_seconds=settings.invocation_timeout_seconds,
            max_attempts=settings.max_attempts,
            result_ttl_seconds=settings.result_ttl_seconds,
            concurrency=endpoint.spec.invocation.concurrency,
            durability=limits.durability,
            max_backlog=limits.max_backlog,
            max_backlog_bytes=limits.max_backlog_bytes,
            default_callback=CallbackTarget(url=callback.url) if callback else None,
            default_callback_secret=callback.auth.secret_name if callback and callback.auth else None,
            s3_output_path=settings.s3_output_path,
            s3_failure_path=settings.s3_failure_path,
        )
        return replace(config, **overrides)
