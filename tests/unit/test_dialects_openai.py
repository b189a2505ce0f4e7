"""The OpenAI dialect's pure parts: request parsing into the model call, the bundle contract (pieces, stop sequences,
finish reason, usage), rendering (objects, chunk frames, the error table), and the native error round trip the
gateway's hop relies on."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from multidict import CIMultiDict

from bundleserve.api.endpoint import OpenAISettings
from bundleserve.api.errors import (
    ApiError,
    InvalidRequest,
    ModelError,
    ModelNotReady,
    NotFound,
    Overloaded,
    Timeout,
    Unauthorized,
    Unavailable,
    error_from_body,
)
from bundleserve.api.invocation import Invocation
from bundleserve.dialects.openai import render
from bundleserve.dialects.openai.generation import Generation, Piece, Usage, decode_piece
from bundleserve.dialects.openai.models import parse_chat, parse_completion
from bundleserve.edge.sse import EventParser, success_chunk, success_event

SETTINGS = OpenAISettings(max_tokens=100)


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


# -- parsing ---------------------------------------------------------------------------------------------------------


def test_chat_becomes_the_models_keyword_arguments() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "u"},
            {"role": "assistant", "content": "c", "refusal": None, "tool_calls": None},
        ],
        temperature=0.5,
        stop="END",
        seed=3,
        user="ignored",
        metadata={"ignored": "yes"},
        logprobs=False,
        tool_choice="none",
    )
    call = parse_chat(body).bind(SETTINGS)
    assert call.kwargs == {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "ab", "name": "u"},
            {"role": "assistant", "content": "c"},
        ],
        "max_tokens": 100,  # none asked: the endpoint's maxTokens, so every generation is bounded
        "temperature": 0.5,
        "seed": 3,
        "stop": ["END"],
    }
    assert (call.stream, call.include_usage, call.stop, call.n) == (False, False, ("END",), 1)
    assert parse_chat(chat(n=3)).bind(SETTINGS).n == 3
    assert json.loads(call.body()) == call.kwargs


def test_max_completion_tokens_and_max_tokens() -> None:
    assert parse_chat(chat(max_completion_tokens=7)).bind(SETTINGS).max_tokens == 7
    assert parse_chat(chat(max_tokens=7, max_completion_tokens=7)).bind(SETTINGS).kwargs["max_tokens"] == 7
    with pytest.raises(InvalidRequest) as differ:
        parse_chat(chat(max_tokens=7, max_completion_tokens=8))
    assert differ.value.details["param"] == "max_completion_tokens"
    with pytest.raises(InvalidRequest) as over:
        parse_chat(chat(max_tokens=101)).bind(SETTINGS)
    assert over.value.details["param"] == "max_tokens"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"messages": None}, "messages"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"n": 17}, "n"),
        ({"stop": ["", "x"]}, "stop"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"bogus": 1}}, "stream_options"),
        ({"unheard_of": 1}, "unheard_of"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1"}]}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ],
)
def test_chat_refusals_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    document = json.loads(chat())
    document.update(fields)
    document = {key: value for key, value in document.items() if value is not None}
    with pytest.raises(InvalidRequest) as refused:
        parse_chat(json.dumps(document).encode()).bind(SETTINGS)
    assert refused.value.details["param"] == param


def test_bodies_that_are_not_json_objects() -> None:
    for body in (b"{", b"[]", b"\xff"):
        with pytest.raises(InvalidRequest) as refused:
            parse_chat(body)
        assert refused.value.details["param"] is None


def test_completion_prompt_echo_and_refusals() -> None:
    call = parse_completion(b'{"model": "m", "prompt": ["p"], "echo": true, "max_tokens": 2}').bind(SETTINGS)
    assert (call.kwargs, call.echo) == ({"prompt": "p", "max_tokens": 2}, "p")
    for extra, param in (
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"suffix": "s"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"logprobs": 1}, "logprobs"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            parse_completion(json.dumps({"model": "m", "prompt": "p", **extra}).encode())
        assert refused.value.details["param"] == param


# -- the bundle contract ---------------------------------------------------------------------------------------------


def test_decode_piece() -> None:
    assert decode_piece(b'"tok"') == Piece("tok")
    assert decode_piece(b"raw text") == Piece("raw text")  # a runnable image's plain event
    usage = b'{"text": "x", "finish_reason": "length", "usage": {"prompt_tokens": 2, "completion_tokens": 1}}'
    assert decode_piece(usage) == Piece("x", "length", Usage(2, 1))
    assert decode_piece(b'{"finish_reason": "stop"}') == Piece("", "stop")
    for broken in (
        b"3",
        b"[1]",
        b'{"text": 1}',
        b'{"finish_reason": "tool_calls"}',
        b'{"usage": {"prompt_tokens": -1}}',
    ):
        with pytest.raises(ModelError):
            decode_piece(broken)


def feed_all(generation: Generation, pieces: list[str]) -> str:
    out = []
    for piece in pieces:
        out.append(generation.feed(Piece(piece)))
        if generation.done:
            break
    out.append(generation.finish())
    return "".join(out)


@pytest.mark.parametrize(
    ("pieces", "stop", "expected", "done"),
    [
        (["hello", " wor", "ld"], ("world",), "hello ", True),
        (["hello", " wo", "rm"], ("world",), "hello worm", False),  # a held-back prefix that did not complete
        (["a", "b", "c"], ("bc", "ab"), "", True),  # the earliest match wins
        (["xEN", "Dy"], ("END",), "x", True),  # a stop sequence split over pieces
        (["abc"], (), "abc", False),
        (["aEN"], ("END",), "aEN", False),  # the model ended: held text is sent
    ],
)
def test_stop_sequences(pieces: list[str], stop: tuple[str, ...], expected: str, done: bool) -> None:
    generation = Generation(stop)
    assert feed_all(generation, pieces) == expected
    assert generation.done is done
    assert generation.finish_reason == "stop"


def test_held_back_text_is_only_the_possible_beginning_of_a_stop_sequence() -> None:
    generation = Generation(("STOP",))
    assert generation.feed(Piece("abcST")) == "abc"
    assert generation.feed(Piece("x")) == "STx"


def test_usage_of_choices_counts_the_prompt_once() -> None:
    assert Usage.of_choices([Usage(4, 2), Usage(4, 3)]) == Usage(4, 5)


def test_whole_answers_list_their_choices() -> None:
    choices = [render.Choice("a", "stop"), render.Choice("b", "length")]
    chat_answer = json.loads(render.chat_completion("i", 1, "m", choices, Usage(1, 2)))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in chat_answer["choices"]] == [
        (0, "a", "stop"),
        (1, "b", "length"),
    ]
    text_answer = json.loads(render.text_completion("i", 1, "m", choices, Usage(1, 2)))
    assert [c["text"] for c in text_answer["choices"]] == ["a", "b"]
    assert text_answer["object"] == "text_completion" and text_answer["usage"]["total_tokens"] == 3


def test_finish_reason_and_usage() -> None:
    generation = Generation()
    generation.feed(Piece("a"))
    generation.feed(Piece("", "length"))
    assert generation.finish_reason == "length"
    assert generation.final_usage() == Usage(0, 1)  # the text pieces, without a reported usage
    generation.feed(Piece("", None, Usage(5, 9)))
    assert generation.final_usage().document() == {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}


# -- rendering -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "kind", "code"),
    [
        (InvalidRequest("x", param="temperature"), 400, "invalid_request_error", None),
        (Unauthorized("x"), 401, "invalid_request_error", "invalid_api_key"),
        (render.model_not_found("m"), 404, "invalid_request_error", "model_not_found"),
        (Overloaded("x"), 429, "requests", "rate_limit_exceeded"),
        (ModelError("x"), 500, "server_error", "model_error"),
        (ModelNotReady("x"), 503, "server_error", "service_unavailable"),
        (Timeout("x"), 504, "server_error", "timeout"),
        (ApiError("x"), 500, "server_error", None),
    ],
)
def test_error_table(error: ApiError, status: int, kind: str, code: str | None) -> None:
    assert render.error_kind(error).status == status
    document = json.loads(render.error_body(error))
    assert set(document["error"]) == {"message", "type", "param", "code"}
    assert (document["error"]["type"], document["error"]["code"]) == (kind, code)
    assert json.loads(render.error_event(error).removeprefix(b"data: ")) == document


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_chunk_frames_are_one_json_event_each(chat: bool, include_usage: bool) -> None:
    frames = render.ChunkFrames("id-1", 123, 'm"odel', chat=chat, include_usage=include_usage)
    events = [frames.start(), frames.piece('t"ext\n'), frames.finish("length"), frames.usage(Usage(1, 2))]
    documents = []
    for event in events:
        if not event:
            continue
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        documents.append(json.loads(event[len(b"data: ") :]))
    assert {d["object"] for d in documents} == {"chat.completion.chunk" if chat else "text_completion"}
    assert {d["model"] for d in documents} == {'m"odel'}
    piece = documents[-3]["choices"][0]
    assert (piece["delta"]["content"] if chat else piece["text"]) == 't"ext\n'
    other = json.loads(frames.piece("x", 2)[len(b"data: ") :])["choices"][0]
    assert other["index"] == 2 and (other["delta"]["content"] if chat else other["text"]) == "x"
    assert json.loads(frames.finish("stop", 2)[len(b"data: ") :])["choices"][0]["index"] == 2
    assert documents[-2]["choices"][0]["finish_reason"] == "length"
    assert documents[-1]["choices"] == [] and documents[-1]["usage"]["total_tokens"] == 3
    assert all(("usage" in d) is include_usage for d in documents[:-1])


# -- the gateway's hop -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("bad"),
        NotFound("gone"),
        Unauthorized("who"),
        ModelError("boom", status_code=500, traceback="Traceback ...", type="ValueError"),
        Unavailable("later", headers={"Retry-After": "1"}),
        Overloaded("full", retry_after_seconds=3),
        Timeout("slow"),
    ],
)
def test_native_errors_round_trip(error: ApiError) -> None:
    again = error_from_body(error.status, json.dumps(error.body()).encode(), error.headers)
    assert type(again) is type(error)
    assert again.body() == error.body() and again.headers == error.headers


def test_answers_without_a_native_body() -> None:
    assert isinstance(error_from_body(502, b"<html>bad gateway</html>", {}), Unavailable)
    assert type(error_from_body(500, b"", {})) is ApiError


def test_success_chunks() -> None:
    [event] = EventParser().feed(success_event(b'{"text":"x"}'))
    assert success_chunk(event.data) == b'{"text":"x"}'
    assert success_chunk(b'{"status":"FAILURE","result":null}') is None


# -- the routes' error rendering -------------------------------------------------------------------------------------


def test_a_bug_of_ours_in_the_model_list_is_logged_and_answered_in_openais_shape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bundleserve.dialects.openai.routes import OpenAIRoutes
    from bundleserve.edge.exchange import Head

    class Broken:
        def authorize(self, authorization: str | None) -> None:
            return None

        def models(self) -> list[Any]:
            raise KeyError("oops")

    routes = OpenAIRoutes(Broken())  # type: ignore[arg-type]
    reply = routes.list_models(Head("GET", "/openai/v1/models", "", CIMultiDict()))
    assert reply.status == 500
    assert json.loads(reply.body)["error"]["type"] == "server_error"
    assert [record.levelno for record in caplog.records] == [logging.ERROR]


class _LabCore:
    """A `CallBackend` whose stream yields `pieces` and records whether the stream was left (the model closed)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed = 0

    async def predict(self, inv: Invocation) -> Any:
        raise NotImplementedError

    def stream(self, inv: Invocation) -> Any:
        import contextlib

        from bundleserve.api.invocation import StreamChunk

        @contextlib.asynccontextmanager
        async def entered() -> Any:
            async def chunks() -> Any:
                for piece in self.pieces:
                    yield StreamChunk(piece)

            try:
                yield chunks()
            finally:
                self.closed += 1

        return entered()


