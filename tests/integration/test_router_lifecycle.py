"""Router lifecycle over real processes: readiness gating, graceful drain on SIGTERM, a model that crashes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.support.processes import http_ok
from tests.support.waiting import async_wait_until, wait_until


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/v1/endpoints/fake/predict", json={"args": args}) as response:
        return response.status, await response.json()


async def test_readiness_is_gated_on_the_model(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    marker = tmp_path / "loaded"
    model, model_url = start_model(tmp_path, ready_file=marker)
    router, url = start_router(tmp_path, write_endpoint(tmp_path), model_url)
    try:
        async with http.get(f"{url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "unavailable"
        status, body = await post(http, url, {})
        assert status == 503 and "not ready" in body["error"]["message"]
        async with http.get(f"{model_url}/stats") as response:
            assert (await response.json())["calls"] == 0

        marker.touch()
        became_ready = time.monotonic()
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=5, interval=0.005, what="router ready")
        # The router probes every 50 ms until the model is ready: routable well within a second.
        assert time.monotonic() - became_ready < 1.0
        assert (await post(http, url, {"ok": 1}))[0] == 200
    finally:
        router.stop()
        model.stop()


async def test_sigterm_drains_fifty_in_flight_requests_without_losing_any(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    model, model_url = start_model(tmp_path)
    endpoint = write_endpoint(tmp_path, invocation={"concurrency": 8, "maxQueued": 80, "timeoutSeconds": 10})
    router, url = start_router(tmp_path, endpoint, model_url)
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        drain_hook = asyncio.create_task(http.get(f"{url}/wait-for-drain"))
        calls = [asyncio.create_task(post(http, url, {"sleep": 0.3, "i": i})) for i in range(50)]

        async def all_admitted() -> bool:
            async with http.get(f"{url}/metrics") as response:
                text = await response.text()
            values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
            in_model = float(values['bundleserve_router_in_flight_requests{endpoint="fake"}'])
            queued = float(values['bundleserve_router_queued_requests{endpoint="fake"}'])
            return in_model + queued == 50

        await async_wait_until(all_admitted, timeout=10, interval=0.005, what="50 requests in the router")
        assert not drain_hook.done(), "the preStop hook must block until the router drains"
        router.signal(signal.SIGTERM)

        async def refusing() -> bool:
            async with http.get(f"{url}/readyz") as response:
                return response.status == 503

        await async_wait_until(refusing, timeout=5, interval=0.005, what="readiness to fail")
        late_status, late_body = await post(http, url, {"late": True})
        assert late_status == 503 and late_body["error"]["code"] == "unavailable"

        results = await asyncio.gather(*calls)
        assert [status for status, _ in results] == [200] * 50
        assert sorted(body["result"]["i"] for _, body in results) == list(range(50))
        hook = await asyncio.wait_for(drain_hook, 10)
        assert hook.status == 200 and (await hook.json())["drained"] is True
        assert router.process.wait(15) == 0
        async with http.get(f"{model_url}/stats") as response:
            stats = await response.json()
        assert stats["calls"] == 50 and stats["max_concurrent"] == 8
    finally:
        router.stop()
        model.stop()


async def test_after_sigterm_the_shutdown_delay_serves_new_calls_unready_and_a_second_signal_ends_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """BUNDLESERVE_SHUTDOWN_DELAY_SECONDS (set by the operator in pods): after SIGTERM the router fails readiness but
    still answers calls the cluster routes to it until the delay ends (a long one here, ended by a second signal),
    and its answers close their connection so keep-alive clients move to another replica. Without the delay a call
    arriving after SIGTERM gets 503 (the test above); a rolling update on the real node failed calls that way."""
    model, model_url = start_model(tmp_path)
    endpoint = write_endpoint(tmp_path, invocation={"timeoutSeconds": 10})
    router, url = start_router(tmp_path, endpoint, model_url, env={"BUNDLESERVE_SHUTDOWN_DELAY_SECONDS": "120"})
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        drain_hook = asyncio.create_task(http.get(f"{url}/wait-for-drain"))
        router.signal(signal.SIGTERM)

        async def unready() -> bool:
            async with http.get(f"{url}/readyz") as response:
                return response.status == 503

        await async_wait_until(unready, timeout=5, interval=0.005, what="readiness to fail")
        async with http.post(f"{url}/v1/endpoints/fake/predict", json={"args": {"late": True}}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["result"] == {"late": True}
            assert response.headers.get("Connection", "").lower() == "close"
        assert router.process.poll() is None and not drain_hook.done()
        router.signal(signal.SIGTERM)  # the delay ends: drain (nothing in flight) and exit
        assert router.process.wait(15) == 0
        hook = await asyncio.wait_for(drain_hook, 10)
        assert hook.status == 200 and (await hook.json())["drained"] is True
    finally:
        router.stop()
        model.stop()


async def test_model_crash_mid_request_is_a_424_and_the_router_survives(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    model, model_url = start_model(tmp_path)
    router, url = start_router(tmp_path, write_endpoint(tmp_path), model_url)
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        status, body = await post(http, url, {"crash": True})
        assert status == 424
        assert body["error"]["code"] == "model_error"
        assert "crash" in body["error"]["message"]
        # The router lives on, reports the model gone, and refuses honestly instead of failing with a 500.
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200
        wait_until(lambda: not http_ok(f"{url}/readyz"), timeout=5, what="readiness to follow the dead model")
        status, body = await post(http, url, {})
        assert status == 503
    finally:
        router.stop()
        model.stop()


async def test_model_crash_mid_stream_ends_the_stream_with_one_failure_event(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    model, model_url = start_model(tmp_path)
    router, url = start_router(tmp_path, write_endpoint(tmp_path), model_url)
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        args = {"args": {"words": ["a", "b", "c"], "crash_after": 2}}
        async with http.post(f"{url}/v1/endpoints/fake/stream", json=args) as response:
            assert response.status == 200
            events = [json.loads(line[6:]) async for line in response.content if line.startswith(b"data: ")]
        assert events[:2] == [{"status": "SUCCESS", "result": "a"}, {"status": "SUCCESS", "result": "b"}]
        assert len(events) == 3 and events[2]["status"] == "FAILURE"
        assert "closed the stream" in events[2]["error"]["message"]
    finally:
        router.stop()
        model.stop()
