"""An operator with a queue Secret on the real control plane: KEDA ordering and shared-Secret copies.

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
    kube_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Release, RunningOperator]]:
    release = install_release(kube_cluster)
    kube_cluster.apply(KEDA_CRD)
    for obj in ONE_AUTOSCALER:
        kube_cluster.apply(obj)
    env = {"BUNDLESERVE_KEDA": "on", "BUNDLESERVE_REDIS_SECRET": "queue"}
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


def test_endpoints_outside_the_release_namespace_get_copies_of_the_shared_secrets(
    kube_cluster: ControlPlane, keda_operator: tuple[Release, RunningOperator]
) -> None:
    """Pods reference Secrets of their own namespace only: the operator copies the queue Secret (from its own
    namespace) next to the Endpoint, owned by it, keeps the copy current, and names a missing source in status."""
    _, running = keda_operator
    if kube_cluster.get("v1", "Secret", SYSTEM, "queue") is not None:  # another test of this module made it
        kube_cluster.request("DELETE", kube_cluster.path("v1", "Secret", SYSTEM, "queue"))
    ns = namespace(kube_cluster, "bs-secrets")
    kube_cluster.apply(endpoint_doc(ns, "jobs", modes=["async"], scaling={"minReplicas": 1, "maxReplicas": 1}))

    def degraded_reason() -> str:
        return str(conditions(kube_cluster, ns, "jobs").get("Degraded", {}).get("reason", ""))

    wait_logged(running.process, lambda: degraded_reason() == "SecretMissing", "Degraded=SecretMissing")
    assert f"{SYSTEM}/queue" in conditions(kube_cluster, ns, "jobs")["Degraded"]["message"]

    kube_cluster.apply(_secret("queue", url="redis://:pw@redis.example:6379/0", address="redis.example:6379"))
    copy = wait_logged(running.process, lambda: kube_cluster.get("v1", "Secret", ns, "jobs-queue"), "the copy")
    assert base64.b64decode(copy["data"]["url"]).decode() == "redis://:pw@redis.example:6379/0"
    (owner,) = copy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Endpoint", "jobs", True)
    # The copy is written before the Deployment that references it: wait for that too, do not race it.
    deployment = wait_logged(running.process, lambda: kube_cluster.get("apps/v1", "Deployment", ns, "jobs"),
                             "the Deployment")  # fmt: skip
    refs = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert refs == {"jobs-queue"}
    wait_until(lambda: degraded_reason() != "SecretMissing", timeout=60, what="SecretMissing cleared")

    kube_cluster.apply(_secret("queue", url="redis://:rotated@redis.example:6379/0", address="redis.example:6379"))
    wait_logged(running.process, lambda: base64.b64decode(
        kube_cluster.get("v1", "Secret", ns, "jobs-queue")["data"]["url"]).decode().startswith("redis://:rotated@"),
        "the copy refreshed after a rotation")  # fmt: skip
    assert "rotated" not in running.process.log()  # secret values never reach the operator's log


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
