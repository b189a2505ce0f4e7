"""The operator's queue-depth scaler (up at once, down after the delay, clamped, to zero when allowed) and the demand
gate of endpoints that scale from zero."""

from __future__ import annotations

import pytest

from bundleserve.api.endpoint import Scaling
from bundleserve.controller.scaler import ScaleMemory, decide, gate_replicas, wanted_replicas
from bundleserve.queue.demand import Demand

SCALING = Scaling(min_replicas=0, max_replicas=5, target_concurrency=4, scale_down_delay_seconds=60)


@pytest.mark.parametrize(("backlog", "wanted"), [(0, 0), (1, 1), (4, 1), (5, 2), (17, 5), (1000, 5)])
def test_wanted_is_ceil_of_backlog_over_target_clamped(backlog: int, wanted: int) -> None:
    assert wanted_replicas(backlog, SCALING) == wanted


def test_minimum_is_kept() -> None:
    assert wanted_replicas(0, Scaling(min_replicas=2, max_replicas=5)) == 2


def test_scale_up_is_immediate() -> None:
    memory = ScaleMemory()
    assert decide(0, 9, SCALING, now=0.0, memory=memory) == 3
    assert memory.low_since is None


def test_scale_down_waits_for_the_delay_and_a_burst_resets_it() -> None:
    memory = ScaleMemory()
    assert decide(3, 0, SCALING, now=100.0, memory=memory) == 3
    assert decide(3, 0, SCALING, now=159.0, memory=memory) == 3
    assert decide(3, 12, SCALING, now=159.5, memory=memory) == 3  # busy again: the clock restarts
    assert decide(3, 0, SCALING, now=160.0, memory=memory) == 3
    assert decide(3, 0, SCALING, now=219.9, memory=memory) == 3
    assert decide(3, 0, SCALING, now=220.0, memory=memory) == 0  # scaled to zero after a quiet minute


def test_out_of_range_replicas_are_clamped_at_once() -> None:
    assert decide(9, 0, SCALING, now=0.0, memory=ScaleMemory()) == 5
    assert decide(0, 0, Scaling(min_replicas=1, max_replicas=3), now=0.0, memory=ScaleMemory()) == 1


# -- the demand gate of endpoints that scale from zero (sync/streaming at minReplicas 0) -----------------------------

ZERO = Scaling(min_replicas=0, max_replicas=3, target_concurrency=4)
IDLE, ACTIVE = Demand(active=False, held=0), Demand(active=True, held=0)


@pytest.mark.parametrize(
    ("current", "seen", "backlog", "wanted"),
    [
        (0, IDLE, 0, None),  # idle at zero: stays
        (0, ACTIVE, 0, 1),  # traffic reported: the first replica
        (0, Demand(active=True, held=9), 0, 3),  # 9 calls held at 4 per replica: 3
        (0, Demand(active=True, held=100), 0, 3),  # clamped to maxReplicas
        (0, IDLE, 5, 2),  # queued async tasks of a mixed endpoint wake it too
        (2, ACTIVE, 0, None),  # above zero with traffic: the HPA's business
        (1, IDLE, 3, None),  # tasks still queued: not idle
        (2, IDLE, 0, 0),  # no traffic within scaleToZeroAfterSeconds (the key expired): back to zero
    ],
)
def test_the_demand_gate_moves_only_between_zero_and_the_first_replicas(
    current: int, seen: Demand, backlog: int, wanted: int | None
) -> None:
    assert gate_replicas(current, seen, backlog, ZERO) == wanted
