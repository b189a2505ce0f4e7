"""S3 result store configuration: the URL form, and one-line start errors for a bad URL or a missing boto3."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bundleserve.edge.config import ConfigError
from bundleserve.queue.s3results import ResultsUrlError, S3Location, require_boto3
from bundleserve.router.settings import build_settings


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://results", "results", ""),
        ("s3://results/", "results", ""),
        ("s3://results/team/a/", "results", "team/a/"),
        ("s3://results/team", "results", "team/"),
    ],
)
def test_an_s3_url_names_a_bucket_and_a_prefix(url: str, bucket: str, prefix: str):
    location = S3Location.parse(url)
    assert (location.bucket, location.prefix) == (bucket, prefix)
    assert location.key("t1") == f"{prefix}t1"


@pytest.mark.parametrize("url", ["https://results/x", "s3:///prefix", "results/x", "s3://b/p?versionId=1"])
def test_anything_else_is_refused(url: str):
    with pytest.raises(ResultsUrlError, match="s3://bucket/prefix"):
        S3Location.parse(url)


def test_keys_stay_inside_the_prefix():
    with pytest.raises(ValueError, match="invalid result key"):
        S3Location("b", "p/").key("../other")


def endpoint_file(tmp_path: Path) -> Path:
    path = tmp_path / "e.yaml"
    path.write_text(
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: e}\n"
        "spec: {modes: [sync, async], localOnly: true, bundle: {python: {entrypoint: 'fake:predict'}}}\n"
    )
    return path


def settings_with(tmp_path: Path, url: str) -> object:
    return build_settings(
        endpoint_file=endpoint_file(tmp_path), model_url="http://127.0.0.1:1", env={"BUNDLESERVE_RESULTS_URL": url}
    )


def test_the_router_settings_carry_a_valid_url(tmp_path: Path):
    settings = build_settings(
        endpoint_file=endpoint_file(tmp_path),
        model_url="http://127.0.0.1:1",
        env={"BUNDLESERVE_RESULTS_URL": "s3://bucket/pre"},
    )
    assert settings.results_url == "s3://bucket/pre"


def test_a_bad_url_fails_the_start_in_one_line(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, "http://bucket/pre")
    assert str(caught.value) == "BUNDLESERVE_RESULTS_URL must look like s3://bucket/prefix, got 'http://bucket/pre'"


def test_a_missing_boto3_fails_the_start_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    with pytest.raises(ResultsUrlError):
        require_boto3()
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, "s3://bucket/pre")
    message = str(caught.value)
    assert "\n" not in message
    assert message == "BUNDLESERVE_RESULTS_URL is an s3:// URL but boto3 is not installed (install bundleserve[s3])"


# -- SageMaker's async objects ----------------------------------------------------------------------------------------


def test_output_and_failure_objects_are_named_as_sagemaker_names_them() -> None:
    from bundleserve.queue.s3results import failure_url, output_url

    assert output_url("s3://bucket-1/async/out", "t1") == "s3://bucket-1/async/out/t1.out"
    assert output_url("s3://bucket-1/async/out/", "t1") == "s3://bucket-1/async/out/t1.out"
    assert output_url("s3://bucket-1", "t1") == "s3://bucket-1/t1.out"
    assert failure_url("s3://bucket-1/failed", "t1") == "s3://bucket-1/failed/t1-error.out"


def test_a_task_id_cannot_escape_the_output_path() -> None:
    from bundleserve.queue.results import InvalidKey
    from bundleserve.queue.s3results import output_url

    with pytest.raises(InvalidKey):
        output_url("s3://bucket-1/out", "../other/t1")


def test_s3_paths_default_under_the_result_store_and_the_failure_path_to_the_output_path() -> None:
    from bundleserve.queue.config import QueueConfig
    from bundleserve.queue.service import S3AsyncPaths, s3_async_paths

    location = S3Location.parse("s3://results/prefix")
    default = s3_async_paths(location, QueueConfig(endpoint="echo", namespace="team-a"))
    assert default == S3AsyncPaths(  # under the namespace's own prefix
        "s3://results/prefix/team-a/sagemaker/echo", "s3://results/prefix/team-a/sagemaker/echo"
    )
    configured = QueueConfig(endpoint="echo", s3_output_path="s3://out/o", s3_failure_path="s3://out/f")
    assert s3_async_paths(location, configured) == S3AsyncPaths("s3://out/o", "s3://out/f")
    assert s3_async_paths(location, QueueConfig(endpoint="echo", s3_output_path="s3://out/o")).failure == "s3://out/o"


@pytest.mark.parametrize("url", ["s3://", "s3://UPPER/key", "https://bucket/key", "s3://a/key"])
def test_malformed_s3_urls_are_invalid_requests(url: str) -> None:
    from bundleserve.api.errors import InvalidRequest
    from bundleserve.queue.s3results import S3Url

    with pytest.raises(InvalidRequest):
        S3Url.parse(url)


def test_a_namespace_has_its_own_prefix_under_the_configured_one() -> None:
    assert S3Location.parse("s3://results/prefix").within("team-a") == S3Location("results", "prefix/team-a/")
    assert S3Location.parse("s3://results").within("team-a") == S3Location("results", "team-a/")
    assert S3Location("results", "p/team-a/").key("t1") == "p/team-a/t1"
    for bad in ("", "Team", "../x", "a/b"):
        with pytest.raises(ValueError):
            S3Location.parse("s3://results/prefix").within(bad)
