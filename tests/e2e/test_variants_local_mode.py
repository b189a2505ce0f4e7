"""Production variants in local mode (`bundleserve run`, one model and router per variant behind the gateway):
the weighted split measured over 1,000 requests, a variant named by the native header and by SageMaker's
TargetVariant (unmodified boto3), unknown names refused, the answer naming the variant that answered, and async
tasks given a variant at submission, recorded with it and run by that variant's model.

Each variant's model answers its own MODEL_VERSION (set per variant in the manifest), so a test sees which model
ran, not only which header the gateway wrote."""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import botocore
import httpx
import pytest
from botocore.config import Config

from bundleserve.client import Client, EndpointRequest
from bundleserve.client.errors import InvalidRequest
from tests.support.local_mode import running_local_mode
from tests.support.sdk_clients import CLIENTS, STREAMING_CLIENTS, TYPED_ERRORS, Built, build, call

NAME = "canary"
MANIFEST = f"""
apiVersion: bundleserve.dev/v1alpha1
kind: Endpoint
metadata: {{name: {NAME}}}
spec:
  localOnly: true
  modes: [sync, streaming, async]
  bundle:
    python: {{entrypoint: "variant_model:predict", stream: "variant_model:stream", path: "."}}
    env: [{{name: MODEL_VERSION, value: base}}, {{name: GREETING, value: hello}}]
  variants:
    - {{name: blue, weight: 90, env: [{{name: MODEL_VERSION, value: blue}}]}}
    - {{name: green, weight: 10, env: [{{name: MODEL_VERSION, value: green}}]}}
    - {{name: shadow, weight: 0, env: [{{name: MODEL_VERSION, value: shadow}}]}}
"""
MODEL = """
import os


def predict(**kwargs):
    return {"variant": os.environ["MODEL_VERSION"], "greeting": os.environ["GREETING"]}


def stream(**kwargs):
    yield {"variant": os.environ["MODEL_VERSION"]}
"""
#: The split test: n requests that name no variant, green's weight share p. The count of green answers is
#: Binomial(n, p): mean 100, standard deviation sqrt(n p (1-p)) = 9.49. Accepted: within 5 standard deviations
#: (53..147), which a correct 90/10 split misses with probability below 1e-6; a 50/50 split (500) or a split that
#: ignores weights entirely (0 or 1000) cannot pass.
N, P, SIGMAS = 1000, 0.1, 5


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("variants-local")
    (directory / "variant_model.py").write_text(textwrap.dedent(MODEL))
    manifest = directory / "endpoint.yaml"
    manifest.write_text(MANIFEST)
    with running_local_mode(directory, [manifest]) as (url, _):
        yield url


def predict(client: httpx.Client, headers: dict[str, str] | None = None) -> tuple[str | None, dict[str, Any]]:
    response = client.post(f"/v1/endpoints/{NAME}/predict", json={"args": {}}, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.headers.get("X-Bundleserve-Variant"), response.json()["result"]


def test_requests_that_name_no_variant_are_split_by_weight(local_run: str) -> None:
    with httpx.Client(base_url=local_run, timeout=30) as client, ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: predict(client), range(N)))
    for header, body in answers:
        assert header == body["variant"]  # the header names the model that really answered
        assert body["greeting"] == "hello"  # the endpoint's env reaches every variant
    counts = Counter(header for header, _ in answers)
    assert set(counts) <= {"blue", "green"}  # weight 0: never picked by weight
    mean, sigma = N * P, math.sqrt(N * P * (1 - P))
    low, high = math.ceil(mean - SIGMAS * sigma), math.floor(mean + SIGMAS * sigma)
    assert low <= counts["green"] <= high, counts
    assert counts["blue"] + counts["green"] == N


