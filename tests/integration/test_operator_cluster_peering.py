"""Leader failover on the real control plane: the chart with `operator.replicas: 2` (a ClusterKopfPeering and
`--peering`), two operators as the chart's ServiceAccount; the leader is killed (SIGKILL, no goodbye) and the
standby takes over once the leader's record expires (BUNDLESERVE_PEERING_LIFETIME_SECONDS=3 instead of 60)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.cluster_harness import (
    endpoint_doc,
    install_release,
    namespace,
    start_operator,
    stop_operator,
    wait_logged,
)
from tests.support.cluster import ControlPlane


def test_the_standby_takes_over_from_a_killed_leader(kube_cluster: ControlPlane, tmp_path: Path) -> None:
    release = install_release(kube_cluster, {"operator": {"replicas": 2}})
    (peering,) = [o for o in release.objects if o["kind"] == "ClusterKopfPeering"]
    name = peering["metadata"]["name"]

    def peers() -> dict[str, Any]:
        return dict((kube_cluster.get("kopf.dev/v1", "ClusterKopfPeering", None, name) or {}).get("status") or {})

    lifetime = {"BUNDLESERVE_PEERING_LIFETIME_SECONDS": "3"}
    started = []
    try:
        leader = start_operator(kube_cluster, release, tmp_path / "a", BUNDLESERVE_PEERING_PRIORITY="200", **lifetime)
        started.append(leader)
        standby = start_operator(kube_cluster, release, tmp_path / "b", BUNDLESERVE_PEERING_PRIORITY="100", **lifetime)
        started.append(standby)
        wait_logged(leader.process, lambda: len(peers()) == 2, "both replicas in the ClusterKopfPeering")
        ns = namespace(kube_cluster, "bs-peering")
        kube_cluster.apply(endpoint_doc(ns, "first"))
        wait_logged(leader.process, lambda: kube_cluster.get("v1", "Service", ns, "first"), "the leader reconciles")
        leader.process.wait_idle(["first"], timeout=60)
        assert standby.process.metric("bundleserve_operator_reconcile_duration_seconds_count", endpoint="first") == 0

        leader.process.kill()
        kube_cluster.apply(endpoint_doc(ns, "second"))
        wait_logged(standby.process, lambda: kube_cluster.get("v1", "Service", ns, "second"),
                    "the standby takes over", timeout=90)  # fmt: skip
    finally:
        for running in started:
            stop_operator(kube_cluster, release, running)
