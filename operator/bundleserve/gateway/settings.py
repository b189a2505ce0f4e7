"""The gateway's settings: its command line and environment, read once at start, in this one module.

`gateway.server.main` (the composition root of `bundleserve gateway`) calls `GatewaySettings.from_args` with the
process's environment and hands the result down: the application gets `GatewaySettings.app` (a `GatewayConfig`), the
Endpoint watch `GatewaySettings.kube`. The variables mean what they mean on a router (docs/router.md, docs/gateway.md):
one Secret and one store configure both. A bad value is a `ConfigError` naming the variable, before anything listens.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bundleserve.dialects.base import read_public_url
from bundleserve.dialects.sagemaker import sigv4
from bundleserve.edge.config import (
    DEFAULT_RESULTS_DIR,
    ConfigError,
    check_results_url,
    parse_url_schemes,
    read_keys_file,
    read_url_policy,
)
from bundleserve.edge.connections import limits_from_env
from bundleserve.gateway.activator import settings_from_env as hold_settings_from_env
from bundleserve.gateway.app import GatewayConfig
from bundleserve.gateway.kube import KubeAccess
from bundleserve.queue.callbacks import insecure_credentials_allowed
from bundleserve.queue.config import QueueLimits
from bundleserve.queue.s3results import endpoint_from_env
from bundleserve.queue.service import SubmitChecks


@dataclass(frozen=True)
class GatewaySettings:
    """Everything `bundleserve gateway` is configured with."""

    host: str
    port: int
    #: The namespaces whose Endpoints the gateway serves (None: every namespace).
    namespaces: tuple[str, ...] | None
    #: How to reach the API server (the pod's service account: KUBERNETES_SERVICE_HOST/_PORT).
    kube: KubeAccess
    #: The application's configuration (keys, queues, result store, dialects, deadlines, hold).
    app: GatewayConfig

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> GatewaySettings:
        """The settings of `bundleserve gateway` (`env`: the process's environment unless a test gives its own);
        ConfigError or KubeConfigError with a one-line reason."""
        env = os.environ if env is None else env
        app = config_from_env(args.redis_url, env)
        namespaces = tuple(args.namespaces) if args.namespaces else None
        return cls(host=args.host, port=args.port, namespaces=namespaces, kube=KubeAccess.in_cluster(env), app=app)


def config_from_env(redis_url: str | None, env: Mapping[str, str]) -> GatewayConfig:
    """The application's configuration from `env` (a pure function of the mapping; local mode builds its gateway's
    own way): the same variables as the router's (docs/router.md)."""
    keys_file = env.get("BUNDLESERVE_API_KEYS_FILE")
    results_url = env.get("BUNDLESERVE_RESULTS_URL") or None
    if results_url:
        check_results_url(results_url)
    try:
        connections = limits_from_env(env)
        queue_limits = QueueLimits.from_env(env)
        hold = hold_settings_from_env(env)
        allow_insecure_credentials = insecure_credentials_allowed(env)
        signing = sigv4.config_from_env(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return GatewayConfig(
        connections=connections,
        queue_limits=queue_limits,
        public_url=read_public_url(env),
        hold=hold,
        submit_checks=SubmitChecks(
            url_schemes=parse_url_schemes(env.get("BUNDLESERVE_URL_SCHEMES")),
            destinations=read_url_policy(env),
            allow_insecure_credentials=allow_insecure_credentials,
        ),
        redis_url=redis_url or env.get("BUNDLESERVE_REDIS_URL") or None,
        keys_file=read_keys_file(Path(keys_file)) if keys_file else None,
        results_dir=Path(env.get("BUNDLESERVE_RESULTS_DIR") or DEFAULT_RESULTS_DIR),
        results_url=results_url,
        results_s3_endpoint=endpoint_from_env(env),
        sagemaker_signing=signing,
    )
