"""The real kopf operator (a `bundleserve operator` subprocess) against the in-process API emulator: create, update,
drift, delete, restart, failures. Writes are counted by the emulator (kopf's Event posts excluded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.operator_harness import (
    ENDPOINTS,
    NS,
    Operator,
    as_permission,
    condition_is,
    conditions,
    endpoint_doc,
    prepare,
    rbac_permissions,
)
from tests.support.k8s.emulator import KubernetesEmulator
from tests.support.waiting import wait_until

NOT_COUNTED = ("events",)
CHILDREN = (
    "configmaps",
    "services",
    "deployments.apps",
    "horizontalpodautoscalers.autoscaling",
    "poddisruptionbudgets.policy",
)


@pytest.fixture
def cluster(k8s_api: KubernetesEmulator) -> KubernetesEmulator:
    return prepare(k8s_api)


@pytest.fixture
def operator(cluster: KubernetesEmulator, tmp_path: Path) -> Iterator[Operator]:
    running = Operator(cluster, tmp_path, env={"BUNDLESERVE_REDIS_SECRET": "bundleserve-redis"}).start()
    yield running
    if running.alive():
        running.stop()


def child_names(cluster: KubernetesEmulator, resource: str) -> list[str]:
    return sorted(item["metadata"]["name"] for item in cluster.items(resource, NS))


def test_create_builds_the_children_and_is_ready_only_once_pods_are(
    cluster: KubernetesEmulator, operator: Operator
) -> None:
    cluster.reset_counts()
    endpoint = cluster.create(endpoint_doc("echo", scaling={"minReplicas": 2, "maxReplicas": 4}))
    uid = endpoint["metadata"]["uid"]
    wait_until(lambda: all(cluster.items(r, NS) for r in CHILDREN), timeout=20, what="all children")
    wait_until(lambda: condition_is(cluster, "echo", "Ready", "False", "ReplicasNotReady"), what="Ready=False")
    operator.wait_idle(["echo"])
    for resource in CHILDREN:
        (child,) = cluster.items(resource, NS)
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["kind"], owner["controller"]) == (uid, "Endpoint", True)
        assert child["metadata"]["labels"]["bundleserve.dev/endpoint"] == "echo"
    writes = cluster.writes(exclude=NOT_COUNTED)
    assert {r: writes[("create", r)] for r in CHILDREN} == dict.fromkeys(CHILDREN, 1)  # no duplicate creates
    assert writes[("patch", "endpoints.bundleserve.dev/status")] >= 1

    cluster.roll_out(NS, "echo")
    wait_until(lambda: condition_is(cluster, "echo", "Ready", "True", "ReplicasAvailable"), what="Ready=True")
    status = cluster.get(ENDPOINTS, "echo", NS)["status"]
    assert status["observedGeneration"] == 1
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["url"] == f"http://echo.{NS}.svc.cluster.local"
    assert cluster.get("deployments.apps", "echo", NS)["spec"]["replicas"] == 2  # created at minReplicas
    assert condition_is(cluster, "echo", "Progressing", "False", "RolloutComplete")
    assert condition_is(cluster, "echo", "Degraded", "False")

    # steady state: another full pass (the drift timer's job) writes nothing
    cluster.reset_counts()
    cluster.patch(ENDPOINTS, "echo", {"metadata": {"labels": {"touched": "yes"}}}, NS)  # an update with no spec change
    operator.wait_idle(["echo"], at_least=3)
    assert cluster.write_count(exclude=NOT_COUNTED) <= 1  # kopf's own last-handled-configuration annotation at most
    assert not any(resource in CHILDREN for _, resource in cluster.writes(exclude=NOT_COUNTED))


def test_a_spec_update_rolls_a_new_pod_template_and_advances_observed_generation(
    cluster: KubernetesEmulator, operator: Operator
) -> None:
    cluster.auto_roll_out(True)
    cluster.create(endpoint_doc("echo"))
    wait_until(lambda: condition_is(cluster, "echo", "Ready", "True"), timeout=20, what="Ready")
    before = cluster.get("deployments.apps", "echo", NS)
    bundle = {"image": "registry.example.com/echo:2", "python": {"entrypoint": "echo_model:predict"}}
    cluster.patch(ENDPOINTS, "echo", {"spec": {"bundle": bundle, "invocation": {"timeoutSeconds": 90}}}, NS)

    def rolled() -> bool:
        body = cluster.get(ENDPOINTS, "echo", NS)
        return body["metadata"]["generation"] == 2 and (body.get("status") or {}).get("observedGeneration") == 2

    wait_until(rolled, timeout=20, what="observedGeneration 2")
    after = cluster.get("deployments.apps", "echo", NS)
    pod_before, pod_after = before["spec"]["template"], after["spec"]["template"]
    assert pod_after["spec"]["containers"][0]["image"] == "registry.example.com/echo:2"
    assert pod_after["spec"]["terminationGracePeriodSeconds"] == 120
    config_hash = "bundleserve.dev/config-hash"
    assert pod_after["metadata"]["annotations"][config_hash] != pod_before["metadata"]["annotations"][config_hash]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # updated in place, not recreated
    wait_until(lambda: condition_is(cluster, "echo", "Ready", "True"), what="Ready after the rollout")
    assert all(c["observedGeneration"] == 2 for c in conditions(cluster, "echo").values())


def test_a_restarted_operator_writes_nothing_and_duplicates_nothing(
    cluster: KubernetesEmulator, operator: Operator
) -> None:
    cluster.auto_roll_out(True)
    names = ["alpha", "beta", "gamma"]
    for name in names:
        cluster.create(endpoint_doc(name, scaling={"minReplicas": 1, "maxReplicas": 2}))
    wait_until(lambda: all(condition_is(cluster, n, "Ready", "True") for n in names), timeout=30, what="all Ready")
    operator.wait_idle(names)
    assert operator.stop() == 0  # SIGTERM: graceful
    cluster.reset_counts()
    operator.start()
    operator.wait_idle(names)
    assert cluster.writes(exclude=NOT_COUNTED) == {}
    for resource in CHILDREN:
        assert len(cluster.items(resource, NS)) == len(names), resource


def test_an_image_pull_error_is_degraded_with_the_reason(cluster: KubernetesEmulator, operator: Operator) -> None:
    cluster.create(endpoint_doc("broken"))
    wait_until(lambda: cluster.get("deployments.apps", "broken", NS), timeout=20, what="the Deployment")
    cluster.roll_out(
        NS,
        "broken",
        waiting_reason="ImagePullBackOff",
        container="model",
        message='Back-off pulling image "registry.example.com/echo:1"',
    )
    wait_until(
        lambda: condition_is(cluster, "broken", "Degraded", "True", "ImagePullBackOff"),
        timeout=20,
        what="Degraded=ImagePullBackOff",
    )
    ready = conditions(cluster, "broken")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ImagePullBackOff")
    assert "Back-off pulling image" in conditions(cluster, "broken")["Degraded"]["message"]

    def warned() -> bool:
        return any(
            (e["type"], e["reason"], e["involvedObject"]["name"]) == ("Warning", "ImagePullBackOff", "broken")
            for e in cluster.items("events", NS)
        )

    wait_until(warned, timeout=20, what="a Warning Event with the reason")
    cluster.roll_out(NS, "broken")  # the image appeared
    wait_until(lambda: condition_is(cluster, "broken", "Degraded", "False"), timeout=20, what="recovered")


def test_a_spec_the_operator_cannot_run_is_degraded_and_the_operator_carries_on(
    cluster: KubernetesEmulator, tmp_path: Path
) -> None:
    operator = Operator(cluster, tmp_path).start()  # no Redis configured
    try:
        cluster.create(endpoint_doc("jobs", modes=["async"]))
        cluster.create(endpoint_doc("echo"))
        wait_until(
            lambda: condition_is(cluster, "jobs", "Degraded", "True", "AsyncNotConfigured"),
            timeout=20,
            what="Degraded=AsyncNotConfigured",
        )
        assert cluster.get("deployments.apps", "jobs", NS) is None
        wait_until(lambda: cluster.get("deployments.apps", "echo", NS), timeout=20, what="the other endpoint served")
        assert operator.alive()
    finally:
        operator.stop()


def test_every_request_the_operator_made_is_allowed_by_the_rbac_rules(
    cluster: KubernetesEmulator, operator: Operator
) -> None:
    cluster.auto_roll_out(True)
    cluster.create(endpoint_doc("echo", scaling={"minReplicas": 1, "maxReplicas": 3}))
    wait_until(lambda: condition_is(cluster, "echo", "Ready", "True"), timeout=20, what="Ready")
    cluster.delete("services", "echo", NS)
    wait_until(lambda: cluster.get("services", "echo", NS), timeout=20, what="Service restored")
    cluster.patch(ENDPOINTS, "echo", {"spec": {"scaling": {"maxReplicas": 1}}}, NS)  # drops the HPA and the PDB
    wait_until(lambda: not cluster.items("horizontalpodautoscalers.autoscaling", NS), timeout=20, what="HPA deleted")
    cluster.delete(ENDPOINTS, "echo", NS)
    wait_until(lambda: cluster.get(ENDPOINTS, "echo", NS) is None, timeout=20, what="Endpoint gone")
    made = {as_permission(r.verb, r.resource) for r in cluster.requests()}
    assert made, "no requests were recorded"
    assert made - rbac_permissions() == set()
    assert operator.metric("bundleserve_operator_api_writes_total", verb="delete", kind="HorizontalPodAutoscaler") == 1
