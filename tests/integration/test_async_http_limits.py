"""The async API's refusals over real HTTP (a router subprocess, the fake model): a Redis that cannot keep fsync
durability (Debian's redis-server 7.0 with `appendfsync everysec`: no WAITAOF) fails readiness and refuses every
submission without storing it; a full backlog answers 429."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.integration.test_async_http import NAME, write_async_endpoint
from tests.integration.test_router_fake_model import start_model, start_router
from tests.support.valkey import Valkey, redis_servers
from tests.support.waiting import async_wait_until


@pytest.fixture
def model(tmp_path: Path) -> Iterator[str]:
    server, url = start_model(tmp_path)
    try:
        yield url
    finally:
        server.stop()


async def submit(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, str | None]:
    async with http.post(f"{url}/v1/endpoints/{NAME}/async", data=json.dumps(body).encode()) as response:
        return response.status, await response.json(content_type=None), response.headers.get("Retry-After")


async def test_a_redis_without_waitaof_or_fsync_always_fails_readiness_and_stores_nothing(
    tmp_path: Path, model: str, http: aiohttp.ClientSession
):
    server = Valkey(tmp_path / "redis70", binary=redis_servers()["redis"], extra=["--appendfsync", "everysec"]).start()
    router = None
    try:
        env = {"BUNDLESERVE_REDIS_URL": server.url, "BUNDLESERVE_RESULTS_DIR": str(tmp_path / "results")}
        router, url = start_router(tmp_path, write_async_endpoint(tmp_path), model, env=env)

        async def refused_readiness() -> Any:
            async with http.get(f"{url}/readyz") as response:
                body = await response.json(content_type=None)
                return body if response.status == 503 and "appendfsync" in json.dumps(body) else None

        body = await async_wait_until(refused_readiness, timeout=15, what="readiness to report the durability problem")
        assert body["error"]["code"] == "unavailable"
        for _ in range(3):
            code, refusal, _ = await submit(http, url, {"args": {"x": 1}})
            assert code == 503 and "appendfsync always" in refusal["error"]["message"]
            assert str(server.port) not in refusal["error"]["message"]
        client = redis.Redis(port=server.port)
        try:
            assert list(client.scan_iter(match="bundleserve:task:*")) == []
            assert client.xlen("bundleserve:{default/asynchttp}:stream") == 0  # the group exists, no entry
        finally:
            client.close()
    finally:
        if router is not None:
            router.stop()
        server.stop()


async def test_a_full_backlog_answers_429(tmp_path: Path, model: str, http: aiohttp.ClientSession, valkey: Valkey):
    env = {
        "BUNDLESERVE_REDIS_URL": valkey.url,
        "BUNDLESERVE_RESULTS_DIR": str(tmp_path / "results"),
        "BUNDLESERVE_QUEUE_MAX_BACKLOG": "1",
    }
    router, url = start_router(tmp_path, write_async_endpoint(tmp_path, invocationTimeoutSeconds=60), model, env=env)
    try:
        code, accepted, _ = await submit(http, url, {"args": {"sleep": 30}})  # unfinished while the test runs
        assert code == 202, accepted
        code, refusal, retry_after = await submit(http, url, {"args": {"x": 2}})
        assert code == 429 and refusal["error"]["code"] == "overloaded" and retry_after == "1"
    finally:
        router.stop()
