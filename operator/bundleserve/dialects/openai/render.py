"""Pure rendering of the OpenAI dialect: completion objects, stream chunks, the model list and errors.

Objects follow OpenAI's wire format: `chat.completion`, `chat.completion.chunk`, `text_completion` (also its stream
chunks), `list` of `model`. A stream is `data: <chunk>` events ended by `data: [DONE]`; with
`stream_options.include_usage` every chunk carries `"usage": null` and one last chunk with no choices carries the
usage. The constant parts of a stream chunk are encoded once per request (`ChunkFrames`); a piece of text costs one
`json.dumps` of the text.

Errors are `{"error": {"message", "type", "param", "code"}}` with the statuses of one table (`ERROR_TABLE`), looked
up along the error's class hierarchy (the causes are the core's `ApiError` classes).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bundleserve.api.errors import (
    ApiError,
    InvalidRequest,
    ModelError,
    ModeNotServed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    Timeout,
    Unauthorized,
    Unavailable,
)
from bundleserve.dialects.openai.generation import Usage

DONE = b"data: [DONE]\n\n"
CHAT_OBJECT = "chat.completion"
CHAT_CHUNK_OBJECT = "chat.completion.chunk"
TEXT_OBJECT = "text_completion"


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def completion_id(chat: bool) -> str:
    """`chatcmpl-...` or `cmpl-...`, as OpenAI prefixes them."""
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)


# -- errors ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAIError:
    """How one error class looks to an OpenAI client: status, `type` and `code`."""

    status: int
    type: str
    code: str | None


#: THE mapping of the error hierarchy to OpenAI's errors. The openai client picks its exception class by status
#: (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413/424... APIStatusError, 429 RateLimitError,
#: >= 500 InternalServerError) and retries 408, 429 and >= 500 by itself.
ERROR_TABLE: Mapping[type[ApiError], OpenAIError] = {
    InvalidRequest: OpenAIError(400, "invalid_request_error", None),
    ModeNotServed: OpenAIError(400, "invalid_request_error", "mode_not_served"),
    Unauthorized: OpenAIError(401, "invalid_request_error", "invalid_api_key"),
    NotFound: OpenAIError(404, "invalid_request_error", "model_not_found"),
    PayloadTooLarge: OpenAIError(413, "invalid_request_error", "payload_too_large"),
    RequestTimeout: OpenAIError(408, "invalid_request_error", "request_timeout"),
    Overloaded: OpenAIError(429, "requests", "rate_limit_exceeded"),
    ModelError: OpenAIError(500, "server_error", "model_error"),
    Unavailable: OpenAIError(503, "server_error", "service_unavailable"),
    Timeout: OpenAIError(504, "server_error", "timeout"),
}
_INTERNAL = OpenAIError(500, "server_error", None)


def error_kind(error: ApiError) -> OpenAIError:
    for cls in type(error).__mro__:
        kind = ERROR_TABLE.get(cls)
        if kind is not None:
            return kind
    return _INTERNAL


def error_document(error: ApiError) -> dict[str, Any]:
    kind = error_kind(error)
    param = error.details.get("param")
    return {"error": {"message": error.message, "type": kind.type, "param": param, "code": kind.code}}


def error_body(error: ApiError) -> bytes:
    return _dumps(error_document(error))


def error_event(error: ApiError) -> bytes:
    """A failure after the stream started: one `data: {"error": ...}` event (the openai client raises APIError)."""
    return b"data: " + error_body(error) + b"\n\n"


def model_not_found(model: str) -> NotFound:
    return NotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")


# -- models ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelCard:
    """One model of `GET /openai/v1/models`: an Endpoint that declares `spec.openai`."""

    id: str
    owned_by: str
    created: int = 0

    def document(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


def model_list(cards: list[ModelCard]) -> bytes:
    return _dumps({"object": "list", "data": [card.document() for card in sorted(cards, key=lambda c: c.id)]})


def model_card(card: ModelCard) -> bytes:
    return _dumps(card.document())


# -- whole answers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated choice of a whole answer."""

    text: str
    finish_reason: str


def chat_completion(ident: str, created: int, model: str, choices: list[Choice], usage: Usage) -> bytes:
    return _dumps(
        {
            "id": ident,
            "object": CHAT_OBJECT,
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": choice.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": choice.finish_reason,
                }
                for index, choice in enumerate(choices)
            ],
            "usage": usage.document(),
        }
    )


def text_completion(ident: str, created: int, model: str, choices: list[Choice], usage: Usage) -> bytes:
    return _dumps(
        {
            "id": ident,
            "object": TEXT_OBJECT,
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {"text": choice.text, "index": index, "logprobs": None, "finish_reason": choice.finish_reason}
                for index, choice in enumerate(choices)
            ],
            "usage": usage.document(),
        }
    )


# -- streams -----------------------------------------------------------------------------------------------------


_START = b',"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'


class ChunkFrames:
    """The SSE events of one streamed completion, with the per-request constant parts encoded once."""

    __slots__ = ("_head", "_include_usage", "_piece_heads", "_piece_tail", "chat")

    def __init__(self, ident: str, created: int, model: str, *, chat: bool, include_usage: bool) -> None:
        self.chat = chat
        self._include_usage = include_usage
        obj = CHAT_CHUNK_OBJECT if chat else TEXT_OBJECT
        self._head = (
            (b'data: {"id":' + _dumps(ident) + b',"object":"' + obj.encode() + b'","created":' + str(created).encode())
            + b',"model":'
            + _dumps(model)
            + b',"system_fingerprint":null,"choices":'
        )
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        close = b'},"logprobs":null,"finish_reason":null}]' if chat else b',"logprobs":null,"finish_reason":null}]'
        self._piece_tail = close + tail
        self._piece_heads: dict[int, bytes] = {}

    def _piece_head(self, index: int) -> bytes:
        """The bytes before a piece's text for choice `index` (built once per choice)."""
        head = self._piece_heads.get(index)
        if head is None:
            opening = b',"delta":{"content":' if self.chat else b',"text":'
            head = self._piece_heads[index] = self._head + b'[{"index":' + str(index).encode() + opening
        return head

    def _event(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        tail = b"}\n\n"
        if usage is not None:
            tail = b',"usage":' + _dumps(usage.document()) + tail
        elif self._include_usage:
            tail = b',"usage":null' + tail
        return self._head + _dumps(choices) + tail

    def _choice_event(self, index: int, choice: bytes) -> bytes:
        """One chunk of choice `index`; `choice` is the rest of the choice object after its index (pre-encoded)."""
        tail = b',"usage":null}\n\n' if self._include_usage else b"}\n\n"
        return self._head + b'[{"index":' + str(index).encode() + choice + b"]" + tail

    def start(self, index: int = 0) -> bytes:
        """A chat choice's first chunk: the assistant's role, no content yet (as OpenAI opens a stream)."""
        if not self.chat:
            return b""
        return self._choice_event(index, _START)

    def piece(self, text: str, index: int = 0) -> bytes:
        return self._piece_head(index) + _dumps(text) + self._piece_tail

    def finish(self, finish_reason: str, index: int = 0) -> bytes:
        delta = b',"delta":{}' if self.chat else b',"text":""'
        return self._choice_event(index, delta + b',"logprobs":null,"finish_reason":' + _dumps(finish_reason) + b"}")

    def usage(self, usage: Usage) -> bytes:
        """The last chunk with `stream_options.include_usage`: no choices, the whole request's usage."""
        return self._event([], usage)
