"""The OpenAI dialect driven by the unmodified `openai` client (sync, async, streaming) against real routers and the
gateway in front of them, API keys on both (one key, as the chart mounts one Secret in both).

Two endpoints, each a real bundle runtime behind a real router: `tiny-chat` (examples/tiny-chat, the example users
run) and `lab` (tests/integration/openai_bundle: failures, plain strings, a slow and an endless generator). A third
Endpoint, `no-openai`, is registered on the gateway only and does not declare spec.openai. Every test runs four
times: against each endpoint's own router as `bundleserve router` listens (`router`: the completions on its fast edge,
`router.fastpath`) and as plain aiohttp (`router-aiohttp`, the same application in-process with no fast edge), and
against the gateway (which parses the request and hands the call to the router in one hop) with its fast edge
(`gateway`, `gateway.fastpath`) and as plain aiohttp (`gateway-aiohttp`). So both transports of the seam
(`edge.exchange`) answer the same operation the same way.

The last section proves the fast edges serve the completions themselves (not by handing the connection over to
aiohttp), on raw sockets: an in-process router listening as `bundleserve router` does (`router.server.fast_edge`) and
the gateway's `Front`; whole, streamed, refused in OpenAI's shape, and a client leaving mid-stream ending the call.
"""

from __future__ import annotations

import asyncio
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
from bundleserve.api.manifest import load_endpoints
from bundleserve.dialects.adapter import FAST_ROUTES
from bundleserve.dialects.openai.routes import CHAT_PATH, COMPLETIONS_PATH
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import Registry
from bundleserve.gateway.server import Front
from bundleserve.router.app import build_app
from bundleserve.router.fastpath import FastEdge
from bundleserve.router.server import fast_edge
from bundleserve.router.settings import Settings
from tests.integration.test_gateway_fastpath import read_answer
from tests.integration.test_router_fake_model import start_router
from tests.integration.test_sagemaker_on_gateway import ThreadedApp, ThreadedGateway, entry_for
from tests.support.processes import REPO, Server, bundleserve, free_port, http_ok
from tests.support.waiting import async_wait_until, wait_until

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
    runtimes: dict[str, str]  # model -> its bundle runtime's URL

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
    runtimes: dict[str, str] = {}
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
            runtimes[name] = f"http://127.0.0.1:{port}"
            router, url = start_router(
                directory, files[name], f"http://127.0.0.1:{port}", env={"BUNDLESERVE_API_KEYS_FILE": str(keys)}
            )
            servers.append(router)
            routers[name] = url
        for url in routers.values():
            wait_until(lambda url=url: http_ok(f"{url}/readyz"), timeout=60, what="router ready behind its runtime")
        yield Backend(directory, routers, files, lab_log, runtimes)
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


def router_app(backend: Backend, name: str) -> Any:
    """Endpoint `name`'s router application, in-process, in front of its bundle runtime (the one key of the suite)."""
    [(_, endpoint)] = load_endpoints([backend.files[name]])
    return build_app(Settings(endpoint=endpoint, model_url=backend.runtimes[name], api_keys=frozenset({API_KEY})))


def gateway_app(backend: Backend) -> Any:
    """The gateway application in front of the routers (`no-openai` registered, its router never called)."""
    entries = [entry_for(backend.files[name], url) for name, url in backend.routers.items()]
    entries.append(entry_for(backend.files["no-openai"], "http://127.0.0.1:9"))
    return build_gateway_app(Registry(entries), GatewayConfig(api_keys=frozenset({API_KEY})))


def wait_ready(url: str) -> None:
    wait_until(lambda: http_ok(f"{url}/readyz"), timeout=60, what="the router sees its model ready")


@pytest.fixture(scope="module", params=["router", "router-aiohttp", "gateway", "gateway-aiohttp"])
def target(request: pytest.FixtureRequest, backend: Backend) -> Iterator[Target]:
    servers: list[ThreadedApp] = []
    if request.param == "router":
        target = Target("router", dict(backend.routers))
    elif request.param == "router-aiohttp":
        urls = {}
        for name in ("tiny-chat", "lab"):
            server = ThreadedApp(router_app(backend, name))
            servers.append(server)
            urls[name] = server.start()
            wait_ready(urls[name])
        target = Target("router", urls)
    else:
        server = (
            ThreadedGateway(gateway_app(backend)) if request.param == "gateway" else ThreadedApp(gateway_app(backend))
        )
        servers.append(server)
        url = server.start()
        target = Target("gateway", {"tiny-chat": url, "lab": url, "no-openai": url})
    try:
        yield target
    finally:
        target.close()
        for server in servers:
            server.stop()


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


# -- the fast edges --------------------------------------------------------------------------------------------------

#: The fast edges' body deadline here: short, so a body that never completes is refused within the test's wait.
BODY_SECONDS = 2.0


