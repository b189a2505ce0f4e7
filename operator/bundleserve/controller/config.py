"""The operator's own configuration, read once from the environment the Helm chart sets (names in docs/contracts.md)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from bundleserve import __version__
from bundleserve.controller.cleanup import MAX_WAIT_SECONDS
from bundleserve.outbound.destinations import parse_cidrs
from bundleserve.queue.config import DEFAULT_REDIS_TIMEOUT_SECONDS, redis_timeout_from_env
from bundleserve.queue.s3results import ResultsUrlError, S3Location

DEFAULT_IMAGE = f"ghcr.io/bundleserve/bundleserve:{__version__}"


class ConfigError(ValueError):
    """The operator's environment is unusable; the message names the variable."""


class KedaMode(StrEnum):
    AUTO = "auto"  # use KEDA when its CRDs are served
    ON = "on"
    OFF = "off"


class HpaMetric(StrEnum):
    CPU = "cpu"  # always available (metrics-server); the default
    INFLIGHT = "inflight"  # Pods metric bundleserve_router_in_flight_requests, needs prometheus-adapter


@dataclass(frozen=True)
class OperatorConfig:
    image: str = DEFAULT_IMAGE
    redis_secret: str | None = None
    api_keys_secret: str | None = None
    results_pvc: str | None = None
    #: `s3://bucket/prefix`: routers keep results in S3-compatible storage instead of a volume (excludes results_pvc).
    results_url: str | None = None
    #: A Secret in each Endpoint's namespace with keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally
    #: AWS_SESSION_TOKEN); None leaves credentials to boto3's default chain (e.g. workload identity).
    results_s3_secret: str | None = None
    #: AWS_ENDPOINT_URL for S3-compatible servers (MinIO and the like); None means AWS itself.
    results_s3_endpoint: str | None = None
    results_s3_region: str | None = None
    keda: KedaMode = KedaMode.AUTO
    hpa_metric: HpaMetric = HpaMetric.CPU
    cpu_target_utilization: int = 70
    #: kopf's peering keep-alive lifetime: a crashed leader is replaced this long after its last keep-alive.
    peering_lifetime_seconds: int = 60
    #: The operator's own namespace (BUNDLESERVE_SECRETS_NAMESPACE, else POD_NAMESPACE, which the chart sets), where
    #: the shared Secrets above live: Endpoints elsewhere get copies (controller/secrets.py). None: no copies.
    secrets_namespace: str | None = None
    #: The operator's own Redis connection (scaler backlog, queue cleanup on delete). The chart sets it from the
    #: same Secret as the routers'; never logged.
    redis_url: str | None = field(default=None, repr=False)
    #: Router settings the operator passes on to every router sidecar, as (env name, value), from its own env of the
    #: same names (ROUTER_SETTINGS): the destination guard and the byte quota. Unset ones keep the routers' defaults.
    router_settings: tuple[tuple[str, str], ...] = ()
    #: This replica's peering priority (BUNDLESERVE_PEERING_PRIORITY); None: a random one per process.
    peering_priority: int | None = None
    #: Seconds between two drift checks of every Endpoint (BUNDLESERVE_OPERATOR_DRIFT_SECONDS).
    drift_seconds: float = 60.0
    #: Seconds between two ticks of the queue scaler and demand gate (BUNDLESERVE_OPERATOR_SCALER_SECONDS).
    scaler_seconds: float = 10.0
    #: The delete finalizer's longest wait for in-flight tasks (BUNDLESERVE_OPERATOR_CLEANUP_MAX_SECONDS).
    cleanup_max_seconds: float = MAX_WAIT_SECONDS
    #: Connect and per-reply timeout of the operator's Redis clients (BUNDLESERVE_REDIS_TIMEOUT_SECONDS).
    redis_timeout_seconds: float = DEFAULT_REDIS_TIMEOUT_SECONDS
    #: The kubeconfig files outside a pod (KUBECONFIG, as kopf reads it), for a user's `tokenFile`.
    kubeconfig: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """The operator's configuration (`env`: the process's unless a test gives its own): the one place the
        operator reads its environment; ConfigError naming the variable for a bad value."""
        env = os.environ if env is None else env

        def opt(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def choice(name: str, enum: type[StrEnum], default: StrEnum) -> StrEnum:
            raw = (opt(name) or default.value).lower()
            try:
                return enum(raw)
            except ValueError:
                allowed = ", ".join(member.value for member in enum)
                raise ConfigError(f"{name}={raw!r} is not one of: {allowed}") from None

        utilization = opt("BUNDLESERVE_HPA_CPU_UTILIZATION") or "70"
        if not utilization.isdigit() or not 1 <= int(utilization) <= 1000:
            raise ConfigError(f"BUNDLESERVE_HPA_CPU_UTILIZATION={utilization!r} must be an integer percentage (1-1000)")
        lifetime = opt("BUNDLESERVE_PEERING_LIFETIME_SECONDS") or "60"
        if not lifetime.isdigit() or not 2 <= int(lifetime) <= 3600:
            raise ConfigError(f"BUNDLESERVE_PEERING_LIFETIME_SECONDS={lifetime!r} must be an integer (2-3600)")

        def seconds(name: str, default: float) -> float:
            raw = opt(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                value = 0.0
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={raw!r} must be a positive number of seconds")
            return value

        priority = opt("BUNDLESERVE_PEERING_PRIORITY")
        if priority is not None and not priority.lstrip("-").isdigit():
            raise ConfigError(f"BUNDLESERVE_PEERING_PRIORITY={priority!r} must be an integer")
        try:
            redis_timeout = redis_timeout_from_env(env)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        router_settings = tuple((name, value) for name in ROUTER_SETTINGS if (value := opt(name)) is not None)
        check_router_settings(dict(router_settings))
        results_url, results_pvc = opt("BUNDLESERVE_RESULTS_URL"), opt("BUNDLESERVE_RESULTS_PVC")
        s3_secret, s3_endpoint = opt("BUNDLESERVE_RESULTS_S3_SECRET"), opt("BUNDLESERVE_RESULTS_S3_ENDPOINT")
        s3_region = opt("BUNDLESERVE_RESULTS_S3_REGION")
        check_results_store(results_url, results_pvc, s3_secret=s3_secret, s3_endpoint=s3_endpoint, s3_region=s3_region)
        return cls(
            image=opt("BUNDLESERVE_IMAGE") or DEFAULT_IMAGE,
            redis_secret=opt("BUNDLESERVE_REDIS_SECRET"),
            api_keys_secret=opt("BUNDLESERVE_API_KEYS_SECRET"),
            results_pvc=results_pvc,
            results_url=results_url,
            results_s3_secret=s3_secret,
            results_s3_endpoint=s3_endpoint,
            results_s3_region=s3_region,
            keda=KedaMode(choice("BUNDLESERVE_KEDA", KedaMode, KedaMode.AUTO)),
            hpa_metric=HpaMetric(choice("BUNDLESERVE_HPA_METRIC", HpaMetric, HpaMetric.CPU)),
            cpu_target_utilization=int(utilization),
            peering_lifetime_seconds=int(lifetime),
            redis_url=opt("BUNDLESERVE_REDIS_URL"),
            router_settings=router_settings,
            secrets_namespace=opt("BUNDLESERVE_SECRETS_NAMESPACE") or opt("POD_NAMESPACE"),
            peering_priority=int(priority) if priority is not None else None,
            drift_seconds=seconds("BUNDLESERVE_OPERATOR_DRIFT_SECONDS", cls.drift_seconds),
            scaler_seconds=seconds("BUNDLESERVE_OPERATOR_SCALER_SECONDS", cls.scaler_seconds),
            cleanup_max_seconds=seconds("BUNDLESERVE_OPERATOR_CLEANUP_MAX_SECONDS", cls.cleanup_max_seconds),
            redis_timeout_seconds=redis_timeout,
            kubeconfig=opt("KUBECONFIG"),
        )


#: The operator's env variables passed on to routers unchanged (docs/router.md describes each).
ROUTER_SETTINGS = (
    "BUNDLESERVE_URL_ALLOW",
    "BUNDLESERVE_URL_BLOCK",
    "BUNDLESERVE_URL_BLOCK_PRIVATE",
    "BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES",
)


def check_router_settings(settings: Mapping[str, str]) -> None:
    """Refuse at the operator's start what every router would refuse at its own."""
    for name in ("BUNDLESERVE_URL_ALLOW", "BUNDLESERVE_URL_BLOCK"):
        if name in settings:
            try:
                parse_cidrs(settings[name], source=name)
            except ValueError as error:
                raise ConfigError(str(error)) from None
    flag = settings.get("BUNDLESERVE_URL_BLOCK_PRIVATE", "true").lower()
    if flag not in {"0", "false", "no", "1", "true", "yes"}:
        raise ConfigError(f"BUNDLESERVE_URL_BLOCK_PRIVATE must be true or false, got {flag!r}")
    quota = settings.get("BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES", "0")
    if not quota.isdigit():
        raise ConfigError(f"BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES={quota!r} must be a whole number of bytes (0 = no cap)")


def check_results_store(
    url: str | None,
    pvc: str | None,
    *,
    s3_secret: str | None,
    s3_endpoint: str | None,
    s3_region: str | None,
) -> None:
    """Refuse a result store the routers could not use, at the operator's start rather than in every pod's log.

    Both a PVC and an S3 URL is rejected: choosing one silently would leave results where nobody looks for them."""
    if url is None:
        for name, value in (
            ("BUNDLESERVE_RESULTS_S3_SECRET", s3_secret),
            ("BUNDLESERVE_RESULTS_S3_ENDPOINT", s3_endpoint),
            ("BUNDLESERVE_RESULTS_S3_REGION", s3_region),
        ):
            if value is not None:
                raise ConfigError(f"{name} is set but BUNDLESERVE_RESULTS_URL is not: set both or neither")
        return
    try:
        S3Location.parse(url)  # the router's own URL check (boto3 itself is checked by the router's image at start)
    except ResultsUrlError as error:
        raise ConfigError(str(error)) from None
    if pvc is not None:
        raise ConfigError(
            "BUNDLESERVE_RESULTS_URL and BUNDLESERVE_RESULTS_PVC exclude each other: choose S3 or a volume for results"
        )
    if s3_endpoint is not None and urlsplit(s3_endpoint).scheme not in ("http", "https"):
        raise ConfigError(f"BUNDLESERVE_RESULTS_S3_ENDPOINT must be an http(s):// URL, got {s3_endpoint!r}")
