"""Queue settings of one endpoint, derived from its spec (the pieces of `spec.async` and `spec.invocation` the queue
needs) plus the few knobs the spec does not carry (durability of a submission, reclaim grace, result size limits)."""

from __future__ import annotations

import math
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
DURABILITY_ENV = "BUNDLESERVE_QUEUE_DURABILITY"
#: Seconds a Redis command may wait for its reply (and a connection attempt may take).
REDIS_TIMEOUT_ENV = "BUNDLESERVE_REDIS_TIMEOUT_SECONDS"
DEFAULT_REDIS_TIMEOUT_SECONDS = 10.0
#: What the operator read from the server's CONFIG with the master credential, for a client that may not (an
#: endpoint's ACL user has no CONFIG: CONFIG GET would show every password). `BUNDLESERVE_REDIS_APPENDONLY`, ...
OBSERVED_CONFIG_ENV = "BUNDLESERVE_REDIS_{}"
#: The server settings `connection.plan_durability` reads.
DURABILITY_SETTINGS = ("appendonly", "appendfsync")


@dataclass(frozen=True)
class QueueLimits:
    """The queue knobs a deployment sets for every endpoint alike (environment, not spec), read once by a process's
    settings module (`QueueLimits.from_env`, a pure function of the mapping it is given) and handed to
    `QueueConfig.from_endpoint`, so a front that builds an endpoint's queue on a request (the gateway) reads no
    environment there."""

    durability: Durability = Durability.FSYNC
    max_backlog: int = 100_000
    max_backlog_bytes: int = 256 * MIB
    #: Connect and per-reply timeout of the queue's Redis client (`connection.connect`).
    redis_timeout_seconds: float = DEFAULT_REDIS_TIMEOUT_SECONDS
    #: The server's durability settings as the operator observed them ((name, value) pairs, e.g. ("appendfsync",
    #: "always")), for a client whose ACL user may not run CONFIG GET (`connection.plan_durability`).
    observed_server_config: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QueueLimits:
        """BUNDLESERVE_QUEUE_DURABILITY, _MAX_BACKLOG, _MAX_BACKLOG_BYTES, BUNDLESERVE_REDIS_TIMEOUT_SECONDS and the
        observed BUNDLESERVE_REDIS_APPENDONLY/_APPENDFSYNC; ValueError naming a bad one."""
        raw = env.get(DURABILITY_ENV, "").strip() or Durability.FSYNC.value
        try:
            durability = Durability(raw)
        except ValueError:
            allowed = ", ".join(member.value for member in Durability)
            raise ValueError(f"{DURABILITY_ENV} must be one of {allowed}, got {raw!r}") from None
        return cls(
            durability=durability,
            max_backlog=max_backlog_from_env(env),
            max_backlog_bytes=max_backlog_bytes_from_env(env),
            redis_timeout_seconds=redis_timeout_from_env(env),
            observed_server_config=observed_config_from_env(env),
        )


def max_backlog_bytes_from_env(env: Mapping[str, str]) -> int:
    raw = env.get(MAX_BACKLOG_BYTES_ENV, "").strip()
    if not raw:
        return QueueConfig.max_backlog_bytes
    if not raw.isdigit():
        raise ValueError(f"{MAX_BACKLOG_BYTES_ENV} must be a whole number of bytes (0 = no cap), got {raw!r}")
    return int(raw)


def max_backlog_from_env(env: Mapping[str, str]) -> int:
    raw = env.get(MAX_BACKLOG_ENV, "").strip()
    if not raw:
        return QueueConfig.max_backlog
    if not raw.isdigit():
        raise ValueError(f"{MAX_BACKLOG_ENV} must be a whole number of tasks (0 = no cap), got {raw!r}")
    return int(raw)


def redis_timeout_from_env(env: Mapping[str, str]) -> float:
    """BUNDLESERVE_REDIS_TIMEOUT_SECONDS: more than 3 seconds (the worker's blocking read waits 2 s: a shorter read
    timeout would cut it off); ValueError naming the variable."""
    raw = env.get(REDIS_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_REDIS_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 3):
        raise ValueError(f"{REDIS_TIMEOUT_ENV} must be a number of seconds more than 3, got {raw!r}")
    return value


def observed_config_from_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The server's durability settings the operator passed on (BUNDLESERVE_REDIS_APPENDONLY, _APPENDFSYNC)."""
    found = []
    for name in DURABILITY_SETTINGS:
        value = env.get(OBSERVED_CONFIG_ENV.format(name.upper()), "").strip()
        if value:
            found.append((name, value))
    return tuple(found)


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
    #: The server's durability settings as the operator observed them (`QueueLimits.observed_server_config`).
    observed_server_config: tuple[tuple[str, str], ...] = ()

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
    def from_endpoint(cls, endpoint: Endpoint, limits: QueueLimits, **overrides: Any) -> QueueConfig:
        """The endpoint's queue settings; `limits`: the deployment's, read once by the process's settings."""
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
            observed_server_config=limits.observed_server_config,
            default_callback=CallbackTarget(url=callback.url) if callback else None,
            default_callback_secret=callback.auth.secret_name if callback and callback.auth else None,
            s3_output_path=settings.s3_output_path,
            s3_failure_path=settings.s3_failure_path,
        )
        return replace(config, **overrides)
