"""`bundleserve gateway`'s settings: read once from its flags and environment (gateway.settings), every bad value
refused at start naming its variable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bundleserve.edge.config import ConfigError
from bundleserve.gateway.kube import KubeConfigError
from bundleserve.gateway.settings import GatewaySettings, config_from_env

IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def _args(*namespaces: str) -> argparse.Namespace:
    return argparse.Namespace(host="0.0.0.0", port=8080, redis_url=None, namespaces=list(namespaces) or None)


def test_every_part_of_the_gateway_is_configured_from_one_reading(tmp_path: Path) -> None:
    keys = tmp_path / "sagemaker-keys"
    keys.write_text("AKIDEXAMPLE:secret team-a\n")
    env = {
        **IN_CLUSTER,
        "BUNDLESERVE_REDIS_URL": "redis://queue:6379/0",
        "BUNDLESERVE_QUEUE_MAX_BACKLOG": "7",
        "BUNDLESERVE_REDIS_TIMEOUT_SECONDS": "9",
        "BUNDLESERVE_GATEWAY_MAX_HELD_CALLS": "3",
        "BUNDLESERVE_PUBLIC_URL": "https://models.example.com/",
        "BUNDLESERVE_SAGEMAKER_KEYS_FILE": str(keys),
        "BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS": "true",
        "AWS_ENDPOINT_URL_S3": "http://minio:9000",
    }
    settings = GatewaySettings.from_args(_args("team-a", "team-b"), env)
    assert (settings.host, settings.port, settings.namespaces) == ("0.0.0.0", 8080, ("team-a", "team-b"))
    assert settings.kube.server == "https://10.96.0.1:443"
    app = settings.app
    assert app.redis_url == "redis://queue:6379/0"
    assert (app.queue_limits.max_backlog, app.queue_limits.redis_timeout_seconds) == (7, 9.0)
    assert app.hold.max_held == 3
    assert app.public_url == "https://models.example.com"
    assert app.sagemaker_signing.scope_of("AKIDEXAMPLE") == frozenset({"team-a"})
    assert app.submit_checks.allow_insecure_credentials
    assert app.results_s3_endpoint == "http://minio:9000"


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BUNDLESERVE_GATEWAY_MAX_HELD_CALLS", "0"),
        ("BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES", "lots"),
        ("BUNDLESERVE_REDIS_TIMEOUT_SECONDS", "1"),
        ("BUNDLESERVE_BODY_TIMEOUT_SECONDS", "never"),
        ("BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS", "perhaps"),
        ("BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED", "perhaps"),
        ("BUNDLESERVE_SAGEMAKER_KEYS_FILE", "/nonexistent/keys"),
        ("BUNDLESERVE_URL_BLOCK_PRIVATE", "perhaps"),
        ("BUNDLESERVE_RESULTS_URL", "gs://bucket"),
    ],
)
def test_a_bad_value_is_refused_at_start_naming_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name.removeprefix("BUNDLESERVE_")):
        config_from_env(None, {name: raw})


def test_outside_a_pod_the_gateway_does_not_start() -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        GatewaySettings.from_args(_args(), {})
