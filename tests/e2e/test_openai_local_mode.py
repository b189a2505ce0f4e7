"""The OpenAI dialect against local mode (`bundleserve run examples/tiny-chat/endpoint.yaml` as a subprocess), with
the unmodified `openai` client: sync, async and streaming, the model list, refusals as the client's typed
exceptions, and the ready line's OpenAI example run as printed. Local mode has no API keys: any key is accepted."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.local_mode import EXAMPLES, running_local_mode
from tests.support.processes import Server

MANIFESTS = (EXAMPLES / "tiny-chat" / "endpoint.yaml", EXAMPLES / "echo" / "endpoint.yaml")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    with running_local_mode(tmp_path_factory.mktemp("openai-local"), MANIFESTS) as run:
        yield run


@pytest.fixture
def client(local_run: tuple[str, Server]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{local_run[0]}/openai/v1", api_key="anything", max_retries=0) as client:
        yield client


def test_the_models_are_the_endpoints_that_declare_the_api(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["tiny-chat"]  # echo does not declare spec.openai


def test_chat_whole_and_streamed(client: openai.OpenAI) -> None:
    messages: list[dict[str, str]] = [{"role": "user", "content": "hello local mode"}]
    answer = client.chat.completions.create(model="tiny-chat", messages=messages)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "You said: hello local mode"
    assert answer.usage is not None and answer.usage.total_tokens == 3 + 5
    stream = client.chat.completions.create(
        model="tiny-chat",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: hello local mode"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_async_client(local_run: tuple[str, Server]) -> None:
    async with openai.AsyncOpenAI(base_url=f"{local_run[0]}/openai/v1", api_key="x", max_retries=0) as client:
        stream = await client.completions.create(model="tiny-chat", prompt="c b a", stream=True)
        text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
        assert text == "a b c"


def test_refusals(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}], max_tokens=257)
    assert bad.value.param == "max_tokens"


def test_the_ready_lines_openai_example_works_as_printed(local_run: tuple[str, Server]) -> None:
    [line] = [line for line in local_run[1].log().splitlines() if line.strip().startswith("OpenAI:")]
    code = line.split("OpenAI:", 1)[1].strip()
    head, call = code.split("; ", 1)
    printed = subprocess.run(
        [sys.executable, "-c", f"{head}; print({call}.choices[0].message.content)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent,
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == "You said: hello"
