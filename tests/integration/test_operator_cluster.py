"""The operator on a real control plane (kube-apiserver, controller-manager and scheduler built from the official
sources; tests/support/cluster.py): the chart rendered by the Helm engine and applied, the operator running as the
chart's own ServiceAccount so the real RBAC authorizer checks every call, real admission and validation of every
child, garbage collection by the real controller-manager, writes counted in the API server's audit log.
"""

from __future__ import annotations

import copy
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bundleserve.api.rules import RULES
from tests.integration.cluster_harness import (
    CHILD_KINDS,
    CORPUS,
    GROUP_VERSION,
    SYSTEM,
    Release,
    RunningOperator,
    audit,
    bound_token,
    conditions,
    endpoint_doc,
    established,
    install_release,
    namespace,
    start_operator,
    stop_operator,
    wait_logged,
    writes,
)
from tests.integration.operator_harness import Operator
from tests.support.cluster import KUBERNETES_VERSION, ControlPlane
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def release(kube_cluster: ControlPlane) -> Release:
    return install_release(kube_cluster)


@pytest.fixture(scope="module")
def operator_run(
    kube_cluster: ControlPlane, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningOperator]:
    running = start_operator(kube_cluster, release, tmp_path_factory.mktemp("operator"))
    yield running
    stop_operator(kube_cluster, release, running)


@pytest.fixture
def operator(operator_run: RunningOperator) -> Operator:
    return operator_run.process


def test_the_control_plane_is_the_pinned_release(kube_cluster: ControlPlane) -> None:
    assert kube_cluster.version() == KUBERNETES_VERSION


def test_the_chart_installs_and_its_crds_are_established(kube_cluster: ControlPlane, release: Release) -> None:
    for obj in release.objects:
        meta = obj["metadata"]
        assert kube_cluster.get(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]), meta["name"]
    assert established(kube_cluster, "endpoints.bundleserve.dev")


STANDARD_FIELDS = ("apiVersion", "kind", "metadata")


def _described(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, str | None]]:
    """(path, description) of every property and list item below a node. apiVersion, kind and metadata are left
    out: the API server publishes its own standard texts for them (metadata as ObjectMeta)."""
    for key, child in schema.get("properties", {}).items():
        if path or key not in STANDARD_FIELDS:
            yield f"{path}.{key}", child.get("description")
            yield from _described(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield f"{path}[]", schema["items"].get("description")
        yield from _described(schema["items"], f"{path}[]")


def test_kubectl_explain_reads_every_description_from_the_api_server(
    kube_cluster: ControlPlane, release: Release
) -> None:
    """The descriptions generated from the models (bundleserve.api.crd) are what the API server publishes in its
    OpenAPI v3 document, the one `kubectl explain endpoints.spec.async` reads, down to every leaf."""
    from bundleserve.api.crd import openapi_schema

    def served() -> dict[str, Any] | None:
        try:
            document = kube_cluster.request("GET", f"/openapi/v3/apis/{GROUP_VERSION}")
        except urllib.error.HTTPError as error:
            if error.code == 404:  # the OpenAPI controller has not published the group yet
                return None
            raise
        found: dict[str, Any] | None = document["components"]["schemas"].get("dev.bundleserve.v1alpha1.Endpoint")
        return found

    schema = wait_until(served, timeout=60, what="the Endpoint schema in the API server's OpenAPI v3")
    expected = dict(_described(openapi_schema()))
    published = dict(_described(schema))
    assert len(expected) > 100 and all(expected.values())
    assert {path: published.get(path) for path in expected} == expected
    assert schema["description"] == openapi_schema()["description"]
    assert all(schema["properties"][key].get("description") for key in STANDARD_FIELDS[:2])


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in CORPUS["invalid"]])
def test_the_api_server_rejects_the_invalid_corpus_with_its_message(
    kube_cluster: ControlPlane, release: Release, case: dict[str, Any]
) -> None:
    """Every invalid document is refused by the real API server (schema and CEL), with the corpus' message."""
    from tests.unit.test_crd_corpus import document_of

    document = copy.deepcopy(document_of(case))
    if isinstance(document.get("metadata"), dict):
        document["metadata"]["namespace"] = "default"
    if case.get("crd", [None])[0] == "kind":  # kubectl's "no matches for kind": discovery does not serve it
        with pytest.raises(KeyError):
            kube_cluster.path(document["apiVersion"], document["kind"], "default")
        return
    # kubectl sends fieldValidation=Strict by default: unknown fields are refused, not pruned.
    path = kube_cluster.path(GROUP_VERSION, "Endpoint", "default") + "?dryRun=All&fieldValidation=Strict"
    with pytest.raises(urllib.error.HTTPError) as refused:
        kube_cluster.request("POST", path, document)
    answer = json.loads(refused.value.read().decode())
    assert refused.value.code in (400, 422), answer
    if "rule" in case:
        (rule,) = [r for r in RULES if r.message == case["rule"]]
        assert rule.message in answer["message"], answer["message"]
    else:
        _, fragment = case["crd"]
        assert case["path"] in answer["message"] and fragment in answer["message"], answer["message"]


