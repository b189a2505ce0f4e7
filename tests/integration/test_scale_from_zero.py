"""Scale from zero with real processes: the gateway's activator (in-process aiohttp app) in front of a real router and
model, and a real Valkey carrying the demand.

- sync and streaming calls at zero replicas (through the fast edge and through aiohttp) are held (not answered, the
  demand key says 1 held, a wake message went out) and answered once the registry reports a ready replica; a call
  past its deadline is 504 `timeout`; beyond the hold limit 429 `overloaded`.

The operator's side (a wake scales a sync Endpoint at zero up, the tick returns it to zero) runs on the real API
server in test_operator_queue.py. What stands in here: the registry update that says "a replica is ready" (in a
cluster the Endpoint watch delivers it from the status the operator writes; tests/integration/
test_node_scale_from_zero.py runs that whole path on the real node).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
import yaml

from bundleserve.api.manifest import load_endpoints
from bundleserve.dialects.sagemaker.sigv4 import SigV4Config
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.gateway.activator import HoldSettings
from bundleserve.gateway.app import GATEWAY, GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import EndpointEntry, Registry
from bundleserve.gateway.server import Front
from bundleserve.queue import demand, keys
from tests.integration.test_router_fake_model import start_model, start_router
from tests.support.processes import free_port, http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until, wait_until

NAME = "cold"
QUEUE = keys.queue_id("default", NAME)


def write_cold_endpoint(directory: Path, timeout_seconds: int = 30) -> Path:
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": NAME},
        "spec": {
            "modes": ["sync", "streaming"],
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "fake:predict"}},
            "invocation": {"timeoutSeconds": timeout_seconds},
            "scaling": {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 10},
        },
    }
    path = directory / f"{NAME}-{timeout_seconds}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("scale-from-zero")
    valkey = Valkey(directory / "valkey").start()
    model, model_url = start_model(directory)
    router = None
    try:
        router, url = start_router(directory, write_cold_endpoint(directory), model_url)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
        yield {"directory": directory, "router_url": url, "valkey": valkey}
    finally:
        if router is not None:
            router.stop()
        model.stop()
        valkey.stop()


def cold_entry(backend: dict[str, Any], timeout_seconds: int = 30) -> EndpointEntry:
    [(_, endpoint)] = load_endpoints([write_cold_endpoint(backend["directory"], timeout_seconds)])
    return EndpointEntry(endpoint=endpoint, router_url=backend["router_url"], ready=True, ready_replicas=0)


async def serve(registry: Registry, backend: dict[str, Any], **config: Any) -> tuple[Front, str]:
    """The gateway as `bundleserve gateway` listens: the fast edge (small native calls) with aiohttp behind it."""
    app = build_gateway_app(registry, GatewayConfig(redis_url=backend["valkey"].url, **config))
    front = Front(app, ConnectionLimits())
    port = free_port()
    await front.start("127.0.0.1", port)
    return front, f"http://127.0.0.1:{port}"


@pytest.fixture
async def wakes(backend: dict[str, Any]) -> AsyncIterator[list[str]]:
    """Every wake message, as the operator's listener receives them."""
    received: list[str] = []
    listener = asyncio.create_task(demand.listen_for_wakes(backend["valkey"].url, received.append))
    client = aioredis.Redis.from_url(backend["valkey"].url)
    try:  # subscribed once a probe message comes through
        await async_wait_until(
            lambda: _published_and_seen(client, received), timeout=10, what="the wake listener subscribed"
        )
        received.clear()
        yield received
    finally:
        listener.cancel()
        await client.aclose()


async def _published_and_seen(client: aioredis.Redis, received: list[str]) -> bool:
    await client.publish(keys.wake_channel("probe/probe"), "0")
    await asyncio.sleep(0.05)
    return "probe/probe" in received


async def test_calls_at_zero_are_held_until_a_replica_is_ready_and_demand_reaches_redis(
    backend: dict[str, Any], wakes: list[str]
) -> None:
    cold = cold_entry(backend)
    registry = Registry([cold])
    runner, url = await serve(registry, backend)
    store = redis.Redis.from_url(backend["valkey"].url)
    try:
        async with aiohttp.ClientSession() as http:

            async def predict() -> tuple[int, Any]:
                async with http.post(f"{url}/v1/endpoints/{NAME}/predict", json={"args": {"n": 1}}) as reply:
                    return reply.status, await reply.json()

            async def stream() -> tuple[int, str]:
                async with http.post(
                    f"{url}/v1/endpoints/{NAME}/stream", json={"args": {"words": ["a", "b", "c"]}}
                ) as reply:
                    return reply.status, await reply.text()

            async def chunked() -> tuple[int, Any]:
                """No Content-Length: the fast edge hands it to aiohttp (`Gateway.forward_to`)."""

                async def body() -> AsyncIterator[bytes]:
                    yield b'{"args": {"n": '
                    yield b"2}}"

                headers = {"Content-Type": "application/json"}
                async with http.post(f"{url}/v1/endpoints/{NAME}/predict", data=body(), headers=headers) as reply:
                    return reply.status, await reply.json()

            calls = [asyncio.create_task(predict()), asyncio.create_task(stream()), asyncio.create_task(chunked())]
            await async_wait_until(lambda: _true(QUEUE in wakes), timeout=10, what="a wake message")
            await async_wait_until(
                lambda: _true(store.get(keys.demand(QUEUE)) in (b"1", b"2", b"3")), timeout=10, what="the demand key"
            )
            assert 0 < store.pttl(keys.demand(QUEUE)) <= 10_000  # scaleToZeroAfterSeconds
            assert not any(call.done() for call in calls)  # held: nothing answered at zero replicas
            registry.put(replace(cold, ready_replicas=1))  # what the watch reports once a replica is ready
            (status, body), (stream_status, events), (chunked_status, chunked_body) = await asyncio.wait_for(
                asyncio.gather(*calls), timeout=30
            )
        assert (status, body["result"]) == (200, {"n": 1})
        assert (chunked_status, chunked_body["result"]) == (200, {"n": 2})
        assert stream_status == 200
        results = [json.loads(line[5:])["result"] for line in events.splitlines() if line.startswith("data:")]
        assert results == ["a", "b", "c"], events
        # After the calls the report is refreshed once more and the key lives its TTL on: the endpoint is in use.
        await async_wait_until(lambda: _true(store.get(keys.demand(QUEUE)) == b"0"), timeout=10, what="held 0")
    finally:
        store.close()
        await runner.stop()


