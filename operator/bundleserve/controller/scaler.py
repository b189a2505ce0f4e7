"""The operator's own scalers: the queue-depth scaler and the demand gate of endpoints that scale from zero.

Queue depth (async-only endpoints when KEDA is absent): replicas = ceil(backlog / targetConcurrency), clamped to
[minReplicas, maxReplicas]; up at once (tasks wait), down only after the backlog has stayed low for
scaleDownDelaySeconds (no flapping, no killing warm pods on a lull). Scale to zero when minReplicas is 0: the queue
lives outside the pods, so tasks are still accepted.

Demand gate (sync/streaming endpoints with minReplicas 0): only the step between 0 and the first replicas is the
operator's; above that the HPA scales (an HPA leaves a Deployment at 0 replicas alone, "ScalingDisabled", and takes
over again once it is above 0). Up from 0 when a gateway holds a call or reports traffic (`queue.demand`) or, with
async, tasks are queued; down to 0 once neither has been seen for scaleToZeroAfterSeconds (the demand key's TTL).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bundleserve.api.endpoint import Scaling
from bundleserve.queue.demand import Demand

#: (pending, in_flight) of the queue `keys.queue_id(namespace, name)`.
BacklogReader = Callable[[str], Awaitable[tuple[int, int]]]


@dataclass
class ScaleMemory:
    """Per endpoint: since when (monotonic seconds) the wanted count has stayed below the current one."""

    low_since: float | None = None


def wanted_replicas(backlog: int, scaling: Scaling) -> int:
    raw = math.ceil(backlog / scaling.target_concurrency) if backlog > 0 else 0
    return max(scaling.min_replicas, min(raw, scaling.effective_max_replicas))


def decide(current: int, backlog: int, scaling: Scaling, now: float, memory: ScaleMemory) -> int:
    """The replica count to set now."""
    wanted = wanted_replicas(backlog, scaling)
    if current > scaling.effective_max_replicas or current < scaling.min_replicas or wanted >= current:
        memory.low_since = None
        return wanted if wanted >= current else max(scaling.min_replicas, min(current, scaling.effective_max_replicas))
    if memory.low_since is None:
        memory.low_since = now
    if now - memory.low_since >= scaling.scale_down_delay_seconds:
        memory.low_since = None
        return wanted
    return current


def gate_replicas(current: int, demand: Demand, backlog: int, scaling: Scaling) -> int | None:
    """The replica count the demand gate sets now, or None to leave the Deployment to its HPA.

    From 0 with demand: enough replicas for the calls held (and tasks queued) at targetConcurrency each, at least 1.
    Above 0 without demand within the idle time: 0."""
    active = demand.active or backlog > 0
    if current == 0 and active:
        waiting = max(demand.held, backlog)
        return min(max(1, math.ceil(waiting / scaling.target_concurrency)), scaling.effective_max_replicas)
    if current > 0 and not active:
        return 0
    return None
