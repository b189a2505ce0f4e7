"""The invocation core: the one path from a parsed request to the model and back, for every edge and dialect.

Edges (the aiohttp routes, the fast edge in `router.fastpath`, the SageMaker and Launch dialects, the async worker)
parse their own request shape into an `Invocation`, call this core, and render its `ModelReply` or `ApiError` in
their own shape. Everything between lives here once: the gate (endpoint name, API key, mode, draining, readiness),
the request body limit, the time limit (queue wait, url fetch, model call and, for streams, the wait for the first
event), admission (429), the url fetch through the destination guard, the model call, the reply size limit and the
mapping of model failures to API errors. See docs/router.md, "Invocation core".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from time import perf_counter
from typing import Any

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import (
    ApiError,
    InvalidRequest,
    ModelError,
    ModelNotReady,
    ModeNotServed,
    NotFound,
    Timeout,
    Unavailable,
)
from bundleserve.api.invocation import (
    CUSTOM_ATTRIBUTES_HEADER,
    JSON_CONTENT_TYPE,
    Invocation,
    ModelReply,
    StreamChunk,
    body_input,
    loads_json,
)
from bundleserve.edge.auth import require_key
from bundleserve.edge.errors import too_large
from bundleserve.edge.sse import EventParser, EventTooLarge
from bundleserve.router.deadlines import DeadlineWheel
from bundleserve.router.dedup import RecentCalls, fingerprint_of
from bundleserve.router.fetch import UrlFetcher
from bundleserve.router.metrics import ModeMetrics
from bundleserve.router.model_client import ModelConnectionLost, ModelStream, ModelUnreachable, ReplyTooLarge
from bundleserve.router.state import RouterState, s3_objects

#: Set on an aiohttp request whose body holds one of the admission's body places (`release_bodies` frees it).
BODY_RESERVED = web.RequestKey("bundleserve.body_reserved", bool)
#: The runtime's error code for arguments that do not fit the model's signature (bundleserve.bundle.errors).
INVALID_ARGUMENTS = "invalid_arguments"
#: Bytes of a non-2xx stream answer read to build the error (the rest is dropped with the connection).
_MAX_ERROR_BODY = 64 * 1024
_JSON_BYTES = JSON_CONTENT_TYPE.encode()


def _media_type(content_type: str) -> bytes:
    """The content type as header bytes (the JSON one without encoding it per call)."""
    return _JSON_BYTES if content_type == JSON_CONTENT_TYPE else content_type.encode("latin-1")


def model_failure(status: int | None, body: bytes, *, fallback: str) -> ApiError:
    """The API error for a model's non-2xx answer (or a failure event of a stream).

    The bundle runtime's `invalid_arguments` (400) is the client's mistake: `InvalidRequest` with the runtime's
    message, which names the argument. Anything else is a `ModelError` (424) carrying the model's `status_code`,
    `traceback` and exception `type` when its body has them.
    """
    message, traceback, kind, code = fallback, None, None, None
    try:
        error = loads_json(body).get("error") if body else None
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or fallback)
        traceback = error.get("traceback")
        kind = error.get("type")
        code = error.get("code")
    elif body:
        message = f"{fallback}: {body[:512].decode('utf-8', errors='replace')}"
    if status == 400 and code == INVALID_ARGUMENTS:
        return InvalidRequest(message)
    details: dict[str, Any] = {"status_code": status, "traceback": traceback}
    if kind:
        details["type"] = kind
    return ModelError(message, **details)


#: How long an async submission waits for a body place before it is refused with 429 (router.admission).
BODY_PLACE_WAIT_SECONDS = 30.0


class InvocationCore:
    """The invocation path of one router's endpoint (one instance per router, bound to its state)."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        settings = state.settings
        spec = settings.endpoint.spec
        self.name = settings.name
        self.timeout = float(spec.invocation.timeout_seconds)
        self.max_bytes = spec.invocation.max_payload_bytes
        #: Sync replies larger than this are refused (424 reply_too_large) before being buffered.
        self.max_reply_bytes = spec.invocation.max_payload_bytes
        self.is_python = spec.bundle.is_python
        #: The production variant this router serves (SageMaker's InvokedProductionVariant).
        self.variant = settings.variant
        self.predict_path = settings.routes.predict
        self.stream_path = settings.routes.stream or "/stream"
        self.model = state.model
        self.sync_metrics = state.metrics.for_mode("sync")
        self.stream_metrics = state.metrics.for_mode("streaming")
        self.deadlines = DeadlineWheel()
        self.fetcher = state.fetcher
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Sync calls by idempotency key (router.dedup): kept for the longest a client's retries take (botocore's
        #: legacy mode: 5 attempts of at most the time limit, plus backoff), at most `concurrency` full replies.
        self.recent = RecentCalls(
            ttl_seconds=5 * self.timeout + 60, max_bytes=self.max_reply_bytes * spec.invocation.concurrency
        )

    # -- before the body ------------------------------------------------------------------------------------------

    def gate(
        self,
        name: str | None,
        authorization: str | None,
        mode: Mode,
        *,
        authenticated: bool = False,
        scope: frozenset[str] | None = None,
    ) -> None:
        """Refuse before reading the body: another endpoint's name (None: our own exact path), a missing API key,
        a mode this endpoint does not serve, and, for sync and streaming, draining or a model that is not ready.

        `authenticated=True` means the dialect already proved who the caller is with a credential of its own (a
        verified SageMaker SigV4 signature, whose key the operator configured): the API-key check is skipped then,
        every other check stays. An unmodified AWS SDK cannot send an API key, so without this a router with API keys
        would refuse every SageMaker request. Such a credential opens only the namespaces `scope` (None: a
        cluster-wide key, which only an admin's own router configuration holds; the operator passes routers none):
        a router of another namespace answers as for another endpoint's name (NotFound).

        Async submissions pass while the model loads or the router drains: the queue is in Redis and any replica's
        worker runs the task later.
        """
        if name is not None and name != self.name:
            raise NotFound(f"this router serves endpoint {self.name!r}, not {name!r}")
        if not authenticated:
            self.authorize(authorization)
        elif scope is not None and self.state.settings.endpoint.namespace not in scope:
            raise NotFound(f"this router serves endpoint {self.name!r}, not {name!r}")
        state = self.state
        if not state.settings.serves(mode):
            raise ModeNotServed(f"endpoint {self.name!r} does not serve the {mode.value} mode")
        if mode is Mode.ASYNC:
            return
        if state.drain.draining:
            raise Unavailable("the router is shutting down; retry on another replica")
        if not state.readiness.ready:
            raise ModelNotReady("the model is not ready yet")

    @property
    def requires_api_key(self) -> bool:
        """True when API keys are configured (an API key is then a credential a dialect may accept)."""
        return self.state.api_keys is not None

    def authorize(self, authorization: str | None) -> None:
        """The API key check alone (routes that are not an invocation: a stored result)."""
        require_key(self.state.api_keys, authorization)

    @property
    def max_body_bytes(self) -> int:
        return self.max_bytes

    def check_length(self, length: int | None) -> None:
        """The body limit by declared length (the fast edge calls this with the parsed Content-Length)."""
        if length is not None and length > self.max_bytes:
            raise too_large(length, self.max_bytes)

    async def read_body(self, request: web.Request, *, wait_for_place: bool = False) -> bytes:
        """The body under the limit: refused by Content-Length before reading, a chunked body as soon as its count
        passes the limit. Read from the stream, not with `request.read()`, which would keep a copy on the request
        for its whole life (the caller holds the only one). Holds the drain while reading. `wait_for_place`: an
        async submission waits (bounded) for a body place instead of being refused (router.admission)."""
        self.check_length(request.content_length)
        # before the first byte: released by release_bodies when the handler ends
        if wait_for_place:
            await self.state.admission.wait_for_body(BODY_PLACE_WAIT_SECONDS)
        else:
            self.state.admission.reserve_body()
        request[BODY_RESERVED] = True
        drain = self.state.drain
        drain.enter()
        try:
            parts: list[bytes] = []
            seen = 0
            async for chunk in request.content.iter_any():
                seen += len(chunk)
                if seen > self.max_bytes:
                    raise too_large(None, self.max_bytes)
                parts.append(chunk)
            body = b"".join(parts) if len(parts) != 1 else parts[0]
            parts.clear()
            return body
        finally:
            drain.leave()

    # -- shared steps ---------------------------------------------------------------------------------------------

    def _deadline(self, inv: Invocation, ceiling: float | None) -> tuple[float, float]:
        """(loop time of the deadline, the time limit): the endpoint's (or `ceiling`), or the request's if smaller."""
        timeout = self.timeout if ceiling is None else ceiling
        if inv.timeout_seconds is not None and inv.timeout_seconds < timeout:
            timeout = inv.timeout_seconds
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time() + timeout, timeout

    async def _model_input(self, inv: Invocation) -> tuple[bytes, bytes, bool]:
        """(body, content type, raw?) for the model: the invocation's body, or the fetched bytes of its url.

        A native `url` input goes raw with the source's content type. A SageMaker InputLocation (`url_body`) is the
        request body itself: its declared type and, for a Python bundle, the JSON-object rule of an inline body
        (`body_input`); its `s3://` objects are read through the deployment's S3 client, under the same limit.
        """
        if inv.url is None:
            return inv.body, _media_type(inv.content_type), inv.raw
        if inv.url_body and inv.url.startswith("s3://"):
            objects = s3_objects(self.state)
            if objects is None:
                raise InvalidRequest("s3:// input locations need S3 storage configured on this deployment")
            data, content_type = await objects.read(inv.url, max_bytes=self.max_bytes)
        else:
            if self.fetcher is None:
                self.fetcher = self.state.fetcher = UrlFetcher(self.state.settings.url_policy)
            data, content_type = await self.fetcher.fetch(
                inv.url, schemes=self.state.settings.url_schemes, max_bytes=self.max_bytes
            )
        if inv.url_body:
            declared, raw = body_input(data, inv.content_type or None, python_bundle=self.is_python)
            return data, _media_type(declared), raw
        return data, content_type, True

    async def _admit(self, *, patient: bool) -> float:
        """A model slot; seconds waited. `patient` (the async worker): a full line means wait and retry, not 429."""
        admission = self.state.admission
        if admission.try_acquire():
            return 0.0
        started = perf_counter()
        if not patient:
            await admission.acquire()
            return perf_counter() - started
        delay = 0.01
        while True:
            try:
                await admission.acquire()
                return perf_counter() - started
            except ApiError:  # Overloaded: the line is full, a task waits its turn
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    @staticmethod
    def _headers(inv: Invocation) -> dict[str, str] | None:
        """The client's `Accept` and SageMaker custom attributes, passed to the model container as they came."""
        if inv.custom_attributes is None and inv.accept is None:
            return None
        headers: dict[str, str] = {}
        if inv.accept is not None:
            headers["Accept"] = inv.accept
        if inv.custom_attributes is not None:
            headers[CUSTOM_ATTRIBUTES_HEADER] = inv.custom_attributes
        return headers

    def _failed(self, error: ApiError) -> None:
        """A model that could not be reached, or closed a call's connection unanswered (a crash), stops being ready
        until the probe, woken now, finds it answering again: the async worker claims nothing meanwhile."""
        if isinstance(error, (ModelUnreachable, ModelConnectionLost)):
            self.state.readiness.lost()

    # -- predict --------------------------------------------------------------------------------------------------

    async def predict(
        self,
        inv: Invocation,
        *,
        started: float | None = None,
        timed_by_caller: bool = False,
        patient: bool = False,
        max_reply_bytes: int | None = None,
        metrics: ModeMetrics | None = None,
    ) -> ModelReply:
        """One model call: a 2xx `ModelReply`, or an `ApiError` (Timeout, Overloaded, ModelError, ...).

        Edges pass only `inv` (and `started`, when their clock began, for the metrics). The async worker passes
        `timed_by_caller=True` (its attempt's limit, the invocation timeout, is enforced by its own one timer, which
        cancels this call: the core arms none), `patient=True` (wait for a slot, never 429), `max_reply_bytes` (its
        result limit) and its own `metrics` (None records nothing here).

        An invocation with an `idempotency_key` (a client's retries of one call) runs the model once: later attempts
        wait for the first one's reply, which a client leaving does not cancel (`router.dedup`).
        """
        if inv.idempotency_key is not None and not patient:
            fingerprint = fingerprint_of(
                inv.body, inv.content_type, inv.url, str(inv.raw), str(inv.return_pickled), inv.accept,
                inv.custom_attributes,
            )  # fmt: skip
            return await self.recent.run(
                inv.idempotency_key,
                fingerprint,
                lambda: self._predict(inv, started, timed_by_caller, patient, max_reply_bytes, metrics),
            )
        return await self._predict(inv, started, timed_by_caller, patient, max_reply_bytes, metrics)

    async def _predict(
        self,
        inv: Invocation,
        started: float | None,
        timed_by_caller: bool,
        patient: bool,
        max_reply_bytes: int | None,
        metrics: ModeMetrics | None,
    ) -> ModelReply:
        if started is None:
            started = perf_counter()
        if metrics is None and not patient:
            metrics = self.sync_metrics
        waited = model_time = 0.0
        size_in = size_out = -1
        drain = self.state.drain
        drain.enter()
        try:
            deadline, limit = self._deadline(inv, None)
            admission = self.state.admission
            timer = contextlib.nullcontext() if timed_by_caller else self.deadlines.at(deadline)
            try:
                async with timer:
                    if inv.url is None:
                        data, content_type, raw = inv.body, _media_type(inv.content_type), inv.raw
                    else:
                        data, content_type, raw = await self._model_input(inv)
                    size_in = len(data)
                    waited = await self._admit(patient=patient)
                    model_time = perf_counter()
                    try:
                        reply = await self.model.predict(
                            self.predict_path,
                            data,
                            content_type=content_type,
                            raw=raw,
                            pickled=inv.return_pickled and self.is_python,
                            headers=self._headers(inv),
                            max_body=self.max_reply_bytes if max_reply_bytes is None else max_reply_bytes,
                        )
                    finally:
                        admission.release()
                        model_time = perf_counter() - model_time
            except TimeoutError:
                raise Timeout(f"no answer within the time limit of {limit:g} s (queue wait included)") from None
            size_out = len(reply.body)
            if not reply.ok:
                raise model_failure(reply.status, reply.body, fallback=f"the model answered HTTP {reply.status}")
            if metrics is not None:
                metrics.record("success", perf_counter() - started, waited, model_time, size_in, size_out)
            return reply
        except ApiError as error:
            self._failed(error)
            if metrics is not None:
                metrics.record(error.code, perf_counter() - started, waited, model_time, size_in, size_out)
            raise
        except asyncio.CancelledError:
            if metrics is not None:
                metrics.record("cancelled", perf_counter() - started, waited, model_time, size_in, size_out)
            raise
        finally:
            drain.leave()

    def refused(self, error: ApiError, started: float, mode: Mode = Mode.SYNC) -> None:
        """Count a request refused before the core ran (gate, body limit, unparsable body)."""
        metrics = self.stream_metrics if mode is Mode.STREAMING else self.sync_metrics
        if mode is Mode.STREAMING:
            metrics.outcome(error.code)
            metrics.duration.observe(perf_counter() - started)
        else:
            metrics.record(error.code, perf_counter() - started)

    # -- stream ---------------------------------------------------------------------------------------------------

    def stream(
        self, inv: Invocation, *, started: float | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[StreamChunk]]:
        """A streaming model call. Entering waits, within the time limit, for the model's FIRST event (so a model that
        never yields gets 504 at the deadline) and raises ApiError for anything that fails before it; the iterator
        yields every event's data in order and raises ModelError for a failure mid-stream (an `error` event or a lost
        connection); leaving early closes the model connection, which cancels the model's generator."""
        return self._stream(inv, perf_counter() if started is None else started)

    @asynccontextmanager
    async def _stream(self, inv: Invocation, started: float) -> AsyncIterator[AsyncIterator[StreamChunk]]:
        metrics = self.stream_metrics
        drain = self.state.drain
        admission = self.state.admission
        deadline, limit = self._deadline(inv, None)
        drain.enter()
        outcome = "cancelled"
        model_started = 0.0
        events: _Events | None = None
        try:
            if inv.return_pickled:
                raise InvalidRequest("return_pickled is not available for streaming")
            async with AsyncExitStack() as stack:
                try:
                    async with self.deadlines.at(deadline):
                        data, content_type, raw = await self._model_input(inv)
                        metrics.request_bytes.observe(len(data))
                        metrics.queue_wait.observe(await self._admit(patient=False))
                        stack.callback(admission.release)
                        model_started = perf_counter()
                        upstream = await stack.enter_async_context(
                            self.model.stream(
                                self.stream_path,
                                data,
                                content_type=content_type,
                                raw=raw,
                                headers=self._headers(inv),
                            )
                        )
                        if not 200 <= upstream.status < 300:
                            body = await _error_body(upstream)
                            raise model_failure(
                                upstream.status, body, fallback=f"the model answered HTTP {upstream.status}"
                            )
                        events = _Events(upstream, self.max_reply_bytes)
                        first = await events.next()  # a failure before the first event raises here, on enter
                except TimeoutError:
                    raise Timeout(
                        f"the model sent no event within the time limit of {limit:g} s (queue wait included)"
                    ) from None
                yield events.iterate(first)
                outcome = "model_error" if events.failed else "success"
        except ApiError as error:
            self._failed(error)
            outcome = error.code
            raise
        finally:
            drain.leave()
            metrics.outcome(outcome)
            if model_started:
                metrics.model_duration.observe(perf_counter() - model_started)
            if events is not None:
                metrics.response_bytes.observe(events.size)
            metrics.duration.observe(perf_counter() - started)


