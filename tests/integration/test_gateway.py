"""The gateway over real HTTP: a real router process in front of the fake model, a real valkey-server, the gateway
application listening on loopback. Proxying, the body limit, disconnects, async at zero replicas, keys, listings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cloudpickle
import pytest
from aiohttp import web

from bundleserve.api.credentials import KeysFile
from bundleserve.api.manifest import load_endpoints
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.gateway.app import GATEWAY, GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import EndpointEntry, Registry
from bundleserve.gateway.server import Front
from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.support.processes import free_port, http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until, wait_until

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("gateway")
    valkey = Valkey(directory / "valkey").start()
    model, model_url = start_model(directory)
    router = None
    try:
        endpoint_file = write_endpoint(
            directory, modes=("sync", "streaming"), invocation={"maxPayloadBytes": LIMIT, "timeoutSeconds": 10}
        )
        router, url = start_router(directory, endpoint_file, model_url)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
        yield {
            "directory": directory,
            "router_url": url,
            "model_url": model_url,
            "endpoint_file": endpoint_file,
            "valkey": valkey,
        }
    finally:
        if router is not None:
            router.stop()
        model.stop()
        valkey.stop()


def entry_for(path: Path, router_url: str) -> EndpointEntry:
    [(_, endpoint)] = load_endpoints([path])
    return EndpointEntry(endpoint=endpoint, router_url=router_url, ready=True)


class _Served:
    """A gateway listening as `bundleserve gateway` listens (`gateway.server.Front`: the fast edge, aiohttp behind it),
    so every test here also goes through the fast edge's hot paths and its hand-over."""

    def __init__(self, front: Front) -> None:
        self.front = front

    async def cleanup(self) -> None:
        await self.front.stop()


async def serve(app: web.Application) -> tuple[web.AppRunner | _Served, str]:
    port = free_port()
    if GATEWAY not in app:  # a stand-in router
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, f"http://127.0.0.1:{port}"
    front = Front(app, ConnectionLimits())
    await front.start("127.0.0.1", port)
    return _Served(front), f"http://127.0.0.1:{port}"


@pytest.fixture
async def gateway(backend: dict[str, Any]) -> AsyncIterator[str]:
    registry = Registry([entry_for(backend["endpoint_file"], backend["router_url"])])
    runner, url = await serve(build_gateway_app(registry, GatewayConfig(redis_url=backend["valkey"].url)))
    try:
        yield url
    finally:
        await runner.cleanup()


async def model_stats(http: aiohttp.ClientSession, backend: dict[str, Any]) -> dict[str, Any]:
    async with http.get(f"{backend['model_url']}/stats") as response:
        found: dict[str, Any] = await response.json()
        return found


async def test_predict_is_proxied_to_the_router(gateway: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gateway}/v1/endpoints/fake/predict", json={"args": {"x": [1, 2]}}) as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "SUCCESS"
    assert body["result"] == {"x": [1, 2]}


async def test_router_errors_pass_through_unchanged(gateway: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gateway}/v1/endpoints/fake/predict", json={"args": {"fail": "no"}}) as response:
        assert response.status == 424
        assert (await response.json())["error"]["code"] == "model_error"


async def test_stream_events_arrive_one_by_one(gateway: str, http: aiohttp.ClientSession) -> None:
    args = {"args": {"words": ["a", "b", "c"], "delay": 0.05}}
    async with http.post(f"{gateway}/v1/endpoints/fake/stream", json=args) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        results = [json.loads(line[6:])["result"] async for line in response.content if line.startswith(b"data: ")]
    assert results == ["a", "b", "c"]


async def test_client_disconnect_reaches_the_model(
    gateway: str, http: aiohttp.ClientSession, backend: dict[str, Any]
) -> None:
    before = (await model_stats(http, backend))["streams_cancelled"]
    args = {"args": {"words": [str(i) for i in range(200)], "delay": 0.2}}
    response = await http.post(f"{gateway}/v1/endpoints/fake/stream", json=args)
    assert json.loads((await response.content.readline())[6:])["result"] == "0"
    response.close()

    async def cancelled() -> bool:
        return bool((await model_stats(http, backend))["streams_cancelled"] == before + 1)

    await async_wait_until(cancelled, timeout=10, what="the model's stream to be cancelled through two hops")


