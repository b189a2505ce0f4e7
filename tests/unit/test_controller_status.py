"""Status: Ready means ready pods; pod failures surface as reasons; unchanged status means no patch."""

from __future__ import annotations

from typing import Any

import pytest

from bundleserve.controller.status import (
    Observed,
    Problem,
    QueueObservation,
    build_status,
    conditions_for,
    status_patch,
    transitions,
)


def deployment(wanted: int = 2, ready: int = 2, updated: int | None = None, generation: int = 1) -> dict[str, Any]:
    updated = wanted if updated is None else updated
    return {
        "metadata": {"name": "demo", "generation": generation},
        "spec": {"replicas": wanted},
        "status": {
            "observedGeneration": generation,
            "replicas": max(wanted, updated),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def waiting_pod(reason: str, message: str = "details") -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-abc"},
        "status": {
            "containerStatuses": [{"name": "model", "state": {"waiting": {"reason": reason, "message": message}}}]
        },
    }


def unschedulable_pod() -> dict[str, Any]:
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: gpu"}
    return {"metadata": {"name": "demo-xyz"}, "status": {"conditions": [condition]}}


def by_type(observed: Observed) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions_for(observed)}


def test_ready_when_pods_are_ready() -> None:
    conditions = by_type(Observed(generation=3, deployment=deployment()))
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["reason"] == "ReplicasAvailable"
    assert conditions["Progressing"]["status"] == "False" and conditions["Progressing"]["reason"] == "RolloutComplete"
    assert conditions["Degraded"]["status"] == "False"


def test_applied_but_not_ready_is_not_ready() -> None:
    conditions = by_type(Observed(generation=1, deployment=deployment(wanted=1, ready=0)))
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "ReplicasNotReady"
    assert conditions["Progressing"]["status"] == "True"


def test_no_deployment_yet() -> None:
    assert by_type(Observed(generation=1))["Ready"]["reason"] == "Creating"


