"""The operator and the async queue (a real valkey server) on the real control plane (`kube_cluster`, the chart's
operator logged in as its ServiceAccount, one operator per test with the settings it needs): its own queue-depth
scaler, KEDA when its CRDs exist, and the delete finalizer that purges the queue unless retainOnDelete. Moved from the
API emulator; none of these needs a pod to run (the scaler's effect on pods: test_node_scenarios.py, 50 async tasks
at minReplicas 0)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from bundleserve.queue import demand, keys
from tests.integration.cluster_harness import (
    GROUP_VERSION,
    SYSTEM,
    Release,
    RunningOperator,
    conditions,
    endpoint_doc,
    install_release,
    start_operator,
    stop_operator,
)
from tests.support.cluster import ControlPlane
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


@pytest.fixture(scope="module")
def release(kube_cluster: ControlPlane, valkey_server: Valkey) -> Release:
    found = install_release(kube_cluster)
    data = {"url": valkey_server.url, "address": f"127.0.0.1:{valkey_server.port}"}
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    kube_cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bundleserve-redis",
                        "namespace": SYSTEM}, "data": encoded})  # fmt: skip
    return found


class Cluster:
    """One test's namespace on the real API server, and the operator it started (stopped, RBAC checked, at the end)."""

    def __init__(self, plane: ControlPlane, release: Release, ns: str) -> None:
        self.plane, self.release, self.ns = plane, release, ns
        self.running: RunningOperator | None = None
        plane.create_namespace(ns)

    def start(self, workdir: Path, valkey_server: Valkey, **extra: str) -> RunningOperator:
        self.running = start_operator(
            self.plane, self.release, workdir / "operator", **operator_env(valkey_server, **extra)
        )
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            stop_operator(self.plane, self.release, self.running)

    def create(self, doc: dict[str, Any]) -> None:
        self.plane.apply(doc)

    def endpoint(self, name: str) -> dict[str, Any] | None:
        return self.plane.get(GROUP_VERSION, "Endpoint", self.ns, name)

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.plane.get("apps/v1", "Deployment", self.ns, name)

    def delete(self, name: str) -> None:
        self.plane.request("DELETE", self.plane.path(GROUP_VERSION, "Endpoint", self.ns, name))

    def replicas(self, name: str) -> int:
        return int((self.deployment(name) or {})["spec"].get("replicas", 1))

    def condition_is(self, name: str, kind: str, status: str, reason: str) -> bool:
        found = conditions(self.plane, self.ns, name).get(kind, {})
        return found.get("status") == status and found.get("reason") == reason

    def stream(self, name: str) -> str:
        return keys.stream(keys.queue_id(self.ns, name))

    def task_key(self, name: str, task_id: str) -> str:
        return keys.task(keys.queue_id(self.ns, name), task_id)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, kube_cluster: ControlPlane, release: Release) -> Iterator[Cluster]:
    name = request.node.name.removeprefix("test_")[:40].rstrip("_").replace("_", "-").replace("[", "-").rstrip("]")
    found = Cluster(kube_cluster, release, f"bs-q-{name}"[:63].rstrip("-"))
    yield found
    found.stop()


def async_endpoint(cluster: Cluster, name: str, **spec: Any) -> dict[str, Any]:
    return endpoint_doc(cluster.ns, name, modes=["async"], **spec)


def enqueue(client: redis.Redis, cluster: Cluster, endpoint: str, count: int) -> list[str]:
    stream = cluster.stream(endpoint)
    try:
        client.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
    task_ids = []
    for _ in range(count):
        task_id = uuid.uuid4().hex
        client.hset(cluster.task_key(endpoint, task_id), mapping={"endpoint": endpoint, "status": "PENDING"})
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