async def test_chunked_body_over_the_limit_is_413_and_never_reaches_the_model(
    gateway: str, http: aiohttp.ClientSession, backend: dict[str, Any]
) -> None:
    before = (await model_stats(http, backend))["calls"]

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"args": {"x": "'
        for _ in range(4):
            yield b"a" * (LIMIT // 2)
        yield b'"}}'

    async with http.post(f"{gateway}/v1/endpoints/fake/predict", data=chunks()) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"
    assert (await model_stats(http, backend))["calls"] == before


async def test_declared_length_over_the_limit_is_refused_before_reading(
    gateway: str, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gateway}/v1/endpoints/fake/predict", data=b"x" * (LIMIT + 1)) as response:
        assert response.status == 413


async def test_a_chunked_body_under_the_limit_is_forwarded_whole(gateway: str, http: aiohttp.ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"args": {"x": "'
        yield b"b" * 1000
        yield b'"}}'

    async with http.post(f"{gateway}/v1/endpoints/fake/predict", data=chunks()) as response:
        assert response.status == 200
        assert (await response.json())["result"] == {"x": "b" * 1000}


async def test_unknown_endpoint_and_mode_not_served(gateway: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gateway}/v1/endpoints/nope/predict", json={"args": {}}) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    async with http.post(f"{gateway}/v1/endpoints/fake/async", json={"args": {}}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "mode_not_served"


async def test_listing_and_describing_endpoints(gateway: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway}/v1/endpoints") as response:
        assert await response.json() == {"endpoints": [{"name": "fake", "modes": ["sync", "streaming"], "ready": True}]}
    async with http.get(f"{gateway}/v1/endpoints/fake") as response:
        assert await response.json() == {"name": "fake", "modes": ["sync", "streaming"], "ready": True}
    async with http.get(f"{gateway}/v1/endpoints/nope") as response:
        assert response.status == 404


async def test_an_unreachable_router_is_503(backend: dict[str, Any], http: aiohttp.ClientSession) -> None:
    registry = Registry([entry_for(backend["endpoint_file"], f"http://127.0.0.1:{free_port()}")])
    runner, url = await serve(build_gateway_app(registry, GatewayConfig()))
    try:
        async with http.post(f"{url}/v1/endpoints/fake/predict", json={"args": {}}) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "unavailable"
    finally:
        await runner.cleanup()


async def test_api_keys_are_required_when_configured(backend: dict[str, Any], http: aiohttp.ClientSession) -> None:
    registry = Registry([entry_for(backend["endpoint_file"], backend["router_url"])])
    runner, url = await serve(build_gateway_app(registry, GatewayConfig(api_keys=frozenset({"s3cret"}))))
    try:
        async with http.post(f"{url}/v1/endpoints/fake/predict", json={"args": {}}) as response:
            assert response.status == 401
            assert "Bearer" in response.headers["WWW-Authenticate"]
        async with http.get(f"{url}/v1/endpoints") as response:
            assert response.status == 401
        headers = {"Authorization": "Bearer s3cret"}
        async with http.post(f"{url}/v1/endpoints/fake/predict", json={"args": {"k": 1}}, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["result"] == {"k": 1}
    finally:
        await runner.cleanup()


async def test_async_is_accepted_with_no_router_then_finishes_when_one_starts(
    backend: dict[str, Any], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    endpoint_file = write_endpoint(tmp_path, name="later", modes=("async",))
    router_port = free_port()
    registry = Registry([entry_for(endpoint_file, f"http://127.0.0.1:{router_port}")])
    valkey: Valkey = backend["valkey"]
    results = tmp_path / "results"
    config = GatewayConfig(redis_url=valkey.url, results_dir=results)
    runner, url = await serve(build_gateway_app(registry, config))
    router = None
    try:
        async with http.post(f"{url}/v1/endpoints/later/async", json={"args": {"n": 7}}) as response:
            assert response.status == 202, await response.text()
            task_id = (await response.json())["task_id"]
        pickled = {"args": {"p": 1}, "return_pickled": True}
        async with http.post(f"{url}/v1/endpoints/later/async", json=pickled) as response:
            assert response.status == 202, await response.text()
            pickled_id = (await response.json())["task_id"]
        async with http.get(f"{url}/v1/tasks/{task_id}") as response:
            assert (await response.json())["status"] == "PENDING"
        router, _ = start_router(
            tmp_path,
            endpoint_file,
            backend["model_url"],
            env={"BUNDLESERVE_REDIS_URL": valkey.url, "BUNDLESERVE_RESULTS_DIR": str(results)},
        )
        async with http.get(f"{url}/v1/tasks/{task_id}", params={"wait": "20"}) as response:
            body = await response.json()
        assert body["status"] == "SUCCESS", body
        assert body["result"] == {"n": 7}
        async with http.get(f"{url}/v1/tasks/{pickled_id}", params={"wait": "20"}) as response:
            body = await response.json()
        assert body["status"] == "SUCCESS", body
        assert body["result_url"] == f"{url}/v1/tasks/{pickled_id}/result"  # absolute, fetchable as it is
        async with http.get(body["result_url"]) as response:
            assert response.status == 200
            assert cloudpickle.loads(await response.read()) == {"p": 1}
    finally:
        if router is not None:
            router.stop()
        await runner.cleanup()


async def test_async_without_redis_is_503(backend: dict[str, Any], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    endpoint_file = write_endpoint(tmp_path, name="queued", modes=("async",))
    registry = Registry([entry_for(endpoint_file, backend["router_url"])])
    runner, url = await serve(build_gateway_app(registry, GatewayConfig()))
    try:
        async with http.post(f"{url}/v1/endpoints/queued/async", json={"args": {}}) as response:
            assert response.status == 503
    finally:
        await runner.cleanup()


async def test_unknown_task_is_404(gateway: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway}/v1/tasks/{'0' * 32}") as response:
        assert response.status == 404


async def test_docs_page_and_its_assets_are_served_locally(gateway: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway}/docs") as response:
        assert response.status == 200
        page = await response.text()
    assert "https://" not in page and "http://" not in page  # no CDN
    assert "/openapi.json" in page
    async with http.get(f"{gateway}/docs/assets/swagger-ui-bundle.js") as response:
        assert response.status == 200
        assert len(await response.read()) > 100_000
    async with http.get(f"{gateway}/openapi.json") as response:
        paths = (await response.json())["paths"]
    assert {"/v1/endpoints", "/v1/endpoints/{name}", "/v1/endpoints/{name}/predict"} <= set(paths)


async def test_cookies_of_one_client_never_reach_another(backend: dict[str, Any], http: aiohttp.ClientSession) -> None:
    """The upstream here is a small aiohttp app standing in for a router that sets a cookie (no router does): the
    property under test is the gateway's own client session, which must not keep a cookie jar."""

    async def predict(request: web.Request) -> web.Response:
        response = web.json_response({"cookie": request.headers.get("Cookie")})
        response.set_cookie("session", "client-a")
        return response

    upstream = web.Application()
    upstream.router.add_post("/v1/endpoints/fake/predict", predict)
    upstream_runner, upstream_url = await serve(upstream)
    # by host name, as a Service is addressed (aiohttp's default jar ignores cookies of bare IP addresses)
    registry = Registry([entry_for(backend["endpoint_file"], upstream_url.replace("127.0.0.1", "localhost"))])
    runner, url = await serve(build_gateway_app(registry, GatewayConfig()))
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
            for _ in range(2):
                async with client.post(f"{url}/v1/endpoints/fake/predict", json={"args": {}}) as response:
                    assert response.headers["Set-Cookie"].startswith("session=client-a")
                    assert (await response.json())["cookie"] is None
    finally:
        await runner.cleanup()
        await upstream_runner.cleanup()


async def test_a_namespace_key_opens_its_namespace_only_and_routers_get_the_endpoints_gateway_key(
    backend: dict[str, Any], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Issue 17 (1): keys scoped to namespaces. The gateway refuses (404, as an unknown name) an endpoint outside the
    key's namespaces, and calls the router with that endpoint's gateway key, never the client's key: a router keyed
    with only its gateway key answers the gateway and refuses the client's key sent to it directly."""
    master = KeysFile.parse("k-default default\nk-other other\nk-admin\n")
    entry = entry_for(backend["endpoint_file"], backend["router_url"])
    keys_file = tmp_path / "router-keys"
    keys_file.write_text(master.router_file(entry.namespace, entry.name).splitlines()[0] + "\n")  # gateway key only
    router, router_url = start_router(
        tmp_path, backend["endpoint_file"], backend["model_url"], env={"BUNDLESERVE_API_KEYS_FILE": str(keys_file)}
    )
    runner = None
    try:
        wait_until(lambda: http_ok(f"{router_url}/readyz"), timeout=20, what="keyed router ready")
        registry = Registry([entry_for(backend["endpoint_file"], router_url)])
        runner, url = await serve(build_gateway_app(registry, GatewayConfig(keys_file=master)))
        predict = f"{url}/v1/endpoints/{entry.name}/predict"
        for key, expected in (("k-default", 200), ("k-admin", 200), ("k-other", 404), ("nope", 401)):
            async with http.post(predict, json={"args": {"k": 1}}, headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == expected, (key, await r.text())
        async with http.get(f"{url}/v1/endpoints/{entry.name}", headers={"Authorization": "Bearer k-other"}) as r:
            assert r.status == 404
        async with http.get(f"{url}/v1/endpoints", headers={"Authorization": "Bearer k-other"}) as r:
            assert (await r.json())["endpoints"] == []
        async with http.get(f"{url}/v1/endpoints", headers={"Authorization": "Bearer k-default"}) as r:
            assert [item["name"] for item in (await r.json())["endpoints"]] == [entry.name]
        direct = f"{router_url}/v1/endpoints/{entry.name}/predict"
        async with http.post(direct, json={"args": {}}, headers={"Authorization": "Bearer k-default"}) as response:
            assert response.status == 401  # the router holds no client key: the gateway's own key opened it
    finally:
        if runner is not None:
            await runner.cleanup()
        router.stop()
