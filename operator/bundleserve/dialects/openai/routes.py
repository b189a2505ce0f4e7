"""The routes of the OpenAI dialect: parse -> a `CallBackend` (the core) -> render.

  POST /openai/v1/chat/completions   chat.completion, or a stream of chat.completion.chunk
  POST /openai/v1/completions        text_completion, or a stream of text_completion chunks
  GET  /openai/v1/models             the endpoints that declare spec.openai
  GET  /openai/v1/models/{model}     one of them (404 model_not_found otherwise)

`model` in the body names the Endpoint. Where the models are, and what runs a call, is a `ModelDirectory`: on a
router its own endpoint and its `InvocationCore` (`OwnEndpoint`); on the gateway every registered endpoint that
declares the capability, each with a core that hands the parsed invocation to its router (`gateway.openai`). The
routes themselves are the same code in both places and have one role: parse, call, render.

The two completions are written once against the transport-neutral seam (`edge.exchange`): their head phase
(`OpenAIRoutes.chat_completions`, `completions`) checks the API key, their body phase (`_Completion.answer`) does
the rest and renders a whole answer or a stream of framed SSE events (`Reply.chunks`). aiohttp serves them
(`dialects.adapter`), and so do the fast edges of the router and the gateway (`router.fastpath`, `gateway.fastpath`),
which take them from the server's `FastRoutes`. So do the model list and one model's card, answered from the head
alone (`OpenAIRoutes.list_models`, `retrieve_model`): a client that lists models on the connection it completes on
keeps it on the fast edge.

Order of checks: the API key (401) before the body is read, the body limit (413: the front's, then the named
endpoint's), the request (400), the model (404; on a router also the gate's mode, draining and readiness: 503), then
the model's own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from bundleserve.api.endpoint import Endpoint, Mode, OpenAISettings
from bundleserve.api.errors import ApiError, ModelError
from bundleserve.api.invocation import Invocation, StreamChunk
from bundleserve.dialects import adapter
from bundleserve.dialects.base import CallBackend, InvocationBackend, TaskBackend
from bundleserve.dialects.openai import render
from bundleserve.dialects.openai.generation import Generation, Usage, decode_piece
from bundleserve.dialects.openai.models import ModelCall, Parsed, parse_chat, parse_completion
from bundleserve.edge.exchange import Head, HeadPhase, Prepared, Reply

log = logging.getLogger(__name__)

BASE = "/openai/v1"
CHAT_PATH = f"{BASE}/chat/completions"
COMPLETIONS_PATH = f"{BASE}/completions"
_JSON = "application/json"
_JSON_HEADERS = {"Content-Type": _JSON}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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

    @property
    def max_body_bytes(self) -> int:
        """The front's body limit (what `read_body` enforces), for a fast edge that reads the body itself."""
        ...

    async def read_body(self, request: web.Request) -> bytes:
        """aiohttp's way to the body, under the front's limit (PayloadTooLarge)."""
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

    @property
    def max_body_bytes(self) -> int:
        return self.core.max_body_bytes

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


def _error_reply(error: ApiError) -> Reply:
    """`error` in OpenAI's shape (`render.ERROR_TABLE`); a 401 names the scheme the key goes in."""
    status = render.error_kind(error).status
    headers = {**error.headers, "Content-Type": _JSON}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Reply(status, headers, render.error_body(error))


