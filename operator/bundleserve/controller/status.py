"""Endpoint status from what is observed: conditions Ready / Progressing / Degraded with CamelCase reasons.

Ready means pods serve traffic (ready replicas), not that objects were applied. Pod-level failures (image pulls,
crash loops, unschedulable pods) surface as the reason, so `kubectl get` says why an endpoint is not ready.
Pure functions; the reconcile loop feeds them the observed objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bundleserve.api.variants import traffic_line, traffic_shares

Manifest = dict[str, Any]

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
#: Container waiting reasons that mean "this will not fix itself soon".
_WAITING_PROBLEMS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",  # imagePullPolicy Never and the node lacks the image (seen on the real node)
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
)
#: Keys of `status` this operator owns (anything else, e.g. kopf's own bookkeeping, is left alone).
OWNED_KEYS = ("observedGeneration", "conditions", "replicas", "readyReplicas", "url", "queue", "variants", "traffic")


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class QueueObservation:
    name: str
    pending: int
    in_flight: int


@dataclass(frozen=True)
class VariantObservation:
    """One declared production variant (spec.variants) as reconcile saw it."""

    name: str
    weight: int
    deployment: Manifest | None = None
    pods: list[Manifest] = field(default_factory=list)
    scale_to_zero: bool = False
    #: As Observed.zero_message.
    zero_message: str = "no replicas: the queue is empty; tasks are accepted"


@dataclass(frozen=True)
class Observed:
    """What reconcile saw. `problem` is a spec/config/API problem found before looking at pods.

    An Endpoint without spec.variants has its one `deployment` (and `pods`); one with variants has `variants`, each
    with its own Deployment, and no `deployment` of its own."""

    generation: int
    deployment: Manifest | None = None
    pods: list[Manifest] = field(default_factory=list)
    url: str | None = None
    queue: QueueObservation | None = None
    problem: Problem | None = None
    scale_to_zero: bool = False
    #: With scale_to_zero: why zero replicas is a ready state (async: the queue accepts tasks; sync: the gateway holds
    #: the next call while a replica starts).
    zero_message: str = "no replicas: the queue is empty; tasks are accepted"
    variants: list[VariantObservation] = field(default_factory=list)

    def deployment_counts(self) -> tuple[int, int]:
        """(replicas, readyReplicas) of the endpoint: its Deployment's, or the sum over its variants'."""
        deployments = [v.deployment for v in self.variants] if self.variants else [self.deployment]
        statuses = [(d or {}).get("status", {}) or {} for d in deployments]
        return (
            sum(s.get("replicas", 0) or 0 for s in statuses),
            sum(s.get("readyReplicas", 0) or 0 for s in statuses),
        )


def pod_problem(pods: list[Manifest]) -> Problem | None:
    """The most telling failure among the pods (waiting reasons first, then scheduling)."""
    found: list[tuple[int, Problem]] = []
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        pod_name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status", {}) or {}
        for container in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in _WAITING_PROBLEMS:
                message = waiting.get("message") or reason
                rank = _WAITING_PROBLEMS.index(reason)
                found.append((rank, Problem(reason, f"container {container.get('name')} in pod {pod_name}: {message}")))
            last = (container.get("lastState") or {}).get("terminated") or {}
            if last.get("reason") == "OOMKilled":
                found.append(
                    (
                        len(_WAITING_PROBLEMS),
                        Problem(
                            "OOMKilled",
                            f"container {container.get('name')} in pod "
                            f"{pod_name} was killed for exceeding its memory limit",
                        ),
                    )
                )
        for condition in status.get("conditions", []):
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                reason = condition.get("reason") or "Unschedulable"
                found.append(
                    (len(_WAITING_PROBLEMS) + 1, Problem(reason, f"pod {pod_name}: {condition.get('message', '')}"))
                )
    return min(found, key=lambda item: item[0])[1] if found else None


def deployment_problem(deployment: Manifest) -> Problem | None:
    for condition in deployment.get("status", {}).get("conditions", []):
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return Problem(condition.get("reason") or "ReplicaFailure", condition.get("message", ""))
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return Problem("ProgressDeadlineExceeded", condition.get("message", ""))
    return None


def rolling_out(deployment: Manifest) -> bool:
    spec, status = deployment.get("spec", {}), deployment.get("status", {}) or {}
    generation = deployment.get("metadata", {}).get("generation", 0)
    wanted = spec.get("replicas", 1)
    replicas = status.get("replicas", 0)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    return bool(
        status.get("observedGeneration", 0) < generation
        or updated < wanted
        or replicas > updated
        or available < updated
    )


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message}


def variant_conditions(observed: Observed) -> list[dict[str, Any]]:
    """Ready, Progressing, Degraded of an Endpoint with variants: Ready when every variant is (TargetVariant may name
    any of them), Progressing or Degraded when one is; the message names the variant."""
    per_variant = [
        (
            variant.name,
            conditions_for(
                Observed(
                    generation=observed.generation,
                    deployment=variant.deployment,
                    pods=variant.pods,
                    scale_to_zero=variant.scale_to_zero,
                    zero_message=variant.zero_message,
                )
            ),
        )
        for variant in observed.variants
    ]
    combined = []
    for index, kind in enumerate((READY, PROGRESSING, DEGRADED)):
        wanted = "True" if kind == READY else "False"  # the state every variant must be in for the endpoint's
        odd = [(name, conditions[index]) for name, conditions in per_variant if conditions[index]["status"] != wanted]
        if odd:
            name, condition = odd[0]
            combined.append(
                _condition(kind, wanted != "True", condition["reason"], f"variant {name}: {condition['message']}")
            )
        else:
            message = "; ".join(f"{name}: {conditions[index]['message']}" for name, conditions in per_variant)
            reason = per_variant[0][1][index]["reason"] if per_variant else "AsExpected"
            combined.append(_condition(kind, wanted == "True", reason, message if kind != DEGRADED else ""))
    return combined


def conditions_for(observed: Observed) -> list[dict[str, Any]]:
    """Ready, Progressing, Degraded (in this order), without timestamps."""
    deployment = observed.deployment
    if observed.variants and observed.problem is None:
        return variant_conditions(observed)
    if observed.problem is not None:
        problem = observed.problem
        ready_count = observed.deployment_counts()[1]
        return [
            _condition(
                READY,
                bool(ready_count),
                problem.reason if not ready_count else "ReplicasAvailable",
                problem.message if not ready_count else f"{ready_count} replica(s) ready; {problem.message}",
            ),
            _condition(PROGRESSING, False, problem.reason, problem.message),
            _condition(DEGRADED, True, problem.reason, problem.message),
        ]
    if deployment is None:
        waiting = "the Deployment does not exist yet"
        return [
            _condition(READY, False, "Creating", waiting),
            _condition(PROGRESSING, True, "Creating", waiting),
            _condition(DEGRADED, False, "AsExpected", ""),
        ]
    status = deployment.get("status", {}) or {}
    wanted = deployment.get("spec", {}).get("replicas", 1)
    ready = status.get("readyReplicas", 0) or 0
    trouble = pod_problem(observed.pods) or deployment_problem(deployment)
    progressing = rolling_out(deployment)
    counts = f"{ready}/{wanted} replicas ready"
    if wanted == 0 and observed.scale_to_zero:
        ready_condition = _condition(READY, True, "ScaledToZero", observed.zero_message)
    elif ready >= 1:
        ready_condition = _condition(READY, True, "ReplicasAvailable", counts)
    elif trouble is not None:
        ready_condition = _condition(READY, False, trouble.reason, f"{counts}: {trouble.message}")
    else:
        ready_condition = _condition(READY, False, "ReplicasNotReady", counts)
    if trouble is not None and trouble.reason == "ProgressDeadlineExceeded":
        progressing_condition = _condition(PROGRESSING, False, trouble.reason, trouble.message)
    elif progressing:
        updated = status.get("updatedReplicas", 0) or 0
        progressing_condition = _condition(PROGRESSING, True, "RollingOut", f"{updated}/{wanted} replicas updated")
    else:
        progressing_condition = _condition(PROGRESSING, False, "RolloutComplete", counts)
    if trouble is not None:
        degraded_condition = _condition(DEGRADED, True, trouble.reason, trouble.message)
    else:
        degraded_condition = _condition(DEGRADED, False, "AsExpected", "")
    return [ready_condition, progressing_condition, degraded_condition]


def build_status(observed: Observed, previous: Manifest | None, now: str) -> Manifest:
    """The full status we want; lastTransitionTime is kept from `previous` while a condition's status holds."""
    previous = previous or {}
    before = {c.get("type"): c for c in previous.get("conditions", []) or []}
    conditions = []
    for condition in conditions_for(observed):
        old = before.get(condition["type"]) or {}
        held = old.get("status") == condition["status"] and old.get("lastTransitionTime")
        since = old["lastTransitionTime"] if held else now
        conditions.append({**condition, "lastTransitionTime": since, "observedGeneration": observed.generation})
    replicas, ready_replicas = observed.deployment_counts()
    status: Manifest = {
        "observedGeneration": observed.generation,
        "conditions": conditions,
        "replicas": replicas,
        "readyReplicas": ready_replicas,
    }
    if observed.variants:
        weights = [(v.name, v.weight) for v in observed.variants]
        shares = dict(traffic_shares(weights))
        status["variants"] = [
            {
                "name": v.name,
                "weight": v.weight,
                "trafficPercent": shares[v.name],
                "replicas": ((v.deployment or {}).get("status", {}) or {}).get("replicas", 0) or 0,
                "readyReplicas": ((v.deployment or {}).get("status", {}) or {}).get("readyReplicas", 0) or 0,
            }
            for v in observed.variants
        ]
        status["traffic"] = traffic_line(weights)
    if observed.url:
        status["url"] = observed.url
    if observed.queue is not None:
        queue = observed.queue
        status["queue"] = {
            "name": queue.name,
            "pending": queue.pending,
            "inFlight": queue.in_flight,
            "backlog": queue.pending + queue.in_flight,
        }
    return status