def test_own_scaler_scales_from_zero_on_backlog_and_back_after_the_delay(
    cluster: Cluster, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    operator = cluster.start(tmp_path, valkey_server, BUNDLESERVE_KEDA="off").process
    scaling = {"minReplicas": 0, "maxReplicas": 3, "targetConcurrency": 2, "scaleDownDelaySeconds": 0}
    cluster.create(async_endpoint(cluster, "jobs-scale", scaling=scaling))
    wait_until(lambda: cluster.deployment("jobs-scale"), timeout=60, what="the Deployment")
    assert cluster.replicas("jobs-scale") == 0  # starts at minReplicas: scale to zero
    wait_until(
        lambda: cluster.condition_is("jobs-scale", "Ready", "True", "ScaledToZero"),
        timeout=60,
        what="Ready=ScaledToZero",
    )
    assert not cluster.plane.items("autoscaling/v2", "HorizontalPodAutoscaler", cluster.ns)

    enqueue(queue, cluster, "jobs-scale", 5)
    wait_until(lambda: cluster.replicas("jobs-scale") == 3, timeout=60, what="scaled to ceil(5/2)=3")
    wait_until(
        lambda: ((cluster.endpoint("jobs-scale") or {})["status"].get("queue") or {}).get("backlog") == 5,
        timeout=60,
        what="status.queue.backlog",
    )
    queue.delete(cluster.stream("jobs-scale"))
    wait_until(lambda: cluster.replicas("jobs-scale") == 0, timeout=60, what="scaled back to zero")
    # The API server stores the patch before the operator reads its response and counts the write: poll, do not read once.
    wait_until(
        lambda: operator.metric("bundleserve_operator_api_writes_total", verb="patch", kind="Deployment") >= 2,
        timeout=10,
        what="both scaling patches counted",
    )


def test_keda_present_means_a_scaled_object_and_no_own_scaling(
    cluster: Cluster, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    cluster.plane.apply(KEDA_CRD)
    operator = cluster.start(tmp_path, valkey_server, BUNDLESERVE_KEDA="auto").process
    try:
        cluster.create(async_endpoint(cluster, "jobs-keda", scaling={"minReplicas": 0, "maxReplicas": 4}))
        scaled = wait_until(
            lambda: cluster.plane.get("keda.sh/v1alpha1", "ScaledObject", cluster.ns, "jobs-keda"),
            timeout=60,
            what="ScaledObject",
        )
        trigger = scaled["spec"]["triggers"][0]
        assert (trigger["type"], trigger["metadata"]["stream"]) == ("redis-streams", cluster.stream("jobs-keda"))
        assert scaled["metadata"]["ownerReferences"][0]["name"] == "jobs-keda"
        enqueue(queue, cluster, "jobs-keda", 6)
        operator.wait_idle(["jobs-keda"], at_least=2, timeout=90)
        assert cluster.replicas("jobs-keda") == 0  # KEDA's job, not ours
        assert operator.metric("bundleserve_operator_api_writes_total", verb="patch", kind="Deployment") == 0
    finally:
        queue.delete(cluster.stream("jobs-keda"))


@pytest.mark.parametrize("retain", [False, True])
def test_deleting_an_async_endpoint_purges_its_queue_unless_retained(
    cluster: Cluster, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path, retain: bool
) -> None:
    cluster.start(tmp_path, valkey_server, BUNDLESERVE_KEDA="off")
    name = f"jobs-{'kept' if retain else 'gone'}"
    task_ids: list[str] = []
    try:
        cluster.create(async_endpoint(cluster, name, **{"async": {"retainOnDelete": retain}}))
        wait_until(lambda: cluster.deployment(name), timeout=60, what="the Deployment")
        task_ids = enqueue(queue, cluster, name, 3)
        cluster.delete(name)
        wait_until(lambda: cluster.endpoint(name) is None, timeout=60, what="the Endpoint deleted")
        assert bool(queue.exists(cluster.stream(name))) == retain
        assert queue.exists(*[cluster.task_key(name, task_id) for task_id in task_ids]) == (3 if retain else 0)
    finally:
        queue.delete(cluster.stream(name), *[cluster.task_key(name, t) for t in task_ids])


def test_deletion_waits_for_in_flight_tasks(
    cluster: Cluster, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    cluster.start(tmp_path, valkey_server, BUNDLESERVE_KEDA="off")
    cluster.create(async_endpoint(cluster, "jobs-busy"))
    wait_until(lambda: cluster.deployment("jobs-busy"), timeout=60, what="the Deployment")
    enqueue(queue, cluster, "jobs-busy", 2)
    (entries,) = queue.xreadgroup(keys.GROUP, "worker-1", {cluster.stream("jobs-busy"): ">"}, count=1)[0][1:]
    cluster.delete("jobs-busy")
    wait_until(lambda: (cluster.endpoint("jobs-busy") or {})["metadata"].get("deletionTimestamp"), what="deleting")

    def retried() -> bool:  # kopf records the finalizer handler's retries in its progress annotation
        annotations = (cluster.endpoint("jobs-busy") or {})["metadata"].get("annotations", {})
        return int(json.loads(annotations.get("bundleserve.dev/cleanup", "{}")).get("retries") or 0) >= 1

    wait_until(retried, timeout=60, what="the finalizer to wait for the in-flight task")
    assert queue.exists(cluster.stream("jobs-busy"))
    entry_id = entries[0][0]
    queue.xack(cluster.stream("jobs-busy"), keys.GROUP, entry_id)
    queue.xdel(cluster.stream("jobs-busy"), entry_id)  # the worker finished it
    wait_until(lambda: cluster.endpoint("jobs-busy") is None, timeout=60, what="released after the task")
    assert not queue.exists(cluster.stream("jobs-busy"))


def test_deletion_is_never_blocked_forever_by_a_stuck_task(
    cluster: Cluster, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    cluster.start(tmp_path, valkey_server, BUNDLESERVE_KEDA="off", BUNDLESERVE_OPERATOR_CLEANUP_MAX_SECONDS="1")
    cluster.create(async_endpoint(cluster, "jobs-stuck"))
    wait_until(lambda: cluster.deployment("jobs-stuck"), timeout=60, what="the Deployment")
    enqueue(queue, cluster, "jobs-stuck", 1)
    queue.xreadgroup(keys.GROUP, "worker-gone", {cluster.stream("jobs-stuck"): ">"}, count=1)  # never acknowledged
    cluster.delete("jobs-stuck")
    wait_until(lambda: cluster.endpoint("jobs-stuck") is None, timeout=60, what="deletion after the bound")
    assert not queue.exists(cluster.stream("jobs-stuck"))

    def warned() -> bool:
        return any(e["reason"] == "QueueCleanupTimedOut" for e in cluster.plane.items("v1", "Event", cluster.ns))

    wait_until(warned, timeout=30, what="a QueueCleanupTimedOut Event")


def test_a_wake_scales_a_sync_endpoint_up_at_once_and_the_tick_returns_it_to_zero_when_idle(
    cluster: Cluster, valkey_server: Valkey, queue: redis.Redis, tmp_path: Path
) -> None:
    """The demand gate of scale from zero for sync traffic: a gateway's wake message (not the scaler's tick) lifts a
    sync Endpoint at zero to the replicas its held calls need, and once the demand key expired the tick returns it."""
    # First an operator whose scaler ticks once an hour: only the wake message can scale it up.
    operator = cluster.start(tmp_path / "slow", valkey_server, BUNDLESERVE_OPERATOR_SCALER_SECONDS="3600").process
    scaling = {"minReplicas": 0, "maxReplicas": 3, "targetConcurrency": 2, "scaleToZeroAfterSeconds": 10}
    cluster.create(endpoint_doc(cluster.ns, "sync-cold", modes=["sync", "streaming"], scaling=scaling))
    wait_until(lambda: cluster.deployment("sync-cold"), timeout=60, what="the Deployment")
    assert cluster.replicas("sync-cold") == 0
    wait_until(
        lambda: cluster.condition_is("sync-cold", "Ready", "True", "ScaledToZero"), timeout=60, what="ScaledToZero"
    )
    assert cluster.plane.get("autoscaling/v2", "HorizontalPodAutoscaler", cluster.ns, "sync-cold")  # for 1..3
    wait_until(lambda: int(queue.execute_command("PUBSUB", "NUMPAT")) >= 1, timeout=30, what="the wake listener")
    # 5 calls held at 2 per replica: ceil(5/2) = 3 replicas.
    report = demand.DemandReport(queue=keys.queue_id(cluster.ns, "sync-cold"), held=5, ttl_seconds=3)
    asyncio.run(_wake(valkey_server.url, report))
    wait_until(lambda: cluster.replicas("sync-cold") == 3, timeout=30, what="woken to 3 replicas")
    wait_until(lambda: "(woken; demand: active, 5 held" in operator.log(), timeout=10, what="the wake's log line")
    cluster.stop()
    # Then one that ticks every second: the key expired (no gateway refreshed it), so the endpoint goes back to 0.
    cluster.start(tmp_path / "fast", valkey_server, BUNDLESERVE_OPERATOR_SCALER_SECONDS="1")
    wait_until(lambda: cluster.replicas("sync-cold") == 0, timeout=60, what="back to zero when idle")


async def _wake(url: str, report: demand.DemandReport) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await demand.wake(client, report)
    finally:
        await client.aclose()