class OpenAIRoutes:
    """The dialect's routes over one `ModelDirectory`, all seam operations (`edge.exchange`, served by aiohttp and
    the fast edges alike)."""

    def __init__(self, directory: ModelDirectory) -> None:
        self.directory = directory

    def routes(self) -> list[web.RouteDef]:
        return [adapter.route(method, path, operation) for method, path, operation in operations(self)]

    def list_models(self, head: Head) -> Reply:
        """`GET /openai/v1/models`, answered from the head: a client may list the models on the connection it then
        completes on, which must not leave the fast edge."""
        return self._lookup(head, lambda: render.model_list(self.directory.models()))

    def retrieve_model(self, head: Head) -> Reply:
        """`GET /openai/v1/models/{model}`: one model, or 404 `model_not_found`; answered from the head."""
        return self._lookup(head, lambda: render.model_card(self._card(head.params["model"])))

    def _card(self, name: str) -> render.ModelCard:
        for card in self.directory.models():
            if card.id == name:
                return card
        raise render.model_not_found(name)

    def _lookup(self, head: Head, document: Callable[[], bytes]) -> Reply:
        """The API key, then the JSON `document`; every error in OpenAI's shape (a bug of ours logged, a 500)."""
        try:
            self.directory.authorize(head.headers.get("Authorization"))
            return Reply(200, _JSON_HEADERS, document())
        except ApiError as error:
            return _error_reply(error)
        except Exception:
            log.exception("unexpected error on the OpenAI model list")
            return _error_reply(ApiError("internal error"))

    def chat_completions(self, head: Head) -> Prepared | Reply:
        """`POST /openai/v1/chat/completions`' head phase."""
        return self._prepare(head, parse_chat, chat=True)

    def completions(self, head: Head) -> Prepared | Reply:
        """`POST /openai/v1/completions`' head phase."""
        return self._prepare(head, parse_completion, chat=False)

    def _prepare(self, head: Head, parse: Callable[[bytes], Parsed], *, chat: bool) -> Prepared | Reply:
        """All the head tells: the API key (401, before the body is read). The model is named in the body."""
        authorization = head.headers.get("Authorization")
        try:
            self.directory.authorize(authorization)
        except ApiError as error:
            return _error_reply(error)
        return _Completion(self.directory, authorization, parse, chat=chat)


class _Completion:
    """A completion request past its head phase: the body phase (`edge.exchange.Prepared`)."""

    __slots__ = ("authorization", "chat", "directory", "parse")

    def __init__(
        self, directory: ModelDirectory, authorization: str | None, parse: Callable[[bytes], Parsed], *, chat: bool
    ) -> None:
        self.directory = directory
        self.authorization = authorization
        self.parse = parse
        self.chat = chat

    @property
    def max_body_bytes(self) -> int:
        return self.directory.max_body_bytes

    def refuse(self, error: ApiError) -> Reply:
        return _error_reply(error)

    async def read_body(self, request: web.Request) -> bytes:
        return await self.directory.read_body(request)

    async def answer(self, body: bytes) -> Reply:
        """Parse (400), the model (404; the gate's refusals; 413 over that endpoint's limit), the call, rendered."""
        try:
            return await self._answer(body)
        except ApiError as error:
            return _error_reply(error)
        except Exception:  # a bug of ours: logged, answered in the dialect's shape
            log.exception("unexpected error on an OpenAI completion")
            return _error_reply(ApiError("internal error"))

    async def _answer(self, body: bytes) -> Reply:
        parsed = self.parse(body)
        target = self.directory.target(parsed.model, self.authorization, len(body))
        del body
        call = parsed.bind(target.settings)
        invocation = Invocation(body=call.body())
        chat = self.chat
        ident, created = render.completion_id(chat), int(time.time())
        if call.stream:
            frames = render.ChunkFrames(ident, created, call.model, chat=chat, include_usage=call.include_usage)
            if call.n == 1:
                return await _stream(target, invocation, call, frames)
            return await _stream_choices(target, invocation, call, frames)
        results = await _collect_choices(target, invocation, call)
        choices = [render.Choice(text, generation.finish_reason) for generation, text in results]
        usage = Usage.of_choices([generation.final_usage() for generation, _ in results])
        build = render.chat_completion if chat else render.text_completion
        return Reply(200, _JSON_HEADERS, build(ident, created, call.model, choices, usage))


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


async def _stream(target: Target, invocation: Invocation, call: ModelCall, frames: render.ChunkFrames) -> Reply:
    """The chunk stream. A failure before the model's first piece is an HTTP error (raised on entering the core's
    stream, here); after it, one `data: {"error": ...}` event ends the stream without `[DONE]`. The transport ends
    the call (`Reply.close`) when the client goes away; the stream ends it itself at its end or a stop sequence."""
    call_stack = contextlib.AsyncExitStack()
    chunks = await call_stack.enter_async_context(target.core.stream(invocation))
    events = _events(chunks, call_stack.aclose, call, frames)
    return Reply(200, _SSE_HEADERS, chunks=events, close=call_stack.aclose)


