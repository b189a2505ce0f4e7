"""The aiohttp adapters of the OpenAI dialect: parse -> a `CallBackend` (the core) -> render.

  POST /openai/v1/chat/completions   chat.completion, or a stream of chat.completion.chunk
  POST /openai/v1/completions        text_completion, or a stream of text_completion chunks
  GET  /openai/v1/models             the endpoints that declare spec.openai
  GET  /openai/v1/models/{model}     one of them (404 model_not_found otherwise)

`model` in the body names the Endpoint. Where the models are, and what runs a call, is a `ModelDirectory`: on a
router its own endpoint and its `InvocationCore` (`OwnEndpoint`); on the gateway every registered endpoint that
declares the capability, each with a core that hands the parsed invocation to its router (`gateway.openai`). The
routes themselves are the same code in both places and have one role: parse, call, render.

Order of checks: the API key (401) before the body is read, the body limit (413), the request (400), the model
(404; on a router also the gate's mode, draining and readiness: 503), then the model's own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from bundleserve.api.endpoint import Endpoint, Mode, OpenAISettings
from bundleserve.api.errors import ApiError, ModelError
from bundleserve.api.invocation import Invocation
from bundleserve.dialects.base import CallBackend, InvocationBackend, TaskBackend
from bundleserve.dialects.openai import render
from bundleserve.dialects.openai.generation import Generation, Usage, decode_piece
from bundleserve.dialects.openai.models import ModelCall, Parsed, parse_chat, parse_completion

log = logging.getLogger(__name__)

BASE = "/openai/v1"
_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Target:
    """The endpoint a request's `model` names, as the dialect needs it."""

    name: str
    settings: OpenAISettings
    core: CallBackend
    #: The most text a whole (non-streamed) answer may gather (the endpoint's maxPayloadBytes): memory stays bounded.
    max_reply_bytes: int


class ModelDirectory(Protocol):
    """Where the dialect's models are (a router: its own endpoint; the gateway: every endpoint declaring the API)."""

    def authorize(self, authorization: str | None) -> None:
        """The API key (Unauthorized), before anything is read."""
        ...

    async def read_body(self, request: web.Request) -> bytes:
        """The body under the front's limit (PayloadTooLarge)."""
        ...

    def models(self) -> list[render.ModelCard]:
        """Every model this front serves."""
        ...

    def target(self, model: str, authorization: str | None, body_bytes: int) -> Target:
        """The endpoint `model` names, gated for a streaming call: NotFound (`render.model_not_found`) for a name
        that is not an endpoint declaring spec.openai; the gate's other refusals; PayloadTooLarge for a body over
        that endpoint's limit."""
        ...


def model_card(endpoint: Endpoint) -> render.ModelCard | None:
    """The model an Endpoint is, when it declares the OpenAI API (`created`: its creation time when known)."""
    settings = endpoint.spec.openai
    if settings is None:
        return None
    created = 0
    stamp = endpoint.metadata.creation_timestamp
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            created = int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return render.ModelCard(id=endpoint.name, owned_by=settings.owned_by, created=created)


class OwnEndpoint:
    """A router's directory: its one endpoint, gated and called by its invocation core."""

    def __init__(self, core: InvocationBackend, endpoint: Endpoint) -> None:
        self.core = core
        self.endpoint = endpoint
        self.card = model_card(endpoint)

    def authorize(self, authorization: str | None) -> None:
        self.core.authorize(authorization)

    async def read_body(self, request: web.Request) -> bytes:
        return await self.core.read_body(request)

    def models(self) -> list[render.ModelCard]:
        return [] if self.card is None else [self.card]

    def target(self, model: str, authorization: str | None, body_bytes: int) -> Target:
        settings = self.endpoint.spec.openai
        if settings is None or model != self.endpoint.name:
            raise render.model_not_found(model)
        self.core.gate(model, authorization, Mode.STREAMING)
        limit = self.endpoint.spec.invocation.max_payload_bytes
        return Target(model, settings, self.core, limit)


