"""The operator's own queue-depth scaler, for async-only endpoints when KEDA is absent.

replicas = ceil(backlog / targetConcurrency), clamped to [minReplicas, maxReplicas]; up at once (tasks wait),
down only after the backlog has stayed low for scaleDownDelaySeconds (no flapping, no killing warm pods on a lull).
Scale to zero when minReplicas is 0: the queue lives outside the pods, so tasks are still accepted.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bundleserve.api.endpoint import Scaling

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
