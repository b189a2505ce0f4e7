"""The OpenAI dialect driven by the unmodified `openai` client (sync, async, streaming) against real routers and the
gateway in front of them, API keys on both (one key, as the chart mounts one Secret in both).

Two endpoints, each a real bundle runtime behind a real router: `tiny-chat` (examples/tiny-chat, the example users
run) and `lab` (tests/integration/openai_bundle: failures, plain strings, a slow and an endless generator). A third
Endpoint, `no-openai`, is registered on the gateway only and does not declare spec.openai. Every test runs twice:
against each endpoint's own router (`router`) and against the gateway (`gateway`, which parses the request and hands
the call to the router in one hop).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from bundleserve.api.credentials import KeysFile
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import Registry
from tests.integration.test_router_fake_model import start_router
from tests.integration.test_sagemaker_on_gateway import ThreadedGateway, entry_for
from tests.support.processes import REPO, Server, bundleserve, free_port, http_ok
from tests.support.waiting import wait_until

API_KEY = "openai-test-key"
LAB_BUNDLE = Path(__file__).parent / "openai_bundle"
TINY_CHAT = REPO / "examples" / "tiny-chat"
LAB_LIMIT = 2 * 1024 * 1024


def _endpoint_file(directory: Path, name: str, *, openai_spec: dict[str, Any] | None, limit: int) -> Path:
    spec: dict[str, Any] = {
        "modes": ["streaming"],
        "localOnly": True,
        "bundle": {"python": {"entrypoint": "m:f"}},
        "invocation": {"timeoutSeconds": 30, "concurrency": 4, "maxPayloadBytes": limit},
    }
    if openai_spec is not None:
        spec["openai"] = openai_spec
    document = {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": name}, "spec": spec}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass
class Backend:
    directory: Path
    routers: dict[str, str]
    files: dict[str, Path]
    lab_log: Path

    def closed_count(self) -> int:
        return self.lab_log.read_text().count("closed") if self.lab_log.exists() else 0


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    directory = tmp_path_factory.mktemp("openai")
    keys = directory / "api-keys"
    # The key itself (clients call the routers directly too) and each endpoint's gateway key, as the operator writes
    # them for a gateway configured with that one cluster-wide key (docs/security.md).
    gateway_keys = [KeysFile.parse(API_KEY).gateway_key("default", name) for name in ("tiny-chat", "lab", "no-openai")]
    keys.write_text("".join(f"{key}\n" for key in [API_KEY, *gateway_keys]))
    lab_log = directory / "lab.log"
    servers: list[Any] = []
    routers: dict[str, str] = {}
    files = {
        "tiny-chat": _endpoint_file(directory, "tiny-chat", openai_spec={"maxTokens": 256}, limit=6 * 1024 * 1024),
        "lab": _endpoint_file(directory, "lab", openai_spec={"maxTokens": 64, "ownedBy": "lab-team"}, limit=LAB_LIMIT),
        "no-openai": _endpoint_file(directory, "no-openai", openai_spec=None, limit=LAB_LIMIT),
    }
    bundles = {"tiny-chat": ("tiny_chat:generate", TINY_CHAT), "lab": ("openai_lab:generate", LAB_BUNDLE)}
    try:
        for name, (entrypoint, path) in bundles.items():
            port = free_port()
            runtime = Server(
                bundleserve("bundle", "serve", "--entrypoint", entrypoint, "--path", str(path), "--port", str(port)),
                log_path=directory / f"{name}-runtime.log",
                env={"OPENAI_LAB_LOG": str(lab_log)},
            )
            servers.append(runtime)
            router, url = start_router(
                directory, files[name], f"http://127.0.0.1:{port}", env={"BUNDLESERVE_API_KEYS_FILE": str(keys)}
            )
            servers.append(router)
            routers[name] = url
        for url in routers.values():
            wait_until(lambda url=url: http_ok(f"{url}/readyz"), timeout=60, what="router ready behind its runtime")
        yield Backend(directory, routers, files, lab_log)
    finally:
        for server in reversed(servers):
            server.stop()


@dataclass
class Target:
    kind: str
    urls: dict[str, str]  # model -> server root
    clients: list[openai.OpenAI] = field(default_factory=list)

    def base(self, model: str = "tiny-chat") -> str:
        return f"{self.urls[model]}/openai/v1"

    def client(self, model: str = "tiny-chat", *, api_key: str = API_KEY) -> openai.OpenAI:
        """The unmodified client, without its own retries (a refusal must show as the first answer); closed with
        the fixture."""
        client = openai.OpenAI(base_url=self.base(model), api_key=api_key, max_retries=0)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def async_client(self, model: str = "tiny-chat") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base(model), api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module", params=["router", "gateway"])
def target(request: pytest.FixtureRequest, backend: Backend) -> Iterator[Target]:
    if request.param == "router":
        target = Target("router", dict(backend.routers))
        yield target
        target.close()
        return
    entries = [entry_for(backend.files[name], url) for name, url in backend.routers.items()]
    entries.append(entry_for(backend.files["no-openai"], "http://127.0.0.1:9"))
    app = ThreadedGateway(build_gateway_app(Registry(entries), GatewayConfig(api_keys=frozenset({API_KEY}))))
    url = app.start()
    target = Target("gateway", {"tiny-chat": url, "lab": url, "no-openai": url})
    try:
        yield target
    finally:
        target.close()
        app.stop()


def hello(text: str = "hello there world") -> list[Any]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


# -- models ----------------------------------------------------------------------------------------------------------


def test_the_model_list_names_the_endpoints_that_declare_the_api(target: Target) -> None:
    models = target.client().models.list()
    ids = sorted(model.id for model in models.data)
    # a router knows its own endpoint; the gateway every registered endpoint with spec.openai (not no-openai)
    assert ids == (["tiny-chat"] if target.kind == "router" else ["lab", "tiny-chat"])
    assert all(model.object == "model" for model in models.data)
    lab = target.client("lab").models.retrieve("lab")
    assert (lab.id, lab.owned_by) == ("lab", "lab-team")
    with pytest.raises(openai.NotFoundError) as caught:
        target.client().models.retrieve("no-openai")
    assert caught.value.code == "model_not_found"


# -- chat ------------------------------------------------------------------------------------------------------------


def test_chat_completion(target: Target) -> None:
    answer = target.client().chat.completions.create(model="tiny-chat", messages=hello())
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "tiny-chat"
    [choice] = answer.choices
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: hello there world"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (5, 5, 10)


def test_chat_completion_streams_chunks_then_usage(target: Target) -> None:
    stream = target.client().chat.completions.create(
        model="tiny-chat", messages=hello(), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "You said: hello there world"
    pieces = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) == 5  # one chunk per token the model yielded
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_max_tokens_cuts_with_finish_reason_length(target: Target) -> None:
    answer = target.client().chat.completions.create(model="tiny-chat", messages=hello(), max_completion_tokens=2)
    assert answer.choices[0].message.content == "You said:"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 2


def test_seed_reaches_the_model(target: Target) -> None:
    answer = target.client().chat.completions.create(model="tiny-chat", messages=hello("a b"), seed=1)
    assert answer.choices[0].message.content == "said: a b You"


def test_stop_sequence_ends_the_answer_and_closes_the_model(target: Target, backend: Backend) -> None:
    client = target.client("lab")
    answer = client.chat.completions.create(model="lab", messages=hello("alpha beta gamma delta"), stop=["gam"])
    assert answer.choices[0].message.content == "alpha beta "
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model="lab", messages=hello("alpha beta gamma delta epsilon"), stop=["ta g", "zzz"], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "alpha be"
    assert chunks[-1].choices[0].finish_reason == "stop"
    closed = backend.closed_count()  # the slow generator is still going when its stop sequence arrives
    answer = client.chat.completions.create(model="lab", messages=hello("slow"), stop=["w3"])
    assert answer.choices[0].message.content == " w0 w1 w2 "
    wait_until(lambda: backend.closed_count() > closed, timeout=10, what="the model's generator closed at the stop")


async def test_async_client_whole_and_streamed(target: Target) -> None:
    client = target.async_client()
    answer = await client.chat.completions.create(model="tiny-chat", messages=hello("async hello"))
    assert answer.choices[0].message.content == "You said: async hello"
    stream = await client.chat.completions.create(model="tiny-chat", messages=hello("async stream"), stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "You said: async stream"
    completion = await client.completions.create(model="tiny-chat", prompt="one two three")
    assert completion.choices[0].text == "three two one"
    await client.close()


def test_n_choices_whole_and_streamed(target: Target) -> None:
    client = target.client()
    answer = client.chat.completions.create(model="tiny-chat", messages=hello("x y"), n=3)
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert {choice.message.content for choice in answer.choices} == {"You said: x y"}
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 3 * 4)  # the prompt counted once
    chunks = list(
        client.chat.completions.create(
            model="tiny-chat", messages=hello("x y"), n=2, stream=True, stream_options={"include_usage": True}
        )
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        finishes[choice.index] = choice.finish_reason
    assert texts == {0: "You said: x y", 1: "You said: x y"}
    assert finishes == {0: "stop", 1: "stop"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_one_failing_choice_fails_the_request(target: Target) -> None:
    with pytest.raises(openai.InternalServerError):
        target.client("lab").chat.completions.create(model="lab", messages=hello("fail before"), n=2)
    stream = target.client("lab").chat.completions.create(model="lab", messages=hello("fail after"), n=2, stream=True)
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "failed mid-stream" in caught.value.message


def test_plain_string_pieces_count_as_tokens(target: Target) -> None:
    answer = target.client("lab").chat.completions.create(model="lab", messages=hello("plain"))
    assert answer.choices[0].message.content == "plain words only"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (0, 3)


# -- text completions ------------------------------------------------------------------------------------------------


def test_text_completion_whole_streamed_and_echoed(target: Target) -> None:
    client = target.client()
    answer = client.completions.create(model="tiny-chat", prompt="a b c d", max_tokens=3)
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == ("d c b", "length")
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 3)
    chunks = list(
        client.completions.create(
            model="tiny-chat", prompt=["x y"], stream=True, stream_options={"include_usage": True}
        )
    )
    assert {chunk.object for chunk in chunks} == {"text_completion"}
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == "y x"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 4
    echoed = client.completions.create(model="tiny-chat", prompt="p q", echo=True)
    assert echoed.choices[0].text == "p qq p"


# -- refusals --------------------------------------------------------------------------------------------------------


def test_an_unknown_model_is_model_not_found(target: Target) -> None:
    for model in ("no-such-model", "no-openai"):
        with pytest.raises(openai.NotFoundError) as caught:
            target.client().chat.completions.create(model=model, messages=hello())
        assert caught.value.status_code == 404
        assert caught.value.code == "model_not_found"
        assert caught.value.type == "invalid_request_error"
        assert f"`{model}`" in caught.value.message


def test_a_wrong_or_missing_api_key_is_an_authentication_error(target: Target) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        target.client(api_key="wrong").chat.completions.create(model="tiny-chat", messages=hello())
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        target.client(api_key="wrong").models.list()
    response = httpx.post(f"{target.base()}/chat/completions", json={"model": "tiny-chat", "messages": hello()})
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"n": 17}, "n"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_bad_or_unsupported_parameters_are_refused_naming_them(
    target: Target, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        target.client().chat.completions.create(model="tiny-chat", messages=hello(), **extra)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


def test_unknown_arguments_and_bad_messages_are_refused(target: Target) -> None:
    client = target.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny-chat", messages=hello(), extra_body={"frobnicate": 1})
    assert caught.value.param == "frobnicate"
    assert "Unrecognized request argument supplied: frobnicate" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny-chat", messages=[])
    assert caught.value.param == "messages"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny-chat", messages=image)  # type: ignore[arg-type]
    assert caught.value.param == "messages[0].content"
    response = httpx.post(
        f"{target.base()}/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_a_model_argument_the_bundle_does_not_take_is_a_bad_request(target: Target) -> None:
    """The lab's callable takes no `top_p`: the runtime refuses the call before it starts, naming the argument."""
    with pytest.raises(openai.BadRequestError) as caught:
        target.client("lab").chat.completions.create(model="lab", messages=hello(), top_p=0.5)
    assert "top_p" in caught.value.message


