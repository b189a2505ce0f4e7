"""The operator's Endpoint lifecycle on the real node (moved from the API emulator's test_operator_lifecycle.py): the
chart's operator pod (the session's `product`, tests/support/node_product.py) reconciles Endpoints in a namespace of
this module, the Deployment controller rolls real ReplicaSets, the kubelet starts real pods whose readiness probes,
image errors and crash loops the operator reports. Writes are counted in the API server's audit log by the operator's
ServiceAccount user (kopf's Events left out), as the emulator counted them.
"""

from __future__ import annotations

import re
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.cluster_harness import audit, forbidden, writes
from tests.support.cluster import ControlPlane
from tests.support.node_product import (
    GROUP_VERSION,
    RELEASE,
    SYSTEM,
    Product,
    deployment_ready,
    describe_pods,
    wait_for,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(900)

NS = "lifecycle"
IMAGE = "ghcr.io/bundleserve/examples:0.1.0"
OPERATOR = f"{RELEASE}-bundleserve-operator"
OPERATOR_USER = f"system:serviceaccount:{SYSTEM}:{OPERATOR}"
ENDPOINT_LABEL = "bundleserve.dev/endpoint"
#: The children of an Endpoint at minReplicas 2 < maxReplicas (resource names as the audit log has them).
CHILDREN = ("configmaps", "services", "deployments", "horizontalpodautoscalers", "poddisruptionbudgets")
CHILD_KINDS = (
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
)


@pytest.fixture(scope="module")
def plane(product: Product) -> Iterator[ControlPlane]:
    deployment = product.node.plane.get("apps/v1", "Deployment", SYSTEM, OPERATOR) or {}
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == OPERATOR  # the user counted below
    product.node.plane.create_namespace(NS)
    yield product.node.plane
    # Every request the operator made in this module was allowed by the chart's RBAC (a real authorizer).
    assert forbidden(product.node.plane, OPERATOR_USER) == []


@pytest.fixture(autouse=True)
def delete_what_the_test_applied(plane: ControlPlane) -> Iterator[None]:
    """Pass or fail, the test's Endpoints (and so their pods) go: the session's node is shared."""
    yield
    for namespace in (NS, "team-a", "team-b"):
        for item in plane.items(GROUP_VERSION, "Endpoint", namespace):
            plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", namespace, item["metadata"]["name"]))
        wait_until(
            lambda namespace=namespace: (
                not plane.items(GROUP_VERSION, "Endpoint", namespace) and not plane.items("v1", "Pod", namespace)
            ),
            timeout=180,
            interval=0.5,
            what=f"the Endpoints and pods of {namespace} deleted",
        )


def endpoint(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("modes", ["sync"])
    spec.setdefault("bundle", {"image": IMAGE, "python": {"entrypoint": "echo_model:predict", "path": "."}})
    spec.setdefault("resources", {"cpu": "50m", "memory": "128Mi"})  # the node's 2 CPUs are shared by the session
    return {"apiVersion": GROUP_VERSION, "kind": "Endpoint", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def children(plane: ControlPlane, api_version: str, kind: str, names: str) -> list[dict[str, Any]]:
    """The Endpoints' (comma-separated names) children of one kind."""
    return plane.items(api_version, kind, NS, selector=f"{ENDPOINT_LABEL} in ({names})")


def conditions(plane: ControlPlane, name: str) -> dict[str, dict[str, Any]]:
    body = plane.get(GROUP_VERSION, "Endpoint", NS, name) or {}
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}


def condition_is(plane: ControlPlane, name: str, kind: str, status: str, reason: str | None = None) -> bool:
    found = conditions(plane, name).get(kind, {})
    return found.get("status") == status and (reason is None or found.get("reason") == reason)


def wait_condition(product: Product, name: str, kind: str, status: str, reason: str | None = None) -> None:
    wait_for(
        product.node,
        f"{name} {kind}={status}" + (f"/{reason}" if reason else ""),
        lambda: condition_is(product.node.plane, name, kind, status, reason),
        NS,
    )


def operator_metrics(plane: ControlPlane) -> str:
    """The operator pod's metrics, through its metrics Service's ClusterIP."""
    service = plane.get("v1", "Service", SYSTEM, f"{OPERATOR}-metrics") or {}
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/metrics"
    return httpx.get(url, timeout=5).text


def operator_metric(plane: ControlPlane, name: str, **labels: str) -> float:
    """A metric of the operator pod (0 when absent)."""
    total = 0.0
    for line in operator_metrics(plane).splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match.group(3))
    return total


def wait_reconciled(plane: ControlPlane, names: list[str], at_least: int = 1) -> None:
    """Every named Endpoint reconciled `at_least` times by the current operator pod, and nothing pending."""

    def idle() -> bool:
        counts = [
            operator_metric(plane, "bundleserve_operator_reconcile_duration_seconds_count", endpoint=name)
            for name in names
        ]
        return (
            all(c >= at_least for c in counts)
            and operator_metric(plane, "bundleserve_operator_reconciles_pending") == 0
        )

    try:
        wait_until(idle, timeout=120, interval=0.5, what=f"the operator to reconcile {names} and go idle")
    except TimeoutError as error:
        lines = [line for line in operator_metrics(plane).splitlines() if "reconcile" in line and "bucket" not in line]
        raise AssertionError(f"{error}\n" + "\n".join(lines)) from None


def operator_writes(plane: ControlPlane, since: int) -> list[str]:
    return [line for line in writes(plane, OPERATOR_USER, since) if f" {NS}/" in line]


def audit_mark(plane: ControlPlane) -> int:
    return len(audit(plane, OPERATOR_USER))


def delete_endpoint(plane: ControlPlane, name: str) -> None:
    plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", NS, name))
    wait_until(lambda: plane.get(GROUP_VERSION, "Endpoint", NS, name) is None, timeout=120, what=f"{name} deleted")


def test_create_builds_the_children_and_is_ready_only_once_pods_are(product: Product, plane: ControlPlane) -> None:
    mark = audit_mark(plane)
    created = plane.apply(endpoint("echo", scaling={"minReplicas": 2, "maxReplicas": 4}))
    uid = created["metadata"]["uid"]
    wait_for(product.node, "all children", lambda: all(children(plane, v, k, "echo") for v, k in CHILD_KINDS), NS)
    wait_condition(product, "echo", "Ready", "True", "ReplicasAvailable")
    for api_version, kind in CHILD_KINDS:
        (child,) = children(plane, api_version, kind, "echo")
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["kind"], owner["controller"]) == (uid, "Endpoint", True)
        assert child["metadata"]["labels"][ENDPOINT_LABEL] == "echo"
    # Ready only once pods are: the condition turned True no earlier than the pods' own Ready (the kubelet's probes).
    pods = plane.items("v1", "Pod", NS, selector=f"{ENDPOINT_LABEL}=echo")
    pods_ready = sorted(
        c["lastTransitionTime"]
        for pod in pods
        for c in pod["status"].get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "True"
    )
    assert conditions(plane, "echo")["Ready"]["lastTransitionTime"] >= pods_ready[0], (
        pods_ready,
        describe_pods(product.node, NS),
    )

    def status() -> dict[str, Any]:
        found: dict[str, Any] = (plane.get(GROUP_VERSION, "Endpoint", NS, "echo") or {}).get("status", {})
        return found

    wait_for(product.node, "both replicas ready in the status", lambda: status().get("readyReplicas") == 2, NS)
    assert status()["observedGeneration"] == 1
    assert status()["replicas"] == 2
    assert status()["url"] == f"http://echo.{NS}.svc.cluster.local"
    assert condition_is(plane, "echo", "Progressing", "False", "RolloutComplete")
    assert condition_is(plane, "echo", "Degraded", "False")
    wait_reconciled(plane, ["echo"])
    creates = Counter(line.split()[1] for line in operator_writes(plane, mark) if line.startswith("create "))
    assert {resource: creates[resource] for resource in CHILDREN} == dict.fromkeys(CHILDREN, 1), creates

    # Steady state: an update that changes no spec, then full passes, write nothing to the children.
    reconciled = operator_metric(plane, "bundleserve_operator_reconcile_duration_seconds_count", endpoint="echo")
    mark = audit_mark(plane)
    patch = {"metadata": {"labels": {"touched": "yes"}}}
    plane.request("PATCH", plane.path(GROUP_VERSION, "Endpoint", NS, "echo"), patch,
                  content_type="application/merge-patch+json")  # fmt: skip
    wait_reconciled(plane, ["echo"], at_least=int(reconciled) + 1)
    child_writes = [line for line in operator_writes(plane, mark) if line.split()[1] in CHILDREN]
    assert child_writes == []
    delete_endpoint(plane, "echo")


