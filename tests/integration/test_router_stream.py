"""The router's streaming API over real HTTP: events relayed per chunk, failures, client disconnects."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.support.processes import http_ok
from tests.support.waiting import async_wait_until, wait_until


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("router-stream")
    model, model_url = start_model(directory)
    router = None
    try:
        endpoint = write_endpoint(directory, invocation={"concurrency": 4, "timeoutSeconds": 5})
        router, url = start_router(directory, endpoint, model_url)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        yield {"url": url, "model_url": model_url}
    finally:
        if router is not None:
            router.stop()
        model.stop()


async def read_events(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    events = []
    async for line in response.content:
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    return events


async def stats(http: aiohttp.ClientSession, pair: dict[str, Any]) -> dict[str, Any]:
    async with http.get(f"{pair['model_url']}/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def test_stream_relays_every_chunk_as_a_success_event(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    words = ["alpha", {"n": 1}, "gamma", [1, 2]]
    async with http.post(f"{pair['url']}/v1/endpoints/fake/stream", json={"args": {"words": words}}) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = await read_events(response)
    assert events == [{"status": "SUCCESS", "result": word} for word in words]


async def test_each_chunk_reaches_the_client_before_the_model_finishes(
    pair: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    before = (await stats(http, pair))["streams_done"]
    args = {"args": {"words": ["first", "second"], "delay": 1.0}}
    async with http.post(f"{pair['url']}/v1/endpoints/fake/stream", json=args) as response:
        first = await response.content.readline()
        assert json.loads(first[6:]) == {"status": "SUCCESS", "result": "first"}
        # The model is still sleeping before its second chunk: the first one was flushed, not buffered.
        assert (await stats(http, pair))["streams_done"] == before
        rest = await read_events(response)
    assert rest == [{"status": "SUCCESS", "result": "second"}]


async def test_failure_mid_stream_ends_with_one_failure_event(
    pair: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    args = {"args": {"words": ["a", "b", "c", "d"], "fail_after": 2}}
    async with http.post(f"{pair['url']}/v1/endpoints/fake/stream", json=args) as response:
        assert response.status == 200
        events = await read_events(response)
    assert events[:2] == [{"status": "SUCCESS", "result": "a"}, {"status": "SUCCESS", "result": "b"}]
    assert len(events) == 3
    failure = events[2]
    assert failure["status"] == "FAILURE"
    assert failure["traceback"] == "Traceback: boom"
    assert failure["error"]["message"] == "boom mid-stream"


async def test_failure_before_the_first_chunk_is_a_424(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    args = {"args": {"fail_before": True}}
    async with http.post(f"{pair['url']}/v1/endpoints/fake/stream", json=args) as response:
        assert response.status == 424
        body = await response.json()
    assert body["error"]["code"] == "model_error"
    assert body["error"]["status_code"] == 500


async def test_client_disconnect_cancels_the_model_stream(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    before = (await stats(http, pair))["streams_cancelled"]
    args = {"args": {"words": [str(i) for i in range(100)], "delay": 0.2}}
    response = await http.post(f"{pair['url']}/v1/endpoints/fake/stream", json=args)
    assert json.loads((await response.content.readline())[6:])["result"] == "0"
    response.close()  # the client goes away mid-stream

    async def cancelled() -> bool:
        return bool((await stats(http, pair))["streams_cancelled"] == before + 1)

    await async_wait_until(cancelled, timeout=5, what="the model's stream to be cancelled")
    assert (await stats(http, pair))["current"] == 0


async def test_stream_validation_errors_are_400(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    async with http.post(f"{pair['url']}/v1/endpoints/fake/stream", data=b"{oops") as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"


async def test_no_first_event_within_the_time_limit_is_504(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    before = (await stats(http, pair))["streams_cancelled"]
    args = {"args": {"words": ["late"], "first_delay": 5}, "timeout_seconds": 0.3}
    async with http.post(f"{pair['url']}/v1/endpoints/fake/stream", json=args) as response:
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "timeout"

    async def cancelled() -> bool:
        return bool((await stats(http, pair))["streams_cancelled"] == before + 1)

    await async_wait_until(cancelled, timeout=5, what="the late stream to be cancelled")


@pytest.mark.parametrize("barrier", ["hold_before", "hold_first"], ids=["before-headers", "after-headers"])
async def test_the_time_limit_covers_the_wait_for_the_first_event(
    pair: dict[str, Any], http: aiohttp.ClientSession, barrier: str
) -> None:
    """A model that never yields gets 504 at the deadline, whether it sent its headers or not (the bundle runtime
    sends none before the generator's first value). The model blocks on a barrier the test opens only afterwards,
    so a 504 proves the router cut the wait."""
    gate = uuid.uuid4().hex
    cancelled_before = (await stats(http, pair))["streams_cancelled"]
    try:
        body = {"args": {barrier: gate, "words": ["late"]}, "timeout_seconds": 0.5}
        async with http.post(f"{pair['url']}/v1/endpoints/fake/stream", json=body) as response:
            assert response.status == 504
            error = (await response.json())["error"]
        assert error["code"] == "timeout"

        async def model_saw_the_cancel() -> bool:
            return bool((await stats(http, pair))["streams_cancelled"] > cancelled_before)

        await async_wait_until(model_saw_the_cancel, timeout=10, what="the model's generator to be cancelled")
    finally:
        async with http.post(f"{pair['model_url']}/gates/{gate}") as opened:
            assert opened.status == 200