def test_children_pass_real_validation_and_are_collected_by_the_garbage_collector(
    kube_cluster: ControlPlane, release: Release, operator: Operator
) -> None:
    ns = namespace(kube_cluster, "bs-children")
    endpoint = kube_cluster.apply(endpoint_doc(ns, "echo", scaling={"minReplicas": 2, "maxReplicas": 4}))
    uid = endpoint["metadata"]["uid"]

    def children() -> list[dict[str, Any]]:
        return [
            c for v, k in CHILD_KINDS for c in kube_cluster.items(v, k, ns, selector="bundleserve.dev/endpoint=echo")
        ]

    wait_logged(
        operator, lambda: len(children()) == len(CHILD_KINDS), "every child created", conditions_of=(ns, "echo")
    )
    for child in children():
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["kind"], owner["controller"], owner["blockOwnerDeletion"]) == (
            uid, "Endpoint", True, True)  # fmt: skip
    # No node: the real scheduler leaves the pods Pending with PodScheduled=False/Unschedulable, and status says so.
    ready = wait_logged(operator, lambda: conditions(kube_cluster, ns, "echo").get("Ready"), "a Ready condition")
    assert ready["status"] == "False"
    wait_logged(operator, lambda: conditions(kube_cluster, ns, "echo")["Ready"]["reason"] == "Unschedulable",
          "Ready=False/Unschedulable")  # fmt: skip
    # The real Deployment controller made a ReplicaSet for it (and the scheduler has no node for its pods).
    wait_until(lambda: kube_cluster.items("apps/v1", "ReplicaSet", ns), timeout=60, what="a ReplicaSet")

    kube_cluster.request("DELETE", kube_cluster.path(GROUP_VERSION, "Endpoint", ns, "echo"))
    wait_until(lambda: kube_cluster.get(GROUP_VERSION, "Endpoint", ns, "echo") is None, timeout=60,
               what="the Endpoint gone (finalizer released)")  # fmt: skip
    wait_until(lambda: not children() and not kube_cluster.items("apps/v1", "ReplicaSet", ns), timeout=90,
               what="the garbage collector deleting every child")  # fmt: skip


def test_steady_state_writes_nothing_on_a_real_server(
    kube_cluster: ControlPlane, release: Release, operator: Operator
) -> None:
    """Server-side defaulting, omitempty and quantity canonicalisation ("1000" -> "1k", "1000m" -> "1") must not make
    the operator rewrite its children: counted in the audit log over several drift passes."""
    ns = namespace(kube_cluster, "bs-steady")
    spec: dict[str, Any] = {
        "scaling": {"minReplicas": 1, "maxReplicas": 3},
        "resources": {"cpu": "1000m", "memory": "1000"},
        "bundle": {"image": "registry.example.com/echo:1", "python": {"entrypoint": "echo_model:predict"},
                   "env": [{"name": "EMPTY", "value": ""}]},
    }  # fmt: skip
    kube_cluster.apply(endpoint_doc(ns, "steady", **spec))
    wait_until(lambda: kube_cluster.get("apps/v1", "Deployment", ns, "steady"), timeout=60, what="the Deployment")
    operator.wait_idle(["steady"], at_least=2, timeout=60)
    since = len(audit(kube_cluster, release.user))
    # Three more drift passes (BUNDLESERVE_OPERATOR_DRIFT_SECONDS=3 in this module).
    count = operator.metric("bundleserve_operator_reconcile_duration_seconds_count", endpoint="steady")
    operator.wait_idle(["steady"], at_least=int(count) + 3, timeout=60)
    written = [w for w in writes(kube_cluster, release.user, since) if f" {ns}/" in w]
    assert written == [], written


