"""Drain accounting: `drained` is true only while nothing is held, and worker slots count as held work."""

from __future__ import annotations

import asyncio

from bundleserve.router.state import DrainState


async def test_work_that_starts_after_a_quiet_moment_keeps_the_drain_waiting() -> None:
    """A worker slot may pick up a task it had in hand after the drain saw zero requests: the model must stay."""
    drain = DrainState()
    drain.begin()
    assert drain.drained  # nothing in progress at SIGTERM
    drain.enter()  # ... then a buffered task starts its model call
    assert not drain.drained
    waiter = asyncio.create_task(drain.wait_drained(timeout=60))
    await asyncio.sleep(0)  # let the waiter run up to its wait
    assert not waiter.done()
    drain.leave()
    assert await waiter
    assert drain.drained


async def test_tracked_holders_count_until_they_are_free() -> None:
    drain = DrainState()
    slots = {"busy": 1}
    drain.track(lambda: slots["busy"])
    drain.begin()
    assert (drain.held, drain.drained) == (1, False)
    waiter = asyncio.create_task(drain.wait_drained(timeout=60))
    await asyncio.sleep(0)
    assert not waiter.done()
    slots["busy"] = 0
    drain.changed()
    assert await waiter


async def test_wait_drained_times_out_while_work_is_held() -> None:
    drain = DrainState()
    drain.enter()
    drain.begin()
    assert not await drain.wait_drained(timeout=0.05)
    assert drain.active == 1
