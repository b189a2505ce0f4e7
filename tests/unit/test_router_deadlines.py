"""Shared coarse deadlines behave like asyncio.timeout: TimeoutError on expiry, cancellation stays cancellation.

The guarded blocks wait on events nobody sets (a barrier that never opens), so only the deadline can end them; no
test asserts how long anything took.
"""

from __future__ import annotations

import asyncio

import pytest

from bundleserve.router.deadlines import DeadlineWheel


async def never() -> None:
    """Block until cancelled."""
    await asyncio.Event().wait()


async def test_a_block_that_overruns_raises_timeout_error() -> None:
    wheel = DeadlineWheel(resolution=0.01)
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.05
    with pytest.raises(TimeoutError):
        async with wheel.at(when):
            await never()
    assert loop.time() >= when  # never early (a slot rounds the deadline up)
    assert wheel.pending == 0


async def test_a_block_that_finishes_in_time_leaves_nothing_behind() -> None:
    wheel = DeadlineWheel()
    loop = asyncio.get_running_loop()
    for _ in range(100):
        async with wheel.at(loop.time() + 10):
            await asyncio.sleep(0)
    assert wheel.pending == 0
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_requests_in_the_same_slot_share_one_timer_and_all_expire() -> None:
    wheel = DeadlineWheel(resolution=0.05)
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.05

    async def blocked() -> str:
        try:
            async with wheel.at(when):
                await never()
        except TimeoutError:
            return "timeout"
        return "done"

    results = await asyncio.gather(*(blocked() for _ in range(20)))
    assert results == ["timeout"] * 20


async def test_an_outside_cancellation_is_not_turned_into_a_timeout() -> None:
    wheel = DeadlineWheel()
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def guarded() -> None:
        async with wheel.at(loop.time() + 10):
            entered.set()
            await never()

    task = asyncio.create_task(guarded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wheel.pending == 0


async def test_timeout_in_an_inner_block_leaves_the_task_usable() -> None:
    wheel = DeadlineWheel()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with wheel.at(loop.time() + 0.01):
            await never()
    await asyncio.sleep(0)  # a task left cancelled would raise CancelledError at this yield
    assert asyncio.current_task() is not None and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