async def test_a_call_held_past_its_deadline_is_504_and_one_beyond_the_limit_is_429(backend: dict[str, Any]) -> None:
    cold = cold_entry(backend, timeout_seconds=1)
    registry = Registry([cold])
    runner, url = await serve(registry, backend, hold=HoldSettings(max_held=1))
    try:
        async with aiohttp.ClientSession() as http:
            first = asyncio.create_task(http.post(f"{url}/v1/endpoints/{NAME}/predict", json={"args": {"n": 1}}))
            await async_wait_until(lambda: _true(_held(runner) == 1), timeout=10, what="one call held")
            async with http.post(f"{url}/v1/endpoints/{NAME}/predict", json={"args": {"n": 2}}) as full:
                assert full.status == 429
                assert full.headers["Retry-After"] == "1"
                assert (await full.json())["error"]["code"] == "overloaded"
            async with await first as late:
                assert late.status == 504
                error = (await late.json())["error"]
            assert error["code"] == "timeout"
            assert "no replica of endpoint cold was ready" in error["message"]
    finally:
        await runner.stop()


async def test_the_first_call_after_a_quiet_spell_is_reported_at_once(backend: dict[str, Any]) -> None:
    """A warm endpoint whose demand key may be about to expire: the first call writes it now (here the periodic
    report is an hour away), so the operator does not scale the replica away under that call."""
    warm = replace(cold_entry(backend), ready_replicas=1)
    runner, url = await serve(Registry([warm]), backend, hold=HoldSettings(report_seconds=3600))
    store = redis.Redis.from_url(backend["valkey"].url)
    store.delete(keys.demand(QUEUE))
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/v1/endpoints/{NAME}/predict", json={"args": {"n": 3}}) as reply,
        ):
            assert reply.status == 200
        await async_wait_until(lambda: _true(store.exists(keys.demand(QUEUE)) == 1), timeout=10, what="the key")
        assert 0 < store.pttl(keys.demand(QUEUE)) <= 10_000
    finally:
        store.close()
        await runner.stop()


def _held(runner: Front) -> int:
    load = runner.app[GATEWAY].activator.loads.get(("default", NAME))
    return 0 if load is None else load.held


async def _true(value: bool) -> bool:
    return value


async def test_a_dialect_call_at_zero_is_held_until_a_replica_is_ready(backend: dict[str, Any]) -> None:
    """A SageMaker InvokeEndpoint on the fast edge (a `WholeCall`) is held at zero replicas, then answered in
    SageMaker's shape: even on a warm pool it is not sent on the shortest path while the endpoint may be at zero, but
    through the activator (`GatewayConnection._call`)."""
    cold = cold_entry(backend)
    registry = Registry([replace(cold, ready_replicas=1)])  # warm first: the pool then holds an idle connection
    runner, url = await serve(registry, backend, sagemaker_signing=SigV4Config(allow_unsigned=True))
    store = redis.Redis.from_url(backend["valkey"].url)
    try:
        async with aiohttp.ClientSession() as http:

            async def invoke() -> tuple[int, Any, str]:
                async with http.post(f"{url}/endpoints/{NAME}/invocations", json={"n": 3}) as reply:
                    return reply.status, await reply.json(), reply.headers["X-Amzn-Invoked-Production-Variant"]

            assert (await invoke())[0] == 200
            registry.put(cold)  # the replica went away (scaled to zero)
            call = asyncio.create_task(invoke())
            await async_wait_until(
                lambda: _true(store.get(keys.demand(QUEUE)) == b"1"), timeout=10, what="the call held (demand 1)"
            )
            assert not call.done()  # held: nothing answered at zero replicas
            registry.put(replace(cold, ready_replicas=1))
            status, body, variant = await asyncio.wait_for(call, timeout=30)
        assert (status, body, variant) == (200, {"n": 3}, "AllTraffic")
    finally:
        store.close()
        await runner.stop()
