"""The operator's own configuration, read once from the environment the Helm chart sets (names in docs/contracts.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from bundleserve import __version__

DEFAULT_IMAGE = f"ghcr.io/bundleserve/bundleserve:{__version__}"


class ConfigError(ValueError):
    """The operator's environment is unusable; the message names the variable."""


class KedaMode(StrEnum):
    AUTO = "auto"  # use KEDA when its CRDs are served
    ON = "on"
    OFF = "off"


class HpaMetric(StrEnum):
    CPU = "cpu"  # always available (metrics-server); the default
    INFLIGHT = "inflight"  # Pods metric bundleserve_router_inflight_requests, needs prometheus-adapter


@dataclass(frozen=True)
class OperatorConfig:
    image: str = DEFAULT_IMAGE
    redis_secret: str | None = None
    api_keys_secret: str | None = None
    results_pvc: str | None = None
    keda: KedaMode = KedaMode.AUTO
    hpa_metric: HpaMetric = HpaMetric.CPU
    cpu_target_utilization: int = 70
    #: kopf's peering keep-alive lifetime: a crashed leader is replaced this long after its last keep-alive.
    peering_lifetime_seconds: int = 60
    #: The operator's own Redis connection (scaler backlog, queue cleanup on delete). The chart sets it from the
    #: same Secret as the routers'; never logged.
    redis_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
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
        return cls(
            image=opt("BUNDLESERVE_IMAGE") or DEFAULT_IMAGE,
            redis_secret=opt("BUNDLESERVE_REDIS_SECRET"),
            api_keys_secret=opt("BUNDLESERVE_API_KEYS_SECRET"),
            results_pvc=opt("BUNDLESERVE_RESULTS_PVC"),
            keda=KedaMode(choice("BUNDLESERVE_KEDA", KedaMode, KedaMode.AUTO)),
            hpa_metric=HpaMetric(choice("BUNDLESERVE_HPA_METRIC", HpaMetric, HpaMetric.CPU)),
            cpu_target_utilization=int(utilization),
            peering_lifetime_seconds=int(lifetime),
            redis_url=opt("BUNDLESERVE_REDIS_URL"),
        )
