"""OperatorConfig from the environment the Helm chart sets."""

from __future__ import annotations

import pytest

from bundleserve.controller.config import DEFAULT_IMAGE, ConfigError, HpaMetric, KedaMode, OperatorConfig


def test_defaults() -> None:
    config = OperatorConfig.from_env({})
    assert config.image == DEFAULT_IMAGE
    assert config.keda is KedaMode.AUTO and config.hpa_metric is HpaMetric.CPU
    assert config.redis_secret is None and config.redis_url is None
    assert config.peering_lifetime_seconds == 60  # kopf's own default


def test_every_variable() -> None:
    config = OperatorConfig.from_env(
        {
            "BUNDLESERVE_IMAGE": "reg/bundleserve:9",
            "BUNDLESERVE_REDIS_SECRET": "redis",
            "BUNDLESERVE_API_KEYS_SECRET": "keys",
            "BUNDLESERVE_RESULTS_PVC": "results",
            "BUNDLESERVE_KEDA": "OFF",
            "BUNDLESERVE_HPA_METRIC": "inflight",
            "BUNDLESERVE_HPA_CPU_UTILIZATION": "55",
            "BUNDLESERVE_REDIS_URL": "redis://:hunter2@redis:6379/0",
            "BUNDLESERVE_PEERING_LIFETIME_SECONDS": "5",
        }
    )
    assert (config.image, config.redis_secret, config.api_keys_secret, config.results_pvc) == (
        "reg/bundleserve:9",
        "redis",
        "keys",
        "results",
    )
    assert config.keda is KedaMode.OFF and config.hpa_metric is HpaMetric.INFLIGHT
    assert config.cpu_target_utilization == 55
    assert config.peering_lifetime_seconds == 5
    assert "hunter2" not in repr(config)  # the Redis URL may carry a password: never in logs


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BUNDLESERVE_KEDA": "maybe"}, "BUNDLESERVE_KEDA"),
        ({"BUNDLESERVE_HPA_CPU_UTILIZATION": "x"}, "UTILIZATION"),
        ({"BUNDLESERVE_PEERING_LIFETIME_SECONDS": "1"}, "BUNDLESERVE_PEERING_LIFETIME_SECONDS"),
        ({"BUNDLESERVE_PEERING_LIFETIME_SECONDS": "1m"}, "BUNDLESERVE_PEERING_LIFETIME_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        OperatorConfig.from_env(env)


def test_s3_results_settings() -> None:
    config = OperatorConfig.from_env(
        {
            "BUNDLESERVE_RESULTS_URL": " s3://results/bundleserve/ ",
            "BUNDLESERVE_RESULTS_S3_SECRET": "s3-creds",
            "BUNDLESERVE_RESULTS_S3_ENDPOINT": "http://minio:9000",
            "BUNDLESERVE_RESULTS_S3_REGION": "eu-west-1",
        }
    )
    assert (config.results_url, config.results_s3_secret) == ("s3://results/bundleserve/", "s3-creds")
    assert (config.results_s3_endpoint, config.results_s3_region) == ("http://minio:9000", "eu-west-1")
    assert config.results_pvc is None
    defaults = OperatorConfig.from_env({})
    assert defaults.results_url is defaults.results_s3_secret is defaults.results_s3_endpoint is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BUNDLESERVE_RESULTS_URL": "https://bucket/prefix"}, "BUNDLESERVE_RESULTS_URL"),
        ({"BUNDLESERVE_RESULTS_URL": "s3:///no-bucket"}, "BUNDLESERVE_RESULTS_URL"),
        ({"BUNDLESERVE_RESULTS_URL": "s3://b/p", "BUNDLESERVE_RESULTS_PVC": "results"}, "BUNDLESERVE_RESULTS_PVC"),
        ({"BUNDLESERVE_RESULTS_S3_SECRET": "s3-creds"}, "BUNDLESERVE_RESULTS_S3_SECRET"),
        ({"BUNDLESERVE_RESULTS_S3_REGION": "eu-west-1"}, "BUNDLESERVE_RESULTS_S3_REGION"),
        (
            {"BUNDLESERVE_RESULTS_URL": "s3://b", "BUNDLESERVE_RESULTS_S3_ENDPOINT": "minio:9000"},
            "BUNDLESERVE_RESULTS_S3_ENDPOINT",
        ),
    ],
)
def test_bad_s3_results_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        OperatorConfig.from_env(env)


def test_router_settings_are_passed_on_and_checked_at_the_start() -> None:
    """The destination guard's CIDRs and the byte quota reach every router sidecar (issue 17: private ranges are
    refused by default, so an in-cluster object store must be opened where the routers can see it)."""
    env = {"BUNDLESERVE_URL_ALLOW": "10.96.0.0/12", "BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES": "1048576"}
    config = OperatorConfig.from_env(env)
    assert dict(config.router_settings) == env
    for bad in ({"BUNDLESERVE_URL_ALLOW": "10.0.0.0/33"}, {"BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES": "1MB"},
                {"BUNDLESERVE_URL_BLOCK_PRIVATE": "maybe"}):  # fmt: skip
        with pytest.raises(ConfigError):
            OperatorConfig.from_env(bad)


def test_the_timers_priority_and_redis_timeout_are_read_with_the_rest() -> None:
    """controller.main and controller.state once read these themselves (one on every state construction); now the
    operator's one settings object carries them."""
    config = OperatorConfig.from_env(
        {
            "BUNDLESERVE_OPERATOR_DRIFT_SECONDS": "3",
            "BUNDLESERVE_OPERATOR_SCALER_SECONDS": "0.2",
            "BUNDLESERVE_OPERATOR_CLEANUP_MAX_SECONDS": "1",
            "BUNDLESERVE_PEERING_PRIORITY": "-7",
            "BUNDLESERVE_REDIS_TIMEOUT_SECONDS": "5",
            "KUBECONFIG": "/tmp/a:/tmp/b",
        }
    )
    assert (config.drift_seconds, config.scaler_seconds, config.cleanup_max_seconds) == (3.0, 0.2, 1.0)
    assert (config.peering_priority, config.redis_timeout_seconds, config.kubeconfig) == (-7, 5.0, "/tmp/a:/tmp/b")
    defaults = OperatorConfig.from_env({})
    assert (defaults.drift_seconds, defaults.scaler_seconds, defaults.cleanup_max_seconds) == (60.0, 10.0, 300)
    assert defaults.peering_priority is None and defaults.kubeconfig is None


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BUNDLESERVE_OPERATOR_DRIFT_SECONDS", "soon"),
        ("BUNDLESERVE_OPERATOR_SCALER_SECONDS", "0"),
        ("BUNDLESERVE_OPERATOR_CLEANUP_MAX_SECONDS", "-1"),
        ("BUNDLESERVE_OPERATOR_DRIFT_SECONDS", "inf"),
        ("BUNDLESERVE_PEERING_PRIORITY", "high"),
        ("BUNDLESERVE_REDIS_TIMEOUT_SECONDS", "1"),
    ],
)
def test_a_bad_timer_priority_or_timeout_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        OperatorConfig.from_env({name: raw})
