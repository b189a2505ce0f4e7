"""The asyncio client: `AsyncClient` and the same endpoint, stream and future types as `client.sync`, awaitable.

It mirrors `client.sync` method for method over `httpx.AsyncClient`; what to send and how to read the answers is
`client.wire`, shared by both. Futures are awaitable (`await future` = `await future.get()`); streams are async
iterators (`async for`, `async with`, `aclose()`).
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Any, Literal, overload

import httpx

from bundleserve.client import wire
from bundleserve.client.errors import BundleserveError, ConnectionFailed, NotFound, WaitTimeout
from bundleserve.client.models import EndpointInfo, EndpointRequest, EndpointResponse
from bundleserve.client.wire import ModeName, RetryPolicy


class AsyncClient:
    """A connection pool to one server: the gateway, local mode (`bundleserve run`) or one endpoint's router.

    `timeout` bounds each HTTP request (None: only the connect takes at most 10 s; reads wait for the server,
    which enforces the endpoint's own `timeoutSeconds`). `retry` enables bounded retries of refused requests
    (`RetryPolicy`); by default nothing is retried. Use it as an async context manager, or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str = wire.DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float | None = None,
        *,
        retry: RetryPolicy | None = None,
        max_batch_concurrency: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = wire.base_url(base_url)
        self.timeout = timeout
        self.retry = retry or wire.NO_RETRIES
        self.max_batch_concurrency = max_batch_concurrency
        auth = wire.ApiKeyAuth(api_key, self.base_url) if api_key else None
        self._http = httpx.AsyncClient(
            base_url=self.base_url, auth=auth, timeout=wire.timeout_config(timeout), transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    # -- HTTP ------------------------------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool,
        stream: bool = False,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One request with the retry policy applied. An error answer is returned (read), not raised; with
        `stream=True` a success is returned unread and the caller closes it."""
        request = self._http.build_request(
            method, url, json=json, params=params, headers=headers, timeout=timeout or self._http.timeout
        )
        attempt = 1
        while True:
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as error:
                delay = wire.delay_after_transport_error(self.retry, attempt, error, idempotent=idempotent)
                if delay is None:
                    raise wire.transport_error(error, method, str(request.url)) from error
            else:
                if response.status_code < 400:
                    if not stream:
                        await _read(response, method, str(request.url))
                    return response
                await _read(response, method, str(request.url))
                delay = wire.delay_after_answer(
                    self.retry, attempt, response.status_code, response.headers, idempotent=idempotent
                )
                if delay is None:
                    return response
            await asyncio.sleep(delay)
            attempt += 1

    # -- endpoints -------------------------------------------------------------------------------------------

    async def endpoints(self) -> list[EndpointInfo]:
        """Every endpoint the server serves (gateway, local mode; a router lists its own)."""
        response = await self.send("GET", wire.LIST_PATH, idempotent=True)
        found = wire.listing(response.status_code, response.headers, response.content)
        if found is None:
            raise NotFound(
                f"{self.base_url} does not list endpoints (no GET {wire.LIST_PATH})", status_code=404, code="not_found"
            )
        return found

    async def describe(self, name: str) -> EndpointInfo | None:
        """The endpoint's name, modes and readiness; None when the server cannot say; NotFound when unknown."""
        response = await self.send("GET", wire.describe_path(name), idempotent=True)
        info = wire.description(response.status_code, response.headers, response.content)
        if info is not None:
            return info
        listed = await self.send("GET", wire.LIST_PATH, idempotent=True)
        return wire.from_listing(name, wire.listing(listed.status_code, listed.headers, listed.content))

    @overload
    async def endpoint(self, name: str, mode: Literal["sync"]) -> SyncEndpoint: ...
    @overload
    async def endpoint(self, name: str, mode: Literal["streaming"]) -> StreamingEndpoint: ...
    @overload
    async def endpoint(self, name: str, mode: Literal["async"]) -> AsyncEndpoint: ...
    @overload
    async def endpoint(self, name: str, mode: None = None) -> SyncEndpoint | StreamingEndpoint | AsyncEndpoint: ...

    async def endpoint(
        self, name: str, mode: ModeName | None = None
    ) -> SyncEndpoint | StreamingEndpoint | AsyncEndpoint:
        """The endpoint as the API of one mode: the one asked for, else the first of sync, streaming, async it
        serves. Where the server cannot describe endpoints (a router without the route), the asked mode is assumed."""
        info = await self.describe(name)
        chosen = wire.choose_mode(name, info, mode)
        if chosen == "sync":
            return SyncEndpoint(self, name, info)
        if chosen == "streaming":
            return StreamingEndpoint(self, name, info)
        return AsyncEndpoint(self, name, info)

    # -- tasks and results -----------------------------------------------------------------------------------

    async def get_task(self, task_id: str, *, wait: float = 0.0) -> EndpointResponse:
        """One `GET /v1/tasks/{id}`; with `wait` the server holds it until the task finishes or `wait` passes."""
        response = await self.send(
            "GET",
            wire.task_path(task_id),
            params={"wait": format(wait, "g")} if wait > 0 else None,
            idempotent=True,
            timeout=wire.long_poll_timeout(wait, self.timeout),
        )
        return wire.task_response(response.status_code, response.headers, response.content)

    def task(self, task_id: str) -> EndpointResponseFuture:
        """A future for a task submitted earlier (by id)."""
        return EndpointResponseFuture(self, task_id)

    async def load_pickled_result(
        self, response: EndpointResponse, *, trusted_source: bool, max_bytes: int = wire.MAX_PICKLE_BYTES
    ) -> Any:
        """Download `response.result_url` and unpickle it.

        Unpickling runs code chosen by whoever wrote the bytes: use this only for results of models you trust,
        from a server you trust. `trusted_source=True` must be passed to say so. The API key is sent only when the
        URL is on this client's server (never to a presigned object-storage URL).
        """
        url = wire.pickle_url(response, trusted_source)
        async with self._http.stream("GET", wire.resolve_result_url(self.base_url, url)) as answer:
            data = bytearray()
            if answer.status_code < 400:
                async for chunk in answer.aiter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise BundleserveError(f"the pickled result is larger than max_bytes={max_bytes}")
            else:
                data += await answer.aread()
            wire.raise_for_answer(answer.status_code, answer.headers, bytes(data))
        return pickle.loads(data)


async def _read(response: httpx.Response, method: str, url: str) -> None:
    try:
        await response.aread()
    except httpx.TransportError as error:
        await response.aclose()
        raise wire.transport_error(error, method, url) from error


class _Endpoint:
    mode: ModeName

    def __init__(self, client: AsyncClient, name: str, info: EndpointInfo | None) -> None:
        self.client = client
        self.name = name
        #: What the server said about the endpoint (None: it could not say; the mode was assumed).
        self.info = info

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, server={self.client.base_url!r})"

    async def _post(
        self, request: EndpointRequest, timeout_seconds: float | None, *, stream: bool = False
    ) -> httpx.Response:
        return await self.client.send(
            "POST",
            wire.endpoint_path(self.name, self.mode),
            json=wire.invocation_body(request, self.mode, timeout_seconds),
            headers=wire.request_headers(request),
            idempotent=False,
            stream=stream,
        )


class SyncEndpoint(_Endpoint):
    mode: ModeName = "sync"

    async def predict(self, request: EndpointRequest, *, timeout_seconds: float | None = None) -> EndpointResponse:
        """One request/response call. A model failure is returned as status FAILURE with its traceback (as in
        Launch; `response.raise_for_status()` raises it); every other error raises."""
        answer = await self._post(request, timeout_seconds)
        return wire.predict_response(answer.status_code, answer.headers, answer.content)


class StreamingEndpoint(_Endpoint):
    mode: ModeName = "streaming"

    async def predict(
        self, request: EndpointRequest, *, timeout_seconds: float | None = None
    ) -> EndpointResponseStream:
        """An async iterator of EndpointResponse, one per chunk; `aclose()` it (or leave `async with`) to stop early."""
        answer = await self._post(request, timeout_seconds, stream=True)
        if answer.status_code >= 400:
            return EndpointResponseStream(
                None, first=wire.predict_response(answer.status_code, answer.headers, answer.content)
            )
        return EndpointResponseStream(answer)


class AsyncEndpoint(_Endpoint):
    mode: ModeName = "async"

    async def predict(
        self, request: EndpointRequest, *, timeout_seconds: float | None = None
    ) -> EndpointResponseFuture:
        """Queue the request (it is durable once this returns) and return a future for its result."""
        answer = await self._post(request, timeout_seconds)
        return EndpointResponseFuture(
            self.client, wire.submitted_task_id(answer.status_code, answer.headers, answer.content)
        )

    async def predict_batch(
        self, requests: Sequence[EndpointRequest], *, timeout_seconds: float | None = None
    ) -> list[EndpointResponseFuture]:
        """Submit many requests concurrently (at most `client.max_batch_concurrency` at once); futures in order.

        A submission that failed gives a future whose `get()` raises that error (the others are queued).
        """

        gate = asyncio.Semaphore(max(1, self.client.max_batch_concurrency))

        async def submit(request: EndpointRequest) -> EndpointResponseFuture:
            async with gate:
                try:
                    return await self.predict(request, timeout_seconds=timeout_seconds)
                except BundleserveError as error:
                    return EndpointResponseFuture(self.client, None, error=error)

        return list(await asyncio.gather(*(submit(request) for request in requests)))


class EndpointResponseStream:
    """The events of one streaming call, as an async iterator. `aclose()` (also on leaving an `async with` block)
    closes the connection, which the server sees as the client leaving and passes on to the model. A stream
    dropped without `aclose()` is closed by a task scheduled on the running loop."""

    def __init__(self, response: httpx.Response | None, *, first: EndpointResponse | None = None) -> None:
        self._response = response
        self._pending: list[EndpointResponse] = [first] if first is not None else []
        self._chunks = response.aiter_bytes() if response is not None else None
        self._decoder = wire.SseDecoder()
        self._done = response is None

    def __aiter__(self) -> AsyncIterator[EndpointResponse]:
        return self

    async def __anext__(self) -> EndpointResponse:
        while not self._pending and not self._done and self._chunks is not None:
            try:
                chunk = await anext(self._chunks, None)
                if chunk is None:
                    self._done = True
                    last = self._decoder.end()
                    self._pending = [last] if last is not None else []
                else:
                    self._pending = self._decoder.feed(chunk)[::-1]
            except httpx.TransportError as error:
                await self.aclose()
                raise ConnectionFailed(f"the stream broke: {type(error).__name__}: {error}") from error
            except BundleserveError:
                await self.aclose()
                raise
        if self._pending:
            event = self._pending.pop()
            if event.status != "SUCCESS":
                self._pending.clear()
                await self.aclose()  # a failure is the last item
            return event
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._done = True
        if self._response is not None and not self._response.is_closed:
            await self._response.aclose()

    async def __aenter__(self) -> EndpointResponseStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        response = self._response
        if response is None or response.is_closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop left to close it on: the pool drops the connection when the client closes
        _CLOSING.add(task := loop.create_task(response.aclose()))
        task.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Task[None]] = set()


