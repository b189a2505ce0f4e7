"""Cluster-wide mode (`--all-namespaces`, the Helm chart's default scope): one operator serves Endpoints of every
namespace, each reconciled into its own namespace, and same-named Endpoints of two namespaces never touch each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.operator_harness import ENDPOINTS, NS, Operator, condition_is, endpoint_doc, prepare
from tests.support.k8s.emulator import KubernetesEmulator
from tests.support.waiting import wait_until

TEAMS = ("team-a", "team-b")
CHILDREN = (("configmaps", "echo-endpoint"), ("services", "echo"), ("deployments.apps", "echo"))


def child_uids(cluster: KubernetesEmulator, namespace: str) -> dict[str, str]:
    """uid of each child of the Endpoint `echo` in `namespace` (missing children are absent)."""
    found = {resource: cluster.get(resource, name, namespace) for resource, name in CHILDREN}
    return {resource: body["metadata"]["uid"] for resource, body in found.items() if body}


def owned_by_its_own_endpoint(cluster: KubernetesEmulator, namespace: str) -> bool:
    owner = cluster.get(ENDPOINTS, "echo", namespace)
    if owner is None:
        return False
    for resource, name in CHILDREN:
        child: dict[str, Any] = cluster.get(resource, name, namespace) or {}
        owners = {ref["uid"] for ref in child.get("metadata", {}).get("ownerReferences", [])}
        if owners != {owner["metadata"]["uid"]}:
            return False
    return True


def test_one_cluster_wide_operator_serves_every_namespace(k8s_api: KubernetesEmulator, tmp_path: Path) -> None:
    cluster = prepare(k8s_api)
    for namespace in TEAMS:
        cluster.create_namespace(namespace)
    operator = Operator(cluster, tmp_path, all_namespaces=True).start()
    try:
        for namespace in TEAMS:
            doc = endpoint_doc("echo")
            doc["metadata"]["namespace"] = namespace
            cluster.create(doc)
        wait_until(
            lambda: all(owned_by_its_own_endpoint(cluster, namespace) for namespace in TEAMS),
            timeout=20,
            what="the children of each echo in its own namespace",
        )
        assert child_uids(cluster, NS) == {}  # nothing strays into the harness's default namespace

        for namespace in TEAMS:
            cluster.roll_out(namespace, "echo")
        wait_until(
            lambda: all(
                condition_is(cluster, "echo", "Ready", "True", "ReplicasAvailable", namespace=namespace)
                for namespace in TEAMS
            ),
            timeout=20,
            what="both echo Endpoints Ready",
        )
        kept = child_uids(cluster, "team-b")
        assert set(kept) == {resource for resource, _ in CHILDREN}

        cluster.delete(ENDPOINTS, "echo", "team-a")
        wait_until(
            lambda: cluster.get(ENDPOINTS, "echo", "team-a") is None and child_uids(cluster, "team-a") == {},
            timeout=20,
            what="team-a/echo and its children gone",
        )
        operator.wait_idle(["echo"])
        assert child_uids(cluster, "team-b") == kept  # not recreated, not deleted
        assert condition_is(cluster, "echo", "Ready", "True", "ReplicasAvailable", namespace="team-b")
        assert operator.alive()
    finally:
        operator.stop()
