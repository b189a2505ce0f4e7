"""Leader failover with kopf peering on a real control plane: the chart at operator.replicas=2 (its ClusterKopfPeering
object and `--peering`), two operator processes logged in with tokens of the chart's ServiceAccount, the leader
SIGKILLed, the standby taking over once the leader's keep-alive expires; and at no time do both write.

Both replicas are the same user (one ServiceAccount, as two pods of one Deployment are), so writes are told apart by
the credential each request carried: the audit log records the token's JTI (`authentication.kubernetes.io/
credential-id`), and each process has a token of its own.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.integration.cluster_harness import (
    WRITE_VERBS,
    Release,
    RunningOperator,
    audit,
    endpoint_doc,
    install_release,
    namespace,
    start_operator,
    stop_operator,
    wait_logged,
)
from tests.support.cluster import ControlPlane

#: The keep-alive lifetime of both replicas: a SIGKILLed leader blocks the standby this long (kopf's default is 60 s).
LIFETIME = 5
NS = "bs-failover"


@pytest.fixture(scope="module")
def release(kube_cluster: ControlPlane) -> Release:
    return install_release(kube_cluster, {"operator": {"replicas": 2}})


@pytest.fixture(scope="module")
def peering(release: Release) -> str:
    assert release.peering, release.operator_args
    return release.peering


def credential(running: RunningOperator) -> str:
    """The credential id the API server audits for this process' token: `JTI=<the token's jti claim>`."""
    payload = running.token_file.read_text().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"JTI={claims['jti']}"


def writes_in(plane: ControlPlane, release: Release, ns: str) -> list[dict[str, Any]]:
    """The operator's writes to objects in `ns` (Events excluded: kopf posts them), as audit events."""
    return [
        event
        for event in audit(plane, release.user)
        if event["verb"] in WRITE_VERBS
        and event.get("objectRef", {}).get("namespace") == ns
        and event["objectRef"].get("resource") != "events"
    ]


def by(events: list[dict[str, Any]], running: RunningOperator) -> list[dict[str, Any]]:
    wanted = credential(running)
    return [
        e for e in events if wanted in e["user"].get("extra", {}).get("authentication.kubernetes.io/credential-id", [])
    ]


@pytest.fixture
def replicas(
    kube_cluster: ControlPlane, release: Release, peering: str, tmp_path: Path
) -> Iterator[tuple[RunningOperator, RunningOperator]]:
    started: list[RunningOperator] = []
    for pod, priority in (("replica-a", "200"), ("replica-b", "100")):
        settings = {"POD_ID": pod, "BUNDLESERVE_PEERING_PRIORITY": priority,
                    "BUNDLESERVE_PEERING_LIFETIME_SECONDS": str(LIFETIME)}  # fmt: skip
        started.append(start_operator(kube_cluster, release, tmp_path / pod, **settings))
    yield started[0], started[1]
    for running in started:
        stop_operator(kube_cluster, release, running)


def peers(plane: ControlPlane, peering: str) -> dict[str, Any]:
    """The records in the chart's ClusterKopfPeering, read with the official client."""
    api = kubernetes.client.CustomObjectsApi(plane.api_client())
    body = api.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
    return dict(body.get("status") or {})


def test_the_standby_takes_over_from_a_killed_leader_and_never_both_write(
    kube_cluster: ControlPlane,
    release: Release,
    peering: str,
    replicas: tuple[RunningOperator, RunningOperator],
) -> None:
    leader, standby = replicas
    ns = namespace(kube_cluster, NS)
    # Both replicas announce themselves in the chart's ClusterKopfPeering (keep-alive PATCHes by each token).
    wait_logged(standby.process, lambda: {"replica-a", "replica-b"} <= set(peers(kube_cluster, peering)),
                "both replicas in the peering object")  # fmt: skip
    assert {peer["lifetime"] for name, peer in peers(kube_cluster, peering).items() if name.startswith("replica-")} == {
        LIFETIME
    }

    kube_cluster.apply(endpoint_doc(ns, "first"))
    wait_logged(leader.process, lambda: kube_cluster.get("apps/v1", "Deployment", ns, "first"), "first reconciled")
    leader.process.wait_idle(["first"], timeout=60)
    # kopf starts a peering replica paused; the lower priority one stays so: it reconciled and wrote nothing.
    assert standby.process.metric("bundleserve_operator_reconcile_duration_seconds_count") == 0
    assert by(writes_in(kube_cluster, release, ns), standby) == []
    assert by(writes_in(kube_cluster, release, ns), leader)

    leader.process.kill()  # SIGKILL: no goodbye in the peering object, the standby waits for the record to expire
    kube_cluster.apply(endpoint_doc(ns, "second"))
    wait_logged(standby.process, lambda: kube_cluster.get("apps/v1", "Deployment", ns, "second"),
                "the standby reconciled second", timeout=90)  # fmt: skip
    standby.process.wait_idle(["second"], timeout=60)

    events = writes_in(kube_cluster, release, ns)
    led, took_over = by(events, leader), by(events, standby)
    assert len(led) + len(took_over) == len(events), "a write by neither replica's token"
    assert took_over, "the standby wrote nothing"
    last_by_leader = max(e["requestReceivedTimestamp"] for e in led)
    first_by_standby = min(e["requestReceivedTimestamp"] for e in took_over)
    assert last_by_leader < first_by_standby, (led, took_over)
    # The standby reconciled what the leader left behind too (its own view of `first`), without rewriting it.
    assert not [e for e in took_over if e["objectRef"].get("name") == "first" and e["verb"] != "patch"], took_over


def test_the_standby_takes_over_when_the_leader_leaves_gracefully(
    kube_cluster: ControlPlane,
    release: Release,
    peering: str,
    replicas: tuple[RunningOperator, RunningOperator],
) -> None:
    """Moved from the API emulator: SIGTERM (a rolling update or a drained node) exits 0 and removes the leader's
    record from the peering object, and the standby reconciles what comes next."""
    leader, standby = replicas
    ns = namespace(kube_cluster, "bs-handover")
    wait_logged(standby.process, lambda: {"replica-a", "replica-b"} <= set(peers(kube_cluster, peering)),
                "both replicas in the peering object")  # fmt: skip
    kube_cluster.apply(endpoint_doc(ns, "first"))
    wait_logged(leader.process, lambda: kube_cluster.get("apps/v1", "Deployment", ns, "first"), "first reconciled")
    leader.process.wait_idle(["first"], timeout=60)
    assert standby.process.metric("bundleserve_operator_reconcile_duration_seconds_count", endpoint="first") == 0
    assert leader.process.stop() == 0
    wait_logged(standby.process, lambda: "replica-a" not in peers(kube_cluster, peering),
                "the leader's record removed on its way out")  # fmt: skip
    kube_cluster.apply(endpoint_doc(ns, "second"))
    wait_logged(standby.process, lambda: kube_cluster.get("apps/v1", "Deployment", ns, "second"),
                "the standby took over", timeout=90)  # fmt: skip
    standby.process.wait_idle(["second"], timeout=60)
    assert by(writes_in(kube_cluster, release, ns), standby)
