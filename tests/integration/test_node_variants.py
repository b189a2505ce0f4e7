"""Production variants on the real node, through the installed product (tests/support/node_product.py): the chart's
operator builds examples/canary's two variants (each its own Deployment and Service), the chart's gateway finds each
variant's Service by name and splits unnamed requests by weight, and a named variant is reached with the native
header, with SageMaker's TargetVariant (unmodified boto3, signed) and for an async task.

The split here is a smaller sample than local mode's (tests/e2e/test_variants_local_mode.py, 1,000 calls): 400 calls
at 90/10, green's count Binomial(400, 0.1) (mean 40, sd 6), accepted within 5 sd (10..70)."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import httpx
import pytest

from tests.support.node_product import (
    GROUP_VERSION,
    MODELS,
    SAGEMAKER_KEY,
    SAGEMAKER_REGION,
    Product,
    deployment_ready,
    endpoint_ready,
    example,
    wait_for,
)
from tests.support.waiting import wait_until

N, P, SIGMAS = 400, 0.1, 5
#: The session's product is installed by the first node test that runs (images imported, chart installed, pods
#: Ready): minutes on the shared 2-core machine, as for the other node modules.
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture
def canary_applied(product: Product) -> Iterator[dict[str, Any]]:
    """examples/canary in the shared product, small (50m CPU per model: the node's 2 CPUs serve the whole session),
    deleted with its pods afterwards, pass or fail."""
    plane = product.node.plane
    canary = example("canary", modes=["sync", "async"], scaling={"minReplicas": 1, "maxReplicas": 1})
    canary["spec"]["resources"] = {"cpu": "50m", "memory": "256Mi"}
    plane.apply(canary)
    yield canary
    plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", MODELS, "canary"))
    wait_until(
        lambda: not plane.items("v1", "Pod", MODELS, selector="bundleserve.dev/endpoint=canary"),
        timeout=180,
        what="canary's pods deleted",
    )


def test_canary_variants_through_the_gateway_service(product: Product, canary_applied: dict[str, Any]) -> None:
    node = product.node
    for variant in ("canary-stable", "canary-canary"):
        wait_for(node, f"{variant} ready", lambda v=variant: deployment_ready(node, MODELS, v), MODELS)
    wait_for(node, "canary Ready", lambda: endpoint_ready(node, MODELS, "canary"), MODELS)

    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=60) as http:
        counts: Counter[str] = Counter()

        def call(headers: dict[str, str] | None = None) -> str:
            answer = http.post("/v1/endpoints/canary/predict", json={"args": {"n": 1}}, headers=headers or {})
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == {"n": 1}
            return answer.headers["X-Bundleserve-Variant"]

        # The gateway learns the Endpoint from its watch: wait until it routes (a 404 before that).
        wait_until(lambda: http.post("/v1/endpoints/canary/predict", json={"args": {}}).status_code == 200,
                   timeout=60, what="the gateway routes canary")  # fmt: skip
        for _ in range(N):
            counts[call()] += 1
        mean, sigma = N * P, math.sqrt(N * P * (1 - P))
        assert set(counts) == {"stable", "canary"}, counts
        assert math.ceil(mean - SIGMAS * sigma) <= counts["canary"] <= math.floor(mean + SIGMAS * sigma), counts
        assert all(call({"X-Bundleserve-Variant": "canary"}) == "canary" for _ in range(10))

        submitted = http.post(
            "/v1/endpoints/canary/async", json={"args": {"n": 2}}, headers={"X-Bundleserve-Variant": "canary"}
        )
        assert submitted.status_code == 202, submitted.text
        task = submitted.json()["task_id"]

        def finished() -> dict[str, Any] | None:
            document: dict[str, Any] = http.get(f"/v1/tasks/{task}", params={"wait": "5"}).json()
            return document if document["status"] in ("SUCCESS", "FAILURE") else None

        done = wait_until(finished, timeout=120, what="the canary task finished")
        assert (done["status"], done["variant"], done["result"]) == ("SUCCESS", "canary", {"n": 2})

    runtime = boto3.client(
        "sagemaker-runtime",
        endpoint_url=product.gateway,
        region_name=SAGEMAKER_REGION,
        aws_access_key_id=SAGEMAKER_KEY[0],
        aws_secret_access_key=SAGEMAKER_KEY[1],
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    reply = runtime.invoke_endpoint(
        EndpointName="canary", Body=json.dumps({"n": 3}), ContentType="application/json", TargetVariant="canary"
    )
    assert reply["InvokedProductionVariant"] == "canary"
    assert json.loads(reply["Body"].read()) == {"n": 3}
    runtime.close()
