"""Router configuration: the Endpoint (its spec fixes limits and routes) plus command-line flags plus environment.

Built once at start; a bad configuration fails here with a one-line reason, before anything listens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bundleserve.api.credentials import KeysFile, KeysFileError
from bundleserve.api.endpoint import IMPLICIT_VARIANT, Endpoint, Mode, Routes
from bundleserve.api.manifest import ManifestError, load_endpoints
from bundleserve.outbound.destinations import DEFAULT_BLOCKED, AddressPolicy, parse_cidrs
from bundleserve.router.connections import ConnectionLimits, limits_from_env

DEFAULT_URL_SCHEMES = ("http", "https")
DEFAULT_RESULTS_DIR = Path("/var/lib/bundleserve/results")


class ConfigError(ValueError):
    """The router cannot start with this configuration; the message says why in one line."""


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
    #: Schemes a `url` input may use.
    url_schemes: frozenset[str] = frozenset(DEFAULT_URL_SCHEMES)
    #: Which addresses a `url` input may reach (BUNDLESERVE_URL_BLOCK / _ALLOW / _BLOCK_PRIVATE; secure by default).
    url_policy: AddressPolicy = field(default_factory=AddressPolicy)
    #: How long in-flight requests may take to finish after SIGTERM (default: the invocation timeout + 5 s).
    drain_seconds: float = field(default=0.0)
    #: Model readiness probe intervals: fast until the model is ready, then slow.
    probe_fast_seconds: float = 0.05
    probe_slow_seconds: float = 1.0
    #: The body deadline of every connection (fast edge and aiohttp): a request body must be complete this long
    #: after its head, or 408 and close (BUNDLESERVE_BODY_TIMEOUT_SECONDS; slowloris).
    body_timeout_seconds: float = 60.0
    #: Keep-alive and head deadline of every connection: closed when idle this long, or when the next request's head
    #: is not complete this long after the connection went idle (BUNDLESERVE_IDLE_TIMEOUT_SECONDS).
    idle_timeout_seconds: float = 75.0
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


def read_keys_file(path: Path) -> KeysFile:
    """The keys file (api/credentials.py: one key per line, optionally followed by the namespaces it opens); blank
    lines and `#` comments ignored. The keys themselves are never logged."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the API keys file {path}: {error.strerror}") from None
    try:
        found = KeysFile.parse(text)
    except KeysFileError as error:
        raise ConfigError(f"the API keys file {path}: {error}") from None
    if not found.keys:
        raise ConfigError(f"the API keys file {path} holds no key")
    return found


def read_api_keys(path: Path) -> frozenset[str]:
    """Every key of the file (a router's file, written by the operator, holds exactly the keys it accepts)."""
    return read_keys_file(path).all_keys()


def load_endpoint(path: Path) -> Endpoint:
    try:
        found = load_endpoints([path])
    except ManifestError as error:
        raise ConfigError(str(error)) from None
    if len(found) != 1:
        raise ConfigError(f"{path}: expected exactly one Endpoint, found {len(found)}")
    return found[0][1]


def check_results_url(url: str) -> None:
    """An unusable S3 result store fails the start (bad URL, boto3 missing), not the first pickled result."""
    from bundleserve.queue.s3results import ResultsUrlError, S3Location, require_boto3

    try:
        S3Location.parse(url)
        require_boto3()
    except ResultsUrlError as error:
        raise ConfigError(str(error)) from None


#: Allow loopback destinations for url inputs and callbacks (local mode turns it on; never in a cluster).
ALLOW_LOOPBACK_ENV = "BUNDLESERVE_ALLOW_LOOPBACK"


def parse_url_schemes(raw: str | None) -> frozenset[str]:
    """BUNDLESERVE_URL_SCHEMES (comma-separated) for every edge that accepts `url` inputs (router, gateway)."""
    if not raw:
        return frozenset(DEFAULT_URL_SCHEMES)
    return frozenset(s.strip().lower() for s in raw.split(",") if s.strip())


def read_url_policy(env: Mapping[str, str]) -> AddressPolicy:
    """The destination guard for `url` inputs; a bad CIDR or flag fails the start, naming the variable."""
    flag = env.get("BUNDLESERVE_URL_BLOCK_PRIVATE", "").strip().lower()
    if flag not in {"", "0", "false", "no", "1", "true", "yes"}:
        raise ConfigError(f"BUNDLESERVE_URL_BLOCK_PRIVATE must be true or false, got {flag!r}")
    loopback = env.get(ALLOW_LOOPBACK_ENV, "").strip().lower()
    if loopback not in {"", "0", "false", "no", "1", "true", "yes"}:
        raise ConfigError(f"{ALLOW_LOOPBACK_ENV} must be true or false, got {loopback!r}")
    # local mode: models, url inputs and callback receivers all live on this machine
    extra_allow = ",".join(DEFAULT_BLOCKED["loopback"]) if loopback in {"1", "true", "yes"} else ""
    try:
        return AddressPolicy(
            block=parse_cidrs(env.get("BUNDLESERVE_URL_BLOCK", ""), source="BUNDLESERVE_URL_BLOCK"),
            allow=parse_cidrs(env.get("BUNDLESERVE_URL_ALLOW", ""), source="BUNDLESERVE_URL_ALLOW")
            + parse_cidrs(extra_allow, source=ALLOW_LOOPBACK_ENV),
            block_private=flag not in {"0", "false", "no"},  # refused unless explicitly opened
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


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
    """Settings from the CLI's values and the environment (BUNDLESERVE_* variables, see docs/router.md)."""
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
    try:
        limits = limits_from_env(env)
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
        url_schemes=parse_url_schemes(schemes),
        url_policy=read_url_policy(env),
        drain_seconds=drain_seconds,
        body_timeout_seconds=limits.body_seconds,
        idle_timeout_seconds=limits.idle_seconds,
        variant=variant or IMPLICIT_VARIANT,
    )
