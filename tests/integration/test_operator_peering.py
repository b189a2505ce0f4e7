"""High availability with kopf peering: two replicas, one works; when it leaves or crashes, the other takes over."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

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


def test_the_standby_takes_over_once_a_killed_leaders_record_expires(
    k8s_api: KubernetesEmulator, tmp_path: Path
) -> None:
    """A crashed leader says no goodbye: the standby waits for its peering record to expire (here 3 s instead of
    kopf's 60 s, through BUNDLESERVE_PEERING_LIFETIME_SECONDS), then works."""
    cluster = prepare(k8s_api)
    cluster.apply(PEERING_CRDS)
    cluster.create(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "bundleserve", "namespace": NS}}
    )
    env = {"BUNDLESERVE_REDIS_SECRET": "bundleserve-redis", "BUNDLESERVE_PEERING_LIFETIME_SECONDS": "3"}
    leader = Operator(
        cluster, tmp_path / "a", env={**env, "BUNDLESERVE_PEERING_PRIORITY": "200"}, peering="bundleserve"
    )
    standby = Operator(
        cluster, tmp_path / "b", env={**env, "BUNDLESERVE_PEERING_PRIORITY": "100"}, peering="bundleserve"
    )

    def peers() -> dict[str, Any]:
        return dict((cluster.get("kopfpeerings.kopf.dev", "bundleserve", NS) or {}).get("status") or {})

    leader.start()
    standby.start()
    try:
        wait_until(lambda: len(peers()) == 2, timeout=20, what="both replicas in the peering object")
        assert {peer["lifetime"] for peer in peers().values()} == {3}
        cluster.create(endpoint_doc("first"))
        wait_until(lambda: cluster.get("deployments.apps", "first", NS), timeout=20, what="first reconciled")
        leader.wait_idle(["first"])
        assert standby.metric("bundleserve_operator_reconcile_duration_seconds_count", endpoint="first") == 0

        assert leader.kill() == -signal.SIGKILL
        killed_at = time.monotonic()
        assert len(peers()) == 2  # no goodbye: the dead leader's record stays until it expires
        cluster.create(endpoint_doc("second"))
        wait_until(lambda: cluster.get("deployments.apps", "second", NS), timeout=20, what="the standby takes over")
        took_over = time.monotonic() - killed_at
        standby.wait_idle(["second"])
        wait_until(lambda: len(peers()) == 1, timeout=10, what="the dead leader's record cleaned up")
        assert took_over < 15, f"takeover took {took_over:.1f}s with a 3 s peering lifetime"
    finally:
        for operator in (leader, standby):
            if operator.alive():
                operator.stop()
