"""Bind request inputs to the user's callable and run it: sync code in a thread pool, async code on the loop.

Arguments are checked against the signature *before* the call, so a mismatch is the caller's fault (400) while a
TypeError raised inside the model stays a model error (500). Streams pull one item at a time, and only when the
caller asks for the next one: the HTTP edge asks after the previous chunk's write has drained (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from bundleserve.bundle.errors import BatchResultInvalid, BundleError, InvalidArguments, model_raised
from bundleserve.bundle.serialization import Inputs

T = TypeVar("T")

MODEL_PARAMETER = "model"
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_DONE = object()
#: What model code may raise and still only fail its own call: `SystemExit` too (a model calling `sys.exit()` or a
#: library exiting on bad input), which would otherwise stop the whole runtime. KeyboardInterrupt is not included:
#: it comes from a signal to the process, not from the call.
MODEL_FAILURES = (Exception, SystemExit)


class _NoModel:
    def __repr__(self) -> str:
        return "NO_MODEL"


#: No load function configured: nothing is injected and `model` is an ordinary argument.
NO_MODEL: Any = _NoModel()


def signature_of(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none; they are called unchecked
        return None


def is_async_callable(function: Callable[..., Any]) -> bool:
    """True for `async def` functions and async generator functions (also behind partials or as `__call__`)."""
    while isinstance(function, functools.partial):
        function = function.func
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return True
    call = getattr(type(function), "__call__", None)  # noqa: B004 - a callable instance's method, not callable()
    return not inspect.isroutine(function) and (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call))


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def bind(
    function: Callable[..., Any], inputs: Inputs, *, model: Any = NO_MODEL, name: str = "predict"
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) for calling `function`, or `InvalidArguments` naming every missing or unexpected argument.

    The loaded model goes to a parameter named `model` when the function has one. A raw body goes to the first
    positional parameter that is not `model`.
    """
    kwargs = dict(inputs.kwargs)
    signature = signature_of(function)
    if signature is None:
        return ((inputs.body,) if inputs.body is not None else ()), kwargs
    parameters = signature.parameters
    inject = model is not NO_MODEL and MODEL_PARAMETER in parameters
    if inject and MODEL_PARAMETER in kwargs:
        raise InvalidArguments(
            f"argument {MODEL_PARAMETER!r} is reserved for the loaded model: {name} receives the return value of load()"
        )
    args: list[Any] = []
    body_pending = inputs.body is not None
    for parameter in parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            if body_pending:
                args.append(inputs.body)
                body_pending = False
            break
        if parameter.kind not in _POSITIONAL:
            break
        if inject and parameter.name == MODEL_PARAMETER:
            args.append(model)
            inject = False
        elif body_pending and parameter.name not in kwargs:
            args.append(inputs.body)
            body_pending = False
        else:
            break
    if inject:
        kwargs[MODEL_PARAMETER] = model
    if body_pending:
        raise InvalidArguments(
            f"the request body is not a JSON object of keyword arguments and {name} takes no positional argument "
            "to receive it as bytes (send Content-Type: application/json with an object body)"
        )
    _check_names(signature, len(args), kwargs, name)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise InvalidArguments(f"{name}: {error}") from None
    return tuple(args), kwargs


def _check_names(signature: inspect.Signature, n_positional: int, kwargs: Mapping[str, Any], name: str) -> None:
    parameters = list(signature.parameters.values())
    covered = {p.name for p in parameters[:n_positional] if p.kind in _POSITIONAL} | set(kwargs)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    missing = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty and p.kind not in variadic and p.name not in covered
    ]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    by_keyword = {p.name for p in parameters if p.kind not in (inspect.Parameter.POSITIONAL_ONLY, *variadic)}
    unexpected = [key for key in kwargs if key not in by_keyword and not accepts_any]
    problems = []
    if missing:
        problems.append(f"missing required argument{'s' if len(missing) > 1 else ''} {_quoted(missing)}")
    if unexpected:
        problems.append(f"unexpected argument{'s' if len(unexpected) > 1 else ''} {_quoted(unexpected)}")
    if problems:
        raise InvalidArguments(f"{name}: {'; '.join(problems)}")


async def call(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    executor: Executor,
    encode: Callable[[Any], T],
) -> T:
    """Run the callable and encode its result. Sync code (and encoding) runs in `executor`, never on the loop.

    A generator (sync or async) returned by predict is drained into a list, so a streaming entrypoint also answers
    predict with all its chunks.
    """
    loop = asyncio.get_running_loop()
    if is_async_callable(function):
        result = await _run_async(function, args, kwargs)
        return await loop.run_in_executor(executor, encode, result)

    def run_and_encode() -> tuple[bool, Any]:
        try:
            result = function(*args, **kwargs)
            if isinstance(result, Iterator):
                result = list(result)
        except MODEL_FAILURES as error:
            raise model_raised(error) from None
        if inspect.isawaitable(result) or isinstance(result, AsyncIterator):
            return False, result  # a sync wrapper around async code: finish it on the loop
        return True, encode(result)

    encoded, value = await loop.run_in_executor(executor, run_and_encode)
    if encoded:
        return cast(T, value)
    result = await _settle(value)
    return await loop.run_in_executor(executor, encode, result)


async def _run_async(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        result = function(*args, **kwargs)
    except MODEL_FAILURES as error:
        raise model_raised(error) from None
    return await _settle(result)


async def _settle(result: Any) -> Any:
    """Await an awaitable and drain an iterator, turning the model's exceptions into model errors."""
    try:
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, AsyncIterator):
            result = [item async for item in result]
        elif isinstance(result, Iterator):
            result = list(result)
    except MODEL_FAILURES as error:
        raise model_raised(error) from None
    return result


