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
