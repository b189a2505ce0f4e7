"""The Launch dialect on the gateway: the tests of tests/integration/test_launch_dialect.py (a representative
subset: the unmodified scale-launch 0.3.3 client and model-engine's `/v1` routes) re-collected with `launch_target`
pointing at one gateway application in front of the two real routers, API keys on both (one key, as the chart mounts
one Secret in both). The gateway runs on its own event loop in a thread, so the client subprocesses can call it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import Registry
from tests.integration.test_gateway_fastpath import read_answer
from tests.integration.test_launch_dialect import (  # noqa: F401 - the tests, re-collected against the gateway
    API_KEY,
    ASYNC,
    SYNC,
    LaunchTarget,
    _endpoint_file,
    launch_python,
    launch_routers,
    test_a_wrong_api_key_is_refused,
    test_an_unknown_endpoint_is_none,
    test_async_predict_and_future_get,
    test_async_predict_return_pickled,
    test_get_async_response_polls_to_the_result,
    test_get_async_response_reports_a_failure_and_a_pickled_result,
    test_get_model_endpoint_gives_the_endpoint_types,
    test_legacy_refusals,
    test_legacy_task_result_of_an_unknown_task_is_404,
    test_list_model_endpoints,
    test_list_model_endpoints_needs_the_api_key,
    test_sync_failure_carries_the_traceback,
    test_sync_predict_return_pickled_by_default,
    test_v1_async_task,
    test_v1_model_endpoints_by_name,
    test_v1_streaming_failure_mid_stream,
    test_v1_streaming_task,
    test_v1_sync_task,
    test_v1_sync_task_pickled,
    test_v1_unknown_task_and_endpoint,
    test_v1_wrong_mode_and_bad_body,
)
from tests.integration.test_sagemaker_on_gateway import ThreadedGateway, entry_for
from tests.support.valkey import Valkey


@pytest.fixture(scope="module")
def launch_target(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[LaunchTarget]:
    directory = tmp_path_factory.mktemp("launch-gateway")
    with launch_routers(directory, valkey_server) as routers:
        modes = {SYNC: ["sync", "streaming", "async"], ASYNC: ["async"]}
        entries = [entry_for(_endpoint_file(directory, name, modes[name]), routers.url(name)) for name in modes]
        config = GatewayConfig(
            redis_url=valkey_server.url, api_keys=frozenset({API_KEY}), results_dir=Path(directory / "results")
        )
        app = ThreadedGateway(build_gateway_app(Registry(entries), config))
        url = app.start()
        try:
            yield LaunchTarget(urls={SYNC: url, ASYNC: url}, api_key=API_KEY, servers=[app])
        finally:
            app.stop()


async def test_sync_and_streaming_tasks_are_served_by_the_gateways_fast_edge(launch_target: LaunchTarget) -> None:
    """Legacy `task_sync`, v1 `sync-tasks` and v1 `streaming-tasks` on one connection, answered by the gateway's
    fast edge itself (`GatewayEdge.dialects`): the connection is still the fast edge's after each (a connection
    handed over to aiohttp leaves it), and the answers are Launch's. An unknown endpoint is refused there too, in
    Launch's shape; `GET /v1/model-endpoints` (an aiohttp route) moves the connection, which the same check sees."""
    gateway: ThreadedGateway = launch_target.servers[0]
    authorization = launch_target.headers["Authorization"].encode()
    parts = urlsplit(launch_target.url(SYNC))
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    port = writer.get_extra_info("sockname")[1]

    def post(target: str, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        head = f"POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        return head.encode() + b"Authorization: " + authorization + b"\r\nContent-Length: %d\r\n\r\n" % len(data) + data

    try:
        writer.write(post(f"/v1/hosted_inference/task_sync/{SYNC}", {"args": {"q": "legacy"}, "return_pickled": False}))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["state"]) == (200, "SUCCESS")
        assert port in gateway.fast_connections()
        writer.write(post(f"/v1/sync-tasks?model_endpoint_id={SYNC}", {"args": {"q": "hi"}}))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["result"]["result"]) == (200, json.dumps({"q": "hi"}, separators=(",", ":")))
        assert port in gateway.fast_connections()
        writer.write(post(f"/v1/streaming-tasks?model_endpoint_id={SYNC}", {"args": {"text": "a b"}}))
        status, headers, body = await read_answer(reader)
        assert (status, headers["content-type"]) == (200, "text/event-stream")
        assert body.count(b"data:") >= 2, body
        assert port in gateway.fast_connections()
        writer.write(post("/v1/sync-tasks?model_endpoint_id=nope", {"args": {}}))
        status, _, body = await read_answer(reader)
        assert (status, "detail" in json.loads(body)) == (404, True)
        assert port in gateway.fast_connections()
        writer.write(
            b"GET /v1/model-endpoints?name=%s HTTP/1.1\r\nHost: gw\r\nAuthorization: %s\r\n\r\n"
            % (SYNC.encode(), authorization)
        )
        assert (await read_answer(reader))[0] == 200
        assert port not in gateway.fast_connections()
    finally:
        writer.close()


