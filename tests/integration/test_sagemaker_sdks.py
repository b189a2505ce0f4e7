"""The SageMaker Runtime dialect with every official AWS SDK besides boto3: the SDK for Java v1
(`AmazonSageMakerRuntime`) and v2 (`SageMakerRuntimeClient`, `SageMakerRuntimeAsyncClient`) and the SDK for Rust
(`aws-sdk-sagemakerruntime`), unmodified, fetched from their registries and built in the tests' cache
(tests/support/sdk_clients.py). Each call runs a small driver (tests/sdk_clients/) in its own process, signed with
SigV4 by the SDK itself, against the gateway in front of a real router (the fixtures of test_sagemaker_on_gateway.py);
tests/e2e/test_sagemaker_sdks_local_mode.py re-collects them against `bundleserve run`.

Every test takes `sagemaker_target` (where to call) and `read_output` (how to wait for an async output location:
the http(s) route here, an S3 object where results are in S3).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_router_fake_model import start_router
from tests.integration.test_sagemaker_boto3 import (
    ACCESS_KEY,
    BUNDLE,
    NAME,
    REGION,
    SECRET_KEY,
    SageMakerTarget,
    _await_output,
    _client,
    input_server,  # noqa: F401 - fixture
    write_endpoint_file,
)
from tests.integration.test_sagemaker_on_gateway import (  # noqa: F401 - the gateway in front of a real router
    backend,
    entry_for,
    gateway_app,
    sagemaker_target,
)
from tests.support.processes import Server, bundleserve, free_port
from tests.support.sdk_clients import CLIENTS, STREAMING_CLIENTS, TYPED_ERRORS, Built, build, call
from tests.support.waiting import wait_until

ReadOutput = Callable[[str], bytes]
#: Given on every call with a JSON body: the Rust SDK sends `Content-Type: application/octet-stream` when the caller
#: sets none (boto3 sends no header), and an octet-stream body reaches a Python bundle as bytes, by the dialect's rule.
JSON = "application/json"


@pytest.fixture(scope="session")
def sdk_clients() -> Built:
    """The built drivers (`make sdk-clients` builds them before pytest; here a no-op then, else the build)."""
    return build()


@pytest.fixture(params=CLIENTS)
def sdk(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def read_output(sagemaker_target: SageMakerTarget) -> ReadOutput:  # noqa: F811
    """Without S3 the output location is the dialect's http route; polled signed, as any SigV4 signer can."""
    return lambda location: _await_output(sagemaker_target, location, signed=True)


def sdk_call(built: Built, client: str, target: SageMakerTarget, op: str, **arguments: str) -> dict[str, Any]:
    """One call of `client`, signed with the target's key pair."""
    signing = {"url": target.url, "region": target.region, "access_key": target.access_key}
    return call(
        built, client, op, {**signing, "secret_key": target.secret_key, "endpoint": target.endpoint, **arguments}
    )


def assert_typed(answer: dict[str, Any], client: str, code: str, status: int) -> None:
    """The SDK parsed the error into its own modeled type (class or enum variant), with AWS's code and status."""
    assert answer.get("error") == TYPED_ERRORS[client][code], answer
    assert answer["code"] == code, answer
    assert answer["status"] == status, answer


# -- InvokeEndpoint --------------------------------------------------------------------------------------------------


