"""Dynamic batching through the real processes of `bundleserve run`: gateway -> router -> bundle runtime, with the
router's admission and async worker in between. The model tells each call which batch it was in (`batch`, and
`batch_size`), so the tests see that calls really were joined.

The batch size is 4 with a window of 10 s, so a batch forms only by size: every test sends calls in fours, and a batch
that formed by the window instead would need 10 s between calls that are sent together."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.local_mode import running_local_mode
from tests.support.processes import Server, bundleserve, free_port

BUNDLE = Path(__file__).resolve().parent / "batching_bundle"
NAME = "batched"
SIZE = 4


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("batching")
    manifest = directory / "endpoint.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "bundleserve.dev/v1alpha1",
                "kind": "Endpoint",
                "metadata": {"name": NAME},
                "spec": {
                    "modes": ["sync", "async"],
                    "localOnly": True,
                    "bundle": {
                        "python": {
                            "entrypoint": "batching_model:predict",
                            "batchEntrypoint": "batching_model:predict_batch",
                            "path": str(BUNDLE),
                        }
                    },
                    "invocation": {
                        "concurrency": 2 * SIZE,
                        "batching": {"maxBatchSize": SIZE, "maxWaitMilliseconds": 10_000},
                    },
                    "async": {"maxAttempts": 1},
                },
            }
        )
    )
    with running_local_mode(directory, [manifest]) as (url, _):
        yield url


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def predict(client: aiohttp.ClientSession, base: str, args: dict[str, Any]) -> tuple[int, Any]:
    async with client.post(f"{base}/v1/endpoints/{NAME}/predict", json={"args": args}) as response:
        return response.status, await response.json()


async def test_concurrent_sync_calls_are_joined_into_full_batches(base: str, client: aiohttp.ClientSession) -> None:
    answers = await asyncio.gather(*(predict(client, base, {"x": x}) for x in range(2 * SIZE)))
    assert [status for status, _ in answers] == [200] * (2 * SIZE), answers
    results = [body["result"] for _, body in answers]
    assert [result["y"] for result in results] == [2 * x for x in range(2 * SIZE)]  # each call got its own answer
    assert {result["batch_size"] for result in results} == {SIZE}
    members: dict[int, int] = {}
    for result in results:
        members[result["batch"]] = members.get(result["batch"], 0) + 1
    assert sorted(members.values()) == [SIZE, SIZE]  # two model calls for eight requests


async def test_an_item_error_fails_that_call_only(base: str, client: aiohttp.ClientSession) -> None:
    answers = await asyncio.gather(*(predict(client, base, {"x": x}) for x in (1, -5, 2, 3)))
    statuses = [status for status, _ in answers]
    assert statuses == [200, 424, 200, 200], answers
    error = answers[1][1]["error"]
    assert (error["code"], error["message"]) == ("model_error", "negative: -5")
    assert "ValueError" in error["traceback"]
    assert {body["result"]["batch"] for status, body in answers if status == 200} == {answers[0][1]["result"]["batch"]}


async def test_a_wrong_length_answer_is_a_model_error_for_every_call_of_the_batch(
    base: str, client: aiohttp.ClientSession
) -> None:
    answers = await asyncio.gather(*(predict(client, base, {"x": x, "short": x == 0}) for x in range(SIZE)))
    assert [status for status, _ in answers] == [424] * SIZE, answers
    for _, body in answers:
        assert body["error"]["code"] == "model_error"
        assert "batching_model:predict_batch returned 3 results for a batch of 4 calls" in body["error"]["message"]


async def test_a_call_with_bad_arguments_is_refused_alone_and_never_joins_a_batch(
    base: str, client: aiohttp.ClientSession
) -> None:
    status, body = await predict(client, base, {"y": 1})
    assert (status, body["error"]["code"]) == (400, "invalid_request"), body
    assert body["error"]["message"] == "batching_model:predict: missing required argument 'x'; unexpected argument 'y'"
    answers = await asyncio.gather(*(predict(client, base, {"x": x}) for x in range(SIZE)))
    assert {body["result"]["batch_size"] for _, body in answers} == {SIZE}


async def test_async_tasks_and_sync_calls_share_batches(base: str, client: aiohttp.ClientSession) -> None:
    async def submitted(x: int) -> Any:
        async with client.post(f"{base}/v1/endpoints/{NAME}/async", json={"args": {"x": x}}) as response:
            assert response.status == 202, await response.text()
            task_id = (await response.json())["task_id"]
        async with client.get(f"{base}/v1/tasks/{task_id}", params={"wait": "30"}) as response:
            status = await response.json()
        assert status["status"] == "SUCCESS", status
        return status["result"]

    async def synchronous(x: int) -> Any:
        status, body = await predict(client, base, {"x": x})
        assert status == 200, body
        return body["result"]

    results = await asyncio.gather(submitted(10), submitted(11), synchronous(12), synchronous(13))
    assert [result["y"] for result in results] == [20, 22, 24, 26]
    assert {(result["batch"], result["batch_size"]) for result in results} == {(results[0]["batch"], SIZE)}


async def test_a_caller_that_goes_away_does_not_cancel_its_batch(base: str, client: aiohttp.ClientSession) -> None:
    staying = [asyncio.ensure_future(predict(client, base, {"x": x, "sleep": 3})) for x in range(SIZE - 1)]
    async with aiohttp.ClientSession() as impatient:
        with pytest.raises(TimeoutError):
            await predict_with_timeout(impatient, base, {"x": 99, "sleep": 3}, seconds=1.0)
    answers = await asyncio.wait_for(asyncio.gather(*staying), 60)
    assert [status for status, _ in answers] == [200] * (SIZE - 1), answers
    batches = {body["result"]["batch"] for _, body in answers}
    assert len(batches) == 1  # the three stayed together; the batch ran to its end for them
    # and the runtime goes on batching
    again = await asyncio.gather(*(predict(client, base, {"x": x}) for x in range(SIZE)))
    assert {body["result"]["batch_size"] for _, body in again} == {SIZE}


async def predict_with_timeout(
    session: aiohttp.ClientSession, base: str, args: dict[str, Any], *, seconds: float
) -> tuple[int, Any]:
    async with session.post(
        f"{base}/v1/endpoints/{NAME}/predict", json={"args": args}, timeout=aiohttp.ClientTimeout(total=seconds)
    ) as response:
        return response.status, await response.json()


# --- the runtime alone: what the batch entrypoint receives ----------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    argv = bundleserve(
        "bundle", "serve", "--entrypoint", "batching_model:describe", "--path", str(BUNDLE), "--port", str(port),
        "--batch-entrypoint", "batching_model:describe_batch", "--max-batch-size", "3",
        "--max-batch-wait-ms", "10000",
    )  # fmt: skip
    server = Server(argv, log_path=tmp_path_factory.mktemp("runtime") / "runtime.log")
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/readyz")
    yield url
    assert server.stop() == 0, server.log()
    assert "batching calls for batching_model:describe_batch: up to 3 per batch, waiting up to 10000 ms" in server.log()


async def test_raw_bodies_arrive_as_bytes_and_each_call_gets_the_encoding_it_asked_for(
    runtime: str, client: aiohttp.ClientSession
) -> None:
    async def raw() -> Any:
        headers = {"Content-Type": "text/csv"}
        async with client.post(f"{runtime}/predict", data=b"1,2,3\n", headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def keywords() -> Any:
        async with client.post(f"{runtime}/predict", json={"b": 1, "a": 2}) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def pickled() -> Any:
        headers = {"X-Bundleserve-Return": "pickle"}
        async with client.post(f"{runtime}/predict", json={"c": 3}, headers=headers) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/vnd.bundleserve.pickle"
            return pickle.loads(await response.read())

    assert await asyncio.gather(raw(), keywords(), pickled()) == [
        {"kind": "bytes", "size": 6, "batch_size": 3},
        {"kind": "dict", "keys": ["a", "b"], "batch_size": 3},
        {"kind": "dict", "keys": ["c"], "batch_size": 3},
    ]
