"""Deadlines on every connection (issue 17, finding 5): the paths aiohttp serves, on a router subprocess and on the
gateway, cut a trickled head and a trickled body within the configured deadlines, and a trickle does not hold the
router's drain. Raw sockets; the trickles are the attacker's pace (a byte every 0.1 s), never a synchronisation.

Both the router and the gateway run here with BUNDLESERVE_IDLE_TIMEOUT_SECONDS=1 and BUNDLESERVE_BODY_TIMEOUT_SECONDS=1
(aiohttp's own defaults, before the fix: keep-alive 3,630 s, no head or body deadline).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bundleserve.api.credentials import KeysFile
from bundleserve.api.manifest import load_endpoints
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import EndpointEntry, Registry
from bundleserve.gateway.settings import config_from_env
from tests.integration.test_gateway import entry_for
from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.integration.test_router_fastpath import connect, read_reply
from tests.support.processes import free_port, http_ok
from tests.support.waiting import wait_until

KEY = "deadline-test-key"
AUTH = f"Authorization: Bearer {KEY}\r\n"
DEADLINES = {"BUNDLESERVE_IDLE_TIMEOUT_SECONDS": "1", "BUNDLESERVE_BODY_TIMEOUT_SECONDS": "1"}
#: Far longer than both deadlines: a connection still open after this was not cut.
CUT_WITHIN = 30.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, url = start_model(tmp_path_factory.mktemp("deadline-model"))
    try:
        yield url
    finally:
        server.stop()


def _router(directory: Path, model_url: str, **env: str) -> tuple[Any, str]:
    endpoint = write_endpoint(directory, invocation={"timeoutSeconds": 10})
    [(_, spec)] = load_endpoints([endpoint])
    # the test's key, and the key a gateway in front presents for this endpoint (docs/security.md)
    gateway_key = KeysFile.parse(KEY + "\n").gateway_key(spec.namespace, spec.name)
    (directory / "api-keys").write_text(KEY + "\n")  # the master file, as a gateway in front reads it
    keys = directory / "router-keys"
    keys.write_text(f"{KEY}\n{gateway_key}\n")
    server, url = start_router(
        directory, endpoint, model_url, env={"BUNDLESERVE_API_KEYS_FILE": str(keys), **DEADLINES, **env}
    )
    wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
    return server, url


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    for index in range(len(data)):
        writer.write(data[index : index + 1])
        await asyncio.sleep(0.1)  # the attacker's pace


async def _closed_while_trickling(url: str, head: bytes, trickled: bytes) -> bytes:
    """Send `head` at once, then trickle `trickled`; return everything the server sent until it closed."""
    async with connect(url) as (reader, writer):
        writer.write(head)
        sending = asyncio.ensure_future(_trickle(writer, trickled))
        try:
            async with asyncio.timeout(CUT_WITHIN):
                return await reader.read(-1)  # until the server closes
        finally:
            sending.cancel()


async def test_a_trickled_head_on_the_router_is_cut(tmp_path: Path, model: str) -> None:
    """Unauthenticated: GET /healthz whose head never ends (handed over to aiohttp at its first bytes)."""
    server, url = _router(tmp_path, model)
    try:
        received = await _closed_while_trickling(url, b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 1000)
        assert received == b""  # closed without an answer: the head never completed
        assert http_ok(f"{url}/healthz")  # and the router still serves
    finally:
        server.stop()


async def test_a_trickled_body_on_the_router_is_408_and_does_not_hold_the_drain(tmp_path: Path, model: str) -> None:
    """Authenticated POST .../predict?q=1 (the query string sends it to aiohttp, not the fast edge), then SIGTERM
    with a 300 s grace period: the router must still exit soon, because the trickle was cut at its body deadline."""
    server, url = _router(tmp_path, model, BUNDLESERVE_DRAIN_SECONDS="300")
    try:
        head = f"POST /v1/endpoints/fake/predict?q=1 HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Length: 1000\r\n\r\n{{"
        async with connect(url) as (reader, writer):
            writer.write(head.encode())
            sending = asyncio.ensure_future(_trickle(writer, b" " * 999))
            try:
                await asyncio.sleep(0.3)  # the attacker's pace: a few bytes of the body are in
                server.signal(signal.SIGTERM)
                reply = await read_reply(reader)
                assert reply.status == 408, reply.body
                assert reply.json()["error"]["code"] == "request_timeout"
                assert "BUNDLESERVE_BODY_TIMEOUT_SECONDS" in reply.json()["error"]["message"]
                async with asyncio.timeout(CUT_WITHIN):
                    assert await reader.read(-1) == b""  # closed after the answer
            finally:
                sending.cancel()
        assert await asyncio.to_thread(server.process.wait, CUT_WITHIN) == 0  # drained, not held for 300 s
    finally:
        server.stop()


# -- the gateway ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def gateway(tmp_path: Path, model: str) -> AsyncIterator[tuple[str, Any]]:
    """A gateway configured from the environment as `bundleserve gateway` is, in front of a router."""
    router, router_url = _router(tmp_path, model)
    config: GatewayConfig = config_from_env(
        None, {"BUNDLESERVE_API_KEYS_FILE": str(tmp_path / "api-keys"), **DEADLINES}
    )
    entry: EndpointEntry = entry_for(tmp_path / "fake.yaml", router_url)
    runner = web.AppRunner(
        build_gateway_app(Registry([entry]), config), handler_cancellation=True, **config.connections.server_kwargs()
    )
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", router
    finally:
        await runner.cleanup()
        router.stop()


async def test_a_trickled_head_on_the_gateway_is_cut(gateway: tuple[str, Any]) -> None:
    url, _ = gateway
    received = await _closed_while_trickling(url, b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 1000)
    assert received == b""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:  # the gateway still serves
        assert response.status == 200


@pytest.mark.parametrize(
    ("path", "framing"),
    [
        ("/v1/endpoints/fake/predict?q=1", "Content-Length: 100000\r\n"),  # streamed on to the router
        ("/v1/endpoints/fake/predict", "Transfer-Encoding: chunked\r\n"),  # chunked: streamed, counted
        ("/endpoints/fake/invocations", "Content-Length: 1000\r\nContent-Type: application/json\r\n"),  # read whole
    ],
)
async def test_a_trickled_body_on_the_gateway_is_408(gateway: tuple[str, Any], path: str, framing: str) -> None:
    url, _ = gateway
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\n{AUTH}{framing}\r\n"
    first = b"10\r\n" if "chunked" in framing else b""
    received = await _closed_while_trickling(url, head.encode() + first, b" " * 2000)
    assert received.startswith(b"HTTP/1.1 408 "), received[:300]