def _gone_request() -> Any:
    """A request whose connection is closing: every body write raises, as aiohttp's writer does then."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    writer = mock.Mock()
    writer.write_headers = mock.AsyncMock()
    writer.write = mock.AsyncMock(side_effect=ConnectionResetError("Cannot write to closing transport"))
    writer.write_eof = mock.AsyncMock()
    writer.drain = mock.AsyncMock()
    return make_mocked_request("POST", "/openai/v1/chat/completions", writer=writer)


@pytest.mark.parametrize("n", [1, 3])
async def test_a_stream_whose_client_went_away_ends_quietly_and_closes_the_model(
    n: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream's `Reply` written by aiohttp's side of the seam (`dialects.adapter.send`) to a client that left."""
    from bundleserve.dialects import adapter
    from bundleserve.dialects.openai import routes

    core = _LabCore([b'"a"', b'"b"', b'"c"'])
    target = routes.Target("m", SETTINGS, core, 1024)
    call = parse_chat(chat(stream=True, n=n)).bind(SETTINGS)
    frames = render.ChunkFrames("i", 1, "m", chat=True, include_usage=False)
    stream = routes._stream if n == 1 else routes._stream_choices
    reply = await stream(target, Invocation(body=call.body()), call, frames)
    response = await adapter.send(_gone_request(), reply)
    assert response.prepared  # handed back to aiohttp, which sees the closed transport
    assert core.closed == n
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_model_card_is_an_endpoint_that_declares_the_api() -> None:
    from bundleserve.api.endpoint import Endpoint
    from bundleserve.dialects.openai.routes import model_card

    document: dict[str, Any] = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": "chat", "creationTimestamp": "2026-01-02T03:04:05Z"},
        "spec": {"modes": ["streaming"], "localOnly": True, "bundle": {"python": {"entrypoint": "m:f"}}},
    }
    assert model_card(Endpoint.model_validate(document)) is None
    document["spec"]["openai"] = {"ownedBy": "team"}
    card = model_card(Endpoint.model_validate(document))
    assert card == render.ModelCard(id="chat", owned_by="team", created=1767323045)
    del document["metadata"]["creationTimestamp"]
    card = model_card(Endpoint.model_validate(document))
    assert card is not None and card.created == 0