def test_the_native_header_names_the_variant(local_run: str) -> None:
    with httpx.Client(base_url=local_run, timeout=30) as client:
        described = client.get(f"/v1/endpoints/{NAME}").json()
        assert described["variants"] == [
            {"name": "blue", "weight": 90},
            {"name": "green", "weight": 10},
            {"name": "shadow", "weight": 0},
        ]
        for variant in ("green", "shadow", "blue"):
            for _ in range(5):
                assert predict(client, {"X-Bundleserve-Variant": variant}) == (
                    variant,
                    {"variant": variant, "greeting": "hello"},
                )
        # A body above the fast edge's 64 KiB goes through the aiohttp route (Gateway.forward_to): the same pick.
        large = client.post(
            f"/v1/endpoints/{NAME}/predict",
            json={"args": {"pad": "x" * 70_000}},
            headers={"X-Bundleserve-Variant": "green"},
        )
        assert large.status_code == 200, large.text
        assert (large.headers["X-Bundleserve-Variant"], large.json()["result"]["variant"]) == ("green", "green")
        refused = client.post(
            f"/v1/endpoints/{NAME}/predict", json={"args": {}}, headers={"X-Bundleserve-Variant": "red"}
        )
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "unknown_variant"
        assert "it has: blue, green, shadow" in error["message"]
        streamed = client.post(
            f"/v1/endpoints/{NAME}/stream", json={"args": {}}, headers={"X-Bundleserve-Variant": "green"}
        )
        assert streamed.status_code == 200
        assert streamed.headers["X-Bundleserve-Variant"] == "green"
        assert '"variant": "green"' in streamed.text or '"variant":"green"' in streamed.text


@pytest.fixture
def runtime(local_run: str) -> Iterator[Any]:
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=local_run,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}),
    )
    yield client
    client.close()


def test_boto3_target_variant_reaches_that_variant(runtime: Any) -> None:
    for variant in ("green", "shadow"):
        reply = runtime.invoke_endpoint(
            EndpointName=NAME, Body=b"{}", ContentType="application/json", TargetVariant=variant
        )
        assert reply["InvokedProductionVariant"] == variant
        assert json.loads(reply["Body"].read())["variant"] == variant
    unnamed = runtime.invoke_endpoint(EndpointName=NAME, Body=b"{}", ContentType="application/json")
    assert unnamed["InvokedProductionVariant"] in {"blue", "green"}
    assert json.loads(unnamed["Body"].read())["variant"] == unnamed["InvokedProductionVariant"]
    streamed = runtime.invoke_endpoint_with_response_stream(
        EndpointName=NAME, Body=b"{}", ContentType="application/json", TargetVariant="green"
    )
    assert streamed["InvokedProductionVariant"] == "green"
    parts = b"".join(event["PayloadPart"]["Bytes"] for event in streamed["Body"] if "PayloadPart" in event)
    assert b"green" in parts


def test_boto3_unknown_target_variant_is_a_validation_error(runtime: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        runtime.invoke_endpoint(EndpointName=NAME, Body=b"{}", ContentType="application/json", TargetVariant="red")
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationError"
    assert "no production variant 'red'" in error["Message"]


def wait_done(client: httpx.Client, task_id: str) -> dict[str, Any]:
    for _ in range(60):  # each call long-polls up to 10 s for the task to finish
        status = client.get(f"/v1/tasks/{task_id}", params={"wait": "10"})
        assert status.status_code == 200, status.text
        document: dict[str, Any] = status.json()
        if document["status"] in ("SUCCESS", "FAILURE"):
            return document
    raise AssertionError(f"task {task_id} did not finish")


def test_async_tasks_run_on_the_variant_they_were_given(local_run: str) -> None:
    with httpx.Client(base_url=local_run, timeout=30) as client:
        named = []
        for _ in range(5):
            submitted = client.post(
                f"/v1/endpoints/{NAME}/async", json={"args": {}}, headers={"X-Bundleserve-Variant": "shadow"}
            )
            assert submitted.status_code == 202, submitted.text
            named.append(submitted.json()["task_id"])
        unnamed = []
        for _ in range(40):
            submitted = client.post(f"/v1/endpoints/{NAME}/async", json={"args": {}})
            assert submitted.status_code == 202, submitted.text
            unnamed.append(submitted.json()["task_id"])
        for task_id in named:
            document = wait_done(client, task_id)
            assert (document["status"], document["variant"]) == ("SUCCESS", "shadow")
            assert document["result"]["variant"] == "shadow"  # shadow's own model ran it
        seen: Counter[str] = Counter()
        for task_id in unnamed:
            document = wait_done(client, task_id)
            assert document["status"] == "SUCCESS"
            assert document["variant"] in {"blue", "green"}
            assert document["result"]["variant"] == document["variant"]  # recorded and run on the same variant
            seen[document["variant"]] += 1
        assert seen["blue"] > seen["green"]  # 40 draws at 90/10: green above 20 has probability below 1e-9
        refused = client.post(
            f"/v1/endpoints/{NAME}/async", json={"args": {}}, headers={"X-Bundleserve-Variant": "red"}
        )
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "unknown_variant")


