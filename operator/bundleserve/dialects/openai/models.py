"""Request bodies of the OpenAI dialect (pydantic at the boundary) and their parsing into one model call.

Every request field OpenAI defines falls in one of three groups (docs/dialects.md, "OpenAI", lists each):
- passed to the model as a keyword argument: the input (`messages` or `prompt`), `max_tokens` (always: the request's,
  else the endpoint's `spec.openai.maxTokens`), and, only when the request sets them, `temperature`, `top_p`,
  `stop`, `seed`, `presence_penalty`, `frequency_penalty`. A bundle whose streaming callable does not take one of
  them answers a 400 naming it (the runtime checks arguments before the call), so nothing is silently ignored by the
  model;
- accepted and ignored: accounting and routing hints that do not change the answer (`user`, `metadata`, `store`,
  `service_tier`, ...), and features switched off (`logprobs: false`, `tool_choice: "none"`, empty `tools`);
- refused with a 400 naming the parameter: anything that would change the answer and that this server cannot give
  (tools, logprobs, JSON modes, images, audio, `n` > 16, `best_of` > 1, `suffix`), and unknown fields, as OpenAI
  refuses them ("Unrecognized request argument supplied").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bundleserve.api.endpoint import OpenAISettings
from bundleserve.api.errors import InvalidRequest

#: OpenAI accepts up to four stop sequences.
MAX_STOP_SEQUENCES = 4
#: The most choices one request may ask for (`n`): each is its own model call, so this bounds one request's fan-out.
MAX_CHOICES = 16


def invalid(message: str, param: str | None) -> InvalidRequest:
    """The dialect's 400: OpenAI's `invalid_request_error` names the offending parameter in `param`."""
    return InvalidRequest(message, param=param)


class _Body(BaseModel):
    """Fields shared by both completion routes; unknown fields are refused by `parse_request`, not by pydantic, so
    the message can name them the way OpenAI does."""

    model_config = ConfigDict(extra="allow", strict=False)

    model: Annotated[str, Field(min_length=1, max_length=256)]
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    max_tokens: Annotated[int | None, Field(default=None, ge=1)] = None
    temperature: Annotated[float | None, Field(default=None, ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(default=None, ge=0, le=1)] = None
    n: Annotated[int | None, Field(default=None, ge=1, le=MAX_CHOICES)] = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float | None, Field(default=None, ge=-2, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(default=None, ge=-2, le=2)] = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class Message(BaseModel):
    """One chat message; fields a previous answer carries back as null (`refusal`, `tool_calls`, ...) are allowed."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatBody(_Body):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int | None, Field(default=None, ge=1)] = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    web_search_options: Any = None
    metadata: Any = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    verbosity: str | None = None


class CompletionBody(_Body):
    prompt: str | list[str]
    echo: bool | None = False
    suffix: str | None = None
    best_of: Annotated[int | None, Field(default=None, ge=1)] = None
    logprobs: int | None = None


