"""The sync and streaming invocation routes: read the body (capped), admit, call the model, answer.

This is the hot path; it avoids per-request allocations it can: constant response parts are pre-encoded, a JSON
result of a Python bundle is spliced into the response without being decoded, and label children are pre-bound.
The time limit covers everything: waiting in line, fetching a `url` input and the model (for streams, until the
first event; once events flow the stream is not cut).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from time import perf_counter

from aiohttp import web

from bundleserve.api.errors import (
    ApiError,
    InvalidRequest,
    ModelError,
    NotFound,
    PayloadTooLarge,
    Timeout,
    Unauthorized,
    Unavailable,
)
from bundleserve.api.invocation import PICKLE_CONTENT_TYPE
from bundleserve.queue.results import ResultStore, open_result_store
from bundleserve.router.calls import Call, parse_call
from bundleserve.router.deadlines import DeadlineWheel
from bundleserve.router.fetch import UrlFetcher
from bundleserve.router.metrics import ModeMetrics
from bundleserve.router.model_client import JSON, ModelReply, ModelUnreachable, encode_args, model_error
from bundleserve.router.sse import EventParser, as_json, failure_event, success_event
from bundleserve.router.state import RouterState

_SUCCESS_HEAD = b'{"status":"SUCCESS","result":'
_SUCCESS_TAIL = b',"result_url":null,"traceback":null,"status_code":200}'
_JSON_TYPE = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response, independent of the HTTP server that sends it (aiohttp or the fast path)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = _JSON_TYPE


def error_answer(error: ApiError) -> Answer:
    """The one rendering of an error: `{"error": {"code", "message", ...}}` with its status and headers."""
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    return Answer(error.status, body, error.headers)


def as_response(answer: Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)
    for name, value in answer.headers.items():
        response.headers[name] = value
    return response


def error_response(error: ApiError) -> web.Response:
    return as_response(error_answer(error))


def too_large(length: int | None, limit: int) -> PayloadTooLarge:
    size = "" if length is None else f" ({length} bytes)"
    return PayloadTooLarge(f"the request body{size} is larger than the limit of {limit} bytes")


def result_store(state: RouterState) -> ResultStore:
    """The store of pickled and large results (`bundleserve.queue.results`), shared by the sync and async paths and
    created on first use with the endpoint's result TTL."""
    if state.result_store is None:
        settings = state.settings
        ttl = float(settings.endpoint.spec.async_settings.result_ttl_seconds)
        state.result_store = open_result_store(settings.results_dir, settings.results_url, default_ttl_seconds=ttl)
    store: ResultStore = state.result_store
    return store


def outcome_of(error: ApiError) -> str:
    return error.code