@dataclass(frozen=True)
class BatchItem:
    """One call of a batch: what the batch entrypoint gets for it, and how its answer is encoded (JSON or pickle)."""

    value: Any
    encode: Callable[[Any], bytes]


def batch_arguments(
    function: Callable[..., Any], values: list[Any], model: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) of a batch call: the list of calls is the first positional argument other than `model`; the
    loaded model goes to a parameter named `model` (positionally when it comes first), as for the entrypoint."""
    signature = signature_of(function)
    if model is NO_MODEL or signature is None or MODEL_PARAMETER not in signature.parameters:
        return (values,), {}
    first = next(iter(signature.parameters.values()))
    if first.name == MODEL_PARAMETER and first.kind in _POSITIONAL:
        return (model, values), {}
    return (values,), {MODEL_PARAMETER: model}


def batch_signature_problem(function: Callable[..., Any], *, with_model: bool) -> str | None:
    """Why `function` cannot be called with the list of calls (and the model), or None (checked once, at start-up)."""
    signature = signature_of(function)
    if signature is None:
        return None
    args, kwargs = batch_arguments(function, [], object() if with_model else NO_MODEL)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        return f"it cannot be called with the list of calls as its one positional argument ({error})"
    return None


def split_batch(result: Any, size: int, *, name: str) -> list[Any]:
    """The batch answer as one result per call; anything else is `BatchResultInvalid` (every call of the batch fails).

    A list or tuple, a generator (drained by the caller) or an array-like with `tolist` and a length (a numpy array:
    its rows) fits; a dict, a string or a scalar does not, and neither does a list of the wrong length.
    """
    array_like = (
        callable(getattr(result, "tolist", None))
        and hasattr(result, "__len__")
        and not isinstance(result, str | bytes | Mapping)
        and getattr(result, "ndim", 1) >= 1
    )
    if isinstance(result, list | tuple) or array_like:
        results = list(result)
    else:
        raise BatchResultInvalid(
            f"{name} returned {type(result).__name__} for a batch of {size} call{'s' if size != 1 else ''}: a batch "
            "entrypoint must return a list with one result (or exception) per call, in the calls' order"
        )
    if len(results) != size:
        raise BatchResultInvalid(
            f"{name} returned {len(results)} result{'s' if len(results) != 1 else ''} for a batch of {size} "
            f"call{'s' if size != 1 else ''}: a batch entrypoint must return exactly one result (or exception) per "
            "call, in the calls' order"
        )
    return results


def _encode_each(results: Sequence[Any], items: Sequence[BatchItem]) -> list[bytes | BundleError]:
    """Per call: an exception object is that call's model error; a result that cannot be encoded fails that call."""
    outcomes: list[bytes | BundleError] = []
    for result, item in zip(results, items, strict=True):
        if isinstance(result, BaseException):
            outcomes.append(model_raised(result))
            continue
        try:
            outcomes.append(item.encode(result))
        except BundleError as error:
            outcomes.append(error)
    return outcomes


async def call_batch(
    function: Callable[..., Any], items: Sequence[BatchItem], *, model: Any, executor: Executor, name: str
) -> list[bytes | BundleError]:
    """Call the batch entrypoint once with every item's value; one encoded answer or error per item, in order.

    Sync code, and splitting and encoding, run in `executor`; async code on the loop. The entrypoint raising fails
    every item with that error; a wrong shape of its answer fails every item with `BatchResultInvalid`.
    """
    args, kwargs = batch_arguments(function, [item.value for item in items], model)

    def split_and_encode(result: Any) -> list[bytes | BundleError]:
        return _encode_each(split_batch(result, len(items), name=name), items)

    return await call(function, args, kwargs, executor=executor, encode=split_and_encode)


async def stream(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, executor: Executor
) -> AsyncGenerator[Any, None]:
    """Yield the callable's chunks one by one. A result that is not an iterator is one chunk.

    Sync iterators advance in `executor` (one `next()` per requested item); async iterators on the loop. The
    generator is closed when the consumer stops early (client gone), so its `finally` blocks run.
    """
    loop = asyncio.get_running_loop()
    if is_async_callable(function):
        try:
            result = function(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except MODEL_FAILURES as error:
            raise model_raised(error) from None
    else:
        result = await loop.run_in_executor(executor, _call_mapped, function, args, kwargs)
        if inspect.isawaitable(result):
            try:
                result = await result
            except MODEL_FAILURES as error:
                raise model_raised(error) from None

    if isinstance(result, AsyncIterator):
        chunks: AsyncGenerator[Any, None] = _pull_async(result)
    elif isinstance(result, Iterator) or _is_chunk_list(result):
        chunks = _pull_sync(iter(result), loop, executor)
    else:
        yield result
        return
    async with contextlib.aclosing(chunks) as items:
        async for item in items:
            yield item


def _call_mapped(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return function(*args, **kwargs)
    except MODEL_FAILURES as error:
        raise model_raised(error) from None


def _is_chunk_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


async def _pull_async(iterator: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    try:
        while True:
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            except MODEL_FAILURES as error:
                raise model_raised(error) from None
            yield item
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


def _next_or_done(iterator: Iterator[Any]) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        return _DONE
    except MODEL_FAILURES as error:
        raise model_raised(error) from None


async def _pull_sync(
    iterator: Iterator[Any], loop: asyncio.AbstractEventLoop, executor: Executor
) -> AsyncGenerator[Any, None]:
    try:
        while True:
            item = await loop.run_in_executor(executor, _next_or_done, iterator)
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await loop.run_in_executor(executor, _close_quietly, close)


def _close_quietly(close: Callable[[], Any]) -> None:
    """Run a generator's cleanup; one still running in another thread (its request was cancelled) cannot be closed."""
    with contextlib.suppress(ValueError):
        close()
