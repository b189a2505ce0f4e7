"""Reconcile on a real control plane: children edited or deleted by hand are restored (kopf watches them), the
autoscaler's replica count is not "drift", and a hundred Endpoints are reconciled within a deadline with a bounded
number of writes (counted in the API server's audit log) and none once they are steady.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.cluster_harness import (
    GROUP_VERSION,
    Release,
    RunningOperator,
    audit,
    conditions,
    endpoint_doc,
    install_release,
    namespace,
    start_operator,
    stop_operator,
    wait_logged,
    writes,
)
from tests.integration.operator_harness import Operator
from tests.support.cluster import ControlPlane
from tests.support.waiting import wait_until

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
IMAGE = "registry.example.com/echo:1"
DRIFT = 15


@pytest.fixture(scope="module")
def release(kube_cluster: ControlPlane) -> Release:
    return install_release(kube_cluster)


@pytest.fixture(scope="module")
def operator_run(
    kube_cluster: ControlPlane, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningOperator]:
    # Drift passes every DRIFT seconds, not the harness' 3: a hundred Endpoints at 3 s would be 33 reconciles a second
    # on a shared 2-core machine. Hand edits are restored at once anyway (kopf watches the children).
    workdir = tmp_path_factory.mktemp("operator-reconcile")
    running = start_operator(kube_cluster, release, workdir, BUNDLESERVE_OPERATOR_DRIFT_SECONDS=str(DRIFT))
    yield running
    stop_operator(kube_cluster, release, running)
    forget_endpoints(kube_cluster, ("bs-drift", "bs-hundred", "bs-variants"))


def forget_endpoints(plane: ControlPlane, namespaces: tuple[str, ...]) -> None:
    """Leave the shared control plane without this module's Endpoints: every later module's operator watches all
    namespaces, and a hundred leftover Endpoints were a start-up burst that delayed what those modules wait for (an
    Endpoint's deletion, past a 30 s deadline in a full `make test`). The operator is stopped, so the finalizers are
    dropped by hand and the namespaces deleted; nothing of this module is checked after this point."""
    for ns in namespaces:
        for item in plane.items(GROUP_VERSION, "Endpoint", ns):
            path = plane.path(GROUP_VERSION, "Endpoint", ns, item["metadata"]["name"])
            plane.request("PATCH", path, {"metadata": {"finalizers": None}},
                          content_type="application/merge-patch+json")  # fmt: skip
        try:
            plane.request("DELETE", f"/api/v1/namespaces/{ns}")
        except urllib.error.HTTPError as error:
            if error.code != 404:  # a module run with -k may not have made it
                raise
    for ns in namespaces:
        wait_until(lambda ns=ns: not plane.items(GROUP_VERSION, "Endpoint", ns), timeout=120,
                   what=f"the Endpoints of {ns} gone")  # fmt: skip


@pytest.fixture
def operator(operator_run: RunningOperator) -> Operator:
    return operator_run.process


def patch(plane: ControlPlane, api_version: str, kind: str, ns: str, name: str, body: Any, kind_of: str) -> None:
    plane.request("PATCH", plane.path(api_version, kind, ns, name), body, content_type=kind_of)


def model_image(plane: ControlPlane, ns: str, name: str) -> str:
    deployment = plane.get("apps/v1", "Deployment", ns, name) or {}
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    return next((str(c["image"]) for c in containers if c["name"] == "model"), "")


def reconcile_counts(operator: Operator) -> dict[str, float]:
    """Reconciles so far per Endpoint, from one scrape of /metrics (not one scrape per Endpoint)."""
    found: dict[str, float] = {}
    for line in operator.metrics().splitlines():
        match = re.match(
            r'^bundleserve_operator_reconcile_duration_seconds_count\{.*endpoint="([^"]+)".*\} (\S+)$', line
        )
        if match:
            found[match.group(1)] = found.get(match.group(1), 0.0) + float(match.group(2))
    return found


def wait_all_idle(operator: Operator, names: list[str], timeout: float, above: dict[str, float] | None = None) -> None:
    """Operator.wait_idle for many Endpoints: each reconciled (more often than `above` says), nothing pending."""

    def idle() -> bool:
        counts = reconcile_counts(operator)
        passed = all(counts.get(n, 0) > (above or {}).get(n, 0) for n in names)
        return passed and operator.metric("bundleserve_operator_reconciles_pending") == 0

    wait_logged(operator, idle, f"{len(names)} Endpoints reconciled and the operator idle", timeout=timeout)


def test_children_edited_or_deleted_by_hand_are_restored(
    kube_cluster: ControlPlane, release: Release, operator: Operator
) -> None:
    ns = namespace(kube_cluster, "bs-drift")
    kube_cluster.apply(endpoint_doc(ns, "echo", scaling={"minReplicas": 1, "maxReplicas": 3}))
    wait_logged(operator, lambda: kube_cluster.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, "echo"),
                "every child created")  # fmt: skip
    operator.wait_idle(["echo"], timeout=60)

    # The model image swapped by hand (a strategic merge patch, as `kubectl set image` sends).
    swap = {"spec": {"template": {"spec": {"containers": [{"name": "model", "image": "evil:latest"}]}}}}
    patch(kube_cluster, "apps/v1", "Deployment", ns, "echo", swap, STRATEGIC)
    wait_logged(operator, lambda: model_image(kube_cluster, ns, "echo") == IMAGE, "the pod template restored")

    old_uid = (kube_cluster.get("v1", "Service", ns, "echo") or {})["metadata"]["uid"]
    kube_cluster.request("DELETE", kube_cluster.path("v1", "Service", ns, "echo"))
    wait_logged(operator, lambda: (kube_cluster.get("v1", "Service", ns, "echo") or {}).get("metadata", {}).get("uid")
                not in (None, old_uid), "the Service recreated")  # fmt: skip

    (configmap,) = kube_cluster.items("v1", "ConfigMap", ns, selector="bundleserve.dev/endpoint=echo")
    cm_name = configmap["metadata"]["name"]
    (key,) = configmap["data"]
    patch(kube_cluster, "v1", "ConfigMap", ns, cm_name, {"data": {key: "tampered"}}, MERGE)
    wait_logged(operator, lambda: (kube_cluster.get("v1", "ConfigMap", ns, cm_name) or {})["data"][key] != "tampered",
                "the ConfigMap restored")  # fmt: skip

    kube_cluster.request("DELETE", kube_cluster.path("autoscaling/v2", "HorizontalPodAutoscaler", ns, "echo"))
    wait_logged(operator, lambda: kube_cluster.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, "echo"),
                "the HPA recreated")  # fmt: skip
    operator.wait_idle(["echo"], timeout=60)

    # The replica count belongs to the autoscaler (here set by hand within its range): not drift, never rewritten.
    since = len(audit(kube_cluster, release.user))
    patch(kube_cluster, "apps/v1", "Deployment", ns, "echo", {"spec": {"replicas": 3}}, MERGE)
    count = operator.metric("bundleserve_operator_reconcile_duration_seconds_count", endpoint="echo")
    operator.wait_idle(["echo"], at_least=int(count) + 1, timeout=60)
    assert (kube_cluster.get("apps/v1", "Deployment", ns, "echo") or {})["spec"]["replicas"] == 3
    written = [w for w in writes(kube_cluster, release.user, since) if f" {ns}/" in w]
    assert not [w for w in written if w.split()[1] == "deployments"], written


@pytest.mark.timeout(300)  # a hundred Endpoints on a shared 2-core machine: about a minute, more when it is busy
def test_a_hundred_endpoints_are_reconciled_with_bounded_writes_and_none_at_steady_state(
    kube_cluster: ControlPlane, release: Release, operator: Operator
) -> None:
    ns = namespace(kube_cluster, "bs-hundred")
    names = [f"ep-{index:03d}" for index in range(100)]
    since = len(audit(kube_cluster, release.user))
    with ThreadPoolExecutor(8) as pool:  # as `kubectl apply -f dir/` of many files would, several at a time
        list(pool.map(lambda name: kube_cluster.apply(endpoint_doc(ns, name)), names))

    def reconciled() -> bool:
        """Every Endpoint has a Ready condition for its current generation (no node: Ready=False/Unschedulable
        once the real scheduler has looked at its pod, Creating/ReplicasNotReady before: Progressing)."""
        query = "?" + urllib.parse.urlencode({"limit": 500})
        items = kube_cluster.request("GET", kube_cluster.path(GROUP_VERSION, "Endpoint", ns) + query)["items"]
        done = 0
        for item in items:
            ready = next((c for c in item.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
            done += bool(ready and ready.get("observedGeneration") == item["metadata"]["generation"])
        return done == len(names)

    wait_logged(operator, reconciled, "100 Endpoints reconciled", timeout=240)
    wait_all_idle(operator, names, timeout=120)
    # Counted by verb and resource; a write the API server refused is a write attempt too and counts in the total
    # (on a loaded server a create can time out with 504 after it was stored: its retry is then a 409).
    found = [w.split() for w in writes(kube_cluster, release.user, since) if f" {ns}/" in w]
    made = Counter(f"{verb} {resource}" for verb, resource, _, code in found if code.startswith("2"))
    refused = Counter(f"{verb} {resource} {code}" for verb, resource, _, code in found if not code.startswith("2"))
    for version, kind, plural in (("v1", "ConfigMap", "configmaps"), ("v1", "Service", "services"),
                                  ("apps/v1", "Deployment", "deployments")):  # fmt: skip
        assert len(kube_cluster.items(version, kind, ns, selector="bundleserve.dev/endpoint")) == len(names), kind
        assert len(names) <= made[f"create {plural}"] + refused[f"create {plural} 409"], (made, refused)
    per_endpoint = (sum(made.values()) + sum(refused.values())) / len(names)
    # 3 creates, kopf's finalizer and last-handled annotations, a few status patches (Creating -> Unschedulable).
    assert per_endpoint <= 10, (made, refused)
    sample = conditions(kube_cluster, ns, names[-1])
    assert sample["Ready"]["status"] == "False", sample

    # Steady: one more drift pass over every Endpoint writes nothing.
    steady_since = len(audit(kube_cluster, release.user))
    wait_all_idle(operator, names, timeout=120, above=reconcile_counts(operator))  # a drift pass over every one
    steady = [w for w in writes(kube_cluster, release.user, steady_since) if f" {ns}/" in w]
    assert steady == [], steady


def names_of(plane: ControlPlane, api_version: str, kind: str, ns: str, endpoint: str) -> set[str]:
    return {
        o["metadata"]["name"]
        for o in plane.items(api_version, kind, ns, selector=f"bundleserve.dev/endpoint={endpoint}")
    }


def table_row(plane: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    """The Endpoint as `kubectl get` prints it: the API server's Table with the CRD's printer columns."""
    request = urllib.request.Request(plane.url + plane.path(GROUP_VERSION, "Endpoint", ns, name))
    request.add_header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    with urllib.request.urlopen(request, context=plane.ssl_context(), timeout=30) as response:
        table = json.loads(response.read())
    columns = [column["name"] for column in table["columnDefinitions"]]
    (row,) = table["rows"]
    return dict(zip(columns, row["cells"], strict=True))


def variant(name: str, weight: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "weight": weight, **extra}


@pytest.mark.timeout(240)
def test_production_variants_get_children_each_a_weight_change_rolls_nothing_and_removal_collects(
    kube_cluster: ControlPlane, release: Release, operator: Operator
) -> None:
    """A canary: blue and green get a Deployment, ConfigMap and Service each (green autoscaled, with its HPA and
    PDB); the endpoint keeps one Service and NetworkPolicy; status and `kubectl get` show the split. Shifting the
    weights (the promotion) writes no child at all; removing blue garbage-collects its children; dropping the
    variants list brings back the endpoint's own Deployment and collects green's."""
    ns = namespace(kube_cluster, "bs-variants")
    green_image = "registry.example.com/echo:2"
    canary = [
        variant("blue", 90),
        variant("green", 10, image=green_image, scaling={"minReplicas": 1, "maxReplicas": 3}),
    ]
    kube_cluster.apply(endpoint_doc(ns, "shop", variants=canary))

    def traffic() -> str | None:
        return ((kube_cluster.get(GROUP_VERSION, "Endpoint", ns, "shop") or {}).get("status") or {}).get("traffic")

    wait_logged(operator, lambda: traffic() == "blue 90%, green 10%", "the split in status")
    operator.wait_idle(["shop"], timeout=60)
    assert names_of(kube_cluster, "apps/v1", "Deployment", ns, "shop") == {"shop-blue", "shop-green"}
    assert names_of(kube_cluster, "v1", "Service", ns, "shop") == {"shop", "shop-blue", "shop-green"}
    assert names_of(kube_cluster, "v1", "ConfigMap", ns, "shop") == {"shop-blue-endpoint", "shop-green-endpoint"}
    assert names_of(kube_cluster, "autoscaling/v2", "HorizontalPodAutoscaler", ns, "shop") == {"shop-green"}
    assert names_of(kube_cluster, "policy/v1", "PodDisruptionBudget", ns, "shop") == {"shop-green"}
    assert names_of(kube_cluster, "networking.k8s.io/v1", "NetworkPolicy", ns, "shop") == {"shop"}
    assert (
        model_image(kube_cluster, ns, "shop-blue") == IMAGE
        and model_image(kube_cluster, ns, "shop-green") == green_image
    )
    green = kube_cluster.get("apps/v1", "Deployment", ns, "shop-green") or {}
    router = next(c for c in green["spec"]["template"]["spec"]["containers"] if c["name"] == "router")
    assert router["command"][-2:] == ["--variant", "green"]
    status = (kube_cluster.get(GROUP_VERSION, "Endpoint", ns, "shop") or {})["status"]
    assert [(v["name"], v["weight"], v["trafficPercent"]) for v in status["variants"]] == [
        ("blue", 90, 90),
        ("green", 10, 10),
    ]
    assert table_row(kube_cluster, ns, "shop")["Traffic"] == "blue 90%, green 10%"

    # Promotion: the weights move to green. Only the Endpoint's status changes: no child is written, no pod rolls.
    since = len(audit(kube_cluster, release.user))
    promoted = [variant("blue", 0), {**canary[1], "weight": 100}]
    kube_cluster.apply(endpoint_doc(ns, "shop", variants=promoted))
    wait_logged(operator, lambda: traffic() == "blue 0%, green 100%", "the promoted split in status")
    operator.wait_idle(["shop"], timeout=60)
    children = [w for w in writes(kube_cluster, release.user, since) if f" {ns}/" in w and "endpoints" not in w]
    assert children == [], children

    # Blue retired: its Deployment, Service, ConfigMap go (garbage-collected by the operator), green's stay.
    kube_cluster.apply(endpoint_doc(ns, "shop", variants=[promoted[1]]))
    wait_logged(operator, lambda: names_of(kube_cluster, "apps/v1", "Deployment", ns, "shop") == {"shop-green"},
                "blue's Deployment deleted")  # fmt: skip
    operator.wait_idle(["shop"], timeout=60)
    assert names_of(kube_cluster, "v1", "Service", ns, "shop") == {"shop", "shop-green"}
    assert names_of(kube_cluster, "v1", "ConfigMap", ns, "shop") == {"shop-green-endpoint"}
    assert traffic() == "green 100%"

    # No variants any more: the endpoint's own children come back, green's are collected.
    kube_cluster.apply(
        endpoint_doc(ns, "shop", bundle={"image": green_image, "python": {"entrypoint": "echo_model:predict"}})
    )
    wait_logged(operator, lambda: names_of(kube_cluster, "apps/v1", "Deployment", ns, "shop") == {"shop"},
                "back to one Deployment")  # fmt: skip
    operator.wait_idle(["shop"], timeout=60)
    assert names_of(kube_cluster, "v1", "Service", ns, "shop") == {"shop"}
    assert names_of(kube_cluster, "v1", "ConfigMap", ns, "shop") == {"shop-endpoint"}
    assert names_of(kube_cluster, "autoscaling/v2", "HorizontalPodAutoscaler", ns, "shop") == set()
    assert names_of(kube_cluster, "policy/v1", "PodDisruptionBudget", ns, "shop") == set()
    final = (kube_cluster.get(GROUP_VERSION, "Endpoint", ns, "shop") or {})["status"]
    assert "traffic" not in final and "variants" not in final