def _renders_errors(handler: Handler) -> Handler:
    """Every error of a handler in OpenAI's shape (the router's middleware would render the native one)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return _error_response(error)
        except ConnectionResetError:  # the client went away: nothing to answer, not a bug (aiohttp ignores it)
            raise
        except Exception:  # a bug of ours: logged, answered in the dialect's shape
            log.exception("unexpected error on %s %s", request.method, request.path)
            return _error_response(ApiError("internal error"))

    return wrapped


def _error_response(error: ApiError) -> web.Response:
    response = web.Response(status=render.error_kind(error).status, body=render.error_body(error), content_type=_JSON)
    for name, value in error.headers.items():
        response.headers[name] = value
    if response.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


class OpenAIRoutes:
    """The dialect's routes over one `ModelDirectory`."""

    def __init__(self, directory: ModelDirectory) -> None:
        self.directory = directory

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{BASE}/chat/completions", _renders_errors(self.chat_completions)),
            web.post(f"{BASE}/completions", _renders_errors(self.completions)),
            web.get(f"{BASE}/models", _renders_errors(self.list_models)),
            web.get(f"{BASE}/models/{{model}}", _renders_errors(self.retrieve_model)),
        ]

    async def list_models(self, request: web.Request) -> web.Response:
        self.directory.authorize(request.headers.get("Authorization"))
        return web.Response(body=render.model_list(self.directory.models()), content_type=_JSON)

    async def retrieve_model(self, request: web.Request) -> web.Response:
        self.directory.authorize(request.headers.get("Authorization"))
        name = request.match_info["model"]
        for card in self.directory.models():
            if card.id == name:
                return web.Response(body=render.model_card(card), content_type=_JSON)
        raise render.model_not_found(name)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, parse_chat, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, parse_completion, chat=False)

    async def _complete(
        self, request: web.Request, parse: Callable[[bytes], Parsed], *, chat: bool
    ) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        self.directory.authorize(authorization)
        body = await self.directory.read_body(request)
        parsed = parse(body)
        target = self.directory.target(parsed.model, authorization, len(body))
        call = parsed.bind(target.settings)
        invocation = Invocation(body=call.body())
        ident, created = render.completion_id(chat), int(time.time())
        if call.stream:
            frames = render.ChunkFrames(ident, created, call.model, chat=chat, include_usage=call.include_usage)
            if call.n == 1:
                return await _stream(request, target, invocation, call, frames)
            return await _stream_choices(request, target, invocation, call, frames)
        results = await _collect_choices(target, invocation, call)
        choices = [render.Choice(text, generation.finish_reason) for generation, text in results]
        usage = Usage.of_choices([generation.final_usage() for generation, _ in results])
        build = render.chat_completion if chat else render.text_completion
        return web.Response(body=build(ident, created, call.model, choices, usage), content_type=_JSON)


async def _collect(target: Target, invocation: Invocation, call: ModelCall) -> tuple[Generation, str]:
    """A whole answer: the model's pieces gathered (up to the stop sequence, within the reply limit)."""
    generation = Generation(call.stop)
    parts = [call.echo] if call.echo else []
    async with target.core.stream(invocation) as chunks:
        async for chunk in chunks:
            text = generation.feed(decode_piece(chunk.data))
            if text:
                parts.append(text)
            if generation.size > target.max_reply_bytes:
                raise ModelError(
                    f"the model's answer is larger than the limit of {target.max_reply_bytes} bytes",
                    status_code=None,
                    traceback=None,
                )
            if generation.done:
                break  # a stop sequence: leaving the stream closes the model's generator
    parts.append(generation.finish())
    return generation, "".join(parts)


