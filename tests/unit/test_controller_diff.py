"""diff: server-defaulted fields never cause writes; hand edits and dropped fields do; replacement keeps what others own."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from bundleserve.controller.builders import BuildContext, build_children
from bundleserve.controller.config import OperatorConfig
from bundleserve.controller.diff import covers, needs_write, parse_quantity, replacement
from bundleserve.controller.labels import DESIRED_HASH_ANNOTATION
from tests.unit.controller_support import endpoint

CONTEXT = BuildContext(config=OperatorConfig(redis_secret="redis"))


def children(**spec: Any) -> dict[str, dict[str, Any]]:
    return {child["kind"]: child for child in build_children(endpoint(**spec), CONTEXT)}


def as_server_stores(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a real API server returns: our object plus defaulted and server-owned fields, quantities canonical."""
    live = copy.deepcopy(manifest)
    live["metadata"].update(
        uid="child-uid", resourceVersion="17", generation=1, creationTimestamp="2026-01-01T00:00:00Z"
    )
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    if live["kind"] == "Deployment":
        spec = live["spec"]
        spec.setdefault("replicas", 1)
        spec["progressDeadlineSeconds"] = 600
        pod = spec["template"]["spec"]
        pod.update(restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler")
        for container in pod["containers"]:
            container.update(terminationMessagePath="/dev/termination-log", imagePullPolicy="IfNotPresent")
            requests = container["resources"]["requests"]
            requests["cpu"] = {"0.5": "500m", "1": "1"}.get(requests["cpu"], requests["cpu"])
        live["status"] = {"replicas": 1, "readyReplicas": 1}
    if live["kind"] == "Service":
        live["spec"].update(clusterIP="10.0.0.7", clusterIPs=["10.0.0.7"], sessionAffinity="None")
    return live


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", "0.5"), ("0.5", "0.5"), ("2Gi", str(2 * 1024**3)), ("1e3", "1000"), ("1k", "1000"), ("4", "4")],
)
def test_quantities_parse_to_their_value(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


def test_not_a_quantity() -> None:
    assert parse_quantity("lots") is None


def test_server_defaults_and_canonical_quantities_cause_no_write() -> None:
    for desired in children(resources={"cpu": "0.5", "memory": "1Gi"}).values():
        assert not needs_write(desired, as_server_stores(desired)), desired["kind"]


def test_a_hand_edit_of_a_field_we_own_is_noticed() -> None:
    desired = children()["Deployment"]
    live = as_server_stores(desired)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert needs_write(desired, live)
    live = as_server_stores(desired)
    live["spec"]["template"]["spec"]["containers"][1]["env"].append({"name": "EXTRA", "value": "1"})
    assert needs_write(desired, live)
    live = as_server_stores(desired)
    del live["metadata"]["labels"]["bundleserve.dev/endpoint"]
    assert needs_write(desired, live)


@pytest.mark.parametrize(
    "kind", ["ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"]
)
def test_a_removed_or_changed_owner_reference_is_noticed(kind: str) -> None:
    """Without our controller reference the garbage collector would leave the child behind: it is drift."""
    desired = children(scaling={"minReplicas": 2, "maxReplicas": 4})[kind]
    assert desired["metadata"]["ownerReferences"], "the builders set an owner reference"
    live = as_server_stores(desired)
    del live["metadata"]["ownerReferences"]
    assert needs_write(desired, live)
    live = as_server_stores(desired)
    live["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = False
    assert needs_write(desired, live)
    assert replacement(desired, live)["metadata"]["ownerReferences"] == desired["metadata"]["ownerReferences"]


def test_an_empty_value_the_server_omits_causes_no_write() -> None:
    """Go's omitempty drops `value: ""` of an env var: the live object lacks the key, which means the same."""
    desired = children(bundle={"image": "x:1", "python": {"entrypoint": "m:f"}, "env": [{"name": "E", "value": ""}]})
    deployment = desired["Deployment"]
    live = as_server_stores(deployment)
    for container in live["spec"]["template"]["spec"]["containers"]:
        for item in container.get("env", []):
            if item.get("value") == "":
                del item["value"]
    assert not needs_write(deployment, live)


def test_a_field_we_stopped_setting_is_noticed_through_the_hash() -> None:
    desired = children()["Deployment"]
    live = as_server_stores(desired)
    live["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "gpu"}  # we used to set it
    assert covers(live, {k: v for k, v in desired.items() if k != "metadata"})  # a subset comparison cannot see it
    assert not needs_write(desired, live)  # ... so with the same hash it stays
    live["metadata"]["annotations"][DESIRED_HASH_ANNOTATION] = "0000000000000000"  # what an older desired state stamped
    assert needs_write(desired, live)
    assert "nodeSelector" not in replacement(desired, live)["spec"]["template"]["spec"]


def test_replacement_keeps_server_and_foreign_fields_and_drops_ours_we_no_longer_want() -> None:
    desired = children()["Service"]
    live = as_server_stores(desired)
    live["metadata"]["labels"]["team"] = "ml"
    live["metadata"]["finalizers"] = ["example.com/hold"]
    live["metadata"]["ownerReferences"].append({"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": "other"})
    body = replacement(desired, live)
    assert body["metadata"]["resourceVersion"] == "17"
    assert body["spec"]["clusterIP"] == "10.0.0.7"
    assert body["metadata"]["labels"]["team"] == "ml"
    assert body["metadata"]["finalizers"] == ["example.com/hold"]
    assert [ref["uid"] for ref in body["metadata"]["ownerReferences"]] == ["other", "uid-1"]
    assert "sessionAffinity" not in body["spec"]  # a defaulted field we never set: the server defaults it again


def test_replacement_leaves_replicas_to_the_autoscaler() -> None:
    desired = children(scaling={"minReplicas": 1, "maxReplicas": 5})["Deployment"]
    assert "replicas" not in desired["spec"]
    live = as_server_stores(desired)
    live["spec"]["replicas"] = 4  # set by the HPA
    assert not needs_write(desired, live)
    assert replacement(desired, live)["spec"]["replicas"] == 4
    fixed = children(scaling={"minReplicas": 2, "maxReplicas": 2})["Deployment"]
    assert replacement(fixed, live)["spec"]["replicas"] == 2