class Invoker:
    """The predict and stream handlers of one endpoint, bound to the router state once."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        settings = state.settings
        spec = settings.endpoint.spec
        self.name = settings.name
        self.timeout = float(spec.invocation.timeout_seconds)
        self.max_bytes = spec.invocation.max_payload_bytes
        self.is_python = spec.bundle.is_python
        self.predict_path = settings.routes.predict
        self.stream_path = settings.routes.stream or "/stream"
        self.model = state.model
        self.sync_metrics = state.metrics.for_mode("sync")
        self.stream_metrics = state.metrics.for_mode("streaming")
        self.deadlines = DeadlineWheel()
        self._loop: asyncio.AbstractEventLoop | None = None
        if state.fetcher is None:
            state.fetcher = UrlFetcher(state.settings.url_policy)
        self.fetcher = state.fetcher

    # -- shared steps ---------------------------------------------------------------------------------------------

    def gate(self, name: str | None, authorization: str | None) -> None:
        """Refuse before reading the body: another endpoint's name (None on our own exact path), a missing API key,
        draining, a model that is not ready."""
        if name is not None and name != self.name:
            raise NotFound(f"this router serves endpoint {self.name!r}, not {name!r}")
        state = self.state
        if state.api_keys is not None and not state.api_keys.allows(authorization):
            raise Unauthorized(
                "a valid API key is required (Authorization: Bearer KEY)",
                headers={"WWW-Authenticate": 'Bearer, Basic realm="bundleserve"'},
            )
        if state.drain.draining:
            raise Unavailable("the router is shutting down; retry on another replica")
        if not state.readiness.ready:
            raise Unavailable("the model is not ready yet")

    async def _read(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_bytes:
            raise too_large(length, self.max_bytes)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(None, self.max_bytes) from None

    def _deadline(self, call: Call) -> tuple[float, float]:
        """(loop time of the deadline, the time limit): the spec's, or the request's when smaller."""
        timeout = self.timeout
        if call.timeout_seconds is not None and call.timeout_seconds < timeout:
            timeout = call.timeout_seconds
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time() + timeout, timeout

    async def _model_input(self, call: Call) -> tuple[bytes, bytes, bool]:
        """(body, content type, raw?) for the model: JSON args, or the fetched bytes of a url input."""
        if call.url is None:
            return call.args_json or encode_args(call.args), JSON, False
        data, content_type = await self.fetcher.fetch(
            call.url, schemes=self.state.settings.url_schemes, max_bytes=self.max_bytes
        )
        return data, content_type, True

    async def _admit(self, metrics: ModeMetrics) -> None:
        admission = self.state.admission
        if admission.try_acquire():
            metrics.queue_wait.observe(0.0)
            return
        started = time.perf_counter()
        await admission.acquire()
        metrics.queue_wait.observe(time.perf_counter() - started)

    def _model_failed(self, error: ApiError) -> None:
        if isinstance(error, ModelUnreachable):
            self.state.readiness.lost()

    # -- predict --------------------------------------------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp edge of predict (the fast path, `router.fastpath`, is the other one; both share the rest)."""
        started = perf_counter()
        try:
            self.gate(request.match_info.get("name"), request.headers.get("Authorization"))
        except ApiError as error:
            return as_response(self.refuse(error, started))
        drain = self.state.drain
        drain.enter()
        try:
            try:
                body = await self._read(request)
            except ApiError as error:
                return as_response(self.refuse(error, started))
            except asyncio.CancelledError:
                self.sync_metrics.record("cancelled", perf_counter() - started)
                raise
            return as_response(await self.answer_predict(body, started))
        finally:
            drain.leave()

    def refuse(self, error: ApiError, started: float) -> Answer:
        """Count a predict refused before its body was parsed and render the error."""
        self.sync_metrics.record(error.code, perf_counter() - started)
        return error_answer(error)

    async def answer_predict(self, body: bytes, started: float) -> Answer:
        """Everything after the body was read: parse, time limit, admission, model call, answer, metrics.

        The caller gated the request and holds the drain (`drain.enter()`) around this call.
        """
        metrics = self.sync_metrics
        waited = model_time = 0.0
        size_in = size_out = -1
        try:
            call = parse_call(body, kwargs_only=self.is_python)
            deadline, limit = self._deadline(call)
            admission = self.state.admission
            try:
                async with self.deadlines.at(deadline):
                    if call.args_json is not None:
                        data, content_type, raw = call.args_json, JSON, False
                    else:
                        data, content_type, raw = await self._model_input(call)
                    size_in = len(data)
                    if not admission.try_acquire():
                        waiting_since = perf_counter()
                        await admission.acquire()
                        waited = perf_counter() - waiting_since
                    model_time = perf_counter()
                    try:
                        reply = await self.model.predict(
                            self.predict_path,
                            data,
                            content_type=content_type,
                            raw=raw,
                            pickled=call.return_pickled and self.is_python,
                        )
                    finally:
                        admission.release()
                        model_time = perf_counter() - model_time
            except TimeoutError:
                raise Timeout(f"no answer within the time limit of {limit:g} s (queue wait included)") from None
            size_out = len(reply.body)
            if call.return_pickled:
                answer = await self._pickled_answer(reply)
            else:
                answer = self._result_answer(reply)
            metrics.record("success", perf_counter() - started, waited, model_time, size_in, size_out)
            return answer
        except ApiError as error:
            self._model_failed(error)
            metrics.record(error.code, perf_counter() - started, waited, model_time, size_in, size_out)
            return error_answer(error)
        except asyncio.CancelledError:
            metrics.record("cancelled", perf_counter() - started, waited, model_time, size_in, size_out)
            raise

    def _result_answer(self, reply: ModelReply) -> Answer:
        if reply.is_json and self.is_python and reply.body:
            body = _SUCCESS_HEAD + reply.body + _SUCCESS_TAIL
        else:
            body = _SUCCESS_HEAD + json.dumps(reply.result()).encode() + _SUCCESS_TAIL
        return Answer(200, body)

    async def _pickled_answer(self, reply: ModelReply) -> Answer:
        if reply.is_pickle:
            data = reply.body
        else:  # a runnable image answered plain JSON/text: pickle its result here
            import cloudpickle

            data = cloudpickle.dumps(reply.result())
        store = result_store(self.state)
        key = uuid.uuid4().hex
        ttl = float(self.state.settings.endpoint.spec.async_settings.result_ttl_seconds)
        await store.put(key, data, PICKLE_CONTENT_TYPE, ttl_seconds=ttl)
        body = {
            "status": "SUCCESS",
            "result": None,
            "result_url": store.url_for(key),
            "traceback": None,
            "status_code": 200,
        }
        return Answer(200, json.dumps(body).encode())

    # -- stream ---------------------------------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        metrics = self.stream_metrics
        drain = self.state.drain
        entered = False
        response: web.StreamResponse | None = None
        try:
            self.gate(request.match_info.get("name"), request.headers.get("Authorization"))
            drain.enter()
            entered = True
            body = await self._read(request)
            call = parse_call(body, kwargs_only=self.is_python)
            if call.return_pickled:
                raise InvalidRequest("return_pickled is not available for streaming")
            deadline, limit = self._deadline(call)
            try:
                async with self.deadlines.at(deadline):
                    data, content_type, raw = await self._model_input(call)
                    metrics.request_bytes.observe(len(data))
                    await self._admit(metrics)
            except TimeoutError:
                raise Timeout(f"no answer within the time limit of {limit:g} s (queue wait included)") from None
            model_started = time.perf_counter()
            try:
                response = await self._relay(request, deadline, data, content_type, raw, metrics)
            finally:
                self.state.admission.release()
                metrics.model_duration.observe(time.perf_counter() - model_started)
            return response
        except ApiError as error:
            self._model_failed(error)
            metrics.outcome(outcome_of(error))
            return error_response(error)
        except (asyncio.CancelledError, ConnectionError):
            metrics.outcome("cancelled")
            raise
        finally:
            if entered:
                drain.leave()
            metrics.duration.observe(time.perf_counter() - started)

    async def _relay(
        self,
        request: web.Request,
        deadline: float,
        data: bytes,
        content_type: bytes,
        raw: bool,
        metrics: ModeMetrics,
    ) -> web.StreamResponse:
        """Copy the model's events to the client; errors before the first event are plain HTTP errors."""
        parser = EventParser()
        size = 0
        async with self.state.model.stream(self.stream_path, data, content_type=content_type, raw=raw) as upstream:
            sse = upstream.content_type.startswith("text/event-stream")
            chunks = aiter(upstream)
            first: list[bytes] = []
            ended = False
            try:
                async with self.deadlines.at(deadline):
                    while not first and not ended:
                        chunk = await anext(chunks, None)
                        if chunk is None:
                            ended = True
                            break
                        size += len(chunk)
                        first, failure = self._frames(parser, chunk, sse)
                        if failure is not None and not first:
                            raise failure
            except TimeoutError:
                raise Timeout("the model sent no event before the time limit") from None
            response = web.StreamResponse(headers=_SSE_HEADERS)
            await response.prepare(request)
            await response.write(b"".join(first) if first else b"")
            failed = False
            if not ended:
                try:
                    async for chunk in chunks:
                        size += len(chunk)
                        frames, failure = self._frames(parser, chunk, sse)
                        if frames:
                            await response.write(b"".join(frames) if len(frames) > 1 else frames[0])
                        if failure is not None:
                            await response.write(_failure_frame(failure))
                            failed = True
                            break
                except ModelError as error:
                    await response.write(_failure_frame(error))
                    failed = True
            await response.write_eof()
        metrics.response_bytes.observe(size)
        metrics.outcome("model_error" if failed else "success")
        return response

    @staticmethod
    def _frames(parser: EventParser, chunk: bytes, sse: bool) -> tuple[list[bytes], ModelError | None]:
        """Client frames for a chunk of the model's stream, and the model's failure if the chunk carried one."""
        if not sse:
            return [success_event(as_json(chunk))], None
        frames: list[bytes] = []
        for event in parser.feed(chunk):
            if event.event == "error":
                return frames, _stream_error(event.data)
            frames.append(success_event(event.data))
        return frames, None


def _stream_error(data: bytes) -> ModelError:
    return model_error(None, data, fallback="the model failed while streaming")


def _failure_frame(error: ModelError) -> bytes:
    return failure_event(
        error.message, traceback=error.details.get("traceback"), status_code=error.details.get("status_code")
    )
