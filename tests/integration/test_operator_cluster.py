"""The operator on a real control plane (kube-apiserver, controller-manager and scheduler built from the official
sources; tests/support/cluster.py): the chart rendered by the Helm engine and applied, the operator running as the
chart's own ServiceAccount so the real RBAC authorizer checks every call, real admission and validation of every
child, garbage collection by the real controller-manager, writes counted in the API server's audit log.

Pods never run (no node, no kubelet): Endpoints here stay Ready=False (Unschedulable), which these tests expect.
"""

from __future__ import annotations

import copy
import json
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from bundleserve.api.rules import RULES
from tests.integration.operator_harness import Operator
from tests.support.cluster import KUBERNETES_VERSION, ControlPlane, kubeconfig_doc
from tests.support.processes import REPO
from tests.support.waiting import wait_until

CHART = REPO / "charts" / "bundleserve"
CORPUS = yaml.safe_load((REPO / "tests" / "unit" / "fixtures" / "endpoint_corpus.yaml").read_text())
RELEASE, SYSTEM = "bs", "bundleserve-system"
GROUP_VERSION = "bundleserve.dev/v1alpha1"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
#: The children of a sync Endpoint with an autoscaled range and more than one replica.
CHILD_KINDS = (
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
)


@dataclass(frozen=True)
class Release:
    """The chart as installed: its objects, and the operator's identity and settings taken from them."""

    objects: list[dict[str, Any]]
    service_account: str
    operator_args: list[str]
    operator_env: dict[str, str]

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{SYSTEM}:{self.service_account}"


def _render(values: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with helm.Chart.load(CHART) as chart:
        crds = [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]
        manifests = chart.render(values, name=RELEASE, namespace=SYSTEM)
    objects = [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
               for doc in yaml.safe_load_all(text) if doc]  # fmt: skip
    return crds, objects


def _established(plane: ControlPlane, name: str) -> bool:
    crd = plane.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name) or {}
    conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
    return conditions.get("Established") == "True"


@pytest.fixture(scope="module")
def release(kube_cluster: ControlPlane) -> Release:
    """`helm install bs charts/bundleserve -n bundleserve-system` with the default values, done by hand: the crds/
    directory first (as Helm does), then every rendered object, each checked by the real API server."""
    crds, objects = _render({})
    kube_cluster.create_namespace(SYSTEM)
    for crd in crds + [o for o in objects if o["kind"] == "CustomResourceDefinition"]:
        kube_cluster.apply(crd)
        wait_until(lambda crd=crd: _established(kube_cluster, crd["metadata"]["name"]), timeout=60,
                   what=f"CRD {crd['metadata']['name']} established")  # fmt: skip
    for obj in objects:
        if obj["kind"] != "CustomResourceDefinition":
            kube_cluster.apply(obj)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("operator")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    return Release(objects, pod["serviceAccountName"], container["args"], env)


class _Env:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}


def _operator(plane: ControlPlane, release: Release, workdir: Path, kubeconfig: Path) -> Operator:
    """`bundleserve operator` with the chart's arguments' scope and the chart's plain settings."""
    env = {**release.operator_env, "BUNDLESERVE_OPERATOR_DRIFT_SECONDS": "3"}
    return Operator(_Env(kubeconfig), workdir, env=env, all_namespaces="--all-namespaces" in release.operator_args)


def _audit(plane: ControlPlane, user: str) -> list[dict[str, Any]]:
    return [e for e in plane.audit_events() if e.get("user", {}).get("username") == user and e.get("stage") ==
            "ResponseComplete"]  # fmt: skip


def _writes(plane: ControlPlane, user: str, since: int = 0) -> list[str]:
    """The user's writes (Events excluded: kopf posts them) as "verb resource/subresource ns/name code"."""
    found = []
    for event in _audit(plane, user)[since:]:
        ref = event.get("objectRef", {})
        if event["verb"] in WRITE_VERBS and ref.get("resource") != "events":
            resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            code = event.get("responseStatus", {}).get("code")
            found.append(f"{event['verb']} {resource} {ref.get('namespace')}/{ref.get('name')} {code}")
    return found


