"""An operator with a queue on the real control plane: KEDA ordering and each Endpoint's own credentials Secret.

Switching an Endpoint from sync to async replaces its HPA with a ScaledObject.

KEDA itself cannot run here (no pods), so its CRD is installed and its admission webhook's rule ("the workload is
already managed by the hpa ...") is enforced by an in-tree ValidatingAdmissionPolicy with the HPAs of the namespace
as parameters: the real admission chain refuses a ScaledObject while an HPA targets the same Deployment.
Runs after test_operator_cluster.py's operator has stopped (module-scoped), with an operator of its own.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster_harness import (
    GROUP_VERSION,
    SYSTEM,
    Release,
    RunningOperator,
    conditions,
    endpoint_doc,
    install_release,
    namespace,
    start_operator,
    stop_operator,
    wait_logged,
)
from tests.integration.test_operator_queue import KEDA_CRD
from tests.support.cluster import ControlPlane
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

ONE_AUTOSCALER: list[dict[str, Any]] = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "keda-one-autoscaler-per-workload"},
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"},
            "matchConstraints": {"resourceRules": [{"apiGroups": ["keda.sh"], "apiVersions": ["v1alpha1"],
                                                    "operations": ["CREATE", "UPDATE"],
                                                    "resources": ["scaledobjects"]}]},
            "validations": [{
                "expression": "params.spec.scaleTargetRef.name != object.spec.scaleTargetRef.name",
                "messageExpression": "'the workload ' + object.spec.scaleTargetRef.name + ' of type apps/v1.Deployment"
                                     " is already managed by the hpa ' + params.metadata.name",
            }],
        },
    },
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "keda-one-autoscaler-per-workload"},
        "spec": {
            "policyName": "keda-one-autoscaler-per-workload",
            "validationActions": ["Deny"],
            "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
        },
    },
]  # fmt: skip


def _secret(name: str, **data: str) -> dict[str, Any]:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": SYSTEM}, "data": encoded}


@pytest.fixture(scope="module")
def keda_operator(
    kube_cluster: ControlPlane, valkey_server: Valkey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Release, RunningOperator]]:
    release = install_release(kube_cluster)
    kube_cluster.apply(KEDA_CRD)
    for obj in ONE_AUTOSCALER:
        kube_cluster.apply(obj)
    # The master credential (the operator creates each Endpoint's Redis user with it): a real server.
    env = {"BUNDLESERVE_KEDA": "on", "BUNDLESERVE_REDIS_SECRET": "queue", "BUNDLESERVE_REDIS_URL": valkey_server.url}
    running = start_operator(kube_cluster, release, tmp_path_factory.mktemp("keda-operator"), **env)
    yield release, running
    stop_operator(kube_cluster, release, running)


def test_switching_to_async_deletes_the_hpa_before_creating_the_scaled_object(
    kube_cluster: ControlPlane, keda_operator: tuple[Release, RunningOperator]
) -> None:
    _, running = keda_operator
    kube_cluster.apply(_secret("queue", url="redis://:pw@redis.example:6379/0", address="redis.example:6379"))
    ns = namespace(kube_cluster, "bs-keda")
    kube_cluster.apply(endpoint_doc(ns, "jobs", scaling={"minReplicas": 1, "maxReplicas": 3}))
    wait_logged(running.process, lambda: kube_cluster.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, "jobs"),
                "the sync Endpoint's HPA")  # fmt: skip
    change = {"spec": {"modes": ["async"], "scaling": {"minReplicas": 0}}}
    kube_cluster.request("PATCH", kube_cluster.path(GROUP_VERSION, "Endpoint", ns, "jobs"), change,
                         content_type="application/merge-patch+json")  # fmt: skip

    scaled = wait_logged(running.process, lambda: kube_cluster.get("keda.sh/v1alpha1", "ScaledObject", ns, "jobs"),
                         "the ScaledObject admitted")  # fmt: skip
    assert scaled["spec"]["scaleTargetRef"]["name"] == "jobs"
    assert kube_cluster.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, "jobs") is None
    # The Endpoint is not stuck on a refused child (pods stay unschedulable here: that may be Degraded too).
    wait_until(lambda: conditions(kube_cluster, ns, "jobs").get("Degraded", {}).get("observedGeneration", 2) >= 2
               or conditions(kube_cluster, ns, "jobs"), timeout=60, what="status after the switch")  # fmt: skip
    assert conditions(kube_cluster, ns, "jobs")["Degraded"].get("reason") != "ChildRejected", conditions(
        kube_cluster, ns, "jobs")  # fmt: skip


def test_endpoints_get_their_own_credentials_and_never_a_copy_of_a_shared_secret(
    kube_cluster: ControlPlane, valkey_server: Valkey, keda_operator: tuple[Release, RunningOperator]
) -> None:
    """Issue 17 (finding 1): the operator used to copy the queue Secret (the master password) into every Endpoint's
    namespace as `<endpoint>-queue`. Now the namespace gets `<endpoint>-bundleserve-credentials`: the Endpoint's own
    Redis user, which KEDA's trigger names too; a rotated password is a deleted Secret."""
    _, running = keda_operator
    kube_cluster.apply(_secret("queue", url=valkey_server.url, address=f"127.0.0.1:{valkey_server.port}"))
    ns = namespace(kube_cluster, "bs-secrets")
    kube_cluster.apply(endpoint_doc(ns, "jobs", modes=["async"], scaling={"minReplicas": 0, "maxReplicas": 2}))
    own = "jobs-bundleserve-credentials"
    secret = wait_logged(running.process, lambda: kube_cluster.get("v1", "Secret", ns, own), "the credentials")
    assert kube_cluster.get("v1", "Secret", ns, "jobs-queue") is None  # no copy of the shared Secret
    data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert data["username"] == "bundleserve.bs-secrets.jobs"
    assert data["url"].startswith(f"redis://bundleserve.bs-secrets.jobs:{data['password']}@127.0.0.1:")
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Endpoint", "jobs", True)
    # The Secret is written before the Deployment that references it: wait for that too, do not race it.
    deployment = wait_logged(running.process, lambda: kube_cluster.get("apps/v1", "Deployment", ns, "jobs"),
                             "the Deployment")  # fmt: skip
    refs = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert refs == {own}
    scaled = wait_logged(running.process, lambda: kube_cluster.get("keda.sh/v1alpha1", "ScaledObject", ns, "jobs"),
                         "the ScaledObject")  # fmt: skip
    assert scaled["spec"]["triggers"][0]["metadata"]["usernameFromEnv"] == "BUNDLESERVE_REDIS_USERNAME"
    client = valkey_server.client()
    try:
        assert client.execute_command("ACL", "GETUSER", data["username"]) is not None
        # Rotation: delete the Secret; the operator makes a new password and resets the user to it.
        kube_cluster.request("DELETE", kube_cluster.path("v1", "Secret", ns, own))
        rotated = wait_logged(running.process, lambda: (kube_cluster.get("v1", "Secret", ns, own) or {}).get("data"),
                              "the credentials made again")  # fmt: skip
        assert base64.b64decode(rotated["password"]).decode() != data["password"]
        assert data["password"] not in running.process.log()  # secret values never reach the operator's log
    finally:
        client.close()


