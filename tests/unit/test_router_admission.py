"""Admission control without HTTP: limits, FIFO order, bounded queue, cancellation without leaked slots."""

from __future__ import annotations

import asyncio

import pytest

from bundleserve.api.errors import Overloaded
from bundleserve.router.admission import AdmissionController


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_free_slots_are_taken_without_waiting() -> None:
    admission = AdmissionController(concurrency=2, max_queued=0)
    assert admission.try_acquire() and admission.try_acquire()
    assert not admission.try_acquire()
    assert admission.in_model == 2


async def test_excess_beyond_limit_and_queue_is_refused_with_retry_after() -> None:
    admission = AdmissionController(concurrency=1, max_queued=2)
    await admission.acquire()
    waiters = [asyncio.create_task(admission.acquire()) for _ in range(2)]
    await settle()
    assert admission.queued == 2
    with pytest.raises(Overloaded) as refused:
        await admission.acquire()
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    for _ in range(3):
        admission.release()
        await settle()
    assert all(w.done() for w in waiters) and admission.in_model == 0


async def test_waiters_are_served_in_arrival_order_and_the_limit_holds() -> None:
    admission = AdmissionController(concurrency=2, max_queued=10)
    order: list[int] = []
    peak = 0

    async def work(i: int) -> None:
        nonlocal peak
        await admission.acquire()
        try:
            order.append(i)
            peak = max(peak, admission.in_model)
            await asyncio.sleep(0)
        finally:
            admission.release()

    await asyncio.gather(*(work(i) for i in range(12)))
    assert order == list(range(12))
    assert peak == 2
    assert admission.in_model == 0 and admission.queued == 0


async def test_a_waiter_that_times_out_leaves_the_queue() -> None:
    admission = AdmissionController(concurrency=1, max_queued=1)
    await admission.acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await admission.acquire()
    assert admission.queued == 0
    admission.release()
    assert admission.in_model == 0


async def test_a_slot_handed_to_a_cancelled_waiter_passes_to_the_next() -> None:
    admission = AdmissionController(concurrency=1, max_queued=2)
    await admission.acquire()
    first = asyncio.create_task(admission.acquire())
    second = asyncio.create_task(admission.acquire())
    await settle()
    admission.release()  # the slot goes to `first` ...
    first.cancel()  # ... which gives up before it runs
    await asyncio.gather(first, return_exceptions=True)
    await settle()
    assert second.done() and second.exception() is None
    assert admission.in_model == 1 and admission.queued == 0
    admission.release()
    assert admission.in_model == 0


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        AdmissionController(concurrency=0, max_queued=1)


async def test_an_async_submission_waits_for_a_body_place_and_gets_the_one_released() -> None:
    admission = AdmissionController(concurrency=1, max_queued=0)
    admission.reserve_body()
    waiting = asyncio.ensure_future(admission.wait_for_body(timeout=30))
    await asyncio.sleep(0)  # let it join the line (no timing: one loop turn)
    assert not waiting.done()
    with pytest.raises(Overloaded):
        admission.reserve_body()  # the refusing path still refuses while the place is taken
    admission.release_body()  # hands the place to the waiter
    await waiting
    assert admission.bodies == 1
    admission.release_body()
    assert admission.bodies == 0


async def test_a_body_place_wait_ends_in_overloaded_and_leaves_the_line() -> None:
    admission = AdmissionController(concurrency=1, max_queued=0)
    admission.reserve_body()
    with pytest.raises(Overloaded, match="no request body place came free"):
        await admission.wait_for_body(timeout=0.01)
    admission.release_body()
    assert admission.bodies == 0  # the gone waiter took nothing
    await admission.wait_for_body(timeout=30)
    assert admission.bodies == 1