@pytest.mark.parametrize(
    "reason",
    ["ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "CrashLoopBackOff", "CreateContainerConfigError"],
)
def test_pod_failures_surface_as_the_reason(reason: str) -> None:
    observed = Observed(generation=1, deployment=deployment(wanted=1, ready=0), pods=[waiting_pod(reason, "boom")])
    conditions = by_type(observed)
    assert conditions["Ready"]["reason"] == reason
    assert conditions["Degraded"] == {**conditions["Degraded"], "status": "True", "reason": reason}
    assert "boom" in conditions["Degraded"]["message"]


def test_unschedulable_pods_surface() -> None:
    observed = Observed(generation=1, deployment=deployment(wanted=1, ready=0), pods=[unschedulable_pod()])
    assert by_type(observed)["Ready"]["reason"] == "Unschedulable"


def test_image_pull_beats_crash_loop_and_terminating_pods_are_ignored() -> None:
    terminating = {**waiting_pod("ImagePullBackOff"), "metadata": {"name": "old", "deletionTimestamp": "x"}}
    pods = [waiting_pod("CrashLoopBackOff"), terminating, waiting_pod("ErrImagePull")]
    assert (
        by_type(Observed(generation=1, deployment=deployment(1, 0), pods=pods))["Degraded"]["reason"] == "ErrImagePull"
    )


def test_a_broken_rollout_keeps_ready_but_reports_degraded() -> None:
    observed = Observed(
        generation=2, deployment=deployment(wanted=2, ready=2, updated=1), pods=[waiting_pod("ImagePullBackOff")]
    )
    conditions = by_type(observed)
    assert conditions["Ready"]["status"] == "True"  # the old pods still serve
    assert conditions["Progressing"]["reason"] == "RollingOut"
    assert conditions["Degraded"]["reason"] == "ImagePullBackOff"


def test_scaled_to_zero_is_ready_only_when_allowed() -> None:
    assert by_type(Observed(generation=1, deployment=deployment(0, 0), scale_to_zero=True))["Ready"]["status"] == "True"
    assert by_type(Observed(generation=1, deployment=deployment(0, 0)))["Ready"]["status"] == "False"


def test_a_spec_problem_is_degraded_with_its_reason() -> None:
    observed = Observed(generation=4, problem=Problem("AsyncNotConfigured", "no Redis"))
    conditions = by_type(observed)
    assert [conditions[t]["reason"] for t in ("Ready", "Progressing", "Degraded")] == ["AsyncNotConfigured"] * 3
    assert conditions["Degraded"]["status"] == "True"


def test_a_spec_problem_leaves_the_last_valid_specs_ready_pods_ready() -> None:
    """A spec that passed the CRD but not the typed model (reconcile keeps the children of the last valid spec):
    Degraded, while the pods still serving keep Ready True (test_operator_reconcile.py runs the reconcile itself)."""
    observed = Observed(generation=2, deployment=deployment(2, 2), problem=Problem("InvalidSpec", "minReplicas > max"))
    conditions = by_type(observed)
    assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == ("True", "InvalidSpec")
    assert conditions["Ready"]["status"] == "True"


def test_status_carries_generation_counts_url_and_queue() -> None:
    observed = Observed(
        generation=5,
        deployment=deployment(3, 2),
        url="http://demo.ml.svc.cluster.local",
        queue=QueueObservation(name="bundleserve:{ml/demo}:stream", pending=7, in_flight=2),
    )
    status = build_status(observed, None, "2026-01-01T00:00:00Z")
    assert status["observedGeneration"] == 5
    assert (status["replicas"], status["readyReplicas"]) == (3, 2)
    assert status["url"] == "http://demo.ml.svc.cluster.local"
    assert status["queue"] == {"name": "bundleserve:{ml/demo}:stream", "pending": 7, "inFlight": 2, "backlog": 9}
    assert all(c["observedGeneration"] == 5 for c in status["conditions"])


def test_unchanged_status_is_no_patch_and_transition_times_hold() -> None:
    observed = Observed(generation=1, deployment=deployment())
    first = build_status(observed, None, "2026-01-01T00:00:00Z")
    again = build_status(observed, first, "2026-01-01T00:05:00Z")
    assert again == first
    assert status_patch(first, again) is None
    assert transitions(first, again) == []


def test_a_change_patches_only_our_keys_and_moves_the_transition_time() -> None:
    before = build_status(Observed(generation=1, deployment=deployment()), None, "t0")
    before_with_foreign = {**before, "kopf": {"progress": {}}}
    after = build_status(Observed(generation=1, deployment=deployment(2, 0)), before_with_foreign, "t1")
    patch = status_patch(before_with_foreign, after)
    assert patch is not None and set(patch) == {"conditions", "readyReplicas"}
    ready = next(c for c in after["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "t1"
    assert [(e["type"], e["reason"]) for e in transitions(before, after)] == [("Warning", "ReplicasNotReady")]


def test_events_only_for_news() -> None:
    new = build_status(Observed(generation=1, deployment=deployment(1, 0)), None, "t0")
    assert transitions(None, new) == []  # a new Endpoint that is not ready yet
    ready = build_status(Observed(generation=1, deployment=deployment(1, 1)), new, "t1")
    assert [(e["type"], e["reason"]) for e in transitions(new, ready)] == [("Normal", "ReplicasAvailable")]
    broken = build_status(
        Observed(generation=1, deployment=deployment(1, 0), pods=[waiting_pod("CrashLoopBackOff")]), ready, "t2"
    )
    assert [(e["type"], e["reason"]) for e in transitions(ready, broken)] == [
        ("Warning", "CrashLoopBackOff"),
        ("Warning", "CrashLoopBackOff"),
    ]
    fixed = build_status(Observed(generation=1, deployment=deployment(1, 1)), broken, "t3")
    assert [(e["type"], e["reason"]) for e in transitions(broken, fixed)] == [
        ("Normal", "ReplicasAvailable"),
        ("Normal", "Recovered"),
    ]


def test_a_key_we_no_longer_report_is_removed() -> None:
    before = build_status(Observed(generation=1, deployment=deployment(), url="http://x"), None, "t0")
    after = build_status(Observed(generation=1, deployment=deployment()), before, "t0")
    assert status_patch(before, after) == {"url": None}