class ThreadedRouter(ThreadedApp):
    """A router application listening as `bundleserve router` does (`router.server.fast_edge` on the socket, aiohttp
    behind it for every other request), on its own event loop in a daemon thread."""

    def __init__(self, app: Any, limits: ConnectionLimits) -> None:
        super().__init__(app)
        self.limits = limits
        self.edge: FastEdge | None = None
        self.listener: asyncio.Server | None = None

    def start(self) -> str:
        self.thread.start()

        async def serve() -> str:
            await self.runner.setup()
            server = self.runner.server
            self.edge = None if server is None else fast_edge(self.app, server, self.limits)
            if self.edge is None:
                raise RuntimeError("this router has no fast edge")
            self.listener = await asyncio.get_running_loop().create_server(self.edge, "127.0.0.1", 0)
            return f"http://127.0.0.1:{self.listener.sockets[0].getsockname()[1]}"

        self.url = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(timeout=30)
        return self.url

    def fast_connections(self) -> list[int]:
        """The client ports of the connections the fast edge holds now (one handed over to aiohttp leaves it)."""

        async def ports() -> list[int]:
            edge = self.edge
            connections = [] if edge is None else list(edge.connections)
            return [int(c.transport.get_extra_info("peername")[1]) for c in connections if c.transport is not None]

        return asyncio.run_coroutine_threadsafe(ports(), self.loop).result(timeout=30)

    def stop(self) -> None:
        async def close() -> None:
            if self.listener is not None:
                self.listener.close()
            if self.edge is not None:
                self.edge.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=30)
        super().stop()


@pytest.fixture(scope="module")
def router_edge(backend: Backend) -> Iterator[ThreadedRouter]:
    """The lab's router with its fast edge (an endpoint that serves streams only: the edge is there for the dialects)."""
    server = ThreadedRouter(router_app(backend, "lab"), ConnectionLimits(body_seconds=BODY_SECONDS))
    server.start()
    try:
        wait_ready(server.url)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway_edge(backend: Backend) -> Iterator[ThreadedGateway]:
    """The gateway with its fast edge, in front of the routers."""
    server = ThreadedGateway(gateway_app(backend))
    server.front = Front(server.app, ConnectionLimits(body_seconds=BODY_SECONDS))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["router", "gateway"])
def edge(request: pytest.FixtureRequest) -> ThreadedRouter | ThreadedGateway:
    """Each fast edge in front of the lab: its router's, or the gateway's."""
    server: ThreadedRouter | ThreadedGateway = request.getfixturevalue(f"{request.param}_edge")
    return server


def completion(path: str, document: dict[str, Any] | None, *, key: str = API_KEY) -> bytes:
    """One raw request (`document` None: an empty body)."""
    body = b"" if document is None else json.dumps(document).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def events(body: bytes) -> list[str]:
    """The data of each SSE event of a stream's body."""
    return [event.removeprefix("data: ") for event in body.decode().split("\n\n") if event]