class EndpointResponseFuture:
    """An async task's eventual EndpointResponse. `await future.get()` (or `await future`) waits on the server's long-poll: it returns as soon
    as the task finishes (SUCCESS, FAILURE or EXPIRED), with no fixed polling interval."""

    def __init__(self, client: AsyncClient, task_id: str | None, *, error: BundleserveError | None = None) -> None:
        self.client = client
        self.task_id = task_id
        #: The submission's error, when submitting failed (then `get()` raises it).
        self.error = error
        self._result: EndpointResponse | None = None

    def __repr__(self) -> str:
        return f"EndpointResponseFuture(task_id={self.task_id!r})"

    def done(self) -> bool:
        """True once `get()` has seen the task finish (no request is made)."""
        return self._result is not None or self.error is not None

    def __await__(self) -> Generator[Any, None, EndpointResponse]:
        return self.get().__await__()

    async def get(self, timeout: float | None = None) -> EndpointResponse:
        """Wait for the task to finish and return its response; `WaitTimeout` (a TimeoutError) after `timeout`
        seconds (the task keeps running; call `get()` again to keep waiting)."""
        if self.error is not None:
            raise self.error
        if self._result is not None:
            return self._result
        if self.task_id is None:  # a future is made with a task id or with its submission's error
            raise BundleserveError("this future has neither a task id nor a submission error")
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, last = 0.0, None
        while True:
            wait = (
                wire.LONG_POLL_SECONDS
                if deadline is None
                else max(0.0, min(wire.LONG_POLL_SECONDS, deadline - time.monotonic()))
            )
            started = time.monotonic()
            last = await self.client.get_task(self.task_id, wait=wait)
            if last.finished:
                self._result = last
                return last
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeout(
                    f"task {self.task_id} did not finish within {timeout:g} s (last status {last.status})",
                    task_id=self.task_id,
                    last_status=last.status,
                )
            pause = wire.early_answer_pause(pause, wait, now - started)
            if pause:
                await asyncio.sleep(pause if deadline is None else min(pause, max(0.0, deadline - now)))
