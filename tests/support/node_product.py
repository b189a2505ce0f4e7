"""The whole product installed on the real node, shared by the tests that use it (tests/integration/test_node_*.py):
`helm install` of charts/bundleserve (operator and gateway pods from the image built here, the operator with the
chart's own ServiceAccount through in-cluster config), a Redis the test runs on the host end of the node's veth, and
helpers to apply the examples' Endpoints in namespace `models` and wait for them.

`product` is session-scoped (registered in tests/integration/conftest.py) so the chart is installed once for every
module that needs it. The gateway also verifies SageMaker SigV4 signatures with one key pair (`SAGEMAKER_KEY`, from a
Secret through `gateway.extraEnv`), so unmodified boto3 can sign its calls as docs/dialects.md describes.

Images: `tests/support/images.py` (`project_images()`, built with buildah and cached) imported into the node's
containerd; nothing is pulled (the chart's `IfNotPresent` finds them).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.support.images import import_into_containerd, project_images
from tests.support.node import Node
from tests.support.processes import REPO
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

CHART = REPO / "charts" / "bundleserve"
RELEASE, SYSTEM, MODELS = "bs", "bundleserve-system", "models"
GROUP_VERSION = "bundleserve.dev/v1alpha1"
#: The SigV4 key pair the gateway verifies (access key id, secret), and the region it accepts.
SAGEMAKER_KEY = ("AKIDNODETEST", "node-test-secret-access-key")
SAGEMAKER_REGION = "us-east-1"


@dataclass(frozen=True)
class Product:
    node: Node
    gateway: str  # http://<ClusterIP> of the gateway Service
    api_key: str
    redis: Valkey

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def deployment_ready(node: Node, namespace: str, name: str) -> bool:
    found = node.plane.get("apps/v1", "Deployment", namespace, name) or {}
    status = found.get("status", {})
    return bool(status.get("readyReplicas")) and status.get("readyReplicas") == found["spec"]["replicas"]


def describe_pods(node: Node, namespace: str) -> str:
    lines = []
    for pod in node.plane.items("v1", "Pod", namespace):
        status = pod.get("status", {})
        states = [(c["name"], c.get("state"), c.get("restartCount")) for c in status.get("containerStatuses", [])]
        waiting = [c.get("message") for c in status.get("conditions", []) if c.get("status") == "False"]
        lines.append(f"{pod['metadata']['name']} {status.get('phase')} {states} {waiting}")
    return "\n".join(lines)


def wait_for(node: Node, what: str, predicate: Any, namespace: str, timeout: float = 300) -> Any:
    try:
        return wait_until(predicate, timeout=timeout, interval=0.5, what=what)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n--- pods in {namespace} ---\n{describe_pods(node, namespace)}") from None


def endpoint_ready(node: Node, namespace: str, name: str) -> bool:
    body = node.plane.get(GROUP_VERSION, "Endpoint", namespace, name) or {}
    conditions = {c["type"]: c for c in body.get("status", {}).get("conditions", [])}
    return conditions.get("Ready", {}).get("status") == "True"


def example(name: str, **spec: Any) -> dict[str, Any]:
    """examples/NAME/endpoint.yaml in MODELS, with small requests: the node has 2 CPUs for every pod of the module."""
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / name / "endpoint.yaml").read_text())
    doc["metadata"]["namespace"] = MODELS
    doc["spec"]["resources"] = {"cpu": "200m", "memory": "256Mi"}
    doc["spec"].update(spec)
    return doc


@pytest.fixture(scope="session")
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
        plane.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bs-sigv4", "namespace": SYSTEM},
                     "stringData": {"id": SAGEMAKER_KEY[0], "secret": SAGEMAKER_KEY[1]}})  # fmt: skip
        sigv4_env = [
            {
                "name": f"BUNDLESERVE_SAGEMAKER_{variable}",
                "valueFrom": {"secretKeyRef": {"name": "bs-sigv4", "key": key}},
            }
            for variable, key in (("ACCESS_KEY_ID", "id"), ("SECRET_ACCESS_KEY", "secret"))
        ]
        values = {
            "gateway": {"enabled": True, "extraEnv": sigv4_env},
            "redis": {"existingSecret": "bs-redis"},
        }
        with (
            helm.Config(kubeconfig_path=plane.kubeconfig, namespace=SYSTEM) as config,
            helm.Chart.load(CHART) as chart,
        ):
            config.install(chart, RELEASE, values, namespace=SYSTEM)
        for component in ("operator", "gateway"):
            name = f"{RELEASE}-bundleserve-{component}"
            wait_for(node, f"{name} ready", lambda name=name: deployment_ready(node, SYSTEM, name), SYSTEM)
        secret = plane.get("v1", "Secret", SYSTEM, f"{RELEASE}-bundleserve-api-keys")
        api_key = base64.b64decode(secret["data"]["api-keys"]).decode().split()[0]  # type: ignore[index]
        service = plane.get("v1", "Service", SYSTEM, f"{RELEASE}-bundleserve-gateway")
        gateway = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"  # type: ignore[index]
        yield Product(node, gateway, api_key, redis)
    finally:
        redis.stop()