async def connect(server: ThreadedRouter | ThreadedGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A raw connection to `server` and its client port (what `fast_connections` lists)."""
    port = int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return reader, writer, int(writer.get_extra_info("sockname")[1])


def test_the_completions_are_in_each_fast_edges_routes(edge: ThreadedRouter | ThreadedGateway) -> None:
    """Registered where the dialect is mounted (`openai.routes.add_routes`), the model list and one model included."""
    routes = edge.app[FAST_ROUTES]
    assert routes.match("POST", CHAT_PATH) is not None
    assert routes.match("POST", COMPLETIONS_PATH) is not None
    assert routes.match("GET", "/openai/v1/models") is not None
    assert routes.match("GET", "/openai/v1/models/lab") is not None
    assert routes.match("DELETE", "/openai/v1/models/lab") is None


async def test_whole_and_streamed_completions_are_answered_by_the_fast_edge(
    edge: ThreadedRouter | ThreadedGateway,
) -> None:
    reader, writer, port = await connect(edge)
    try:
        writer.write(completion(CHAT_PATH, {"model": "lab", "messages": hello("alpha beta gamma")}))
        status, headers, body = await read_answer(reader)
        assert (status, headers["content-type"]) == (200, "application/json")
        answer = json.loads(body)
        assert (answer["object"], answer["choices"][0]["message"]["content"]) == ("chat.completion", "alpha beta gamma")
        assert port in edge.fast_connections()

        stream = {"model": "lab", "messages": hello("alpha beta"), "stream": True}
        writer.write(completion(CHAT_PATH, stream))
        status, headers, body = await read_answer(reader)
        assert (status, headers["content-type"]) == (200, "text/event-stream")
        data = events(body)
        assert data[-1] == "[DONE]"
        chunks = [json.loads(event) for event in data[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks) == "alpha beta"
        assert port in edge.fast_connections()

        writer.write(completion(COMPLETIONS_PATH, {"model": "lab", "prompt": "one two", "n": 2, "stream": True}))
        status, _, body = await read_answer(reader)
        data = events(body)
        assert (status, data[-1]) == (200, "[DONE]")
        texts: dict[int, str] = {}
        for chunk in map(json.loads, data[:-1]):
            [choice] = chunk["choices"]
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        assert texts == {0: "one two", 1: "one two"}
        assert port in edge.fast_connections()

        # The model list and one model's card too (a client lists the models on the connection it completes on).
        writer.write(
            f"GET /openai/v1/models HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
        )
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["object"], "lab" in body.decode()) == (200, "list", True)
        assert port in edge.fast_connections()
        writer.write(
            f"GET /openai/v1/models/nope HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
        )
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["error"]["code"]) == (404, "model_not_found")
        assert port in edge.fast_connections()
        # Any other route is aiohttp's: the connection moves there (so the checks above can tell the two apart).
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        status, _, body = await read_answer(reader)
        assert status == 200
        assert port not in edge.fast_connections()
    finally:
        writer.close()


async def test_refusals_are_answered_by_the_fast_edge_in_openais_shape(edge: ThreadedRouter | ThreadedGateway) -> None:
    """A wrong key from the head (an empty body: answered in order, the connection kept), then the body phase's
    refusals: an unknown model and a body that is not JSON."""
    reader, writer, port = await connect(edge)
    try:
        writer.write(completion(CHAT_PATH, None, key="wrong"))
        status, headers, body = await read_answer(reader)
        error = json.loads(body)["error"]
        assert (status, headers["www-authenticate"], error["code"]) == (401, "Bearer", "invalid_api_key")
        assert set(error) == {"message", "type", "param", "code"}
        assert port in edge.fast_connections()

        writer.write(completion(CHAT_PATH, {"model": "no-such-model", "messages": hello()}))
        status, _, body = await read_answer(reader)
        error = json.loads(body)["error"]
        assert (status, error["code"], error["param"]) == (404, "model_not_found", "model")
        assert port in edge.fast_connections()

        writer.write(completion(COMPLETIONS_PATH, None))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["error"]["type"]) == (400, "invalid_request_error")
        assert port in edge.fast_connections()
    finally:
        writer.close()


async def test_a_body_past_the_deadline_is_refused_in_openais_shape(edge: ThreadedRouter | ThreadedGateway) -> None:
    """A refusal the transport makes itself (the body deadline) is rendered by the operation (`Prepared.refuse`)."""
    reader, writer, _ = await connect(edge)
    try:
        whole = completion(CHAT_PATH, {"model": "lab", "messages": hello()})
        writer.write(whole[:-5])  # the body never completes
        status, _, body = await read_answer(reader)
        error = json.loads(body)["error"]
        assert (status, error["code"], error["type"]) == (408, "request_timeout", "invalid_request_error")
        assert set(error) == {"message", "type", "param", "code"}
    finally:
        writer.close()


async def test_a_client_leaving_mid_stream_ends_the_call(
    edge: ThreadedRouter | ThreadedGateway, backend: Backend
) -> None:
    closed = backend.closed_count()
    reader, writer, port = await connect(edge)
    try:
        writer.write(completion(CHAT_PATH, {"model": "lab", "messages": hello("slow"), "stream": True}))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 200 ")
        size = int((await asyncio.wait_for(reader.readline(), timeout=10)).strip(), 16)
        first = await asyncio.wait_for(reader.readexactly(size), timeout=10)
        assert json.loads(events(first)[0])["choices"][0]["delta"]["role"] == "assistant"
        assert port in edge.fast_connections()
    finally:
        writer.close()
    # The slow generator runs 10 s more unless the call is ended; ended, it logs `closed`.
    await async_wait_until(lambda: _closed_after(backend, closed), timeout=8, what="the model's generator closed")


async def _closed_after(backend: Backend, closed: int) -> bool:
    return backend.closed_count() > closed


async def test_a_streaming_only_routers_fast_edge_leaves_native_predict_to_aiohttp(router_edge: ThreadedRouter) -> None:
    """The lab serves streams only, so its router mounts no predict route; its fast edge (there for the dialects)
    hands native predict over, and aiohttp answers it as it would without a fast edge (`router.server.fast_edge`)."""
    edge = router_edge
    reader, writer, port = await connect(edge)
    try:
        body = b'{"x": 1}'
        head = f"POST /v1/endpoints/lab/predict HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {API_KEY}\r\n"
        writer.write(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, _, _ = await read_answer(reader)
        assert status in (404, 405)
        assert port not in edge.fast_connections()
    finally:
        writer.close()
