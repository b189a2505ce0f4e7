"""KEDA on the real control plane: switching an Endpoint from sync to async replaces its HPA with a ScaledObject.

KEDA itself cannot run here (no pods), so its CRD is installed and its admission webhook's rule ("the workload is
already managed by the hpa ...") is enforced by an in-tree ValidatingAdmissionPolicy with the HPAs of the namespace
as parameters: the real admission chain refuses a ScaledObject while an HPA targets the same Deployment.
Runs after test_operator_cluster.py's operator has stopped (module-scoped), with an operator of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster_harness import (
    GROUP_VERSION,
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