def test_a_spec_update_rolls_new_pods_and_advances_observed_generation(product: Product, plane: ControlPlane) -> None:
    plane.apply(endpoint("roll"))
    wait_condition(product, "roll", "Ready", "True")
    before = plane.get("apps/v1", "Deployment", NS, "roll") or {}
    old_pods = {p["metadata"]["name"] for p in plane.items("v1", "Pod", NS, selector=f"{ENDPOINT_LABEL}=roll")}
    doc = endpoint("roll", invocation={"timeoutSeconds": 90})
    doc["spec"]["bundle"]["env"] = [{"name": "VERSION", "value": "2"}]
    plane.apply(doc)

    def rolled() -> bool:
        body = plane.get(GROUP_VERSION, "Endpoint", NS, "roll") or {}
        pods = plane.items("v1", "Pod", NS, selector=f"{ENDPOINT_LABEL}=roll")
        return (
            body["metadata"]["generation"] == 2
            and (body.get("status") or {}).get("observedGeneration") == 2
            and condition_is(plane, "roll", "Ready", "True")
            and not {p["metadata"]["name"] for p in pods} & old_pods
        )

    wait_for(product.node, "observedGeneration 2, Ready on new pods", rolled, NS)
    after = plane.get("apps/v1", "Deployment", NS, "roll") or {}
    template_before, template_after = before["spec"]["template"], after["spec"]["template"]
    model = template_after["spec"]["containers"][0]
    assert {"name": "VERSION", "value": "2"} in model["env"]
    assert template_after["spec"]["terminationGracePeriodSeconds"] == 5 + 90 + 30  # shutdown delay + longest + margin
    config_hash = "bundleserve.dev/config-hash"
    assert (
        template_after["metadata"]["annotations"][config_hash]
        != template_before["metadata"]["annotations"][config_hash]
    )
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # updated in place, not recreated
    assert int(after["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) == 2  # the controller's rollout
    assert all(c["observedGeneration"] == 2 for c in conditions(plane, "roll").values())
    delete_endpoint(plane, "roll")


def test_a_restarted_operator_writes_nothing_and_duplicates_nothing(product: Product, plane: ControlPlane) -> None:
    names = ["alpha", "beta", "gamma"]
    for name in names:
        plane.apply(endpoint(name, scaling={"minReplicas": 1, "maxReplicas": 2}))
    wait_for(product.node, "all Ready", lambda: all(condition_is(plane, n, "Ready", "True") for n in names), NS)
    wait_reconciled(plane, names)
    selector = urllib.parse.quote("app.kubernetes.io/component=operator")
    (old,) = plane.request("GET", f"/api/v1/namespaces/{SYSTEM}/pods?labelSelector={selector}")["items"]
    mark = audit_mark(plane)
    plane.request("DELETE", plane.path("v1", "Pod", SYSTEM, old["metadata"]["name"]))  # graceful: SIGTERM
    wait_for(
        product.node,
        "a new operator pod ready",
        lambda: (
            deployment_ready(product.node, SYSTEM, OPERATOR)
            and old["metadata"]["name"] not in {p["metadata"]["name"] for p in plane.items("v1", "Pod", SYSTEM)}
        ),
        SYSTEM,
    )
    wait_reconciled(plane, names)
    assert operator_writes(plane, mark) == []
    for api_version, kind in CHILD_KINDS:
        assert len(children(plane, api_version, kind, ",".join(names))) == len(names), kind
    for name in names:
        delete_endpoint(plane, name)


def test_image_errors_are_degraded_with_the_kubelets_reason_and_recover(product: Product, plane: ControlPlane) -> None:
    """An image the node does not have: with `imagePullPolicy: Never` the kubelet reports ErrImageNeverPull; with
    IfNotPresent it tries to pull (no registry is reachable from the node) and reports ErrImagePull, then
    ImagePullBackOff. Each is Degraded with the kubelet's own reason and a Warning Event; an image the node has
    brings the Endpoint back."""
    absent = {"image": "ghcr.io/bundleserve/absent:0", "python": {"entrypoint": "echo_model:predict"}}
    plane.apply(endpoint("broken", bundle={**absent, "imagePullPolicy": "Never"}))
    wait_condition(product, "broken", "Degraded", "True", "ErrImageNeverPull")
    ready = conditions(plane, "broken")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ErrImageNeverPull")

    def warned(reason: str) -> bool:
        return any(
            (e["type"], e["reason"], e["involvedObject"]["name"]) == ("Warning", reason, "broken")
            for e in plane.items("v1", "Event", NS)
        )

    wait_until(lambda: warned("ErrImageNeverPull"), timeout=60, what="a Warning Event with the reason")
    plane.apply(endpoint("broken", bundle={**absent, "imagePullPolicy": "IfNotPresent"}))
    wait_for(
        product.node,
        "Degraded with a pull error",
        lambda: any(condition_is(plane, "broken", "Degraded", "True", r) for r in ("ErrImagePull", "ImagePullBackOff")),
        NS,
    )
    plane.apply(endpoint("broken"))  # an image the node has
    wait_condition(product, "broken", "Ready", "True")
    assert condition_is(plane, "broken", "Degraded", "False")
    delete_endpoint(plane, "broken")


def test_a_crashing_model_is_degraded_crash_loop_back_off(product: Product, plane: ControlPlane) -> None:
    crash = {
        "image": IMAGE,
        "command": ["python", "-c", "raise SystemExit(3)"],
    }
    plane.apply(endpoint("crashing", bundle=crash))
    wait_condition(product, "crashing", "Degraded", "True", "CrashLoopBackOff")
    (pod,) = plane.items("v1", "Pod", NS, selector=f"{ENDPOINT_LABEL}=crashing")
    model = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "model")
    assert model["lastState"]["terminated"]["exitCode"] == 3, model
    assert "CrashLoopBackOff" in conditions(plane, "crashing")["Degraded"]["message"] or model["restartCount"] >= 1
    delete_endpoint(plane, "crashing")


def test_one_cluster_wide_operator_serves_same_named_endpoints_of_two_namespaces_apart(
    product: Product, plane: ControlPlane
) -> None:
    """Moved from the API emulator: the chart's operator (`--all-namespaces`) reconciles `echo` of two namespaces,
    each into its own namespace, both Ready from their own pods; deleting one leaves the other's children untouched."""
    teams = ("team-a", "team-b")
    kinds = (("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment"))

    def child_uids(namespace: str) -> dict[str, str]:
        found = {}
        for api_version, kind in kinds:
            items = plane.items(api_version, kind, namespace, selector=f"{ENDPOINT_LABEL}=echo")
            for item in items:
                found[kind] = item["metadata"]["uid"]
        return found

    def owned_by_its_own_endpoint(namespace: str) -> bool:
        owner = plane.get(GROUP_VERSION, "Endpoint", namespace, "echo") or {}
        for api_version, kind in kinds:
            items = plane.items(api_version, kind, namespace, selector=f"{ENDPOINT_LABEL}=echo")
            owners = [{ref["uid"] for ref in item["metadata"].get("ownerReferences", [])} for item in items]
            if owners != [{owner.get("metadata", {}).get("uid")}]:
                return False
        return True

    for team in teams:
        plane.create_namespace(team)
        doc = endpoint("echo")
        doc["metadata"]["namespace"] = team
        plane.apply(doc)

    def ready(team: str) -> bool:
        body = plane.get(GROUP_VERSION, "Endpoint", team, "echo") or {}
        found = {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}.get("Ready", {})
        return found.get("status") == "True" and found.get("reason") == "ReplicasAvailable"

    wait_for(product.node, "both echo Ready, each from its own children", lambda: all(
        ready(team) and owned_by_its_own_endpoint(team) for team in teams), "team-a")  # fmt: skip
    kept = child_uids("team-b")
    assert set(kept) == {kind for _, kind in kinds}
    plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", "team-a", "echo"))
    wait_for(product.node, "team-a/echo and its children gone", lambda: plane.get(
        GROUP_VERSION, "Endpoint", "team-a", "echo") is None and child_uids("team-a") == {}, "team-a")  # fmt: skip
    wait_reconciled(plane, ["echo"])
    assert child_uids("team-b") == kept  # not recreated, not deleted
    assert ready("team-b")
    plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", "team-b", "echo"))