def test_a_body_over_the_limit_is_413(target: Target) -> None:
    big = "x " * LAB_LIMIT
    with pytest.raises(openai.APIStatusError) as caught:
        target.client("lab").chat.completions.create(model="lab", messages=hello(big))
    assert caught.value.status_code == 413


# -- model failures --------------------------------------------------------------------------------------------------


def test_a_model_failure_before_the_first_token_is_a_server_error(target: Target) -> None:
    client = target.client("lab")
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="lab", messages=hello("fail before"), stream=stream)
        assert caught.value.status_code == 500
        assert caught.value.type == "server_error"
        assert "failed before its first token" in caught.value.message


def test_a_model_failure_mid_stream_ends_the_stream_with_an_error(target: Target) -> None:
    stream = target.client("lab").chat.completions.create(model="lab", messages=hello("fail after"), stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "one two"
    assert "failed mid-stream" in caught.value.message
    raw = httpx.post(
        f"{target.base('lab')}/chat/completions",
        json={"model": "lab", "messages": hello("fail after"), "stream": True},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    events = [line for line in raw.text.split("\n\n") if line]
    assert json.loads(events[-1].removeprefix("data: "))["error"]["type"] == "server_error"
    assert "data: [DONE]" not in raw.text


def test_a_piece_outside_the_contract_is_a_model_error(target: Target) -> None:
    client = target.client("lab")
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="lab", messages=hello("bad piece"))
    assert "yielded a JSON int" in caught.value.message


def test_a_whole_answer_is_bounded_by_the_endpoint_limit(target: Target, backend: Backend) -> None:
    closed = backend.closed_count()
    with pytest.raises(openai.InternalServerError) as caught:
        target.client("lab").chat.completions.create(model="lab", messages=hello("huge"))
    assert f"limit of {LAB_LIMIT} bytes" in caught.value.message
    wait_until(lambda: backend.closed_count() > closed, timeout=10, what="the endless generator closed")


def test_a_client_that_goes_away_closes_the_model(target: Target, backend: Backend) -> None:
    closed = backend.closed_count()
    stream = target.client("lab").chat.completions.create(model="lab", messages=hello("slow"), stream=True)
    first = [next(iter(stream)) for _ in range(3)]
    assert first[0].choices[0].delta.role == "assistant"
    stream.close()
    wait_until(lambda: backend.closed_count() > closed, timeout=10, what="the model's generator closed")


# -- the wire --------------------------------------------------------------------------------------------------------


def test_the_stream_is_data_lines_ended_by_done(target: Target) -> None:
    with httpx.stream(
        "POST",
        f"{target.base()}/completions",
        json={"model": "tiny-chat", "prompt": "u v", "stream": True},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = body.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    documents = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(set(d) == {"id", "object", "created", "model", "system_fingerprint", "choices"} for d in documents)
