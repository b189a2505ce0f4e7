"""The operator and the async queue (a real valkey server): its own queue-depth scaler, KEDA when its CRDs exist,
and the delete finalizer that purges the queue unless retainOnDelete."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bundleserve.queue import keys
from tests.integration.operator_harness import ENDPOINTS, NS, Operator, condition_is, endpoint_doc, prepare
from tests.support.k8s.emulator import KubernetesEmulator
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

# The fields we use of KEDA's ScaledObject CRD; installing it makes keda.sh/v1alpha1 served, as KEDA would.
KEDA_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "names": {
            "kind": "ScaledObject",
            "plural": "scaledobjects",
            "singular": "scaledobject",
            "listKind": "ScaledObjectList",
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "subresources": {"status": {}},
            }
        ],
    },
}


@pytest.fixture
def queue(valkey_server: Valkey) -> Iterator[redis.Redis]:
    client = valkey_server.client()
    yield client
    client.close()


def stream_of(name: str) -> str:
    """The stream of the Endpoint `name` in the test namespace."""
    return keys.stream(keys.queue_id(NS, name))


def async_endpoint(name: str, **spec: Any) -> dict[str, Any]:
    return endpoint_doc(name, modes=["async"], **spec)


def enqueue(client: redis.Redis, endpoint: str, count: int) -> list[str]:
    stream = stream_of(endpoint)
    try:
        client.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
    task_ids = []
    for _ in range(count):
        task_id = uuid.uuid4().hex
        client.hset(
            keys.task(keys.queue_id(NS, endpoint), task_id), mapping={"endpoint": endpoint, "status": "PENDING"}
        )
        client.xadd(stream, {"t": task_id})
        task_ids.append(task_id)
    return task_ids


def operator_env(valkey_server: Valkey, **extra: str) -> dict[str, str]:
    return {
        "BUNDLESERVE_REDIS_SECRET": "bundleserve-redis",
        "BUNDLESERVE_REDIS_URL": valkey_server.url,
        "BUNDLESERVE_OPERATOR_SCALER_SECONDS": "0.2",
        **extra,
    }


def replicas(cluster: KubernetesEmulator, name: str) -> int:
    return int(cluster.get("deployments.apps", name, NS)["spec"].get("replicas", 1))


def test_own_scaler_scales_from_zero_on_backlog_and_back_after_the_delay(
    k8s_api: KubernetesEmulator, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    cluster = prepare(k8s_api)
    cluster.auto_roll_out(True)
    operator = Operator(cluster, tmp_path, env=operator_env(valkey_server, BUNDLESERVE_KEDA="auto")).start()
    try:
        scaling = {"minReplicas": 0, "maxReplicas": 3, "targetConcurrency": 2, "scaleDownDelaySeconds": 0}
        cluster.create(async_endpoint("jobs-scale", scaling=scaling))
        wait_until(lambda: cluster.get("deployments.apps", "jobs-scale", NS), timeout=20, what="the Deployment")
        assert replicas(cluster, "jobs-scale") == 0  # starts at minReplicas: scale to zero
        wait_until(
            lambda: condition_is(cluster, "jobs-scale", "Ready", "True", "ScaledToZero"),
            timeout=20,
            what="Ready=ScaledToZero",
        )
        assert not cluster.items("horizontalpodautoscalers.autoscaling", NS)

        enqueue(queue, "jobs-scale", 5)
        wait_until(lambda: replicas(cluster, "jobs-scale") == 3, timeout=20, what="scaled to ceil(5/2)=3")
        wait_until(
            lambda: (cluster.get(ENDPOINTS, "jobs-scale", NS)["status"].get("queue") or {}).get("backlog") == 5,
            timeout=20,
            what="status.queue.backlog",
        )
        queue.delete(stream_of("jobs-scale"))
        wait_until(lambda: replicas(cluster, "jobs-scale") == 0, timeout=20, what="scaled back to zero")
        assert operator.metric("bundleserve_operator_api_writes_total", verb="patch", kind="Deployment") >= 2
    finally:
        operator.stop()


def test_keda_present_means_a_scaled_object_and_no_own_scaling(
    k8s_api: KubernetesEmulator, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    cluster = prepare(k8s_api)
    cluster.install_crd(KEDA_CRD)
    operator = Operator(cluster, tmp_path, env=operator_env(valkey_server, BUNDLESERVE_KEDA="auto")).start()
    try:
        cluster.create(async_endpoint("jobs-keda", scaling={"minReplicas": 0, "maxReplicas": 4}))
        wait_until(lambda: cluster.get("scaledobjects.keda.sh", "jobs-keda", NS), timeout=20, what="ScaledObject")
        scaled = cluster.get("scaledobjects.keda.sh", "jobs-keda", NS)
        trigger = scaled["spec"]["triggers"][0]
        assert (trigger["type"], trigger["metadata"]["stream"]) == ("redis-streams", stream_of("jobs-keda"))
        assert scaled["metadata"]["ownerReferences"][0]["name"] == "jobs-keda"
        enqueue(queue, "jobs-keda", 6)
        operator.wait_idle(["jobs-keda"], at_least=2)
        assert replicas(cluster, "jobs-keda") == 0  # KEDA's job, not ours
        assert operator.metric("bundleserve_operator_api_writes_total", verb="patch", kind="Deployment") == 0
    finally:
        operator.stop()
        queue.delete(stream_of("jobs-keda"))


@pytest.mark.parametrize("retain", [False, True])
def test_deleting_an_async_endpoint_purges_its_queue_unless_retained(
    k8s_api: KubernetesEmulator, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path, retain: bool
) -> None:
    cluster = prepare(k8s_api)
    operator = Operator(cluster, tmp_path, env=operator_env(valkey_server, BUNDLESERVE_KEDA="off")).start()
    name = f"jobs-{'kept' if retain else 'gone'}"
    try:
        cluster.create(async_endpoint(name, **{"async": {"retainOnDelete": retain}}))
        wait_until(lambda: cluster.get("deployments.apps", name, NS), timeout=20, what="the Deployment")
        task_ids = enqueue(queue, name, 3)
        cluster.delete(ENDPOINTS, name, NS)
        wait_until(lambda: cluster.get(ENDPOINTS, name, NS) is None, timeout=20, what="the Endpoint deleted")
        assert bool(queue.exists(stream_of(name))) == retain
        assert queue.exists(*[keys.task(keys.queue_id(NS, name), task_id) for task_id in task_ids]) == (
            3 if retain else 0
        )
    finally:
        operator.stop()
        queue.delete(stream_of(name), *[keys.task(keys.queue_id(NS, name), t) for t in locals().get("task_ids", [])])


def test_deletion_waits_for_in_flight_tasks(
    k8s_api: KubernetesEmulator, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    cluster = prepare(k8s_api)
    operator = Operator(cluster, tmp_path, env=operator_env(valkey_server, BUNDLESERVE_KEDA="off")).start()
    try:
        cluster.create(async_endpoint("jobs-busy"))
        wait_until(lambda: cluster.get("deployments.apps", "jobs-busy", NS), timeout=20, what="the Deployment")
        enqueue(queue, "jobs-busy", 2)
        (entries,) = queue.xreadgroup(keys.GROUP, "worker-1", {stream_of("jobs-busy"): ">"}, count=1)[0][1:]
        cluster.delete(ENDPOINTS, "jobs-busy", NS)
        wait_until(
            lambda: cluster.get(ENDPOINTS, "jobs-busy", NS)["metadata"].get("deletionTimestamp"), what="deleting"
        )

        def retried() -> bool:  # kopf records the finalizer handler's retries in its progress annotation
            annotations = cluster.get(ENDPOINTS, "jobs-busy", NS)["metadata"].get("annotations", {})
            return int(json.loads(annotations.get("bundleserve.dev/cleanup", "{}")).get("retries") or 0) >= 1

        wait_until(retried, timeout=20, what="the finalizer to wait for the in-flight task")
        assert queue.exists(stream_of("jobs-busy"))
        entry_id = entries[0][0]
        queue.xack(stream_of("jobs-busy"), keys.GROUP, entry_id)
        queue.xdel(stream_of("jobs-busy"), entry_id)  # the worker finished it
        wait_until(lambda: cluster.get(ENDPOINTS, "jobs-busy", NS) is None, timeout=20, what="released after the task")
        assert not queue.exists(stream_of("jobs-busy"))
    finally:
        operator.stop()


def test_deletion_is_never_blocked_forever_by_a_stuck_task(
    k8s_api: KubernetesEmulator, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    cluster = prepare(k8s_api)
    env = operator_env(valkey_server, BUNDLESERVE_KEDA="off", BUNDLESERVE_OPERATOR_CLEANUP_MAX_SECONDS="1")
    operator = Operator(cluster, tmp_path, env=env).start()
    try:
        cluster.create(async_endpoint("jobs-stuck"))
        wait_until(lambda: cluster.get("deployments.apps", "jobs-stuck", NS), timeout=20, what="the Deployment")
        enqueue(queue, "jobs-stuck", 1)
        queue.xreadgroup(keys.GROUP, "worker-gone", {stream_of("jobs-stuck"): ">"}, count=1)  # never acknowledged
        cluster.delete(ENDPOINTS, "jobs-stuck", NS)
        wait_until(
            lambda: cluster.get(ENDPOINTS, "jobs-stuck", NS) is None, timeout=20, what="deletion after the bound"
        )
        assert not queue.exists(stream_of("jobs-stuck"))

        def warned() -> bool:
            return any(e["reason"] == "QueueCleanupTimedOut" for e in cluster.items("events", NS))

        wait_until(warned, timeout=10, what="a QueueCleanupTimedOut Event")
    finally:
        operator.stop()
