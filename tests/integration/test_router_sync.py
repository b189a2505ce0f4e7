"""The router's sync API over real HTTP: a router subprocess in front of a fake model subprocess."""

from __future__ import annotations

import asyncio
import json
import pickle
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.support.processes import http_ok
from tests.support.waiting import wait_until

REPLY_LIMIT = 2048
LIMITS = {"concurrency": 2, "maxQueued": 2, "timeoutSeconds": 5, "maxPayloadBytes": REPLY_LIMIT}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("router-sync")
    model, model_url = start_model(directory)
    router = None
    try:
        endpoint = write_endpoint(directory, invocation=LIMITS)
        # The url-input tests fetch from this router itself, on loopback: the destination guard must allow it.
        env = {"BUNDLESERVE_RESULTS_DIR": str(directory / "results"), "BUNDLESERVE_URL_ALLOW": "127.0.0.0/8"}
        router, url = start_router(directory, endpoint, model_url, env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        yield {"url": url, "model_url": model_url, "router": router, "model": model}
    finally:
        if router is not None:
            router.stop()
        model.stop()


async def predict(http: aiohttp.ClientSession, url: str, body: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"{url}/v1/endpoints/fake/predict", data=data, **kwargs) as response:
        return response.status, await response.json(content_type=None), response.headers


async def model_stats(http: aiohttp.ClientSession, pair: dict[str, Any], reset: bool = False) -> dict[str, Any]:
    if reset:
        async with http.post(f"{pair['model_url']}/stats/reset") as response:
            result: dict[str, Any] = await response.json()
            return result
    async with http.get(f"{pair['model_url']}/stats") as response:
        result = await response.json()
        return result


async def test_predict_returns_the_model_result(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    status, body, _ = await predict(http, pair["url"], {"args": {"x": [1, 2, 3], "name": "é"}})
    assert status == 200
    assert body == {
        "status": "SUCCESS",
        "result": {"x": [1, 2, 3], "name": "é"},
        "result_url": None,
        "traceback": None,
        "status_code": 200,
    }


async def test_model_error_is_424_with_the_model_status_and_traceback(
    pair: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    status, body, _ = await predict(http, pair["url"], {"args": {"fail": "bad input"}})
    assert status == 424
    assert body["error"]["code"] == "model_error"
    assert body["error"]["status_code"] == 500
    assert "bad input" in body["error"]["message"]
    assert body["error"]["traceback"] == "Traceback: bad input"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"args": {"a": 1}, "url": "http://example.invalid/x"}).encode(), "exactly one of args or url"),
        (json.dumps({}).encode(), "exactly one of args or url"),
        (json.dumps({"args": [1, 2]}).encode(), "keyword arguments"),
        (json.dumps({"args": {}, "surprise": 1}).encode(), "surprise"),
        (json.dumps({"url": "ftp://example.invalid/data.bin"}).encode(), "scheme 'ftp' is not allowed"),
    ],
)
async def test_invalid_requests_get_400(
    pair: dict[str, Any], http: aiohttp.ClientSession, body: bytes, fragment: str
) -> None:
    stats_before = await model_stats(http, pair)
    status, answer, _ = await predict(http, pair["url"], body)
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_request"
    assert fragment in answer["error"]["message"]
    assert (await model_stats(http, pair))["calls"] == stats_before["calls"], "a bad request must not reach the model"


