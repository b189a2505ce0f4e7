"""The SageMaker Runtime dialect with real, unmodified boto3 against a real router and bundle runtime on loopback.

Every test takes the `sagemaker_target` fixture (base URL, endpoint name, keys, where the held-call marker files go):
to run the same tests against the gateway or local mode, override that fixture with a server that serves the manifest
of `write_endpoint_file` (the bundle in `sagemaker_bundle/`, concurrency 1, no queue slots) with the environment of
`sagemaker_env` (SigV4 key file, region, unsigned allowed) and a Redis for async.
Both signing modes run: SigV4 with a configured key, and UNSIGNED (the server is configured to admit both).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.auth
import pytest
import yaml
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EventStreamError

from tests.integration.test_router_fake_model import start_router
from tests.support.processes import REPO, Server, bundleserve, free_port, http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

BUNDLE = REPO / "tests" / "integration" / "sagemaker_bundle"
NAME = "sm-echo"
REGION = "eu-west-1"
ACCESS_KEY = "AKIDBUNDLESERVETEST"
SECRET_KEY = "bundleserve/secret+key/for-tests"


@dataclass(frozen=True)
class SageMakerTarget:
    url: str
    endpoint: str
    region: str
    access_key: str
    secret_key: str
    scratch: Path  # where the held-call marker files are written (shared with the model process)


def write_endpoint_file(directory: Path) -> Path:
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": NAME},
        "spec": {
            "modes": ["sync", "streaming", "async"],
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "sm_model:predict", "path": str(BUNDLE)}},
            "invocation": {"timeoutSeconds": 30, "concurrency": 1, "maxQueued": 0},
            "async": {"maxAttempts": 1, "invocationTimeoutSeconds": 30},
        },
    }
    path = directory / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def sagemaker_env(directory: Path) -> dict[str, str]:
    """The dialect's configuration for these tests (writes the key file into `directory`)."""
    keys = directory / "sagemaker-keys"
    keys.write_text(f"# test key\n{ACCESS_KEY}:{SECRET_KEY}\n")
    return {
        "BUNDLESERVE_URL_ALLOW": "127.0.0.0/8",  # the InputLocation test serves its input on loopback
        "BUNDLESERVE_SAGEMAKER_REGION": REGION,
        "BUNDLESERVE_SAGEMAKER_KEYS_FILE": str(keys),
        "BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED": "true",
    }


@pytest.fixture(scope="module")
def sagemaker_target(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[SageMakerTarget]:
    directory = tmp_path_factory.mktemp("sagemaker")
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
            **sagemaker_env(directory),
        }
        router, url = start_router(directory, write_endpoint_file(directory), f"http://127.0.0.1:{port}", env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=30, what="router ready behind the bundle runtime")
        yield SageMakerTarget(url, NAME, REGION, ACCESS_KEY, SECRET_KEY, directory)
    finally:
        if router is not None:
            router.stop()
        runtime.stop()


def _client(target: SageMakerTarget, mode: str, **config: Any) -> Any:
    retries = Config(retries={"mode": "standard", "max_attempts": 1}, **config)
    if mode == "unsigned":
        return boto3.client(
            "sagemaker-runtime",
            endpoint_url=target.url,
            region_name=target.region,
            config=retries.merge(Config(signature_version=botocore.UNSIGNED)),
        )
    secret = target.secret_key if mode == "signed" else "not-the-secret"
    key = target.access_key if mode != "unknown-key" else "AKIDNOBODY"
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=target.url,
        region_name=target.region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=retries,
    )


@pytest.fixture(params=["signed", "unsigned"])
def runtime(request: pytest.FixtureRequest, sagemaker_target: SageMakerTarget) -> Iterator[Any]:
    client = _client(sagemaker_target, request.param)
    yield client
    client.close()  # its pooled sockets, or pytest reports them unclosed


@pytest.fixture
def signing(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["runtime"])


def _fetch(target: SageMakerTarget, url: str, *, signed: bool) -> tuple[int, bytes]:
    """GET an output/failure location as a client would (signed with the same key when the test signs)."""
    headers: dict[str, str] = {}
    if signed:
        aws = AWSRequest(method="GET", url=url)
        botocore.auth.SigV4Auth(Credentials(target.access_key, target.secret_key), "sagemaker", target.region).add_auth(
            aws
        )
        headers = dict(aws.headers.items())
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def _code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


# -- InvokeEndpoint --------------------------------------------------------------------------------------------------


