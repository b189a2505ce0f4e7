"""The router in front of the real bundle runtime (`bundleserve bundle serve`) serving examples/echo."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.integration.test_router_fake_model import start_router
from tests.support.processes import REPO, Server, bundleserve, free_port, http_ok
from tests.support.waiting import wait_until

ECHO = REPO / "examples" / "echo"


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("router-runtime")
    port = free_port()
    runtime = Server(
        bundleserve("bundle", "serve", "--entrypoint", "echo_model:predict", "--path", str(ECHO), "--port", str(port)),
        log_path=directory / "runtime.log",
    )
    router = None
    try:
        env = {"BUNDLESERVE_RESULTS_DIR": str(directory / "results")}
        router, url = start_router(directory, ECHO / "endpoint.yaml", f"http://127.0.0.1:{port}", env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready behind the bundle runtime")
        yield url
    finally:
        if router is not None:
            router.stop()
        runtime.stop()


async def test_predict(echo: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{echo}/v1/endpoints/echo/predict", json={"args": {"a": [1, 2], "b": "x"}}) as response:
        assert response.status == 200
        assert await response.json() == {
            "status": "SUCCESS",
            "result": {"a": [1, 2], "b": "x"},
            "result_url": None,
            "traceback": None,
            "status_code": 200,
        }


async def test_stream(echo: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{echo}/v1/endpoints/echo/stream", json={"args": {"text": "one two three"}}) as response:
        assert response.status == 200
        events = [json.loads(line[6:]) async for line in response.content if line.startswith(b"data: ")]
    assert events == [{"status": "SUCCESS", "result": word} for word in ("one", "two", "three")]


async def test_return_pickled(echo: str, http: aiohttp.ClientSession) -> None:
    body = {"args": {"n": 7}, "return_pickled": True}
    async with http.post(f"{echo}/v1/endpoints/echo/predict", json=body) as response:
        assert response.status == 200
        result_url = (await response.json())["result_url"]
    assert result_url.startswith(echo + "/v1/tasks/")  # absolute, for the client that asked
    async with http.get(result_url) as response:
        assert response.status == 200
        assert pickle.loads(await response.read()) == {"n": 7}


async def test_a_model_exception_becomes_424_with_its_traceback(echo: str, http: aiohttp.ClientSession) -> None:
    # echo's stream splits `text`: an int raises AttributeError inside the model before the first chunk.
    async with http.post(f"{echo}/v1/endpoints/echo/stream", json={"args": {"text": 5}}) as response:
        assert response.status == 424
        error: dict[str, Any] = (await response.json())["error"]
    assert error["code"] == "model_error"
    assert "AttributeError" in (error["traceback"] or "")
