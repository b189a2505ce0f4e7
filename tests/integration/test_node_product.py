"""The whole product on the real node: `helm install` of charts/bundleserve (operator and gateway pods from the image
built here, the operator with the chart's own ServiceAccount through in-cluster config), a Redis the test runs on the
host end of the node's veth, the examples' Endpoints in another namespace, Ready from real readiness probes, invoked
through the gateway's Service with curl and httpx; async accepted at zero replicas and finished when a replica starts.

Images: `tests/support/images.py` (`project_images()`, built with buildah and cached) imported into the node's
containerd; nothing is pulled (the chart's `IfNotPresent` finds them).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import pytest

from tests.support.node_product import MODELS, Product, endpoint_ready, example, wait_for

pytestmark = pytest.mark.timeout(1200)


def test_an_example_endpoint_serves_through_the_gateway_service(product: Product) -> None:
    plane = product.node.plane
    started = time.monotonic()
    plane.apply(example("echo"))
    wait_for(product.node, "echo Ready", lambda: endpoint_ready(product.node, MODELS, "echo"), MODELS)
    ready_in = time.monotonic() - started
    body = {"args": {"text": "through the node"}}
    # curl, as a user would type it
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-m", "30", "-H", f"Authorization: Bearer {product.api_key}",
         "-H", "Content-Type: application/json", "-d", json.dumps(body),
         f"{product.gateway}/v1/endpoints/echo/predict"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "through the node" in done.stdout
    # httpx: the endpoint listed as ready, and a sync call
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=30) as http:
        listed = http.get("/v1/endpoints/echo").json()
        assert listed["ready"] is True, listed
        answer = http.post("/v1/endpoints/echo/predict", json=body)
        assert answer.status_code == 200, answer.text
        assert "through the node" in answer.text
    print(f"echo Ready {ready_in:.1f}s after apply")


def test_async_is_accepted_at_zero_replicas_and_finishes_when_a_replica_starts(product: Product) -> None:
    plane = product.node.plane
    doc = example("echo", modes=["async"], scaling={"minReplicas": 0, "maxReplicas": 1, "targetConcurrency": 4})
    doc["metadata"]["name"] = "echo-async"
    plane.apply(doc)
    deployment = lambda: plane.get("apps/v1", "Deployment", MODELS, "echo-async")  # noqa: E731
    wait_for(product.node, "the Deployment at 0 replicas", lambda: (deployment() or {}).get("spec", {})
          .get("replicas") == 0, MODELS)  # fmt: skip
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=30) as http:
        accepted = http.post("/v1/endpoints/echo-async/async", json={"args": {"text": "queued at zero"}})
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]

        def finished() -> dict[str, Any] | None:
            task: dict[str, Any] = http.get(f"/v1/tasks/{task_id}").json()
            return task if task.get("status") in {"SUCCESS", "FAILURE"} or task.get("state") in {"SUCCESS"} else None

        task = wait_for(product.node, "the queued task finished", finished, MODELS, timeout=400)
    assert "queued at zero" in json.dumps(task), task
    assert (deployment() or {})["spec"]["replicas"] >= 1


def test_the_sdk_calls_the_endpoint_through_the_gateway_service(product: Product) -> None:
    from bundleserve.client import Client, EndpointRequest

    product.node.plane.apply(example("echo"))
    wait_for(product.node, "echo Ready", lambda: endpoint_ready(product.node, MODELS, "echo"), MODELS)
    with Client(product.gateway, api_key=product.api_key) as client:
        response = client.endpoint("echo", mode="sync").predict(EndpointRequest(args={"text": "sdk on the node"}))
        assert response.status == "SUCCESS", response
        assert response.result_value() == {"text": "sdk on the node"}
        with client.endpoint("echo", mode="streaming").predict(EndpointRequest(args={"text": "a b c"})) as stream:
            words = [event.result_value() for event in stream]
    assert words == ["a", "b", "c"]