def test_invoke_endpoint_with_custom_attributes_and_inference_id(
    sdk_clients: Built,
    sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    answer = sdk_call(
        sdk_clients,
        sdk,
        sagemaker_target,
        "invoke",
        body='{"a": 1, "who": "sdk"}',
        content_type="application/json",
        accept="application/json",
        custom_attributes="trace=abc-123",
        inference_id=f"inf-{uuid.uuid4().hex[:8]}",
    )
    assert json.loads(answer["body"]) == {"a": 1, "who": "sdk"}
    assert answer["custom_attributes"] == "trace=abc-123"
    assert answer["invoked_variant"] == "AllTraffic"
    assert answer["content_type"].startswith("application/json")


def test_invoke_endpoint_with_a_non_json_body(
    sdk_clients: Built,
    sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    answer = sdk_call(sdk_clients, sdk, sagemaker_target, "invoke", body="1.0,2.0,3.0", content_type="text/csv")
    assert json.loads(answer["body"])["size"] == len("1.0,2.0,3.0")


def test_unknown_endpoint_is_a_typed_validation_error(
    sdk_clients: Built,
    sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    target = SageMakerTarget(**{**sagemaker_target.__dict__, "endpoint": "no-such-endpoint"})
    answer = sdk_call(sdk_clients, sdk, target, "invoke", body="{}", content_type="application/json")
    assert_typed(answer, sdk, "ValidationError", 400)
    assert "no-such-endpoint" in answer["message"]


def test_model_failure_is_a_typed_model_error(
    sdk_clients: Built,
    sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    answer = sdk_call(
        sdk_clients, sdk, sagemaker_target, "invoke", body='{"fail": "no way"}', content_type="application/json"
    )
    assert_typed(answer, sdk, "ModelError", 424)
    assert answer["original_status_code"] == 500


def test_overload_is_a_typed_service_unavailable(
    sdk_clients: Built,
    sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    """The endpoint's only slot held by a boto3 call (no queue slots): the SDK's call is refused with 503."""
    release = sagemaker_target.scratch / f"release-{uuid.uuid4().hex}"
    started = Path(f"{release}.started")
    holder = _client(sagemaker_target, "signed")
    thread = threading.Thread(
        target=lambda: holder.invoke_endpoint(
            EndpointName=sagemaker_target.endpoint,
            Body=json.dumps({"hold": str(release)}),
            ContentType="application/json",
        )
    )
    thread.start()
    try:
        wait_until(started.exists, timeout=20, what="the held call to occupy the only slot")
        answer = sdk_call(sdk_clients, sdk, sagemaker_target, "invoke", body="{}", content_type="application/json")
        assert_typed(answer, sdk, "ServiceUnavailable", 503)
    finally:
        release.touch()
        thread.join(timeout=30)
        holder.close()


def test_rust_unsigned_calls_need_allow_no_auth(sdk_clients: Built, sagemaker_target: SageMakerTarget) -> None:  # noqa: F811
    """Unsigned (the server admits unsigned calls): the Rust SDK refuses to send a request without an identity
    unless the client config says `allow_no_auth()` (documented in docs/dialects.md)."""
    unsigned = {"url": sagemaker_target.url, "region": sagemaker_target.region, "endpoint": sagemaker_target.endpoint}
    body = {"body": '{"unsigned": true}', "content_type": JSON}
    refused = call(sdk_clients, "rust", "invoke", {**unsigned, **body, "allow_no_auth": "false"})
    assert refused["error"] == "SdkError"
    assert "identity" in refused["message"].lower() or "auth" in refused["message"].lower()
    answer = call(sdk_clients, "rust", "invoke", {**unsigned, **body})
    assert json.loads(answer["body"]) == {"unsigned": True}


# -- InvokeEndpointWithResponseStream --------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming_sdk", STREAMING_CLIENTS)
def test_response_stream_yields_payload_parts(
    sdk_clients: Built,
    streaming_sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    answer = sdk_call(
        sdk_clients,
        streaming_sdk,
        sagemaker_target,
        "invoke_stream",
        body='{"text": "one two three"}',
        content_type=JSON,
    )
    assert answer == {"parts": ["one", "two", "three"]}


@pytest.mark.parametrize("streaming_sdk", STREAMING_CLIENTS)
def test_a_mid_stream_failure_is_a_typed_model_stream_error(
    sdk_clients: Built,
    streaming_sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    answer = sdk_call(
        sdk_clients,
        streaming_sdk,
        sagemaker_target,
        "invoke_stream",
        body='{"text": "one two three", "fail_after": 2}',
        content_type=JSON,
    )
    assert answer["parts"] == ["one", "two"]
    assert answer["error"] == TYPED_ERRORS[streaming_sdk]["ModelStreamError"]
    assert answer["error_code"] == "StreamBroken"


@pytest.mark.parametrize("streaming_sdk", STREAMING_CLIENTS)
def test_a_stream_failing_before_its_first_part_is_a_typed_model_error(
    sdk_clients: Built,
    streaming_sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    answer = sdk_call(
        sdk_clients,
        streaming_sdk,
        sagemaker_target,
        "invoke_stream",
        body='{"text": "one", "fail_after": 0}',
        content_type=JSON,
    )
    assert_typed(answer, streaming_sdk, "ModelError", 424)


# -- InvokeEndpointAsync ---------------------------------------------------------------------------------------------


def test_invoke_endpoint_async_with_an_http_input_location(
    sdk_clients: Built,
    sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
    input_server: str,  # noqa: F811
    read_output: ReadOutput,
) -> None:
    """The SDKs' InvokeEndpointAsync takes an InputLocation (no inline body); a JSON object reaches the model as
    keyword arguments, as the same body inline would."""
    inference_id = f"inf-{uuid.uuid4().hex[:8]}"
    answer = sdk_call(
        sdk_clients,
        sdk,
        sagemaker_target,
        "invoke_async",
        input_location=input_server.replace("image.png", "args.json"),
        content_type="application/json",
        inference_id=inference_id,
    )
    assert answer["inference_id"] == inference_id
    assert answer["output_location"] and answer["failure_location"]
    assert json.loads(read_output(answer["output_location"])) == {"a": 4, "b": 5}


def test_invoke_endpoint_async_refuses_a_malformed_location(
    sdk_clients: Built,
    sdk: str,
    sagemaker_target: SageMakerTarget,  # noqa: F811
) -> None:
    answer = sdk_call(
        sdk_clients, sdk, sagemaker_target, "invoke_async", input_location="ftp://files.example.com/in.json"
    )
    assert_typed(answer, sdk, "ValidationError", 400)


# -- a model that is still loading (a router behind the gateway) -----------------------------------------------------


@pytest.fixture(scope="module")
def loading_gateway(backend: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[SageMakerTarget]:  # noqa: F811
    """The gateway in front of a router whose model's `load()` waits for a file the test never creates (the
    bundle's `slow_load`): every call is answered while the model loads."""
    directory = tmp_path_factory.mktemp("sdk-loading")
    port = free_port()
    runtime = Server(
        bundleserve(
            "bundle", "serve", "--entrypoint", "sm_model:predict_loaded", "--load", "sm_model:slow_load",
            "--path", str(BUNDLE), "--port", str(port),
        ),
        log_path=directory / "runtime.log",
        env={"SM_TEST_RELEASE": str(directory / "never-released")},
    )  # fmt: skip
    router = app = None
    try:
        router, url = start_router(
            directory, write_endpoint_file(directory), f"http://127.0.0.1:{port}", env=backend["env"]
        )
        app = gateway_app(directory, [entry_for(write_endpoint_file(directory), url)], backend["redis"])
        yield SageMakerTarget(app.start(), NAME, REGION, ACCESS_KEY, SECRET_KEY, backend["directory"])
    finally:
        if app is not None:
            app.stop()
        if router is not None:
            router.stop()
        runtime.stop()


def test_a_loading_model_is_a_typed_model_not_ready(
    sdk_clients: Built, sdk: str, loading_gateway: SageMakerTarget
) -> None:
    answer = sdk_call(sdk_clients, sdk, loading_gateway, "invoke", body='{"a": 1}', content_type="application/json")
    assert_typed(answer, sdk, "ModelNotReadyException", 429)