async def test_async_tasks_and_their_polls_are_served_by_the_gateways_fast_edge(launch_target: LaunchTarget) -> None:
    """A Launch client submits and polls on one keep-alive connection: legacy `task_async`, its poll and
    `task/result`, v1 `async-tasks` and its poll are all answered by the gateway's fast edge (the connection is
    still the fast edge's after each), in Launch's shapes, including a GET carrying `{}` as the 0.3.x client sends
    it, a poll without the API key (401) and a poll whose body is over the limit (413)."""
    gateway: ThreadedGateway = launch_target.servers[0]
    authorization = launch_target.headers["Authorization"].encode()
    parts = urlsplit(launch_target.url(ASYNC))
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    port = writer.get_extra_info("sockname")[1]

    def request(method: str, target: str, body: bytes | None, *, key: bool = True) -> bytes:
        head = f"{method} {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n".encode()
        if key:
            head += b"Authorization: " + authorization + b"\r\n"
        if body is None:
            return head + b"\r\n"
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def answer(data: bytes) -> tuple[int, dict[str, Any]]:
        writer.write(data)
        status, _, body = await read_answer(reader)
        assert port in gateway.fast_connections(), (status, body)
        return status, json.loads(body)

    async def poll_until_done(target: str, field: str, pending: set[str]) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            status, document = await answer(request("GET", target, b"{}"))
            assert status == 200, document
            if document[field] not in pending or asyncio.get_running_loop().time() > deadline:
                return document
            await asyncio.sleep(0.05)

    try:
        legacy = json.dumps({"args": {"n": "legacy"}, "return_pickled": False}).encode()
        status, submitted = await answer(request("POST", f"/v1/hosted_inference/task_async/{ASYNC}", legacy))
        assert status == 200 and submitted["task_id"], submitted
        task_id = submitted["task_id"]
        polled = await poll_until_done(
            f"/v1/hosted_inference/endpoints/{ASYNC}/task_async/{task_id}", "state", {"PENDING"}
        )
        assert polled["state"] == "SUCCESS", polled
        status, by_id = await answer(request("GET", f"/v1/hosted_inference/task/result/{task_id}", None))
        assert (status, by_id["state"]) == (200, "SUCCESS")

        v1 = json.dumps({"args": {"n": "v1"}}).encode()
        status, submitted = await answer(request("POST", f"/v1/async-tasks?model_endpoint_id={ASYNC}", v1))
        assert status == 200 and submitted["task_id"], submitted
        polled = await poll_until_done(f"/v1/async-tasks/{submitted['task_id']}", "status", {"PENDING", "STARTED"})
        assert polled["status"] == "SUCCESS", polled

        status, refused = await answer(request("GET", f"/v1/async-tasks/{task_id}", None, key=False))
        assert (status, "detail" in refused) == (401, True)
        status, refused = await answer(request("GET", f"/v1/async-tasks/{task_id}", b"x" * 5000))
        assert (status, refused["error"]["code"]) == (413, "payload_too_large")
    finally:
        writer.close()
