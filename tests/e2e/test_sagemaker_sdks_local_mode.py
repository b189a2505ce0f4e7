"""The official AWS SDKs (Java v1 and v2, Rust) against local mode, signed: the tests of
tests/integration/test_sagemaker_sdks.py re-collected against `bundleserve run`, here with results in S3 (a real
S3-compatible server on loopback), so every async output is an `s3://` object, read with S3's `object_exists` waiter;
plus each SDK's InvokeEndpointAsync with an `s3://` InputLocation. (A model that is still loading is only tested
behind the gateway: local mode announces itself ready once every model has loaded.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_sagemaker_boto3 import (
    ACCESS_KEY,
    NAME,
    REGION,
    SECRET_KEY,
    SageMakerTarget,
    input_server,  # noqa: F401 - fixture
    write_endpoint_file,
)
from tests.integration.test_sagemaker_s3 import (
    INPUT_BUCKET,
    moto,  # noqa: F401 - fixture
    s3_client,
    s3_router_env,
    upload,
    wait_for_object,
    write_s3_endpoint_file,
)
from tests.integration.test_sagemaker_sdks import (  # noqa: F401 - the SDK tests, re-collected
    JSON,
    ReadOutput,
    sdk,
    sdk_call,
    sdk_clients,
    test_a_mid_stream_failure_is_a_typed_model_stream_error,
    test_a_stream_failing_before_its_first_part_is_a_typed_model_error,
    test_invoke_endpoint_async_refuses_a_malformed_location,
    test_invoke_endpoint_async_with_an_http_input_location,
    test_invoke_endpoint_with_a_non_json_body,
    test_invoke_endpoint_with_custom_attributes_and_inference_id,
    test_model_failure_is_a_typed_model_error,
    test_overload_is_a_typed_service_unavailable,
    test_response_stream_yields_payload_parts,
    test_rust_unsigned_calls_need_allow_no_auth,
    test_unknown_endpoint_is_a_typed_validation_error,
)
from tests.support.local_mode import running_local_mode
from tests.support.s3 import S3Server
from tests.support.sdk_clients import Built


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, moto: S3Server) -> Iterator[tuple[str, Path]]:  # noqa: F811
    directory = tmp_path_factory.mktemp("sdks-local")
    files = [write_endpoint_file(directory), write_s3_endpoint_file(directory)]
    with running_local_mode(directory, files, env=s3_router_env(directory, moto)) as (url, _):
        yield url, directory


@pytest.fixture(scope="module")
def sagemaker_target(local_run: tuple[str, Path]) -> SageMakerTarget:
    url, directory = local_run
    return SageMakerTarget(url, NAME, REGION, ACCESS_KEY, SECRET_KEY, directory)


@pytest.fixture
def s3(moto: S3Server) -> Iterator[Any]:  # noqa: F811
    client = s3_client(moto)
    yield client
    client.close()


@pytest.fixture
def read_output(s3: Any) -> ReadOutput:
    """Results are in S3 here: the output location is an `s3://` object, waited for as AsyncPredictor does."""

    def read(location: str) -> bytes:
        assert location.startswith("s3://"), location
        return wait_for_object(s3, location)

    return read


def test_invoke_endpoint_async_with_an_s3_input_location(
    sdk_clients: Built,  # noqa: F811
    sdk: str,  # noqa: F811
    sagemaker_target: SageMakerTarget,
    s3: Any,
) -> None:
    inference_id = f"inf-{uuid.uuid4().hex[:8]}"
    answer = sdk_call(
        sdk_clients,
        sdk,
        sagemaker_target,
        "invoke_async",
        input_location=upload(s3, b'{"from": "s3", "n": 3}'),
        content_type=JSON,
        inference_id=inference_id,
    )
    assert answer["inference_id"] == inference_id
    assert answer["failure_location"].startswith("s3://")
    assert json.loads(wait_for_object(s3, answer["output_location"])) == {"from": "s3", "n": 3}


def test_a_failed_s3_task_writes_the_failure_object(
    sdk_clients: Built,  # noqa: F811
    sdk: str,  # noqa: F811
    sagemaker_target: SageMakerTarget,
    s3: Any,
) -> None:
    answer = sdk_call(
        sdk_clients,
        sdk,
        sagemaker_target,
        "invoke_async",
        input_location=f"s3://{INPUT_BUCKET}/requests/{uuid.uuid4().hex}-missing.in",
        content_type=JSON,
    )
    failure = json.loads(wait_for_object(s3, answer["failure_location"]))
    assert failure["status"] == "FAILURE"
    assert "does not exist" in failure["traceback"]
