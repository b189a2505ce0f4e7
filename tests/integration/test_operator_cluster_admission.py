"""The chart's admission option (values `admission`, issue 17 finding 2) on the real control plane: the real API
server evaluates the rendered ValidatingAdmissionPolicies.

- endpointRestrictions: an Endpoint naming a service account or a Secret the cluster admin did not allow is refused
  at `kubectl apply` with the policy's message; an allowed one is admitted;
- operatorGuard: the operator's own ServiceAccount (its real token; RBAC allows these writes cluster-wide) cannot
  rewrite a Secret it does not manage, in kube-system or elsewhere, while the operator still reconciles an Endpoint
  with every write admitted.
The policies are deleted at the end: the control plane is shared by the test session.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster_harness import (
    Release,
    RunningOperator,
    bound_token,
    endpoint_doc,
    forbidden,
    install_release,
    namespace,
    start_operator,
    wait_logged,
)
from tests.support.cluster import ControlPlane

VALUES = {
    "admission": {
        "endpointRestrictions": {
            "enabled": True,
            "allowedServiceAccounts": ["model-runner"],
            "allowedSecrets": ["team-*", "hook-auth"],
        },
        "operatorGuard": {"enabled": True},
    }
}


@pytest.fixture(scope="module")
def guarded(
    kube_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Release, RunningOperator]]:
    release = install_release(kube_cluster, VALUES)
    policies = [o for o in release.objects if o["kind"].startswith("ValidatingAdmissionPolicy")]
    assert len(policies) == 4
    running = start_operator(kube_cluster, release, tmp_path_factory.mktemp("guarded-operator"), BUNDLESERVE_KEDA="off")
    try:
        yield release, running
    finally:
        if running.process.alive():
            running.process.stop()
        # Every write the operator made was admitted; the only 403s of its identity are the test's own probes.
        denied = forbidden(kube_cluster, release.user, running.audit_since)
        assert all("bootstrap-like" in item for item in denied), denied
        for obj in policies:
            kind = obj["kind"]
            kube_cluster.request("DELETE", kube_cluster.path(obj["apiVersion"], kind, None, obj["metadata"]["name"]))


def refused(kube_cluster: ControlPlane, document: dict[str, Any]) -> str:
    with pytest.raises(urllib.error.HTTPError) as error:
        kube_cluster.apply(document)
    body = json.loads(error.value.read() or b"{}")
    assert error.value.code in (403, 422), body
    return str(body.get("message", ""))


def test_endpoints_may_name_only_allowed_service_accounts_and_secrets(
    kube_cluster: ControlPlane, guarded: tuple[Release, RunningOperator]
) -> None:
    ns = namespace(kube_cluster, "bs-admission")
    message = refused(kube_cluster, endpoint_doc(ns, "admin-sa", pod={"serviceAccountName": "cluster-admin-sa"}))
    assert "spec.pod.serviceAccountName cluster-admin-sa is not allowed" in message
    env = [{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "prod-db", "key": "password"}}}]
    bundle = {"image": "registry.example.com/echo:1", "python": {"entrypoint": "m:f"}, "env": env}
    message = refused(kube_cluster, endpoint_doc(ns, "steals", bundle=bundle))
    assert "references Secrets it may not read: prod-db" in message
    from_all = {**bundle, "env": [], "envFrom": [{"secretRef": {"name": "other-team-keys"}}]}
    assert "other-team-keys" in refused(kube_cluster, endpoint_doc(ns, "steals2", bundle=from_all))
    pulls = {"serviceAccountName": "model-runner", "imagePullSecrets": [{"name": "registry-admin"}]}
    assert "registry-admin" in refused(kube_cluster, endpoint_doc(ns, "pulls", pod=pulls))

    allowed_env = [{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "team-db", "key": "password"}}}]
    kube_cluster.apply(
        endpoint_doc(ns, "fine", bundle={**bundle, "env": allowed_env}, pod={"serviceAccountName": "model-runner"})
    )
    assert kube_cluster.get("bundleserve.dev/v1alpha1", "Endpoint", ns, "fine") is not None


def test_the_operator_may_write_only_what_it_manages(
    kube_cluster: ControlPlane, guarded: tuple[Release, RunningOperator]
) -> None:
    release, running = guarded
    ns = namespace(kube_cluster, "bs-guarded")
    kube_cluster.apply(endpoint_doc(ns, "echo"))  # no service account, no Secret: admitted
    wait_logged(running.process, lambda: kube_cluster.get("apps/v1", "Deployment", ns, "echo"),
                "the Deployment written under the guard", conditions_of=None)  # fmt: skip

    kube_cluster.create_namespace("kube-system")
    victim = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bootstrap-like", "namespace": "kube-system"},
              "stringData": {"token": "original"}}  # fmt: skip
    kube_cluster.apply(victim)
    token = bound_token(kube_cluster, release, "guard-probe-token")
    path = kube_cluster.path("v1", "Secret", "kube-system", "bootstrap-like")
    live = kube_cluster.get("v1", "Secret", "kube-system", "bootstrap-like")
    assert live is not None
    changed = {**live, "data": {"token": "cmV3cml0dGVu"}}
    request = urllib.request.Request(kube_cluster.url + path, data=json.dumps(changed).encode(), method="PUT")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    with pytest.raises(urllib.error.HTTPError) as error:
        # The CA only: the admin context carries a client certificate, which would authenticate as the admin.
        urllib.request.urlopen(
            request, context=ssl.create_default_context(cafile=kube_cluster.pki / "ca.crt"), timeout=30
        )
    body = json.loads(error.value.read() or b"{}")
    assert error.value.code == 403 and "may only write objects labelled" in body.get("message", ""), body
    after = kube_cluster.get("v1", "Secret", "kube-system", "bootstrap-like")
    assert after is not None and after["data"] == live["data"]
