"""Hostile inputs at the router's and the gateway's edges (issue 17, finding 7), on raw sockets against real processes:

- an `Authorization` header whose bytes are not UTF-8 is a 401 in the documented shape, on the fast edge (it aborted
  the connection), on aiohttp's routes (500 with a traceback) and on the gateway;
- JSON nested deeper than Python's decoder follows is a 400, not a 500 (RecursionError);
- a streamed event larger than `maxPayloadBytes` ends the stream (424 `reply_too_large` before the first event)
  instead of being buffered without bound (the router's RSS from /proc).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from bundleserve.gateway.app import build_gateway_app
from bundleserve.gateway.registry import Registry
from bundleserve.gateway.settings import config_from_env
from tests.integration.test_gateway import entry_for
from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.integration.test_router_fastpath import connect, read_reply
from tests.integration.test_router_hostile_clients import rss_bytes
from tests.support.processes import free_port, http_ok
from tests.support.waiting import wait_until

KEY = "edge-input-key"
LIMIT = 1024 * 1024
BAD_AUTH = b"Authorization: Bearer \xff\xfe\xc3(\r\n"  # not UTF-8
DEEP = b'{"args": {"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("edge-inputs")
    keys = directory / "api-keys"
    keys.write_text(KEY + "\n")
    model, model_url = start_model(directory)
    server = None
    try:
        endpoint = write_endpoint(directory, modes=("sync", "streaming"), invocation={"maxPayloadBytes": LIMIT})
        server, url = start_router(directory, endpoint, model_url, env={"BUNDLESERVE_API_KEYS_FILE": str(keys)})
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
        yield {"url": url, "server": server, "directory": directory, "endpoint": endpoint}
    finally:
        if server is not None:
            server.stop()
        model.stop()


def _request(path: str, body: bytes, extra: bytes = b"") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + extra + b"\r\n" + body


@pytest.mark.parametrize(
    "path",
    [
        "/v1/endpoints/fake/predict",  # the fast edge
        "/v1/endpoints/fake/predict?q=1",  # aiohttp
        "/v1/endpoints/fake/stream",
        "/v1/sync-tasks?model_endpoint_id=fake",  # Launch
    ],
)
async def test_a_non_utf8_authorization_is_401(router: dict[str, Any], path: str) -> None:
    async with connect(router["url"]) as (reader, writer):
        writer.write(_request(path, b'{"args": {}}', BAD_AUTH))
        reply = await read_reply(reader)
    assert reply.status == 401, reply.body
    assert reply.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "path", ["/v1/endpoints/fake/predict", "/v1/endpoints/fake/predict?q=1", "/v1/endpoints/fake/stream"]
)
async def test_deeply_nested_json_is_400(router: dict[str, Any], path: str) -> None:
    async with connect(router["url"]) as (reader, writer):
        writer.write(_request(path, DEEP, f"Authorization: Bearer {KEY}\r\n".encode()))
        reply = await read_reply(reader)
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["code"] == "invalid_request"
    assert "nested too deeply" in reply.json()["error"]["message"]


async def test_a_streamed_event_over_the_limit_ends_the_stream_unbuffered(router: dict[str, Any]) -> None:
    pid = router["server"].process.pid
    before = rss_bytes(pid)
    body = json.dumps({"args": {"endless_event": 64 * LIMIT}}).encode()
    async with connect(router["url"]) as (reader, writer):
        writer.write(_request("/v1/endpoints/fake/stream", body, f"Authorization: Bearer {KEY}\r\n".encode()))
        reply = await read_reply(reader)
    grown = rss_bytes(pid) - before
    assert reply.status == 424, reply.body
    assert reply.json()["error"]["code"] == "reply_too_large"
    assert grown < 16 * LIMIT, f"the router grew by {grown} bytes for one {64 * LIMIT}-byte event"
    assert http_ok(f"{router['url']}/healthz")


# -- the gateway ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def gateway(router: dict[str, Any]) -> AsyncIterator[str]:
    config = config_from_env(None, {"BUNDLESERVE_API_KEYS_FILE": str(router["directory"] / "api-keys")})
    app = build_gateway_app(Registry([entry_for(router["endpoint"], router["url"])]), config)
    runner = web.AppRunner(app, handler_cancellation=True, **config.connections.server_kwargs())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/v1/endpoints/fake/predict", "/v1/endpoints/fake/async"])
async def test_a_non_utf8_authorization_is_401_on_the_gateway(gateway: str, path: str) -> None:
    async with connect(gateway) as (reader, writer):
        writer.write(_request(path, b'{"args": {}}', BAD_AUTH))
        reply = await read_reply(reader)
        assert reply.status == 401, reply.body
        assert reply.json()["error"]["code"] == "unauthorized"
        writer.write(b"GET /v1/endpoints HTTP/1.1\r\nHost: t\r\n" + BAD_AUTH + b"\r\n")
        reply = await read_reply(reader)
        assert reply.status == 401, reply.body
        assert reply.json()["error"]["code"] == "unauthorized"
