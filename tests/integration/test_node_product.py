"""The whole product on the real node: `helm install` of charts/bundleserve (operator and gateway pods from the image
built here, the operator with the chart's own ServiceAccount through in-cluster config), a Redis the test runs on the
host end of the node's veth, the examples' Endpoints in another namespace, Ready from real readiness probes, invoked
through the gateway's Service with curl and httpx; async accepted at zero replicas and finished when a replica starts.

Images: `tests/support/images.py` (`project_images()`, built with buildah and cached) imported into the node's
containerd; nothing is pulled (the chart's `IfNotPresent` finds them).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml

from tests.support.images import import_into_containerd, project_images
from tests.support.node import Node
from tests.support.processes import REPO
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(1200)

CHART = REPO / "charts" / "bundleserve"
RELEASE, SYSTEM, MODELS = "bs", "bundleserve-system", "models"
GROUP_VERSION = "bundleserve.dev/v1alpha1"


@dataclass(frozen=True)
class Product:
    node: Node
    gateway: str  # http://<ClusterIP> of the gateway Service
    api_key: str
    redis: Valkey

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def _deployment_ready(node: Node, namespace: str, name: str) -> bool:
    found = node.plane.get("apps/v1", "Deployment", namespace, name) or {}
    status = found.get("status", {})
    return bool(status.get("readyReplicas")) and status.get("readyReplicas") == found["spec"]["replicas"]


def _describe_pods(node: Node, namespace: str) -> str:
    lines = []
    for pod in node.plane.items("v1", "Pod", namespace):
        status = pod.get("status", {})
        states = [(c["name"], c.get("state"), c.get("restartCount")) for c in status.get("containerStatuses", [])]
        waiting = [c.get("message") for c in status.get("conditions", []) if c.get("status") == "False"]
        lines.append(f"{pod['metadata']['name']} {status.get('phase')} {states} {waiting}")
    return "\n".join(lines)


def _wait(node: Node, what: str, predicate: Any, namespace: str, timeout: float = 300) -> Any:
    try:
        return wait_until(predicate, timeout=timeout, interval=0.5, what=what)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n--- pods in {namespace} ---\n{_describe_pods(node, namespace)}") from None


def _endpoint_ready(node: Node, namespace: str, name: str) -> bool:
    body = node.plane.get(GROUP_VERSION, "Endpoint", namespace, name) or {}
    conditions = {c["type"]: c for c in body.get("status", {}).get("conditions", [])}
    return conditions.get("Ready", {}).get("status") == "True"


def _example(name: str, **spec: Any) -> dict[str, Any]:
    """examples/NAME/endpoint.yaml in MODELS, with small requests: the node has 2 CPUs for every pod of the module."""
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / name / "endpoint.yaml").read_text())
    doc["metadata"]["namespace"] = MODELS
    doc["spec"]["resources"] = {"cpu": "200m", "memory": "256Mi"}
    doc["spec"].update(spec)
    return doc


@pytest.fixture(scope="module")
def product(kube_node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    node, plane = kube_node, kube_node.plane
    for archive in project_images().archives().values():
        import_into_containerd(archive, str(node.containerd_socket))
    # Pods reach the host end of the veth (only the node's namespace routes there); loopback stays bound for the test.
    # No password: protected mode would refuse the pods' connections, so it is off for this one listener.
    redis = Valkey(
        tmp_path_factory.mktemp("redis"),
        extra=["--bind", "127.0.0.1", node.net.host_ip, "--protected-mode", "no"],
    ).start()
    try:
        plane.create_namespace(SYSTEM)
        plane.create_namespace(MODELS)
        url = f"redis://{node.net.host_ip}:{redis.port}/0"
        plane.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bs-redis", "namespace": SYSTEM},
                     "stringData": {"url": url}})  # fmt: skip
        values = {"gateway": {"enabled": True}, "redis": {"existingSecret": "bs-redis"}}
        with (
            helm.Config(kubeconfig_path=plane.kubeconfig, namespace=SYSTEM) as config,
            helm.Chart.load(CHART) as chart,
        ):
            config.install(chart, RELEASE, values, namespace=SYSTEM)
        for component in ("operator", "gateway"):
            name = f"{RELEASE}-bundleserve-{component}"
            _wait(node, f"{name} ready", lambda name=name: _deployment_ready(node, SYSTEM, name), SYSTEM)
        secret = plane.get("v1", "Secret", SYSTEM, f"{RELEASE}-bundleserve-api-keys")
        api_key = base64.b64decode(secret["data"]["api-keys"]).decode().split()[0]  # type: ignore[index]
        service = plane.get("v1", "Service", SYSTEM, f"{RELEASE}-bundleserve-gateway")
        gateway = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"  # type: ignore[index]
        yield Product(node, gateway, api_key, redis)
    finally:
        redis.stop()


def test_an_example_endpoint_serves_through_the_gateway_service(product: Product) -> None:
    plane = product.node.plane
    started = time.monotonic()
    plane.apply(_example("echo"))
    _wait(product.node, "echo Ready", lambda: _endpoint_ready(product.node, MODELS, "echo"), MODELS)
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
    doc = _example("echo", modes=["async"], scaling={"minReplicas": 0, "maxReplicas": 1, "targetConcurrency": 4})
    doc["metadata"]["name"] = "echo-async"
    plane.apply(doc)
    deployment = lambda: plane.get("apps/v1", "Deployment", MODELS, "echo-async")  # noqa: E731
    _wait(product.node, "the Deployment at 0 replicas", lambda: (deployment() or {}).get("spec", {})
          .get("replicas") == 0, MODELS)  # fmt: skip
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=30) as http:
        accepted = http.post("/v1/endpoints/echo-async/async", json={"args": {"text": "queued at zero"}})
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]

        def finished() -> dict[str, Any] | None:
            task: dict[str, Any] = http.get(f"/v1/tasks/{task_id}").json()
            return task if task.get("status") in {"SUCCESS", "FAILURE"} or task.get("state") in {"SUCCESS"} else None

        task = _wait(product.node, "the queued task finished", finished, MODELS, timeout=400)
    assert "queued at zero" in json.dumps(task), task
    assert (deployment() or {})["spec"]["replicas"] >= 1


def test_the_sdk_calls_the_endpoint_through_the_gateway_service(product: Product) -> None:
    from bundleserve.client import Client, EndpointRequest

    product.node.plane.apply(_example("echo"))
    _wait(product.node, "echo Ready", lambda: _endpoint_ready(product.node, MODELS, "echo"), MODELS)
    with Client(product.gateway, api_key=product.api_key) as client:
        response = client.endpoint("echo", mode="sync").predict(EndpointRequest(args={"text": "sdk on the node"}))
        assert response.status == "SUCCESS", response
        assert response.result_value() == {"text": "sdk on the node"}
        with client.endpoint("echo", mode="streaming").predict(EndpointRequest(args={"text": "a b c"})) as stream:
            words = [event.result_value() for event in stream]
    assert words == ["a", "b", "c"]
