"""Router settings from the endpoint file, flags and BUNDLESERVE_* environment; bad values fail with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundleserve.edge.config import ConfigError
from bundleserve.router.settings import build_settings

MANIFEST = """\
apiVersion: bundleserve.dev/v1alpha1
kind: Endpoint
metadata: {name: demo}
spec:
  modes: [sync]
  localOnly: true
  bundle: {python: {entrypoint: m:f}}
  invocation: {timeoutSeconds: 20}
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "demo.yaml"
    path.write_text(MANIFEST)
    return path


def test_defaults(manifest: Path) -> None:
    settings = build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:5005/", env={})
    assert settings.name == "demo" and settings.model_url == "http://127.0.0.1:5005"
    assert settings.url_schemes == {"http", "https"}
    assert settings.api_keys == frozenset()
    assert settings.grace_seconds == 25.0
    assert settings.routes.ready == "/readyz"


def test_environment(manifest: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# rotated monthly\nfirst\n\n second \n")
    env = {
        "BUNDLESERVE_API_KEYS_FILE": str(keys),
        "BUNDLESERVE_URL_SCHEMES": "https, S3",
        "BUNDLESERVE_RESULTS_DIR": str(tmp_path / "results"),
        "BUNDLESERVE_REDIS_URL": "redis://r:6379/0",
        "BUNDLESERVE_DRAIN_SECONDS": "7",
    }
    settings = build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:5005", env=env)
    assert settings.api_keys == {"first", "second"}
    assert settings.url_schemes == {"https", "s3"}
    assert settings.results_dir == tmp_path / "results"
    assert settings.redis_url == "redis://r:6379/0"
    assert settings.grace_seconds == 7.0


@pytest.mark.parametrize(
    ("model_url", "env", "fragment"),
    [
        ("127.0.0.1:5005", {}, "--model-url"),
        ("http://127.0.0.1:5005", {"BUNDLESERVE_API_KEYS_FILE": "/nonexistent/keys"}, "API keys file"),
        ("http://127.0.0.1:5005", {"BUNDLESERVE_DRAIN_SECONDS": "soon"}, "BUNDLESERVE_DRAIN_SECONDS"),
        ("http://127.0.0.1:5005", {"BUNDLESERVE_REDIS_TIMEOUT_SECONDS": "2"}, "BUNDLESERVE_REDIS_TIMEOUT_SECONDS"),
        (
            "http://127.0.0.1:5005",
            {"BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS": "maybe"},
            "BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS",
        ),
        (
            "http://127.0.0.1:5005",
            {"BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED": "maybe"},
            "BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED",
        ),
        (
            "http://127.0.0.1:5005",
            {"BUNDLESERVE_SAGEMAKER_KEYS_FILE": "/nonexistent/sagemaker-keys"},
            "BUNDLESERVE_SAGEMAKER_KEYS_FILE",
        ),
        ("http://127.0.0.1:5005", {"BUNDLESERVE_QUEUE_DURABILITY": "disk"}, "BUNDLESERVE_QUEUE_DURABILITY"),
    ],
)
def test_bad_configuration(manifest: Path, model_url: str, env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_settings(endpoint_file=manifest, model_url=model_url, env=env)
    assert fragment in str(error.value)


def test_a_file_with_two_endpoints_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(MANIFEST + "---\n" + MANIFEST.replace("demo", "other"))
    with pytest.raises(ConfigError, match="exactly one Endpoint"):
        build_settings(endpoint_file=path, model_url="http://127.0.0.1:1", env={})


def test_the_variant_a_router_serves(manifest: Path) -> None:
    plain = build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:5005", env={})
    assert (plain.variant, plain.declared_variant) == ("AllTraffic", None)
    green = build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:5005", env={}, variant="green")
    assert (green.variant, green.declared_variant) == ("green", "green")


def test_what_the_router_used_to_read_on_its_paths_is_in_its_settings(manifest: Path, tmp_path: Path) -> None:
    """Callback TLS, the callback Secret's directory, the Redis timeout, the observed durability settings, the
    SageMaker keys and the S3 endpoint were read from the environment by the modules that use them (some when a
    worker or a queue started); the settings carry them now."""
    env = {
        "BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS": "true",
        "BUNDLESERVE_CALLBACK_CA_FILE": str(tmp_path / "ca.pem"),
        "BUNDLESERVE_CALLBACK_SECRET_DIR": str(tmp_path / "callback"),
        "BUNDLESERVE_REDIS_TIMEOUT_SECONDS": "12",
        "BUNDLESERVE_REDIS_APPENDFSYNC": "always",
        "BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED": "true",
        "AWS_ENDPOINT_URL": "http://minio:9000",
    }
    settings = build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:5005", env=env)
    callbacks = settings.callbacks
    assert callbacks.allow_insecure_credentials
    assert (callbacks.ca_file, callbacks.secret_dir) == (str(tmp_path / "ca.pem"), tmp_path / "callback")
    assert settings.queue_limits.redis_timeout_seconds == 12.0
    assert settings.queue_limits.observed_server_config == (("appendfsync", "always"),)
    assert settings.sagemaker_signing.allow_unsigned
    assert settings.results_s3_endpoint == "http://minio:9000"
    defaults = build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:5005", env={})
    assert not defaults.callbacks.allow_insecure_credentials and not defaults.sagemaker_signing.allow_unsigned
    assert str(defaults.callbacks.secret_dir) == "/var/run/secrets/bundleserve/callback"