def test_invoke_endpoint_with_json(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    reply = runtime.invoke_endpoint(
        EndpointName=sagemaker_target.endpoint, Body=json.dumps({"x": 1, "y": "é"}), ContentType="application/json"
    )
    assert json.loads(reply["Body"].read()) == {"x": 1, "y": "é"}
    assert reply["ContentType"].startswith("application/json")
    assert reply["InvokedProductionVariant"] == "AllTraffic"
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert reply["ResponseMetadata"]["RequestId"]


def test_invoke_endpoint_without_content_type_treats_a_json_object_as_arguments(
    runtime: Any, sagemaker_target: SageMakerTarget
) -> None:
    reply = runtime.invoke_endpoint(EndpointName=sagemaker_target.endpoint, Body=b'{"k": [1, 2]}')
    assert json.loads(reply["Body"].read()) == {"k": [1, 2]}


def test_invoke_endpoint_with_raw_bytes(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    payload = bytes(range(256)) * 40
    reply = runtime.invoke_endpoint(EndpointName=sagemaker_target.endpoint, Body=payload, ContentType="image/png")
    assert json.loads(reply["Body"].read()) == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_custom_attributes_round_trip(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    reply = runtime.invoke_endpoint(
        EndpointName=sagemaker_target.endpoint,
        Body=b'{"a": 1}',
        ContentType="application/json",
        CustomAttributes="trace-id=7;tenant=blue",
    )
    assert reply["CustomAttributes"] == "trace-id=7;tenant=blue"
    assert json.loads(reply["Body"].read()) == {"a": 1}


# -- InvokeEndpointWithResponseStream ----------------------------------------------------------------------------------


def test_response_stream_yields_payload_parts(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    reply = runtime.invoke_endpoint_with_response_stream(
        EndpointName=sagemaker_target.endpoint, Body=b'{"text": "one two three"}', ContentType="application/json"
    )
    with contextlib.closing(reply["Body"]) as events:
        parts = [event["PayloadPart"]["Bytes"] for event in events]
    assert parts == [b"one", b"two", b"three"]
    assert reply["InvokedProductionVariant"] == "AllTraffic"


def test_mid_stream_failure_is_a_model_stream_error(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    reply = runtime.invoke_endpoint_with_response_stream(
        EndpointName=sagemaker_target.endpoint,
        Body=b'{"text": "one two three", "fail_after": 2}',
        ContentType="application/json",
    )
    received = []
    with contextlib.closing(reply["Body"]) as events, pytest.raises(EventStreamError) as caught:
        for event in events:
            received.append(event["PayloadPart"]["Bytes"])
    assert received == [b"one", b"two"]
    assert caught.value.response["Error"]["Code"] == "ModelStreamError"


# -- InvokeEndpointAsync ---------------------------------------------------------------------------------------------


def _await_output(target: SageMakerTarget, location: str, *, signed: bool) -> bytes:
    def written() -> bytes | None:
        status, body = _fetch(target, location, signed=signed)
        assert status in (200, 404), (status, body)
        return body if status == 200 else None

    result = wait_until(written, timeout=30, what=f"async output at {location}")
    assert result is not None
    return result


def test_async_with_inline_body(runtime: Any, sagemaker_target: SageMakerTarget, signing: str) -> None:
    reply = runtime.invoke_endpoint_async(
        EndpointName=sagemaker_target.endpoint,
        Body=b'{"job": 42}',
        ContentType="application/json",
        RequestTTLSeconds=600,
        InvocationTimeoutSeconds=60,
    )
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert reply["InferenceId"]
    output, failure = reply["OutputLocation"], reply["FailureLocation"]
    assert output.startswith("http://") and failure.startswith("http://")
    assert json.loads(_await_output(sagemaker_target, output, signed=signing == "signed")) == {"job": 42}
    assert _fetch(sagemaker_target, failure, signed=signing == "signed")[0] == 404


def test_async_inference_id_is_echoed(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    inference_id = f"mine-{uuid.uuid4().hex[:8]}"
    reply = runtime.invoke_endpoint_async(
        EndpointName=sagemaker_target.endpoint, Body=b'{"a": 1}', InferenceId=inference_id
    )
    assert reply["InferenceId"] == inference_id


@pytest.fixture(scope="module")
def input_server() -> Iterator[str]:
    """A plain HTTP server on loopback holding the async input (an S3 object's stand-in for InputLocation)."""
    objects = {
        "/inputs/image.png": (b"\x89PNG\r\n" + bytes(range(200)), "image/png"),
        # as object stores usually label uploads: the source's type says nothing, the request's ContentType does
        "/inputs/args.json": (b'{"a": 4, "b": 5}', "binary/octet-stream"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload, content_type = objects[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/inputs/image.png"
    finally:
        server.shutdown()
        server.server_close()


def test_async_with_input_location(
    runtime: Any, sagemaker_target: SageMakerTarget, input_server: str, signing: str
) -> None:
    reply = runtime.invoke_endpoint_async(
        EndpointName=sagemaker_target.endpoint, InputLocation=input_server, ContentType="image/png"
    )
    result = json.loads(_await_output(sagemaker_target, reply["OutputLocation"], signed=signing == "signed"))
    expected = b"\x89PNG\r\n" + bytes(range(200))
    assert result == {"size": len(expected), "sha256": hashlib.sha256(expected).hexdigest()}


def test_async_json_input_location_reaches_the_model_like_an_inline_body(
    runtime: Any, sagemaker_target: SageMakerTarget, input_server: str, signing: str
) -> None:
    """SageMaker hands the container the InputLocation object exactly as an inline body: a JSON object with
    ContentType application/json becomes a Python bundle's keyword arguments (not bytes)."""
    location = input_server.replace("image.png", "args.json")
    reply = runtime.invoke_endpoint_async(
        EndpointName=sagemaker_target.endpoint, InputLocation=location, ContentType="application/json"
    )
    result = json.loads(_await_output(sagemaker_target, reply["OutputLocation"], signed=signing == "signed"))
    inline = runtime.invoke_endpoint(
        EndpointName=sagemaker_target.endpoint, Body=b'{"a": 4, "b": 5}', ContentType="application/json"
    )
    assert result == json.loads(inline["Body"].read()) == {"a": 4, "b": 5}


def test_async_failure_is_written_to_the_failure_location(
    runtime: Any, sagemaker_target: SageMakerTarget, signing: str
) -> None:
    reply = runtime.invoke_endpoint_async(EndpointName=sagemaker_target.endpoint, Body=b'{"fail": "bad input"}')
    body = _await_output(sagemaker_target, reply["FailureLocation"], signed=signing == "signed")
    failure = json.loads(body)
    assert failure["status"] == "FAILURE"
    assert "bad input" in (failure["traceback"] or "")
    assert _fetch(sagemaker_target, reply["OutputLocation"], signed=signing == "signed")[0] == 404


# -- errors ----------------------------------------------------------------------------------------------------------


def test_unknown_endpoint_is_a_validation_error(runtime: Any) -> None:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName="no-such-endpoint", Body=b"{}", ContentType="application/json")
    assert _code(caught.value) == "ValidationError"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "no-such-endpoint" in caught.value.response["Error"]["Message"]


def test_request_ttl_out_of_range_is_a_validation_error(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint_async(EndpointName=sagemaker_target.endpoint, Body=b"{}", RequestTTLSeconds=999999)
    assert _code(caught.value) == "ValidationError"
    assert "RequestTTLSeconds" in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"TargetModel": "model-b.tar.gz"}, "TargetModel"),
        ({"SessionId": "NEW_SESSION"}, "SessionId"),
        ({"TargetContainerHostname": "second"}, "TargetContainerHostname"),
        ({"TargetVariant": "canary"}, "canary"),
    ],
)
def test_semantics_changing_parameters_are_validation_errors(
    runtime: Any, sagemaker_target: SageMakerTarget, parameters: dict[str, str], expected: str
) -> None:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(
            EndpointName=sagemaker_target.endpoint, Body=b"{}", ContentType="application/json", **parameters
        )
    assert _code(caught.value) == "ValidationError"
    assert expected in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"Body": b"{}", "InvocationTimeoutSeconds": 3601}, "InvocationTimeoutSeconds"),
        ({"InputLocation": "s3://bucket/input.json"}, "s3://"),
        ({"Body": b"{}", "InputLocation": "https://example.com/input.json"}, "not both"),
    ],
)
def test_bad_async_requests_are_validation_errors(
    runtime: Any, sagemaker_target: SageMakerTarget, parameters: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint_async(EndpointName=sagemaker_target.endpoint, **parameters)
    assert _code(caught.value) == "ValidationError"
    assert expected in caught.value.response["Error"]["Message"]


def test_a_body_over_the_limit_is_refused(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName=sagemaker_target.endpoint, Body=b"x" * (6 * 1024 * 1024 + 1))
    assert _code(caught.value) == "ValidationError"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_a_stream_failing_before_its_first_part_is_a_model_error(
    runtime: Any, sagemaker_target: SageMakerTarget
) -> None:
    with pytest.raises(runtime.exceptions.ModelError) as caught:
        runtime.invoke_endpoint_with_response_stream(
            EndpointName=sagemaker_target.endpoint, Body=b'{"text": "one", "fail_after": 0}'
        )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert "broke after 0 words" in caught.value.response["OriginalMessage"]


def test_model_failure_is_a_model_error_with_the_original_status(
    runtime: Any, sagemaker_target: SageMakerTarget
) -> None:
    with pytest.raises(runtime.exceptions.ModelError) as caught:
        runtime.invoke_endpoint(
            EndpointName=sagemaker_target.endpoint, Body=b'{"fail": "no way"}', ContentType="application/json"
        )
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 500
    assert "no way" in response["OriginalMessage"]


def test_overload_is_service_unavailable(runtime: Any, sagemaker_target: SageMakerTarget) -> None:
    release = sagemaker_target.scratch / f"release-{uuid.uuid4().hex}"
    started = Path(f"{release}.started")
    holder = _client(sagemaker_target, "signed")
    outcome: dict[str, Any] = {}

    def hold() -> None:
        body = json.dumps({"hold": str(release)})
        reply = holder.invoke_endpoint(
            EndpointName=sagemaker_target.endpoint, Body=body, ContentType="application/json"
        )
        outcome["held"] = json.loads(reply["Body"].read())

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        wait_until(started.exists, timeout=20, what="the held call to occupy the only slot")
        with pytest.raises(ClientError) as caught:
            runtime.invoke_endpoint(EndpointName=sagemaker_target.endpoint, Body=b"{}", ContentType="application/json")
        assert _code(caught.value) == "ServiceUnavailable"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        release.touch()
        thread.join(timeout=30)
        holder.close()
    assert outcome == {"held": {"held": True}}


@pytest.mark.parametrize(
    ("mode", "code"), [("bad-secret", "InvalidSignatureException"), ("unknown-key", "UnrecognizedClientException")]
)
def test_bad_signatures_are_rejected(sagemaker_target: SageMakerTarget, mode: str, code: str) -> None:
    with contextlib.closing(_client(sagemaker_target, mode)) as client, pytest.raises(ClientError) as caught:
        client.invoke_endpoint(EndpointName=sagemaker_target.endpoint, Body=b'{"a": 1}', ContentType="application/json")
    assert _code(caught.value) == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_tampered_body_is_rejected(sagemaker_target: SageMakerTarget) -> None:
    """A request signed for one body and sent with another (a proxy rewriting it) never reaches the model."""
    url = f"{sagemaker_target.url}/endpoints/{sagemaker_target.endpoint}/invocations"
    aws = AWSRequest(method="POST", url=url, data=b'{"a": 1}', headers={"Content-Type": "application/json"})
    credentials = Credentials(sagemaker_target.access_key, sagemaker_target.secret_key)
    botocore.auth.SigV4Auth(credentials, "sagemaker", sagemaker_target.region).add_auth(aws)
    request = urllib.request.Request(url, data=b'{"a": 2}', headers=dict(aws.headers.items()), method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    with caught.value as refused:
        assert refused.code == 403
        assert refused.headers["X-Amzn-ErrorType"] == "InvalidSignatureException"


def test_a_loading_model_is_model_not_ready(tmp_path: Path, sagemaker_target: SageMakerTarget) -> None:
    """While the bundle's `load()` runs, boto3 gets ModelNotReadyException (429); once loaded, the call succeeds."""
    release = tmp_path / "release-load"
    port = free_port()
    runtime = Server(
        bundleserve(
            "bundle", "serve", "--entrypoint", "sm_model:predict_loaded", "--load", "sm_model:slow_load",
            "--path", str(BUNDLE), "--port", str(port),
        ),
        log_path=tmp_path / "runtime.log",
        env={"SM_TEST_RELEASE": str(release)},
    )  # fmt: skip
    router = None
    try:
        env = {
            "BUNDLESERVE_SAGEMAKER_REGION": sagemaker_target.region,
            "BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED": "true",
        }
        router, url = start_router(tmp_path, write_endpoint_file(tmp_path), f"http://127.0.0.1:{port}", env=env)
        target = SageMakerTarget(url, NAME, sagemaker_target.region, "", "", tmp_path)
        with contextlib.closing(_client(target, "unsigned")) as client:
            with pytest.raises(ClientError) as caught:
                client.invoke_endpoint(EndpointName=NAME, Body=b'{"a": 1}', ContentType="application/json")
            assert _code(caught.value) == "ModelNotReadyException"
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            release.touch()
            wait_until(lambda: http_ok(f"{url}/readyz"), timeout=30, what="the model to finish loading")
            reply = client.invoke_endpoint(EndpointName=NAME, Body=b'{"a": 1}', ContentType="application/json")
            assert json.loads(reply["Body"].read()) == {"loaded": True, "a": 1}
    finally:
        release.touch()
        if router is not None:
            router.stop()
        runtime.stop()
