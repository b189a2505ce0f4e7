"""High availability with kopf peering: two replicas, one works; when it leaves or crashes, the other takes over."""

from __future__ import annotations

from pathlib import Path

from tests.integration.operator_harness import NS, Operator, endpoint_doc, prepare
from tests.support.k8s.emulator import KubernetesEmulator
from tests.support.processes import REPO
from tests.support.waiting import wait_until

PEERING_CRDS = REPO / "charts" / "bundleserve" / "crds" / "kopf-peering.yaml"


def test_the_standby_replica_takes_over_when_the_leader_leaves(k8s_api: KubernetesEmulator, tmp_path: Path) -> None:
    cluster = prepare(k8s_api)
    cluster.apply(PEERING_CRDS)
    cluster.create(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "bundleserve", "namespace": NS}}
    )
    env = {"BUNDLESERVE_REDIS_SECRET": "bundleserve-redis"}
    leader = Operator(
        cluster, tmp_path / "a", env={**env, "BUNDLESERVE_PEERING_PRIORITY": "200"}, peering="bundleserve"
    )
    standby = Operator(
        cluster, tmp_path / "b", env={**env, "BUNDLESERVE_PEERING_PRIORITY": "100"}, peering="bundleserve"
    )
    leader.start()
    standby.start()
    try:
        wait_until(
            lambda: len((cluster.get("kopfpeerings.kopf.dev", "bundleserve", NS) or {}).get("status") or {}) == 2,
            timeout=20,
            what="both replicas in the peering object",
        )
        cluster.create(endpoint_doc("first"))
        wait_until(lambda: cluster.get("deployments.apps", "first", NS), timeout=20, what="first reconciled")
        leader.wait_idle(["first"])
        assert standby.metric("bundleserve_operator_reconcile_duration_seconds_count", endpoint="first") == 0

        assert leader.stop() == 0  # a graceful exit removes it from the peering object
        cluster.create(endpoint_doc("second"))
        wait_until(lambda: cluster.get("deployments.apps", "second", NS), timeout=30, what="the standby takes over")
        standby.wait_idle(["second"])
    finally:
        for operator in (leader, standby):
            if operator.alive():
                operator.stop()