def test_a_child_the_api_server_refuses_is_a_degraded_condition_with_its_message(
    kube_cluster: ControlPlane, release: Release, operator: Operator
) -> None:
    """A quota denial (403 from the ResourceQuota admission plugin) ends in Degraded=True/ChildRejected carrying the
    API server's message, instead of a retry loop that never reaches status."""
    ns = namespace(kube_cluster, "bs-quota")
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-services", "namespace": ns},
             "spec": {"hard": {"services": "0"}}}  # fmt: skip
    kube_cluster.apply(quota)
    wait_until(lambda: (kube_cluster.get("v1", "ResourceQuota", ns, "no-services") or {}).get("status", {}).get("hard"),
               timeout=60, what="the quota observed by the controller-manager")  # fmt: skip
    kube_cluster.apply(endpoint_doc(ns, "quota"))

    def degraded() -> dict[str, Any] | None:
        found = conditions(kube_cluster, ns, "quota").get("Degraded")
        return found if found and found["status"] == "True" else None

    condition = wait_until(degraded, timeout=60, what="Degraded=True")
    assert condition["reason"] == "ChildRejected"
    assert "exceeded quota: no-services" in condition["message"], condition


def test_a_spec_the_operator_cannot_run_is_degraded_and_the_operator_carries_on(
    kube_cluster: ControlPlane, release: Release, operator: Operator
) -> None:
    """Moved from the API emulator: the chart's default values configure no Redis, so an async Endpoint is
    Degraded=True/AsyncNotConfigured without a Deployment, and the next Endpoint is still served."""
    ns = namespace(kube_cluster, "bs-no-redis")
    kube_cluster.apply(endpoint_doc(ns, "jobs", modes=["async"]))
    kube_cluster.apply(endpoint_doc(ns, "echo"))
    wait_until(
        lambda: conditions(kube_cluster, ns, "jobs").get("Degraded", {}).get("reason") == "AsyncNotConfigured",
        timeout=60,
        what="Degraded=AsyncNotConfigured",
    )
    assert conditions(kube_cluster, ns, "jobs")["Degraded"]["status"] == "True"
    assert kube_cluster.get("apps/v1", "Deployment", ns, "jobs") is None
    wait_until(lambda: kube_cluster.get("apps/v1", "Deployment", ns, "echo"), timeout=60, what="the other endpoint")
    assert operator.alive()


def _status_with_token(plane: ControlPlane, token: str) -> int:
    request = urllib.request.Request(plane.url + "/api", headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_rotated_token_is_read_again(
    kube_cluster: ControlPlane, release: Release, operator_run: RunningOperator
) -> None:
    """A new token is written to the token file and the old one dies: the operator keeps working (kopf's watches
    and the operator's own client log in again instead of failing with 401 forever)."""
    ns = namespace(kube_cluster, "bs-rotate")
    kube_cluster.apply(endpoint_doc(ns, "before"))
    wait_logged(operator_run.process, lambda: kube_cluster.get("v1", "Service", ns, "before"), "children with token 1")
    old_token = operator_run.token_file.read_text()
    operator_run.token_file.write_text(bound_token(kube_cluster, release, "rotated-token-2"))
    kube_cluster.request("DELETE", kube_cluster.path("v1", "Secret", SYSTEM, operator_run.token_secret))
    # The API server caches successful token reviews for a few seconds: wait until the old token is really refused.
    wait_until(lambda: _status_with_token(kube_cluster, old_token) == 401, timeout=60, what="the old token refused")
    kube_cluster.apply(endpoint_doc(ns, "after"))
    wait_logged(operator_run.process, lambda: kube_cluster.get("v1", "Service", ns, "after"), "children with token 2",
          timeout=90)  # fmt: skip