def test_a_retried_call_reaches_the_variant_its_first_attempt_did(local_run: str) -> None:
    """Retries carry the same idempotency key; the router and the queue run them once only on the same variant, so
    the pick draws from the key. Without that, a 90/10 pick sends both attempts of a key to the same variant with
    probability 0.82 each: 50 keys all alike by chance is below 1e-4."""
    with httpx.Client(base_url=local_run, timeout=30) as client:
        for index in range(50):
            key = {"Idempotency-Key": f"retry-{index}"}
            assert predict(client, key)[0] == predict(client, key)[0], index
        for index in range(30):
            key = {"Idempotency-Key": f"async-retry-{index}"}
            first = client.post(f"/v1/endpoints/{NAME}/async", json={"args": {}}, headers=key)
            again = client.post(f"/v1/endpoints/{NAME}/async", json={"args": {}}, headers=key)
            assert (first.status_code, again.status_code) == (202, 202)
            assert first.json()["task_id"] == again.json()["task_id"], index  # one task, not two


@pytest.fixture(scope="module")
def sdk_clients() -> Built:
    return build()


@pytest.mark.parametrize("sdk", CLIENTS)
def test_every_official_sdk_reaches_its_target_variant(local_run: str, sdk_clients: Built, sdk: str) -> None:
    """The AWS SDKs for Java v1 and v2 and for Rust, unmodified, with TargetVariant (signed with any key: local mode
    admits unsigned calls, so it checks no signature)."""
    base = {
        "url": local_run, "region": "us-east-1", "access_key": "local", "secret_key": "local", "endpoint": NAME,
        "body": "{}", "content_type": "application/json",
    }  # fmt: skip
    for variant in ("green", "shadow"):
        answer = call(sdk_clients, sdk, "invoke", {**base, "target_variant": variant})
        assert answer["invoked_variant"] == variant, answer
        assert json.loads(answer["body"])["variant"] == variant
    refused = call(sdk_clients, sdk, "invoke", {**base, "target_variant": "red"})
    assert (refused.get("error"), refused.get("code"), refused.get("status")) == (
        TYPED_ERRORS[sdk]["ValidationError"],
        "ValidationError",
        400,
    ), refused
    if sdk in STREAMING_CLIENTS:
        streamed = call(sdk_clients, sdk, "invoke_stream", {**base, "target_variant": "green"})
        assert "green" in "".join(streamed["parts"]), streamed


def test_the_python_client_names_a_variant_and_reads_which_answered(local_run: str) -> None:
    with Client(local_run) as client:
        endpoint = client.endpoint(NAME, mode="sync")
        named = endpoint.predict(EndpointRequest(args={}, variant="green"))
        assert (named.variant, named.result_value()["variant"]) == ("green", "green")
        unnamed = endpoint.predict(EndpointRequest(args={}))
        assert unnamed.variant in {"blue", "green"}
        assert unnamed.result_value()["variant"] == unnamed.variant
        with pytest.raises(InvalidRequest, match="no production variant 'red'"):
            endpoint.predict(EndpointRequest(args={}, variant="red"))
        task = client.endpoint(NAME, mode="async").predict(EndpointRequest(args={}, variant="shadow")).get(timeout=60)
        assert (task.variant, task.result_value()["variant"]) == ("shadow", "shadow")
