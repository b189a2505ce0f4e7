"""Router configuration: the Endpoint (its spec fixes limits and routes) plus command-line flags plus environment.

Built once at start; a bad configuration fails here with a one-line reason, before anything listens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bundleserve.api.endpoint import IMPLICIT_VARIANT, Endpoint, Mode, Routes
from bundleserve.api.manifest import ManifestError, load_endpoints
from bundleserve.dialects.base import read_public_url
from bundleserve.dialects.sagemaker import sigv4
from bundleserve.edge.config import (
    DEFAULT_RESULTS_DIR,
    DEFAULT_URL_SCHEMES,
    ConfigError,
    check_results_url,
    parse_url_schemes,
    read_api_keys,
    read_url_policy,
)
from bundleserve.edge.connections import ConnectionLimits, limits_from_env
from bundleserve.outbound.destinations import AddressPolicy
from bundleserve.queue.callbacks import CallbackSettings
from bundleserve.queue.config import QueueLimits
from bundleserve.queue.s3results import endpoint_from_env


@dataclass(frozen=True)
class Settings:
    endpoint: Endpoint
    model_url: str
    host: str = "0.0.0.0"
    port: int = 8080
    redis_url: str | None = None
    #: API keys accepted on /v1/* (empty: authentication off).
    api_keys: frozenset[str] = frozenset()
    #: Where `return_pickled` results go (a PVC in the cluster; see docs/contracts.md).
    results_dir: Path = DEFAULT_RESULTS_DIR
    #: `s3://bucket/prefix` for S3-compatible result storage instead of `results_dir` (BUNDLESERVE_RESULTS_URL).
    results_url: str | None = None
    #: The S3-compatible server of `results_url` (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; None: AWS itself).
    results_s3_endpoint: str | None = None
    #: Schemes a `url` input may use.
    url_schemes: frozenset[str] = frozenset(DEFAULT_URL_SCHEMES)
    #: Which addresses a `url` input may reach (BUNDLESERVE_URL_BLOCK / _ALLOW / _BLOCK_PRIVATE; secure by default).
    url_policy: AddressPolicy = field(default_factory=AddressPolicy)
    #: How long in-flight requests may take to finish after SIGTERM (default: the invocation timeout + 5 s).
    drain_seconds: float = field(default=0.0)
    #: After SIGTERM, how long the router goes on serving new requests (readiness failing) before it drains
    #: (BUNDLESERVE_SHUTDOWN_DELAY_SECONDS; 0 outside a cluster). In a cluster, the EndpointSlices and every node's
    #: kube-proxy learn of a stopping pod only some time after its SIGTERM; calls routed to it meanwhile are served.
    shutdown_delay_seconds: float = 0.0
    #: Model readiness probe intervals: fast until the model is ready, then slow.
    probe_fast_seconds: float = 0.05
    probe_slow_seconds: float = 1.0
    #: The body deadline of every connection (fast edge and aiohttp): a request body must be complete this long
    #: after its head, or 408 and close (BUNDLESERVE_BODY_TIMEOUT_SECONDS; slowloris).
    body_timeout_seconds: float = 60.0
    #: Keep-alive and head deadline of every connection: closed when idle this long, or when the next request's head
    #: is not complete this long after the connection went idle (BUNDLESERVE_IDLE_TIMEOUT_SECONDS).
    idle_timeout_seconds: float = 75.0
    #: The public base URL of the API (BUNDLESERVE_PUBLIC_URL; None: from each request's forwarding headers).
    public_url: str | None = None
    #: The deployment's queue knobs (BUNDLESERVE_QUEUE_DURABILITY, _MAX_BACKLOG, _MAX_BACKLOG_BYTES), the Redis
    #: client's timeout (BUNDLESERVE_REDIS_TIMEOUT_SECONDS) and the server settings the operator observed.
    queue_limits: QueueLimits = field(default_factory=QueueLimits)
    #: How callbacks are sent (BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS, _CA_FILE, _SECRET_DIR).
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    #: Who may call the SageMaker dialect (BUNDLESERVE_SAGEMAKER_*; docs/dialects.md, "Signatures").
    sagemaker_signing: sigv4.SigV4Config = field(default_factory=sigv4.SigV4Config)
    #: The production variant this router serves (`--variant`; docs/operator.md, "Production variants"): what
    #: SageMaker's InvokedProductionVariant answers and its TargetVariant must name. AllTraffic for an Endpoint
    #: without spec.variants.
    variant: str = IMPLICIT_VARIANT

    @property
    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(idle_seconds=self.idle_timeout_seconds, body_seconds=self.body_timeout_seconds)

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def declared_variant(self) -> str | None:
        """The declared variant (spec.variants) this router serves, whose own queue it works; None: AllTraffic."""
        return None if self.variant == IMPLICIT_VARIANT else self.variant

    @property
    def routes(self) -> Routes:
        return self.endpoint.spec.bundle.effective_routes

    @property
    def grace_seconds(self) -> float:
        return self.drain_seconds or float(self.endpoint.spec.invocation.timeout_seconds + 5)

    def serves(self, mode: Mode) -> bool:
        return self.endpoint.spec.serves(mode)


def load_endpoint(path: Path) -> Endpoint:
    try:
        found = load_endpoints([path])
    except ManifestError as error:
        raise ConfigError(str(error)) from None
    if len(found) != 1:
        raise ConfigError(f"{path}: expected exactly one Endpoint, found {len(found)}")
    return found[0][1]


def build_settings(
    *,
    endpoint_file: Path,
    model_url: str,
    host: str = "0.0.0.0",
    port: int = 8080,
    redis_url: str | None = None,
    env: Mapping[str, str] | None = None,
    variant: str | None = None,
) -> Settings:
    """Settings from the CLI's values and the environment (BUNDLESERVE_* variables, see docs/router.md): the one
    place the router reads its environment (`env`: the process's, unless a test gives its own)."""
    env = os.environ if env is None else env
    if not model_url.startswith("http://"):
        raise ConfigError(f"--model-url must be an http:// URL of the model container, got {model_url!r}")
    keys_file = env.get("BUNDLESERVE_API_KEYS_FILE")
    schemes = env.get("BUNDLESERVE_URL_SCHEMES")
    drain = env.get("BUNDLESERVE_DRAIN_SECONDS")
    results_url = env.get("BUNDLESERVE_RESULTS_URL") or None
    if results_url:
        check_results_url(results_url)
    try:
        drain_seconds = float(drain) if drain else 0.0
    except ValueError:
        raise ConfigError(f"BUNDLESERVE_DRAIN_SECONDS must be a number of seconds, got {drain!r}") from None
    delay = env.get("BUNDLESERVE_SHUTDOWN_DELAY_SECONDS")
    try:
        shutdown_delay_seconds = float(delay) if delay else 0.0
    except ValueError:
        shutdown_delay_seconds = -1.0
    if not 0 <= shutdown_delay_seconds <= 300:
        raise ConfigError(f"BUNDLESERVE_SHUTDOWN_DELAY_SECONDS must be 0 to 300 seconds, got {delay!r}")
    try:
        limits = limits_from_env(env)
        queue_limits = QueueLimits.from_env(env)
        callbacks = CallbackSettings.from_env(env)
        sagemaker_signing = sigv4.config_from_env(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return Settings(
        endpoint=load_endpoint(endpoint_file),
        model_url=model_url.rstrip("/"),
        host=host,
        port=port,
        redis_url=redis_url or env.get("BUNDLESERVE_REDIS_URL") or None,
        api_keys=read_api_keys(Path(keys_file)) if keys_file else frozenset(),
        results_dir=Path(env.get("BUNDLESERVE_RESULTS_DIR") or DEFAULT_RESULTS_DIR),
        results_url=results_url,
        results_s3_endpoint=endpoint_from_env(env),
        url_schemes=parse_url_schemes(schemes),
        url_policy=read_url_policy(env),
        drain_seconds=drain_seconds,
        shutdown_delay_seconds=shutdown_delay_seconds,
        body_timeout_seconds=limits.body_seconds,
        idle_timeout_seconds=limits.idle_seconds,
        public_url=read_public_url(env),
        queue_limits=queue_limits,
        callbacks=callbacks,
        sagemaker_signing=sagemaker_signing,
        variant=variant or IMPLICIT_VARIANT,
    )
