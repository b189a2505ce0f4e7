"""Dynamic batching in the bundle runtime, on a real event loop: the `Batcher` (window, size, one batch at a time,
per-call outcomes, cancellation, close) and `calling.call_batch` (the batch entrypoint's contract: a list of calls in,
one result or exception per call out, shape errors for every call of the batch).

No test asserts a duration: a batch that should go *before* its window is given a window of an hour and a deadline of
30 s, so waiting for the window fails the test instead of slowing it."""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy
import pytest

from bundleserve.bundle import calling
from bundleserve.bundle.batching import Batcher, BatcherClosed, BatchSettings
from bundleserve.bundle.calling import NO_MODEL, BatchItem, batch_signature_problem, call_batch, split_batch
from bundleserve.bundle.errors import BatchResultInvalid, BundleError, ModelRaised, NotSerializable
from bundleserve.bundle.serialization import encode_json, encode_pickle

HOUR = 3600.0
DEADLINE = 30.0


class Recorder:
    """A batch runner that records every batch it is given and answers `item * 10` (or the item, if an exception)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate: asyncio.Event | None = None  # set: each batch waits for it (to hold a batch "running")
        self.started = asyncio.Event()

    async def __call__(self, items: list[Any]) -> Sequence[Any]:
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return [item if isinstance(item, BaseException) else item * 10 for item in items]


def batcher(recorder: Recorder, max_size: int, latency: float) -> Batcher[Any, Any]:
    return Batcher(recorder, BatchSettings(max_size=max_size, max_wait_seconds=latency), name="test:batch")


async def gather(*calls: Any) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*calls), DEADLINE)


async def gather_all(*calls: Any, return_exceptions: bool) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=return_exceptions), DEADLINE)


async def settle_loop() -> None:
    """Let every ready callback run (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


# --- the Batcher ---------------------------------------------------------------------------------------------------


async def test_a_full_batch_goes_at_once_without_waiting_for_the_window() -> None:
    recorder = Recorder()
    b = batcher(recorder, max_size=4, latency=HOUR)
    assert await gather(*(b.submit(i) for i in range(4))) == [0, 10, 20, 30]
    assert recorder.batches == [[0, 1, 2, 3]]
    await b.close()


async def test_a_partial_batch_goes_when_the_window_expires() -> None:
    recorder = Recorder()
    b = batcher(recorder, max_size=100, latency=0.01)
    assert await gather(b.submit(1), b.submit(2)) == [10, 20]
    assert recorder.batches == [[1, 2]]
    await b.close()


async def test_calls_arriving_within_the_window_join_the_first_ones_batch() -> None:
    recorder = Recorder()
    b = batcher(recorder, max_size=3, latency=HOUR)
    first = asyncio.ensure_future(b.submit(1))
    await settle_loop()
    assert recorder.batches == []  # waiting for company, not dispatched alone
    rest = [asyncio.ensure_future(b.submit(i)) for i in (2, 3)]
    assert await gather(first, *rest) == [10, 20, 30]
    assert recorder.batches == [[1, 2, 3]]
    await b.close()


async def test_more_calls_than_max_size_are_split_into_batches_in_arrival_order() -> None:
    recorder = Recorder()
    b = batcher(recorder, max_size=4, latency=0.01)
    assert await gather(*(b.submit(i) for i in range(10))) == [i * 10 for i in range(10)]
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(b.recent_sizes) == [4, 4, 2]
    await b.close()


async def test_one_batch_runs_at_a_time_and_calls_arriving_meanwhile_form_the_next() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    b = batcher(recorder, max_size=8, latency=0)
    first = asyncio.ensure_future(b.submit(1))
    await asyncio.wait_for(recorder.started.wait(), DEADLINE)
    later = [asyncio.ensure_future(b.submit(i)) for i in (2, 3, 4)]
    await settle_loop()
    assert recorder.batches == [[1]]  # the model is busy: no second batch runs beside the first
    recorder.gate.set()
    assert await gather(first, *later) == [10, 20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]
    await b.close()


async def test_an_exception_for_one_item_fails_that_call_only() -> None:
    recorder = Recorder()
    b = batcher(recorder, max_size=3, latency=HOUR)
    boom = ValueError("bad item")
    outcomes = await gather_all(b.submit(1), b.submit(boom), b.submit(3), return_exceptions=True)
    assert outcomes == [10, boom, 30]
    await b.close()


async def test_a_batch_that_raises_fails_every_call_of_that_batch_and_the_batcher_goes_on() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the whole batch failed")
        return [item + 1 for item in items]

    b: Batcher[int, int] = Batcher(run, BatchSettings(max_size=2, max_wait_seconds=HOUR))
    outcomes = await gather_all(b.submit(1), b.submit(2), return_exceptions=True)
    assert [type(o) for o in outcomes] == [RuntimeError, RuntimeError]
    assert await gather(b.submit(5), b.submit(6)) == [6, 7]
    await b.close()


async def test_a_runner_answering_the_wrong_number_of_outcomes_fails_every_call_instead_of_hanging() -> None:
    async def run(items: list[int]) -> list[int]:
        return items[:-1]

    b: Batcher[int, int] = Batcher(run, BatchSettings(max_size=2, max_wait_seconds=HOUR))
    outcomes = await gather_all(b.submit(1), b.submit(2), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and "1 outcomes for a batch of 2" in str(o) for o in outcomes), outcomes
    await b.close()


async def test_a_caller_cancelled_while_its_batch_runs_does_not_cancel_the_batch() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    b = batcher(recorder, max_size=2, latency=HOUR)
    leaving = asyncio.ensure_future(b.submit(1))
    staying = asyncio.ensure_future(b.submit(2))
    await asyncio.wait_for(recorder.started.wait(), DEADLINE)
    leaving.cancel()  # the client disconnected: its request handler is cancelled
    await settle_loop()
    recorder.gate.set()
    assert await gather(staying) == [20]
    assert leaving.cancelled()
    assert recorder.batches == [[1, 2]]
    # and the batcher still serves
    assert await gather(b.submit(3), b.submit(4)) == [30, 40]
    await b.close()


async def test_a_caller_cancelled_before_dispatch_is_left_out_of_the_batch() -> None:
    recorder = Recorder()
    b = batcher(recorder, max_size=2, latency=HOUR)
    leaving = asyncio.ensure_future(b.submit(1))
    await settle_loop()
    leaving.cancel()
    await settle_loop()
    assert await gather(b.submit(2), b.submit(3)) == [20, 30]
    assert recorder.batches == [[2, 3]]
    await b.close()


async def test_close_fails_the_waiting_calls_and_refuses_new_ones() -> None:
    recorder = Recorder()
    b = batcher(recorder, max_size=10, latency=HOUR)
    waiting = asyncio.ensure_future(b.submit(1))
    await settle_loop()
    await b.close()
    with pytest.raises(BatcherClosed):
        await asyncio.wait_for(waiting, DEADLINE)
    with pytest.raises(BatcherClosed):
        await b.submit(2)
    assert recorder.batches == []


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_size"):
        BatchSettings(max_size=0, max_wait_seconds=0.01)
    with pytest.raises(ValueError, match="max_wait_seconds"):
        BatchSettings(max_size=1, max_wait_seconds=-1)


# --- call_batch: the batch entrypoint's contract -------------------------------------------------------------------


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-batch")
    yield pool
    pool.shutdown(wait=True)


def json_items(*values: Any) -> list[BatchItem]:
    return [BatchItem(value, encode_json) for value in values]


def decoded(outcomes: list[bytes | BundleError]) -> list[Any]:
    return [o if isinstance(o, BundleError) else json.loads(o) for o in outcomes]


def doubled(items: list[dict[str, int]]) -> list[int]:
    return [item["x"] * 2 for item in items]


async def test_the_batch_entrypoint_gets_the_calls_argument_dicts_and_its_results_are_split(
    executor: ThreadPoolExecutor,
) -> None:
    outcomes = await call_batch(doubled, json_items({"x": 1}, {"x": 2}), model=NO_MODEL, executor=executor, name="m:b")
    assert decoded(outcomes) == [2, 4]


async def test_async_batch_entrypoints_and_generators_work_alike(executor: ThreadPoolExecutor) -> None:
    async def async_batch(items: list[dict[str, int]]) -> list[int]:
        await asyncio.sleep(0)
        return [item["x"] + 1 for item in items]

    def generator_batch(items: list[dict[str, int]]) -> Iterator[int]:
        for item in items:
            yield item["x"] - 1

    async def async_generator_batch(items: list[dict[str, int]]) -> AsyncIterator[int]:
        for item in items:
            yield item["x"] * 3

    items = json_items({"x": 1}, {"x": 5})
    for function, expected in ((async_batch, [2, 6]), (generator_batch, [0, 4]), (async_generator_batch, [3, 15])):
        outcomes = await call_batch(function, items, model=NO_MODEL, executor=executor, name="m:b")
        assert decoded(outcomes) == expected, function


async def test_the_loaded_model_is_passed_as_model(executor: ThreadPoolExecutor) -> None:
    def with_model(items: list[dict[str, int]], model: int) -> list[int]:
        return [item["x"] + model for item in items]

    outcomes = await call_batch(with_model, json_items({"x": 1}), model=100, executor=executor, name="m:b")
    assert decoded(outcomes) == [101]


async def test_exception_objects_in_the_answer_fail_their_calls_only(executor: ThreadPoolExecutor) -> None:
    def per_item(items: list[dict[str, int]]) -> list[Any]:
        return [ValueError(f"negative: {i['x']}") if i["x"] < 0 else i["x"] for i in items]

    outcomes = await call_batch(
        per_item, json_items({"x": 1}, {"x": -2}, {"x": 3}), model=NO_MODEL, executor=executor, name="m:b"
    )
    first, failed, third = decoded(outcomes)
    assert (first, third) == (1, 3)
    assert isinstance(failed, ModelRaised)
    assert (failed.status, failed.code, failed.message, failed.type_name) == (
        500,
        "model_error",
        "negative: -2",
        "ValueError",
    )


async def test_a_result_that_cannot_be_encoded_fails_that_call_only(executor: ThreadPoolExecutor) -> None:
    def sets_sometimes(items: list[dict[str, int]]) -> list[Any]:
        return [{item["x"]} if item["x"] == 2 else item["x"] for item in items]

    items = [*json_items({"x": 1}, {"x": 2}), BatchItem({"x": 2}, encode_pickle)]
    outcomes = await call_batch(sets_sometimes, items, model=NO_MODEL, executor=executor, name="m:b")
    assert json.loads(outcomes[0]) == 1  # type: ignore[arg-type]
    assert isinstance(outcomes[1], NotSerializable)
    assert pickle.loads(outcomes[2]) == {2}  # type: ignore[arg-type]  # the caller that asked for a pickle gets one


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_raising_batch_entrypoint_fails_every_call_with_its_error(
    executor: ThreadPoolExecutor, is_async: bool
) -> None:
    def broken(items: list[Any]) -> list[Any]:
        raise KeyError("weights")

    async def async_broken(items: list[Any]) -> list[Any]:
        raise KeyError("weights")

    with pytest.raises(ModelRaised) as raised:
        await call_batch(
            async_broken if is_async else broken, json_items({}, {}), model=NO_MODEL, executor=executor, name="m:b"
        )
    assert raised.value.type_name == "KeyError"
    assert "weights" in (raised.value.traceback or "")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([1], "m:b returned 1 result for a batch of 2 calls"),
        ([1, 2, 3], "m:b returned 3 results for a batch of 2 calls"),
        ({"a": 1, "b": 2}, "m:b returned dict for a batch of 2 calls"),
        ("ab", "m:b returned str for a batch of 2 calls"),
        (None, "m:b returned NoneType for a batch of 2 calls"),
        (numpy.float64(1.0), "m:b returned float64 for a batch of 2 calls"),
    ],
    ids=["too-few", "too-many", "dict", "string", "none", "numpy-scalar"],
)
async def test_a_wrong_shape_is_a_model_error_for_every_call_of_the_batch(
    executor: ThreadPoolExecutor, answer: Any, message: str
) -> None:
    with pytest.raises(BatchResultInvalid) as raised:
        await call_batch(lambda items: answer, json_items({}, {}), model=NO_MODEL, executor=executor, name="m:b")
    assert raised.value.message.startswith(message)
    assert (raised.value.status, raised.value.code) == (500, "model_error")


