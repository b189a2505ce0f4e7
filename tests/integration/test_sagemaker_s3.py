"""SageMaker's async contract on S3, end to end: unmodified boto3 does what the sagemaker SDK's AsyncPredictor does
(upload the input object, `invoke_endpoint_async` with an `s3://` InputLocation, wait with S3's `object_exists`
waiter on OutputLocation; on a model error the FailureLocation object appears instead), against a router whose
results are stored in a real S3-compatible server (moto's server mode on loopback, tests/support/s3.py).

Every test takes the `s3_target` fixture, so the same tests run against local mode (tests/e2e) by overriding it with
a server that serves `write_s3_endpoint_file` with `s3_router_env`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration.test_router_fake_model import start_router
from tests.integration.test_sagemaker_boto3 import BUNDLE, REGION, sagemaker_env
from tests.support.processes import Server, bundleserve, free_port, http_ok
from tests.support.s3 import S3Server, s3_server
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

NAME = "sm-s3"
RESULTS_BUCKET = "bundleserve-results"
ASYNC_BUCKET = "sm-async"
INPUT_BUCKET = "sm-inputs"
OUTPUT_PATH = f"s3://{ASYNC_BUCKET}/{NAME}/output"
FAILURE_PATH = f"s3://{ASYNC_BUCKET}/{NAME}/failures/"
MAX_PAYLOAD = 4096


@dataclass(frozen=True)
class S3Target:
    url: str  # the SageMaker Runtime endpoint URL (router, gateway or local mode)
    endpoint: str
    s3: S3Server


def write_s3_endpoint_file(directory: Path) -> Path:
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": NAME},
        "spec": {
            "modes": ["sync", "async"],
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "sm_model:predict", "path": str(BUNDLE)}},
            "invocation": {"timeoutSeconds": 30, "concurrency": 2, "maxPayloadBytes": MAX_PAYLOAD},
            "async": {"maxAttempts": 1, "s3OutputPath": OUTPUT_PATH, "s3FailurePath": FAILURE_PATH},
        },
    }
    path = directory / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def s3_router_env(directory: Path, s3: S3Server) -> dict[str, str]:
    """Results (and so SageMaker's async objects) in S3; the dialect's SigV4 configuration of the boto3 tests."""
    return {**sagemaker_env(directory), **s3.env, "BUNDLESERVE_RESULTS_URL": f"s3://{RESULTS_BUCKET}/results"}


def s3_client(s3: S3Server) -> Any:
    env = s3.env
    return boto3.client(
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def make_buckets(s3: S3Server) -> None:
    client = s3_client(s3)
    for bucket in (RESULTS_BUCKET, ASYNC_BUCKET, INPUT_BUCKET):
        client.create_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        make_buckets(server)
        yield server


@pytest.fixture(scope="module")
def s3_target(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey, moto: S3Server) -> Iterator[S3Target]:
    directory = tmp_path_factory.mktemp("sagemaker-s3")
    port = free_port()
    runtime = Server(
        bundleserve("bundle", "serve", "--entrypoint", "sm_model:predict", "--path", str(BUNDLE), "--port", str(port)),
        log_path=directory / "runtime.log",
    )
    router = None
    try:
        env = {
            "BUNDLESERVE_RESULTS_DIR": str(directory / "results"),
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
            **s3_router_env(directory, moto),
        }
        router, url = start_router(directory, write_s3_endpoint_file(directory), f"http://127.0.0.1:{port}", env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=30, what="router ready behind the bundle runtime")
        yield S3Target(url, NAME, moto)
    finally:
        if router is not None:
            router.stop()
        runtime.stop()


@pytest.fixture
def runtime(s3_target: S3Target) -> Iterator[Any]:
    """The SageMaker Runtime client as an AsyncPredictor user has it (here unsigned: the server admits both)."""
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=s3_target.url,
        region_name=REGION,
        config=Config(signature_version=botocore.UNSIGNED, retries={"mode": "standard", "max_attempts": 1}),
    )
    yield client
    client.close()


@pytest.fixture
def s3(s3_target: S3Target) -> Iterator[Any]:
    client = s3_client(s3_target.s3)
    yield client
    client.close()


def split(location: str) -> tuple[str, str]:
    assert location.startswith("s3://"), location
    bucket, _, key = location.removeprefix("s3://").partition("/")
    return bucket, key


def upload(s3: Any, data: bytes) -> str:
    key = f"requests/{uuid.uuid4().hex}.in"
    s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=data)
    return f"s3://{INPUT_BUCKET}/{key}"


def wait_for_object(s3: Any, location: str) -> bytes:
    """What AsyncPredictor does: S3's own `object_exists` waiter on the location, then a GET."""
    bucket, key = split(location)
    s3.get_waiter("object_exists").wait(Bucket=bucket, Key=key, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def missing(s3: Any, location: str) -> bool:
    bucket, key = split(location)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        return str(error.response["Error"]["Code"]) in ("404", "NoSuchKey")
    return False


def test_async_predictor_flow_with_an_s3_input(runtime: Any, s3: Any, s3_target: S3Target) -> None:
    location = upload(s3, b'{"a": 4, "b": 5}')
    reply = runtime.invoke_endpoint_async(
        EndpointName=s3_target.endpoint, InputLocation=location, ContentType="application/json"
    )
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 202
    output, failure = reply["OutputLocation"], reply["FailureLocation"]
    assert output.startswith(f"{OUTPUT_PATH}/") and output.endswith(".out")
    assert failure.startswith(FAILURE_PATH) and failure.endswith("-error.out")
    # a JSON object InputLocation is the model's keyword arguments, as the same body inline would be
    assert json.loads(wait_for_object(s3, output)) == {"a": 4, "b": 5}
    assert missing(s3, failure)


def test_a_binary_s3_input_reaches_the_model_as_bytes(runtime: Any, s3: Any, s3_target: S3Target) -> None:
    payload = b"\x89PNG\r\n" + bytes(range(256))
    reply = runtime.invoke_endpoint_async(
        EndpointName=s3_target.endpoint, InputLocation=upload(s3, payload), ContentType="image/png"
    )
    assert json.loads(wait_for_object(s3, reply["OutputLocation"]))["size"] == len(payload)


def test_an_inline_body_also_gets_s3_locations(runtime: Any, s3: Any, s3_target: S3Target) -> None:
    reply = runtime.invoke_endpoint_async(
        EndpointName=s3_target.endpoint, Body=b'{"job": 7}', ContentType="application/json", InferenceId="job-7"
    )
    assert reply["InferenceId"] == "job-7"
    assert json.loads(wait_for_object(s3, reply["OutputLocation"])) == {"job": 7}


def test_a_model_error_writes_the_failure_object(runtime: Any, s3: Any, s3_target: S3Target) -> None:
    reply = runtime.invoke_endpoint_async(
        EndpointName=s3_target.endpoint,
        InputLocation=upload(s3, b'{"fail": "bad input"}'),
        ContentType="application/json",
    )
    failure = json.loads(wait_for_object(s3, reply["FailureLocation"]))
    assert failure["status"] == "FAILURE"
    assert "bad input" in failure["traceback"]
    assert missing(s3, reply["OutputLocation"])


@pytest.mark.parametrize(
    ("make_location", "expected"),
    [
        (lambda s3: upload(s3, b"x" * (MAX_PAYLOAD + 1)), "larger than the limit"),
        (lambda s3: f"s3://{INPUT_BUCKET}/requests/never-uploaded.in", "does not exist"),
    ],
    ids=["over-the-body-limit", "missing-object"],
)
def test_an_unusable_input_object_writes_the_failure_object(
    runtime: Any, s3: Any, s3_target: S3Target, make_location: Any, expected: str
) -> None:
    reply = runtime.invoke_endpoint_async(
        EndpointName=s3_target.endpoint, InputLocation=make_location(s3), ContentType="application/json"
    )
    failure = json.loads(wait_for_object(s3, reply["FailureLocation"]))
    assert failure["status"] == "FAILURE"
    assert expected in failure["traceback"]
    assert missing(s3, reply["OutputLocation"])


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("s3://Not_A_Bucket/key", "not an s3://bucket/key URL"),
        # the result store holds every task's stored results: never an input (the deployment could read them all)
        (f"s3://{RESULTS_BUCKET}/results/some-task-id", "inside the result store"),
    ],
    ids=["malformed", "inside-the-result-store"],
)
def test_refused_s3_locations_are_validation_errors(
    runtime: Any, s3_target: S3Target, location: str, expected: str
) -> None:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint_async(EndpointName=s3_target.endpoint, InputLocation=location)
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert expected in caught.value.response["Error"]["Message"]