def _forbidden(plane: ControlPlane, user: str) -> list[str]:
    return [
        f"{e['verb']} {e.get('requestURI')}: {e['responseStatus'].get('message')}"
        for e in _audit(plane, user)
        if e.get("responseStatus", {}).get("code") == 403
        and "exceeded quota" not in e["responseStatus"].get("message", "")
    ]


def bound_token(plane: ControlPlane, release: Release, secret: str) -> str:
    """A token of the operator's ServiceAccount bound to a Secret: it dies when the Secret is deleted, as a
    projected token does when it expires (TokenRequest needs >= 10 minutes, too long to wait for)."""
    plane.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": SYSTEM}})
    bound = {"kind": "Secret", "apiVersion": "v1", "name": secret}
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600, "boundObjectRef": bound}}  # fmt: skip
    path = f"/api/v1/namespaces/{SYSTEM}/serviceaccounts/{release.service_account}/token"
    return str(plane.request("POST", path, body)["status"]["token"])


@dataclass
class RunningOperator:
    process: Operator
    token_file: Path


@pytest.fixture(scope="module")
def operator_run(
    kube_cluster: ControlPlane, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningOperator]:
    """The chart's operator, logged in through a kubeconfig `tokenFile` (as a pod reads its projected token)."""
    workdir = tmp_path_factory.mktemp("operator")
    token_file = workdir / "token"
    token_file.write_text(bound_token(kube_cluster, release, "operator-token-1"))
    doc = kubeconfig_doc(kube_cluster.url, kube_cluster.pki / "ca.crt", token="unused")
    doc["users"][0]["user"] = {"tokenFile": str(token_file)}
    kubeconfig = workdir / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(doc))
    running = _operator(kube_cluster, release, workdir, kubeconfig).start()
    yield RunningOperator(running, token_file)
    if running.alive():
        running.stop()
    # Every call the operator made was allowed by the chart's RBAC, as the real authorizer decided it (quota
    # denials are 403s too: those are the API server refusing a child, not RBAC).
    assert _forbidden(kube_cluster, release.user) == [], running.log()[-3000:]


@pytest.fixture
def operator(operator_run: RunningOperator) -> Operator:
    return operator_run.process