class _Events:
    """The model's stream as event data: SSE `data` per event, or each raw chunk of a non-SSE stream."""

    def __init__(self, upstream: ModelStream, max_event: int) -> None:
        self.sse = upstream.content_type.startswith("text/event-stream")
        self.chunks = aiter(upstream)
        #: The reply limit (`maxPayloadBytes`) holds per event: a stream is flushed event by event, so what the
        #: router holds at once is one event, never the whole stream (a raw stream's chunks are read in bounded
        #: pieces by the model client).
        self.parser = EventParser(max_event)
        self.max_event = max_event
        self.pending: list[bytes] = []
        self.failure: ApiError | None = None
        self.size = 0
        self.ended = False
        self.failed = False

    async def next(self) -> bytes | None:
        """The next event's data; None at the end; the model's failure after the events that came before it."""
        while True:
            if self.pending:
                return self.pending.pop(0)
            if self.failure is not None:
                raise self.failure
            if self.ended:
                return None
            chunk = await anext(self.chunks, None)
            if chunk is None:
                self.ended = True
                return None
            self.size += len(chunk)
            if not self.sse:
                return chunk
            try:
                parsed = self.parser.feed(chunk)
            except EventTooLarge as error:
                self.failure = ReplyTooLarge(f"{error}: the stream was ended", status_code=None, traceback=None)
                self.ended = True
                continue
            for event in parsed:
                if event.event == "error":
                    self.failure = model_failure(None, event.data, fallback="the model failed while streaming")
                    self.ended = True
                    break
                self.pending.append(event.data)

    async def iterate(self, first: bytes | None) -> AsyncIterator[StreamChunk]:
        if first is None:
            return
        yield StreamChunk(first)
        try:
            while (data := await self.next()) is not None:
                yield StreamChunk(data)
        except ApiError:
            self.failed = True
            raise


async def _error_body(upstream: ModelStream) -> bytes:
    """The (bounded) body of a non-2xx stream answer."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in upstream:
            parts.append(chunk)
            size += len(chunk)
            if size >= _MAX_ERROR_BODY:
                break
    except ModelError:
        pass
    return b"".join(parts)[:_MAX_ERROR_BODY]
