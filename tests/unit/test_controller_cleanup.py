"""The delete finalizer's decision: skip, wait (bounded), purge."""

from __future__ import annotations

from bundleserve.controller.cleanup import MAX_WAIT_SECONDS, CleanupStep, next_step, wait_bound_seconds
from tests.unit.controller_support import endpoint

ASYNC = endpoint(modes=["async"], **{"async": {"invocationTimeoutSeconds": 60}})


def test_nothing_to_clean_without_async_or_with_retain_or_without_a_queue() -> None:
    assert next_step(endpoint(), queue_configured=True, in_flight=0, waited_seconds=0) is CleanupStep.SKIP
    retained = endpoint(modes=["async"], **{"async": {"retainOnDelete": True}})
    assert next_step(retained, queue_configured=True, in_flight=0, waited_seconds=0) is CleanupStep.SKIP
    assert next_step(ASYNC, queue_configured=False, in_flight=0, waited_seconds=0) is CleanupStep.SKIP


def test_waits_for_in_flight_tasks_but_not_forever() -> None:
    assert next_step(ASYNC, queue_configured=True, in_flight=0, waited_seconds=0) is CleanupStep.PURGE
    assert next_step(ASYNC, queue_configured=True, in_flight=2, waited_seconds=10) is CleanupStep.WAIT
    bound = wait_bound_seconds(ASYNC)
    assert bound == 90
    assert next_step(ASYNC, queue_configured=True, in_flight=2, waited_seconds=bound) is CleanupStep.PURGE_AFTER_TIMEOUT


def test_the_bound_is_capped() -> None:
    long = endpoint(modes=["async"], **{"async": {"invocationTimeoutSeconds": 86400}})
    assert wait_bound_seconds(long) == MAX_WAIT_SECONDS
