"""`helm upgrade` with a CRD change, then `helm uninstall`, on a real control plane of this module's own (a release that
owns the Endpoint CRD cannot share a control plane with the suites that apply the CRD themselves): what Helm does with
the Endpoint CRD (a template) and the kopf peering CRDs (the chart's crds/ directory), and what an uninstall leaves,
checked against docs/install.md ("Upgrading", "Uninstalling") and docs/operations.md ("Upgrade", "Uninstall").

The "old" chart is a copy of charts/bundleserve whose Endpoint CRD lacks `spec.pod` (a field the current one has)
and whose peering CRDs carry a marker annotation. No node: the pods stay Pending, which changes nothing Helm does.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.support.cluster import ControlPlane, running
from tests.support.processes import REPO
from tests.support.waiting import wait_until

CHART = REPO / "charts" / "bundleserve"
RELEASE, NAMESPACE, MODELS = "bs", "bundleserve-system", "team-a"
ENDPOINT_CRD = "endpoints.bundleserve.dev"
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
OLD_MARKER = "bundleserve.dev/test-chart"
CRD_API = "apiextensions.k8s.io/v1"
#: Every optional part of the chart that renders without other operators' CRDs (no ServiceMonitor).
VALUES: dict[str, Any] = {
    "operator": {"replicas": 2},
    "gateway": {"enabled": True, "replicas": 2},
    "redis": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "admission": {"endpointRestrictions": {"enabled": True}, "operatorGuard": {"enabled": True}},
}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running(tmp_path_factory.mktemp("chart-lifecycle-plane")) as started:
        yield started


def _old_chart(directory: Path) -> Path:
    """charts/bundleserve with `spec.pod` cut from the Endpoint CRD and a marker on the peering CRDs."""
    old = directory / "bundleserve"
    shutil.copytree(CHART, old)
    crd_file = old / "files" / "crds" / f"{ENDPOINT_CRD}.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    for version in crd["spec"]["versions"]:
        del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["pod"]
    crd_file.write_text(yaml.safe_dump(crd))
    peering_file = old / "crds" / "kopf-peering.yaml"
    peering = list(yaml.safe_load_all(peering_file.read_text()))
    for document in peering:
        document["metadata"].setdefault("annotations", {})[OLD_MARKER] = "old"
    peering_file.write_text(yaml.safe_dump_all(peering))
    return old


def _endpoint(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "echo" / "endpoint.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": MODELS}
    doc["spec"]["pod"] = {"labels": {"team": "a"}}
    return doc


def _objects(manifest: str) -> list[tuple[str, str, str | None, str]]:
    """(apiVersion, kind, namespace, name) of each object of a release manifest."""
    found = []
    for document in yaml.safe_load_all(manifest):
        if document:
            namespace = document["metadata"].get("namespace", NAMESPACE) if _namespaced(document["kind"]) else None
            found.append((document["apiVersion"], document["kind"], namespace, document["metadata"]["name"]))
    return found


def _namespaced(kind: str) -> bool:
    return kind not in {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Namespace",
    }


def test_an_upgrade_updates_the_endpoint_crd_and_an_uninstall_leaves_what_the_docs_say(
    plane: ControlPlane, tmp_path: Path
) -> None:
    plane.create_namespace(NAMESPACE)
    plane.create_namespace(MODELS)
    with helm.Config(kubeconfig_path=plane.kubeconfig, namespace=NAMESPACE) as config:
        with helm.Chart.load(_old_chart(tmp_path)) as old:
            config.install(old, RELEASE, VALUES, namespace=NAMESPACE)
        # The old schema has no spec.pod: the API server prunes it.
        plane.apply(_endpoint("before"))
        before = plane.get("bundleserve.dev/v1alpha1", "Endpoint", MODELS, "before") or {}
        assert "pod" not in before["spec"], before["spec"]

        with helm.Chart.load(CHART) as chart:
            upgraded = config.upgrade(chart, RELEASE, VALUES, namespace=NAMESPACE)
        # The Endpoint CRD is a template: upgraded, the new field is kept now.
        crd = plane.get(CRD_API, "CustomResourceDefinition", None, ENDPOINT_CRD) or {}
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert "pod" in schema
        plane.apply(_endpoint("after"))
        after = plane.get("bundleserve.dev/v1alpha1", "Endpoint", MODELS, "after") or {}
        assert after["spec"].get("pod") == {"labels": {"team": "a"}}, after["spec"]
        # The peering CRDs of crds/ are not: they still carry the old chart's marker.
        for name in PEERING_CRDS:
            peering = plane.get(CRD_API, "CustomResourceDefinition", None, name) or {}
            assert peering["metadata"].get("annotations", {}).get(OLD_MARKER) == "old", peering["metadata"]

        released = _objects(upgraded["manifest"])
        claims_before = plane.items("v1", "PersistentVolumeClaim", NAMESPACE)
        config.uninstall(RELEASE)

    def remaining() -> list[tuple[str, str, str | None, str]]:
        return [obj for obj in released if plane.get(obj[0], obj[1], obj[2], obj[3]) is not None]

    kept = {(f"{RELEASE}-bundleserve-api-keys", "Secret"), (ENDPOINT_CRD, "CustomResourceDefinition")}
    wait_until(
        lambda: {(name, kind) for _, kind, _, name in remaining()} == kept,
        timeout=120,
        interval=0.5,
        what=f"only {sorted(kept)} of the release left",
    )
    # Not in the release, also left: the peering CRDs (crds/), the Endpoints (the CRD stays), the Redis claim.
    for name in PEERING_CRDS:
        assert plane.get(CRD_API, "CustomResourceDefinition", None, name) is not None, name
    endpoints = plane.items("bundleserve.dev/v1alpha1", "Endpoint", MODELS)
    assert sorted(item["metadata"]["name"] for item in endpoints) == ["after", "before"]
    claims = plane.items("v1", "PersistentVolumeClaim", NAMESPACE)
    assert [c["metadata"]["name"] for c in claims] == [c["metadata"]["name"] for c in claims_before], claims
    assert claims, "the bundled Redis' StatefulSet made no claim"
    print(
        f"\nafter helm uninstall: {sorted(kept)} of the release's {len(released)} objects, the CRDs "
        f"{list(PEERING_CRDS)}, 2 Endpoints and the claims {[c['metadata']['name'] for c in claims]}"
    )
