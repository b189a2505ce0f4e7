"""Binding request inputs to a bundle's callable and running it (bundleserve.bundle.calling)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bundleserve.bundle import calling
from bundleserve.bundle.calling import NO_MODEL, bind
from bundleserve.bundle.errors import InvalidArguments, ModelRaised, NotSerializable
from bundleserve.bundle.serialization import Inputs, encode_json


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-call")
    yield pool
    pool.shutdown(wait=True)


def predict(x: int, y: int = 0) -> int:
    return x + y


def with_model(model: Any, x: int) -> Any:
    return (model, x)


# --- bind ---------------------------------------------------------------------------------------------------------


def test_keyword_arguments_bind() -> None:
    assert bind(predict, Inputs(kwargs={"x": 1, "y": 2})) == ((), {"x": 1, "y": 2})


def test_every_missing_and_unexpected_argument_is_named() -> None:
    def three(a: int, b: int, c: int = 0) -> None: ...

    with pytest.raises(InvalidArguments) as caught:
        bind(three, Inputs(kwargs={"c": 1, "zz": 2, "yy": 3}), name="m:three")
    message = caught.value.message
    assert message == "m:three: missing required arguments 'a', 'b'; unexpected arguments 'zz', 'yy'"
    assert caught.value.status == 400
    assert caught.value.body()["error"]["code"] == "invalid_arguments"


def test_var_keyword_accepts_extra_arguments() -> None:
    def anything(x: int, **rest: Any) -> None: ...

    assert bind(anything, Inputs(kwargs={"x": 1, "extra": 2})) == ((), {"x": 1, "extra": 2})


def test_loaded_model_is_injected_by_name() -> None:
    args, kwargs = bind(with_model, Inputs(kwargs={"x": 3}), model="M")
    assert with_model(*args, **kwargs) == ("M", 3)


def test_without_a_load_function_model_is_an_ordinary_argument() -> None:
    with pytest.raises(InvalidArguments, match="missing required argument 'model'"):
        bind(with_model, Inputs(kwargs={"x": 3}), model=NO_MODEL)
    assert bind(with_model, Inputs(kwargs={"x": 3, "model": "given"})) == ((), {"x": 3, "model": "given"})


def test_model_argument_is_reserved_when_a_model_is_loaded() -> None:
    with pytest.raises(InvalidArguments, match="'model' is reserved"):
        bind(with_model, Inputs(kwargs={"x": 3, "model": "spoof"}), model="M")


def test_model_is_not_injected_into_functions_without_the_parameter() -> None:
    assert bind(predict, Inputs(kwargs={"x": 1}), model="M") == ((), {"x": 1})


def test_raw_body_goes_to_the_first_positional_parameter_after_model() -> None:
    def raw(model: Any, data: bytes, scale: int = 1) -> Any:
        return (model, data, scale)

    args, kwargs = bind(raw, Inputs(body=b"abc"), model="M")
    assert raw(*args, **kwargs) == ("M", b"abc", 1)


def test_raw_body_reaches_a_positional_only_or_var_positional_parameter() -> None:
    def positional_only(data: bytes | None = None, /, **kwargs: Any) -> Any:
        return data

    def var_positional(*parts: bytes) -> Any:
        return parts

    assert bind(positional_only, Inputs(body=b"x")) == ((b"x",), {})
    assert bind(var_positional, Inputs(body=b"y")) == ((b"y",), {})


def test_raw_body_without_a_positional_parameter_is_invalid() -> None:
    def keywords_only(*, text: str) -> None: ...

    with pytest.raises(InvalidArguments, match="not a JSON object of keyword arguments"):
        bind(keywords_only, Inputs(body=b"plain text"))


def test_positional_only_parameter_given_by_keyword_is_invalid() -> None:
    def positional_only(data: bytes, /) -> None: ...

    with pytest.raises(InvalidArguments, match="'data'"):
        bind(positional_only, Inputs(kwargs={"data": "x"}))


def test_callable_without_signature_is_passed_through() -> None:
    assert bind(len, Inputs(body=b"abc")) == ((b"abc",), {})


# --- sync or async --------------------------------------------------------------------------------------------------


async def _async_fn() -> None: ...


async def _async_gen() -> AsyncIterator[int]:
    yield 1


class _AsyncCallable:
    async def __call__(self) -> None: ...


class _SyncCallable:
    def __call__(self) -> None: ...


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (_async_fn, True),
        (_async_gen, True),
        (functools.partial(_async_fn), True),
        (_AsyncCallable(), True),
        (predict, False),
        (_SyncCallable(), False),
        (len, False),
    ],
)
def test_is_async_callable(function: Any, expected: bool) -> None:
    assert calling.is_async_callable(function) is expected


# --- call -----------------------------------------------------------------------------------------------------------


async def test_sync_callables_run_in_the_pool_and_async_ones_on_the_loop(executor: ThreadPoolExecutor) -> None:
    def sync_where() -> str:
        return threading.current_thread().name

    async def async_where() -> str:
        return threading.current_thread().name

    assert (await calling.call(sync_where, (), {}, executor=executor, encode=str)).startswith("test-call")
    assert await calling.call(async_where, (), {}, executor=executor, encode=str) == threading.current_thread().name


async def test_a_blocking_sync_callable_does_not_block_the_loop(executor: ThreadPoolExecutor) -> None:
    release = threading.Event()

    def blocking() -> str:
        assert release.wait(10)
        return "done"

    task = asyncio.create_task(calling.call(blocking, (), {}, executor=executor, encode=str))
    await asyncio.sleep(0)  # the loop keeps running other work meanwhile
    assert not task.done()
    release.set()
    assert await asyncio.wait_for(task, 10) == "done"


async def test_generators_returned_by_predict_are_collected(executor: ThreadPoolExecutor) -> None:
    def sync_gen() -> Iterator[int]:
        yield from (1, 2)

    async def async_gen() -> AsyncIterator[int]:
        yield 3
        yield 4

    assert await calling.call(sync_gen, (), {}, executor=executor, encode=encode_json) == b"[1,2]"
    assert await calling.call(async_gen, (), {}, executor=executor, encode=encode_json) == b"[3,4]"


def _user_code_that_raises(value: int) -> None:
    raise ValueError(f"bad value {value}")


@pytest.mark.parametrize("make_async", [False, True])
async def test_model_exceptions_carry_type_message_and_user_traceback(
    executor: ThreadPoolExecutor, make_async: bool
) -> None:
    async def async_raiser(value: int) -> None:
        _user_code_that_raises(value)

    function = async_raiser if make_async else _user_code_that_raises
    with pytest.raises(ModelRaised) as caught:
        await calling.call(function, (7,), {}, executor=executor, encode=encode_json)
    error = caught.value.body()["error"]
    assert (error["code"], error["type"], error["message"]) == ("model_error", "ValueError", "bad value 7")
    assert "_user_code_that_raises" in error["traceback"]
    assert "bundleserve/bundle/calling.py" not in error["traceback"]
    assert caught.value.status == 500


async def test_a_type_error_inside_the_model_is_a_model_error_not_an_argument_error(
    executor: ThreadPoolExecutor,
) -> None:
    def buggy(x: int) -> int:
        return len(x)  # type: ignore[arg-type]

    args, kwargs = bind(buggy, Inputs(kwargs={"x": 5}))
    with pytest.raises(ModelRaised) as caught:
        await calling.call(buggy, args, kwargs, executor=executor, encode=encode_json)
    assert caught.value.body()["error"]["type"] == "TypeError"


async def test_unserialisable_results_raise_not_serializable(executor: ThreadPoolExecutor) -> None:
    with pytest.raises(NotSerializable, match="set"):
        await calling.call(lambda: {1, 2}, (), {}, executor=executor, encode=encode_json)


# --- stream ---------------------------------------------------------------------------------------------------------


async def test_sync_generators_are_pulled_one_item_per_request_and_closed(executor: ThreadPoolExecutor) -> None:
    pulled: list[int] = []
    closed = threading.Event()

    def numbers() -> Iterator[int]:
        try:
            for n in range(100):
                pulled.append(n)
                yield n
        finally:
            closed.set()

    chunks = calling.stream(numbers, (), {}, executor=executor)
    async with contextlib.aclosing(chunks):
        assert [await anext(chunks), await anext(chunks)] == [0, 1]
        assert pulled == [0, 1]
    assert closed.is_set()


async def test_async_generators_stream_and_close(executor: ThreadPoolExecutor) -> None:
    closed = asyncio.Event()

    async def numbers() -> AsyncIterator[int]:
        try:
            for n in range(100):
                yield n
        finally:
            closed.set()

    chunks = calling.stream(numbers, (), {}, executor=executor)
    async with contextlib.aclosing(chunks):
        assert await anext(chunks) == 0
    assert closed.is_set()


async def test_non_iterator_results_are_one_chunk_and_lists_are_many(executor: ThreadPoolExecutor) -> None:
    one = [item async for item in calling.stream(lambda: {"a": 1}, (), {}, executor=executor)]
    many = [item async for item in calling.stream(lambda: ["a", "b"], (), {}, executor=executor)]
    assert (one, many) == ([{"a": 1}], ["a", "b"])


async def test_an_exception_mid_stream_follows_the_chunks_already_yielded(executor: ThreadPoolExecutor) -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("broke after one")

    received = []
    with pytest.raises(ModelRaised, match="broke after one"):
        async for item in calling.stream(failing, (), {}, executor=executor):
            received.append(item)
    assert received == [1]