async def _collect_choices(target: Target, invocation: Invocation, call: ModelCall) -> list[tuple[Generation, str]]:
    """Every choice of a whole answer: one model call each, concurrently; the first failure fails the request and
    closes the other calls."""
    if call.n == 1:
        return [await _collect(target, invocation, call)]
    tasks = [asyncio.create_task(_collect(target, invocation, call)) for _ in range(call.n)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await _cancel(tasks)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


#: One message of a choice's producer to the stream writer: (index, bytes to send, then: its Generation when the
#: choice ended, its ApiError when it failed, None while it goes on).
_Item = tuple[int, bytes, Generation | ApiError | None]


async def _stream_choices(
    request: web.Request, target: Target, invocation: Invocation, call: ModelCall, frames: render.ChunkFrames
) -> web.StreamResponse:
    """A stream of `n` > 1 choices: each its own model call, run concurrently, their chunks interleaved as they come
    (each carries its choice's index; a bounded queue makes a slow client slow the models down). A failure before
    anything was sent is the HTTP error; after it, the error event ends the stream and the other calls are closed."""
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=4 * call.n)

    async def produce(index: int) -> None:
        generation = Generation(call.stop)
        try:
            async with target.core.stream(invocation) as chunks:
                opening = frames.start(index) + (frames.piece(call.echo, index) if call.echo else b"")
                await queue.put((index, opening, None))
                async for chunk in chunks:
                    text = generation.feed(decode_piece(chunk.data))
                    if text:
                        await queue.put((index, frames.piece(text, index), None))
                    if generation.done:
                        break
            rest = generation.finish()
            closing = (frames.piece(rest, index) if rest else b"") + frames.finish(generation.finish_reason, index)
            await queue.put((index, closing, generation))
        except ApiError as error:
            await queue.put((index, b"", error))
        except Exception:  # a bug of ours: the writer must still hear of it
            log.exception("choice %d of a streamed completion failed", index)
            await queue.put((index, b"", ApiError("internal error")))

    tasks = [asyncio.create_task(produce(index)) for index in range(call.n)]
    response: web.StreamResponse | None = None
    ended: list[Generation] = []
    try:
        while len(ended) < call.n:
            _, data, outcome = await queue.get()
            if isinstance(outcome, ApiError):
                if response is None:
                    raise outcome
                await response.write(render.error_event(outcome))
                await response.write_eof()
                return response
            if response is None:
                response = web.StreamResponse(headers=_SSE_HEADERS)
                await response.prepare(request)
            if data:
                await response.write(data)
            if outcome is not None:
                ended.append(outcome)
        if response is None:  # cannot happen: each choice sends its opening before it ends
            raise ApiError("no choice of the stream produced anything")
        closing = frames.usage(Usage.of_choices([g.final_usage() for g in ended])) if call.include_usage else b""
        await response.write(closing + render.DONE)
        await response.write_eof()
        return response
    except ConnectionResetError:
        return _client_gone(response)
    finally:
        await _cancel(tasks)


async def _stream(
    request: web.Request, target: Target, invocation: Invocation, call: ModelCall, frames: render.ChunkFrames
) -> web.StreamResponse:
    """The chunk stream. A failure before the model's first piece is an HTTP error (raised on entering the core's
    stream); after it, one `data: {"error": ...}` event ends the stream without `[DONE]`. A client that goes away
    ends it quietly (leaving the core's stream closes the model's generator)."""
    generation = Generation(call.stop)
    response: web.StreamResponse | None = None
    try:
        try:
            async with target.core.stream(invocation) as chunks:
                response = web.StreamResponse(headers=_SSE_HEADERS)
                await response.prepare(request)
                # The role chunk goes out with the first piece (one write): it is sent once the model's first
                # event is here either way (the core's stream is entered then).
                pending = frames.start() + (frames.piece(call.echo) if call.echo else b"")
                async for chunk in chunks:
                    text = generation.feed(decode_piece(chunk.data))
                    if text or pending:
                        await response.write(pending + frames.piece(text) if text else pending)
                        pending = b""
                    if generation.done:
                        break
        except ApiError as error:
            if response is None:
                raise
            await response.write(render.error_event(error))
            await response.write_eof()
            return response
        rest = generation.finish()
        closing = pending + (frames.piece(rest) if rest else b"") + frames.finish(generation.finish_reason)
        if call.include_usage:
            closing += frames.usage(generation.final_usage())
        await response.write(closing + render.DONE)
        await response.write_eof()
        return response
    except ConnectionResetError:
        return _client_gone(response)


def _client_gone(response: web.StreamResponse | None) -> web.StreamResponse:
    """A write to a client that disconnected: the prepared response goes back to aiohttp, which sees the closed
    transport and only logs the access (nothing to answer, and not a bug of ours)."""
    if response is None:
        raise ConnectionResetError("the client went away before the stream started")
    log.debug("the client of a streamed completion went away")
    return response


def add_routes(app: web.Application, directory: ModelDirectory) -> None:
    """Mount the OpenAI routes over `directory` (a router's `OwnEndpoint`, or the gateway's directory)."""
    app.router.add_routes(OpenAIRoutes(directory).routes())


def mount(app: web.Application, core: InvocationBackend, tasks: TaskBackend | None, endpoint: Endpoint) -> None:
    """A router's mount (its `DIALECTS` entry binds `endpoint`): its own endpoint, called through its core."""
    add_routes(app, OwnEndpoint(core, endpoint))