_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant"})
#: Fields of an earlier answer a client may send back with a message, as long as they are empty.
_EMPTY_MESSAGE_FIELDS = ("tool_calls", "function_call", "audio", "refusal", "annotations")


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One parsed completion request: the keyword arguments of the bundle's streaming callable and how to answer."""

    model: str
    kwargs: dict[str, Any]
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    max_tokens: int
    echo: str | None = None  # completions with `echo`: the prompt, sent before the completion
    n: int = 1  # choices: each one model call with the same arguments

    def body(self) -> bytes:
        """The model's keyword arguments as the JSON body of the invocation."""
        return json.dumps(self.kwargs, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request parsed and checked on its own; `bind` checks it against the named endpoint's settings."""

    request: _Body
    kwargs: dict[str, Any]
    requested: int | None
    echo: str | None = None

    @property
    def model(self) -> str:
        return self.request.model

    def bind(self, settings: OpenAISettings) -> ModelCall:
        return _call(self.request, self.kwargs, self.requested, settings, self.echo)


def parse_chat(body: bytes) -> Parsed:
    """A chat completion request (InvalidRequest naming the parameter when it is malformed or unsupported)."""
    chat = _parse(body, ChatBody)
    _refuse_unsupported_chat(chat)
    messages = [_message(index, message) for index, message in enumerate(chat.messages)]
    both = chat.max_tokens is not None and chat.max_completion_tokens is not None
    if both and chat.max_tokens != chat.max_completion_tokens:
        raise invalid("max_tokens and max_completion_tokens differ: set one of them", "max_completion_tokens")
    requested = chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens
    return Parsed(chat, {"messages": messages}, requested)


def parse_completion(body: bytes) -> Parsed:
    """A (legacy) text completion request: one prompt, as a string or a list of one string."""
    completion = _parse(body, CompletionBody)
    prompt = completion.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise invalid("prompt must be one string (or a list of one string): batches are not supported", "prompt")
        prompt = prompt[0]
    if completion.suffix:
        raise invalid("suffix is not supported", "suffix")
    if completion.best_of not in (None, 1):
        raise invalid("best_of must be 1: this server generates one completion per request", "best_of")
    if completion.logprobs is not None:
        raise invalid("logprobs are not supported", "logprobs")
    return Parsed(completion, {"prompt": prompt}, completion.max_tokens, prompt if completion.echo else None)


_B = TypeVar("_B", bound=_Body)


def _parse(body: bytes, model: type[_B]) -> _B:
    """The body validated straight from its JSON bytes (one pass, no intermediate dict)."""
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise invalid(f"We could not parse the JSON body of your request: {first['msg']}", None) from None
        location = first["loc"]
        if first["type"] == "model_type" or not location:
            raise invalid("the request body must be a JSON object", None) from None
        param = ".".join(str(part) for part in location)
        top = str(location[0])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            raise invalid(f"Missing required parameter: '{top}'.", top) from None
        raise invalid(f"Invalid value for '{param}': {message}.", param) from None
    unknown = sorted(parsed.model_extra or {})
    if unknown:
        raise invalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    return parsed


def _refuse_unsupported_chat(chat: ChatBody) -> None:
    """The chat features that would change the answer and that a bundle cannot give (see the module docstring)."""
    if chat.tools or chat.functions:
        raise invalid("tools and functions are not supported by this server", "tools" if chat.tools else "functions")
    if chat.tool_choice not in (None, "none", "auto") or chat.function_call not in (None, "none", "auto"):
        raise invalid("tool_choice is not supported by this server (no tools)", "tool_choice")
    if chat.logprobs or chat.top_logprobs:
        raise invalid("logprobs are not supported", "logprobs" if chat.logprobs else "top_logprobs")
    if chat.response_format is not None and chat.response_format.get("type") != "text":
        raise invalid("response_format: only {'type': 'text'} is supported", "response_format")
    if chat.modalities is not None and chat.modalities != ["text"]:
        raise invalid("modalities: only ['text'] is supported", "modalities")
    for name in ("audio", "prediction", "reasoning_effort", "web_search_options"):
        if getattr(chat, name) is not None:
            raise invalid(f"{name} is not supported by this server", name)


def _message(index: int, message: Message) -> dict[str, Any]:
    """A message as the model receives it: `role`, `content` as one string, and `name` when given."""
    where = f"messages[{index}]"
    if message.role not in _CHAT_ROLES:
        raise invalid(
            f"{where}.role: {message.role!r} is not supported (system, developer, user or assistant)", f"{where}.role"
        )
    extra = message.model_extra or {}
    for field in _EMPTY_MESSAGE_FIELDS:
        if extra.get(field):
            raise invalid(f"{where}.{field} is not supported by this server", f"{where}.{field}")
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise invalid(f"{where}.content: only text parts are supported, not {part.type!r}", f"{where}.content")
            texts.append(part.text)
        content = "".join(texts)
    if content is None:
        raise invalid(f"{where}.content is required", f"{where}.content")
    document: dict[str, Any] = {"role": message.role, "content": content}
    if message.name is not None:
        document["name"] = message.name
    return document


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    sequences = [stop] if isinstance(stop, str) else list(stop or [])
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise invalid(f"stop: at most {MAX_STOP_SEQUENCES} sequences", "stop")
    if any(not sequence for sequence in sequences):
        raise invalid("stop: a stop sequence must not be empty", "stop")
    return tuple(sequences)


def _call(
    request: _Body, kwargs: dict[str, Any], requested: int | None, settings: OpenAISettings, echo: str | None
) -> ModelCall:
    """The shared sampling parameters and answer options, checked against the endpoint's settings."""
    if request.logit_bias:
        raise invalid("logit_bias is not supported", "logit_bias")
    stream = bool(request.stream)
    options = request.stream_options
    if options is not None and not stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    include_usage = False
    if options is not None:
        unknown = sorted(set(options) - {"include_usage"})
        if unknown:
            raise invalid(f"stream_options: unknown option {unknown[0]!r}", "stream_options")
        include_usage = bool(options.get("include_usage"))
    limit = settings.max_tokens
    if requested is not None and requested > limit:
        raise invalid(
            f"max_tokens is too large: {requested}. This model supports at most {limit} completion tokens.",
            "max_tokens",
        )
    max_tokens = limit if requested is None else requested
    stop = _stop(request.stop)
    arguments = {**kwargs, "max_tokens": max_tokens}
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value is not None:
            arguments[name] = value
    if stop:
        arguments["stop"] = list(stop)
    return ModelCall(
        model=request.model,
        kwargs=arguments,
        stream=stream,
        include_usage=include_usage,
        stop=stop,
        max_tokens=max_tokens,
        echo=echo,
        n=request.n or 1,
    )
