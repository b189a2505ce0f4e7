"""Helpers of the operator tests on a real control plane (kube-apiserver, controller-manager and scheduler built from the official
sources; tests/support/cluster.py): the chart rendered by the Helm engine and applied, the operator running as the
chart's own ServiceAccount so the real RBAC authorizer checks every call, real admission and validation of every
child, garbage collection by the real controller-manager, writes counted in the API server's audit log.

Pods never run (no node, no kubelet): Endpoints here stay Ready=False (Unschedulable), which these tests expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from tests.integration.operator_harness import Operator
from tests.support.cluster import ControlPlane, kubeconfig_doc
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
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


@dataclass(frozen=True)
class Release:
    """The chart as installed: its objects, and the operator's identity and settings taken from them."""

    objects: list[dict[str, Any]]
    service_account: str
    operator_args: list[str]
    operator_env: dict[str, str]

    @property
    def peering(self) -> str | None:
        """The chart's `--peering NAME` (operator.replicas > 1), else None (`--standalone`)."""
        names = [arg.split("=", 1)[1] for arg in self.operator_args if arg.startswith("--peering=")]
        return names[0] if names else None

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{SYSTEM}:{self.service_account}"


def render(values: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with helm.Chart.load(CHART) as chart:
        crds = [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]
        manifests = chart.render(values, name=RELEASE, namespace=SYSTEM)
    objects = [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
               for doc in yaml.safe_load_all(text) if doc]  # fmt: skip
    return crds, objects


def established(plane: ControlPlane, name: str) -> bool:
    crd = plane.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name) or {}
    conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
    return conditions.get("Established") == "True"


def install_release(kube_cluster: ControlPlane, values: dict[str, Any] | None = None) -> Release:
    """`helm install bs charts/bundleserve -n bundleserve-system` with the default values, done by hand: the crds/
    directory first (as Helm does), then every rendered object, each checked by the real API server."""
    crds, objects = render(values or {})
    kube_cluster.create_namespace(SYSTEM)
    for crd in crds + [o for o in objects if o["kind"] == "CustomResourceDefinition"]:
        kube_cluster.apply(crd)
        wait_until(lambda crd=crd: established(kube_cluster, crd["metadata"]["name"]), timeout=60,
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


def audit(plane: ControlPlane, user: str) -> list[dict[str, Any]]:
    return [e for e in plane.audit_events() if e.get("user", {}).get("username") == user and e.get("stage") ==
            "ResponseComplete"]  # fmt: skip


def writes(plane: ControlPlane, user: str, since: int = 0) -> list[str]:
    """The user's writes (Events excluded: kopf posts them) as "verb resource/subresource ns/name code"."""
    found = []
    for event in audit(plane, user)[since:]:
        ref = event.get("objectRef", {})
        if event["verb"] in WRITE_VERBS and ref.get("resource") != "events":
            resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            code = event.get("responseStatus", {}).get("code")
            found.append(f"{event['verb']} {resource} {ref.get('namespace')}/{ref.get('name')} {code}")
    return found


#: 403s that are not RBAC: a ResourceQuota refusing a child, and OwnerReferencesPermissionEnforcement refusing a
#: child owned by an Endpoint while the API server's admission RESTMapper has not yet learnt the Endpoint kind (its
#: discovery cache catches up within seconds of the CRD's creation; the operator's retry then succeeds). Seen when a
#: module applied the CRD shortly before another module's operator created children.
NOT_RBAC = ("exceeded quota", "cannot find RESTMapping")


def forbidden(plane: ControlPlane, user: str, since: int = 0) -> list[str]:
    return [
        f"{e['verb']} {e.get('requestURI')}: {e['responseStatus'].get('message')}"
        for e in audit(plane, user)[since:]
        if e.get("responseStatus", {}).get("code") == 403
        and not any(reason in e["responseStatus"].get("message", "") for reason in NOT_RBAC)
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


@dataclass(frozen=True)
class RunningOperator:
    process: Operator
    token_file: Path
    token_secret: str  # the Secret its current token is bound to (delete it and the token dies)
    #: The user's audit events before it started: its own requests are the ones after (another module's deliberate
    #: 403s with the same ServiceAccount, e.g. test_operator_cluster_admission's probe, are not its).
    audit_since: int = 0


def start_operator(kube_cluster: ControlPlane, release: Release, workdir: Path, **env: str) -> RunningOperator:
    """The chart's operator, logged in through a kubeconfig `tokenFile` (as a pod reads its projected token), with
    the chart's scope and peering arguments: at operator.replicas > 1 the chart runs `--peering NAME`, and so does
    this (a harness that dropped it ran `--standalone` replicas that never touch the peering object)."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "token"
    token_secret = f"{workdir.name}-token-1"
    token_file.write_text(bound_token(kube_cluster, release, token_secret))
    doc = kubeconfig_doc(kube_cluster.url, kube_cluster.pki / "ca.crt", token="unused")
    doc["users"][0]["user"] = {"tokenFile": str(token_file)}
    kubeconfig = workdir / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(doc))
    # POD_NAMESPACE is the chart's fieldRef (the operator pod's namespace): the home of the shared Secrets.
    settings = {**release.operator_env, "POD_NAMESPACE": SYSTEM, "BUNDLESERVE_OPERATOR_DRIFT_SECONDS": "3", **env}
    process = Operator(
        _Env(kubeconfig),
        workdir,
        env=settings,
        peering=release.peering,
        all_namespaces="--all-namespaces" in release.operator_args,
    )
    since = len(audit(kube_cluster, release.user))
    return RunningOperator(process.start(), token_file, token_secret, since)


def stop_operator(kube_cluster: ControlPlane, release: Release, running: RunningOperator) -> None:
    """Stop it, then check that every call it made was allowed by the chart's RBAC, as the real authorizer decided
    it (quota denials are 403s too: those are the API server refusing a child, not RBAC)."""
    if running.process.alive():
        running.process.stop()
    denied = forbidden(kube_cluster, release.user, running.audit_since)
    assert denied == [], f"{denied}\n{running.process.log()[-3000:]}"


def endpoint_doc(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("modes", ["sync"])
    spec.setdefault("bundle", {"image": "registry.example.com/echo:1", "python": {"entrypoint": "echo_model:predict"}})
    return {"apiVersion": GROUP_VERSION, "kind": "Endpoint", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}  # fmt: skip


def conditions(plane: ControlPlane, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    body = plane.get(GROUP_VERSION, "Endpoint", namespace, name) or {}
    return {c["type"]: c for c in body.get("status", {}).get("conditions", [])}


def wait_logged(operator: Operator, predicate: Any, what: str, timeout: float = 60, conditions_of: Any = None) -> Any:
    """wait_until, failing with the operator's log (and the Endpoint's conditions) so a failure says why."""
    try:
        return wait_until(predicate, timeout=timeout, what=what)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n--- operator log ---\n{operator.log()[-6000:]}") from None


def namespace(plane: ControlPlane, name: str) -> str:
    plane.create_namespace(name)
    return name
