"""The chart's generated API key through a real Helm install and upgrade on the real control plane
(tests/support/cluster.py): `lookup` reads the installed Secret, so an upgrade keeps the key clients already hold,
and `helm.sh/resource-policy: keep` leaves it in place on uninstall.

The release lives in a namespace of its own, with the CRDs left out (`crds.enabled=false`: the operator suites of
the same session install them), so it never collides with the release those suites apply.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import helm_python as helm
import pytest

from tests.integration.cluster_harness import CHART, namespace
from tests.support.cluster import ControlPlane
from tests.support.waiting import wait_until

RELEASE, NAMESPACE = "keys", "bs-chart-keys"
SECRET = f"{RELEASE}-bundleserve-api-keys"
VALUES = {"crds": {"enabled": False}}


@pytest.fixture(scope="module")
def helm_config(kube_cluster: ControlPlane) -> Iterator[helm.Config]:
    namespace(kube_cluster, NAMESPACE)
    with helm.Config(kubeconfig_path=kube_cluster.kubeconfig, namespace=NAMESPACE) as config:
        yield config


def _installed_key(plane: ControlPlane) -> str:
    secret = plane.get("v1", "Secret", NAMESPACE, SECRET)
    assert secret is not None, f"Secret {SECRET} missing"
    return base64.b64decode(secret["data"]["api-keys"]).decode()


def test_an_upgrade_keeps_the_installed_key_and_an_uninstall_leaves_it(
    kube_cluster: ControlPlane, helm_config: helm.Config
) -> None:
    with helm.Chart.load(CHART) as chart:
        helm_config.install(chart, RELEASE, VALUES, namespace=NAMESPACE)
        key = _installed_key(kube_cluster)
        assert len(key) == 40
        # A cluster-aware render (what `helm upgrade` runs) finds the Secret through `lookup`...
        rendered = helm_config.render(chart, VALUES, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
        assert base64.b64encode(key.encode()).decode() in rendered["bundleserve/templates/api-keys-secret.yaml"]
        # ...and a real upgrade (even with changed values) writes the same key back.
        helm_config.upgrade(chart, RELEASE, {**VALUES, "operator": {"replicas": 2}}, namespace=NAMESPACE)
        assert _installed_key(kube_cluster) == key
        helm_config.uninstall(RELEASE)
    operator = f"{RELEASE}-bundleserve-operator"
    wait_until(lambda: kube_cluster.get("apps/v1", "Deployment", NAMESPACE, operator) is None, timeout=60,
               what="the release's Deployment deleted")  # fmt: skip
    assert _installed_key(kube_cluster) == key  # resource-policy keep