def test_a_numpy_array_answer_is_split_into_its_rows() -> None:
    rows = split_batch(numpy.array([[1, 2], [3, 4], [5, 6]]), 3, name="m:b")
    assert [encode_json(row) for row in rows] == [b"[1,2]", b"[3,4]", b"[5,6]"]


def test_the_batch_entrypoint_signature_is_checked_at_start() -> None:
    def fine(items: list[Any]) -> list[Any]:
        return items

    def fine_with_model(model: Any, items: list[Any]) -> list[Any]:
        return items

    def two_lists(items: list[Any], more: list[Any]) -> list[Any]:
        return items

    def keyword_only(*, items: list[Any]) -> list[Any]:
        return items

    assert batch_signature_problem(fine, with_model=False) is None
    assert batch_signature_problem(fine_with_model, with_model=True) is None
    assert "missing a required argument: 'more'" in (batch_signature_problem(two_lists, with_model=False) or "")
    assert "too many positional arguments" in (batch_signature_problem(keyword_only, with_model=False) or "")


def test_the_model_is_injected_only_by_name_and_positionally_when_it_comes_first() -> None:
    def without(items: list[Any]) -> list[Any]:
        return items

    def named(items: list[Any], model: Any = None) -> list[Any]:
        return items

    def model_first(model: Any, items: list[Any]) -> list[Any]:
        return items

    values: list[Any] = [{"x": 1}]
    assert calling.batch_arguments(without, values, 5) == ((values,), {})
    assert calling.batch_arguments(named, values, 5) == ((values,), {"model": 5})
    assert calling.batch_arguments(named, values, NO_MODEL) == ((values,), {})
    assert calling.batch_arguments(model_first, values, 5) == ((5, values), {})