def status_patch(previous: Manifest | None, desired: Manifest) -> Manifest | None:
    """The merge patch that turns `previous` into `desired` for the keys we own, or None when nothing changed."""
    previous = previous or {}
    patch: Manifest = {}
    for key in OWNED_KEYS:
        if key in desired:
            if previous.get(key) != desired[key]:
                patch[key] = desired[key]
        elif previous.get(key) is not None:
            patch[key] = None
    return patch or None


def transitions(previous: Manifest | None, desired: Manifest) -> list[dict[str, Any]]:
    """Kubernetes Events worth posting, as {type, reason, message}: Ready gained or lost, Degraded entered (or its
    reason changed) or left. The initial not-ready state of a new Endpoint is not news."""
    before = {c.get("type"): c for c in (previous or {}).get("conditions", []) or []}
    events = []
    for condition in desired.get("conditions", []):
        kind, status, reason = condition["type"], condition["status"], condition["reason"]
        old = before.get(kind, {})
        if (old.get("status"), old.get("reason")) == (status, reason):
            continue
        message = f"{kind}={status}: {condition['message']}"[:1000]
        was_true, is_true = old.get("status") == "True", status == "True"
        lost_ready = kind == READY and was_true and not is_true
        if kind == READY and is_true and not was_true:
            events.append({"type": "Normal", "reason": reason, "message": message})
        elif lost_ready or (kind == DEGRADED and is_true):
            events.append({"type": "Warning", "reason": reason, "message": message})
        elif kind == DEGRADED and was_true:
            events.append({"type": "Normal", "reason": "Recovered", "message": message})
    return events