async def test_url_input_is_fetched_and_sent_raw(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    source = f"{pair['url']}/healthz"  # any small HTTP resource will do: the router's own probe
    async with http.get(source) as response:
        expected = len(await response.read())
    status, body, _ = await predict(http, pair["url"], {"url": source})
    assert status == 200, body
    assert body["result"] == {"raw_bytes": expected, "content_type": "application/json"}


async def test_oversized_url_content_is_413(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    status, body, _ = await predict(http, pair["url"], {"url": f"{pair['url']}/metrics"})  # metrics text > 2 KiB
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large"


async def test_oversized_body_is_413_from_content_length(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    status, body, _ = await predict(http, pair["url"], {"args": {"blob": "x" * 4096}})
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert "4" in body["error"]["message"] and "2048" in body["error"]["message"]


async def test_oversized_chunked_body_is_413(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"args": {"blob": "'
        for _ in range(64):
            yield b"x" * 256
        yield b'"}}'

    async with http.post(f"{pair['url']}/v1/endpoints/fake/predict", data=chunks()) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_timeout_is_504(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    gate = new_gate()
    try:
        status, body, _ = await predict(http, pair["url"], {"args": {"hold": gate}, "timeout_seconds": 0.3})
    finally:
        await open_gate(http, pair, gate)
    assert status == 504
    assert body["error"]["code"] == "timeout"
    assert "0.3 s" in body["error"]["message"]


async def test_time_waiting_in_the_queue_counts_toward_the_timeout(
    pair: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    await model_stats(http, pair, reset=True)
    gate = new_gate()
    busy = [asyncio.create_task(predict(http, pair["url"], {"args": {"hold": gate}})) for _ in range(2)]
    try:
        await wait_until_async(lambda: waiting_at(http, pair, gate), lambda n: n == 2)
        status, body, _ = await predict(http, pair["url"], {"args": {"quick": True}, "timeout_seconds": 0.3})
    finally:
        await open_gate(http, pair, gate)
    assert status == 504, body
    assert [result[0] for result in await asyncio.gather(*busy)] == [200, 200]
    assert (await model_stats(http, pair))["calls"] == 2, "the timed-out request never reached the model"


async def test_overload_rejects_exactly_the_excess_and_never_exceeds_the_limit(
    pair: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    await model_stats(http, pair, reset=True)
    gate = new_gate()
    # concurrency 2 + maxQueued 2: of 7 simultaneous requests, 4 are admitted and 3 refused at once.
    calls = [asyncio.create_task(predict(http, pair["url"], {"args": {"hold": gate}})) for _ in range(7)]
    try:
        await wait_until_async(lambda: _done(calls), lambda n: n == 3, timeout=30)  # the refusals do not wait
        assert await waiting_at(http, pair, gate) == 2  # two in the model, two in the router's line
    finally:
        await open_gate(http, pair, gate)
    results = await asyncio.gather(*calls)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 4 + [429] * 3
    for status, body, headers in results:
        if status == 429:
            assert body["error"]["code"] == "overloaded"
            assert int(headers["Retry-After"]) >= 1
    stats = await model_stats(http, pair)
    assert stats["max_concurrent"] == 2
    assert stats["calls"] == 4


async def _done(calls: list[asyncio.Task[Any]]) -> int:
    return sum(call.done() for call in calls)


async def test_invalid_arguments_of_the_bundle_runtime_are_400_naming_the_argument(
    pair: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    """The runtime's 400 invalid_arguments is the client's mistake (400), not a model failure (424)."""
    status, body, _ = await predict(http, pair["url"], {"args": {"invalid": "colour"}})
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert "colour" in body["error"]["message"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_model_reply_over_the_limit_is_refused_without_buffering_it(
    pair: dict[str, Any], http: aiohttp.ClientSession, chunked: bool
) -> None:
    """A 200 MB answer is refused (424 reply_too_large) from its Content-Length, or as soon as a chunked one passes
    the limit; the router's memory stays bounded either way."""
    router = pair["router"]
    before = rss_bytes(router.process.pid)
    status, body, _ = await predict(http, pair["url"], {"args": {"big": 200 * 1024 * 1024, "chunked": chunked}})
    assert status == 424, body
    assert body["error"]["code"] == "reply_too_large"
    assert str(REPLY_LIMIT) in body["error"]["message"]
    grown = rss_bytes(router.process.pid) - before
    assert grown < 150 * 1024 * 1024, f"the router grew by {grown} bytes"
    status, body, _ = await predict(http, pair["url"], {"args": {"x": 1}})  # the router still serves
    assert (status, body["result"]) == (200, {"x": 1})


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def new_gate() -> str:
    return uuid.uuid4().hex


async def open_gate(http: aiohttp.ClientSession, pair: dict[str, Any], gate: str) -> None:
    async with http.post(f"{pair['model_url']}/gates/{gate}") as response:
        assert response.status == 200


async def waiting_at(http: aiohttp.ClientSession, pair: dict[str, Any], gate: str) -> int:
    async with http.get(f"{pair['model_url']}/gates/{gate}") as response:
        return int((await response.json())["waiting"])


async def test_a_malformed_result_id_is_400(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    """The stored-result route of a router without the async API answers like the async API's (one mapping)."""
    async with http.get(f"{pair['url']}/v1/tasks/bad..id/result") as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"


async def test_return_pickled_stores_the_result(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    status, body, _ = await predict(http, pair["url"], {"args": {"value": [1, 2]}, "return_pickled": True})
    assert status == 200, body
    assert body["result"] is None
    assert body["result_url"].startswith(pair["url"] + "/v1/tasks/") and body["result_url"].endswith("/result")
    async with http.get(body["result_url"]) as response:
        assert response.status == 200
        assert response.content_type == "application/vnd.bundleserve.pickle"
        assert pickle.loads(await response.read()) == {"value": [1, 2]}


async def test_unknown_endpoint_and_route_are_404_in_the_error_shape(
    pair: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{pair['url']}/v1/endpoints/other/predict", json={"args": {}}) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    async with http.get(f"{pair['url']}/nowhere") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    async with http.get(f"{pair['url']}/v1/endpoints/fake/predict") as response:
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_metrics_count_requests_by_outcome(pair: dict[str, Any], http: aiohttp.ClientSession) -> None:
    await predict(http, pair["url"], {"args": {}})
    await predict(http, pair["url"], {"args": {"fail": "x"}})
    async with http.get(f"{pair['url']}/metrics") as response:
        text = await response.text()
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert lines['bundleserve_router_requests_total{endpoint="fake",mode="sync",outcome="success"}'] >= 1
    assert lines['bundleserve_router_requests_total{endpoint="fake",mode="sync",outcome="model_error"}'] >= 1
    assert lines['bundleserve_router_request_duration_seconds_count{endpoint="fake",mode="sync"}'] >= 2
    assert 'bundleserve_router_in_flight_requests{endpoint="fake"}' in lines
    assert 'bundleserve_router_queue_wait_seconds_count{endpoint="fake",mode="sync"}' in lines


async def wait_until_async(fetch: Any, predicate: Any, timeout: float = 5.0) -> Any:
    from tests.support.waiting import async_wait_until

    async def check() -> Any:
        value = await fetch()
        return value if predicate(value) else None

    return await async_wait_until(check, timeout=timeout, what="model state")


def test_endpoint_file_errors_exit_2(tmp_path: Path) -> None:
    import subprocess

    from tests.support.processes import bundleserve

    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Endpoint\napiVersion: bundleserve.dev/v1alpha1\nmetadata: {name: x}\nspec: {modes: []}\n")
    done = subprocess.run(
        bundleserve("router", "--endpoint-file", str(bad), "--model-url", "http://127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("bundleserve router: ") and "modes" in done.stderr


def test_a_taken_port_exits_1_with_a_reason(tmp_path: Path) -> None:
    import socket
    import subprocess

    from tests.support.processes import bundleserve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            bundleserve(
                "router", "--endpoint-file", str(write_endpoint(tmp_path)), "--model-url", "http://127.0.0.1:1",
                "--host", "127.0.0.1", "--port", str(port),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