def test_the_callback_secret_is_mounted_into_the_router_and_a_missing_one_is_degraded(
    kube_cluster: ControlPlane, keda_operator: tuple[Release, RunningOperator]
) -> None:
    """spec.async.callback.auth names a Secret of the Endpoint's namespace: mounted where the router reads it
    (BUNDLESERVE_CALLBACK_SECRET_DIR); missing, the Endpoint is Degraded instead of sending unauthenticated."""
    _, running = keda_operator
    kube_cluster.apply(_secret("queue", url="redis://:pw@redis.example:6379/0", address="redis.example:6379"))
    ns = namespace(kube_cluster, "bs-callback")
    callback = {"url": "https://hooks.example.com/done", "auth": {"kind": "basic", "secretName": "hook-auth"}}
    spec = {"modes": ["async"], "async": {"callback": callback}, "scaling": {"minReplicas": 1, "maxReplicas": 1}}
    kube_cluster.apply(endpoint_doc(ns, "hooked", **spec))

    def degraded() -> dict[str, Any]:
        return conditions(kube_cluster, ns, "hooked").get("Degraded", {})

    wait_logged(running.process, lambda: degraded().get("reason") == "CallbackSecretMissing", "CallbackSecretMissing")
    assert f"{ns}/hook-auth" in degraded()["message"]
    assert kube_cluster.get("apps/v1", "Deployment", ns, "hooked") is None  # nothing runs without its credentials

    secret = _secret("hook-auth", username="u", password="p")
    secret["metadata"]["namespace"] = ns
    kube_cluster.apply(secret)
    deployment = wait_logged(running.process, lambda: kube_cluster.get("apps/v1", "Deployment", ns, "hooked"),
                             "the Deployment once the Secret exists")  # fmt: skip
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "callback-auth"]
    assert volume["secret"]["secretName"] == "hook-auth"
    router = next(c for c in pod["containers"] if c["name"] == "router")
    (mount,) = [m for m in router["volumeMounts"] if m["name"] == "callback-auth"]
    env = {item["name"]: item.get("value") for item in router["env"]}
    assert env["BUNDLESERVE_CALLBACK_SECRET_DIR"] == mount["mountPath"]
    assert mount["readOnly"] is True