async def _events(
    chunks: AsyncIterator[StreamChunk],
    end_call: Callable[[], Awaitable[None]],
    call: ModelCall,
    frames: render.ChunkFrames,
) -> AsyncIterator[bytes]:
    """The SSE events of one choice, each already framed; the model call is ended (`end_call`, idempotent) before
    the last event, as soon as the model is done, failed or hit a stop sequence."""
    generation = Generation(call.stop)
    # The role chunk goes out with the first piece (one write): the model's first event is here either way (the
    # core's stream was entered).
    pending = frames.start() + (frames.piece(call.echo) if call.echo else b"")
    try:
        async for chunk in chunks:
            text = generation.feed(decode_piece(chunk.data))
            if text or pending:
                yield pending + frames.piece(text) if text else pending
                pending = b""
            if generation.done:
                break  # a stop sequence: ending the call below closes the model's generator
    except ApiError as error:
        await end_call()
        yield render.error_event(error)
        return
    except Exception:  # a bug of ours: the client hears of it in the stream's shape
        log.exception("a streamed completion failed")
        await end_call()
        yield render.error_event(ApiError("internal error"))
        return
    await end_call()
    rest = generation.finish()
    closing = pending + (frames.piece(rest) if rest else b"") + frames.finish(generation.finish_reason)
    if call.include_usage:
        closing += frames.usage(generation.final_usage())
    yield closing + render.DONE


#: One message of a choice's producer to the stream writer: (index, bytes to send, then: its Generation when the
#: choice ended, its ApiError when it failed, None while it goes on).
_Item = tuple[int, bytes, Generation | ApiError | None]


async def _stream_choices(target: Target, invocation: Invocation, call: ModelCall, frames: render.ChunkFrames) -> Reply:
    """A stream of `n` > 1 choices: each its own model call, run concurrently, their chunks interleaved as they come
    (each carries its choice's index; a bounded queue makes a slow client slow the models down). A failure before
    anything was sent is the HTTP error (raised here); after it, the error event ends the stream and the other calls
    are closed (`Reply.close` cancels them all)."""
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
    try:
        first = await queue.get()  # each choice sends its opening before it ends, so this decides: HTTP error or 200
        failure = first[2]
        if isinstance(failure, ApiError):
            raise failure
    except BaseException:
        await _cancel(tasks)
        raise
    return Reply(
        200, _SSE_HEADERS, chunks=_choice_events(queue, first, call, frames), close=functools.partial(_cancel, tasks)
    )


async def _choice_events(
    queue: asyncio.Queue[_Item], first: _Item, call: ModelCall, frames: render.ChunkFrames
) -> AsyncIterator[bytes]:
    """The interleaved events of `n` choices from their producers' queue, from its `first` item on."""
    ended: list[Generation] = []
    item = first
    while True:
        _, data, outcome = item
        if isinstance(outcome, ApiError):
            yield render.error_event(outcome)
            return
        if data:
            yield data
        if outcome is not None:
            ended.append(outcome)
            if len(ended) == call.n:
                break
        item = await queue.get()
    closing = frames.usage(Usage.of_choices([g.final_usage() for g in ended])) if call.include_usage else b""
    yield closing + render.DONE


def operations(routes: OpenAIRoutes) -> list[tuple[str, str, HeadPhase]]:
    """Every operation by method and path (the completions, the model list and one model): served by aiohttp and by
    a server's fast edge alike."""
    return [
        ("POST", CHAT_PATH, routes.chat_completions),
        ("POST", COMPLETIONS_PATH, routes.completions),
        ("GET", f"{BASE}/models", routes.list_models),
        ("GET", f"{BASE}/models/{{model}}", routes.retrieve_model),
    ]


def add_routes(app: web.Application, directory: ModelDirectory) -> None:
    """Mount the OpenAI routes over `directory` (a router's `OwnEndpoint`, or the gateway's directory), and the
    completions on the server's fast edge when it has one (`dialects.adapter.FAST_ROUTES`)."""
    openai = OpenAIRoutes(directory)
    app.router.add_routes(openai.routes())
    fast = adapter.fast_routes(app)
    if fast is not None:
        for method, path, operation in operations(openai):
            fast.add(method, path, operation)


def mount(app: web.Application, core: InvocationBackend, tasks: TaskBackend | None, endpoint: Endpoint) -> None:
    """A router's mount (its `DIALECTS` entry binds `endpoint`): its own endpoint, called through its core."""
    add_routes(app, OwnEndpoint(core, endpoint))