def _endpoint(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("modes", ["sync"])
    spec.setdefault("bundle", {"image": "registry.example.com/echo:1", "python": {"entrypoint": "echo_model:predict"}})
    return {"apiVersion": GROUP_VERSION, "kind": "Endpoint", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}  # fmt: skip


def _conditions(plane: ControlPlane, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    body = plane.get(GROUP_VERSION, "Endpoint", namespace, name) or {}
    return {c["type"]: c for c in body.get("status", {}).get("conditions", [])}


def _wait(operator: Operator, predicate: Any, what: str, timeout: float = 60, conditions_of: Any = None) -> Any:
    """wait_until, failing with the operator's log (and the Endpoint's conditions) so a failure says why."""
    try:
        return wait_until(predicate, timeout=timeout, what=what)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n--- operator log ---\n{operator.log()[-6000:]}") from None


def _namespace(plane: ControlPlane, name: str) -> str:
    plane.create_namespace(name)
    return name


def test_the_control_plane_is_the_pinned_release(kube_cluster: ControlPlane) -> None:
    assert kube_cluster.version() == KUBERNETES_VERSION


def test_the_chart_installs_and_its_crds_are_established(kube_cluster: ControlPlane, release: Release) -> None:
    for obj in release.objects:
        meta = obj["metadata"]
        assert kube_cluster.get(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]), meta["name"]
    assert _established(kube_cluster, "endpoints.bundleserve.dev")


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
    ns = _namespace(kube_cluster, "bs-children")
    endpoint = kube_cluster.apply(_endpoint(ns, "echo", scaling={"minReplicas": 2, "maxReplicas": 4}))
    uid = endpoint["metadata"]["uid"]

    def children() -> list[dict[str, Any]]:
        return [
            c for v, k in CHILD_KINDS for c in kube_cluster.items(v, k, ns, selector="bundleserve.dev/endpoint=echo")
        ]

    _wait(operator, lambda: len(children()) == len(CHILD_KINDS), "every child created", conditions_of=(ns, "echo"))
    for child in children():
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["kind"], owner["controller"], owner["blockOwnerDeletion"]) == (
            uid, "Endpoint", True, True)  # fmt: skip
    # No node: the real scheduler leaves the pods Pending with PodScheduled=False/Unschedulable, and status says so.
    ready = _wait(operator, lambda: _conditions(kube_cluster, ns, "echo").get("Ready"), "a Ready condition")
    assert ready["status"] == "False"
    _wait(operator, lambda: _conditions(kube_cluster, ns, "echo")["Ready"]["reason"] == "Unschedulable",
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
    ns = _namespace(kube_cluster, "bs-steady")
    spec: dict[str, Any] = {
        "scaling": {"minReplicas": 1, "maxReplicas": 3},
        "resources": {"cpu": "1000m", "memory": "1000"},
        "bundle": {"image": "registry.example.com/echo:1", "python": {"entrypoint": "echo_model:predict"},
                   "env": [{"name": "EMPTY", "value": ""}]},
    }  # fmt: skip
    kube_cluster.apply(_endpoint(ns, "steady", **spec))
    wait_until(lambda: kube_cluster.get("apps/v1", "Deployment", ns, "steady"), timeout=60, what="the Deployment")
    operator.wait_idle(["steady"], at_least=2, timeout=60)
    since = len(_audit(kube_cluster, release.user))
    # Three more drift passes (BUNDLESERVE_OPERATOR_DRIFT_SECONDS=3 in this module).
    count = operator.metric("bundleserve_operator_reconcile_duration_seconds_count", endpoint="steady")
    operator.wait_idle(["steady"], at_least=int(count) + 3, timeout=60)
    writes = [w for w in _writes(kube_cluster, release.user, since) if f" {ns}/" in w]
    assert writes == [], writes


def test_a_child_the_api_server_refuses_is_a_degraded_condition_with_its_message(
    kube_cluster: ControlPlane, release: Release, operator: Operator
) -> None:
    """A quota denial (403 from the ResourceQuota admission plugin) ends in Degraded=True/ChildRejected carrying the
    API server's message, instead of a retry loop that never reaches status."""
    ns = _namespace(kube_cluster, "bs-quota")
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-services", "namespace": ns},
             "spec": {"hard": {"services": "0"}}}  # fmt: skip
    kube_cluster.apply(quota)
    wait_until(lambda: (kube_cluster.get("v1", "ResourceQuota", ns, "no-services") or {}).get("status", {}).get("hard"),
               timeout=60, what="the quota observed by the controller-manager")  # fmt: skip
    kube_cluster.apply(_endpoint(ns, "quota"))

    def degraded() -> dict[str, Any] | None:
        found = _conditions(kube_cluster, ns, "quota").get("Degraded")
        return found if found and found["status"] == "True" else None

    condition = wait_until(degraded, timeout=60, what="Degraded=True")
    assert condition["reason"] == "ChildRejected"
    assert "exceeded quota: no-services" in condition["message"], condition


def test_a_rotated_token_is_read_again(
    kube_cluster: ControlPlane, release: Release, operator_run: RunningOperator
) -> None:
    """A new token is written to the token file and the old one dies: the operator keeps working (kopf's watches
    and the operator's own client log in again instead of failing with 401 forever)."""
    ns = _namespace(kube_cluster, "bs-rotate")
    kube_cluster.apply(_endpoint(ns, "before"))
    _wait(operator_run.process, lambda: kube_cluster.get("v1", "Service", ns, "before"), "children with token 1")
    operator_run.token_file.write_text(bound_token(kube_cluster, release, "operator-token-2"))
    kube_cluster.request("DELETE", kube_cluster.path("v1", "Secret", SYSTEM, "operator-token-1"))
    kube_cluster.apply(_endpoint(ns, "after"))
    _wait(operator_run.process, lambda: kube_cluster.get("v1", "Service", ns, "after"), "children with token 2",
          timeout=90)  # fmt: skip
