"""The url-input destination guard over real HTTP: a router refuses loopback/link-local destinations unless allowed,
and checks every redirect hop again."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.support.processes import free_port, http_ok
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def routers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two routers in front of one fake model: one with the default guard, one that allows 127.0.0.1 only."""
    directory = tmp_path_factory.mktemp("router-url-guard")
    model, model_url = start_model(directory)
    started = []
    try:
        endpoint = write_endpoint(directory)
        guarded, guarded_url = start_router(directory, endpoint, model_url)
        started.append(guarded)
        allowing, allowing_url = start_router(
            directory, endpoint, model_url, env={"BUNDLESERVE_URL_ALLOW": "127.0.0.1/32"}
        )
        started.append(allowing)
        wait_until(lambda: http_ok(f"{guarded_url}/readyz"), timeout=10, what="guarded router ready")
        wait_until(lambda: http_ok(f"{allowing_url}/readyz"), timeout=10, what="allowing router ready")
        yield {"guarded": guarded_url, "allowing": allowing_url}
    finally:
        for server in started:
            server.stop()
        model.stop()


@pytest.fixture
async def source() -> AsyncIterator[str]:
    """A small HTTP server on 127.0.0.1 with data and redirects to elsewhere."""
    port = free_port()

    async def data(_: web.Request) -> web.Response:
        return web.Response(body=b"twelve bytes", content_type="application/octet-stream")

    def redirect(location: str) -> Any:
        async def handler(_: web.Request) -> web.Response:
            raise web.HTTPFound(location)

        return handler

    app = web.Application()
    app.router.add_get("/data", data)
    app.router.add_get("/to-data", redirect("/data"))
    app.router.add_get("/to-metadata", redirect("http://169.254.169.254/latest/meta-data/"))
    app.router.add_get("/to-ipv6-loopback", redirect(f"http://[::1]:{port}/data"))
    app.router.add_get("/to-mapped-loopback", redirect(f"http://[::ffff:127.0.0.2]:{port}/data"))
    app.router.add_get("/to-file", redirect("file:///etc/hostname"))
    app.router.add_get("/to-localhost", redirect(f"http://localhost:{port}/data"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def predict(router: str, body: dict[str, Any]) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    async with aiohttp.ClientSession() as http, http.post(f"{router}/v1/endpoints/fake/predict", data=data) as response:
        return response.status, await response.json(content_type=None)


async def assert_refused(router: str, url: str, reason: str) -> None:
    status, body = await predict(router, {"url": url})
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"] == f"url destination refused: {reason} address"


async def test_loopback_is_refused_by_default(routers: dict[str, str], source: str) -> None:
    await assert_refused(routers["guarded"], f"{source}/data", "loopback")  # IP literal
    port = source.rsplit(":", 1)[1]
    await assert_refused(routers["guarded"], f"http://localhost:{port}/data", "loopback")  # resolved name
    await assert_refused(routers["guarded"], "http://169.254.169.254/latest/meta-data/", "cloud-metadata")


async def test_an_allowed_loopback_address_is_fetched(routers: dict[str, str], source: str) -> None:
    for path in ("/data", "/to-data"):  # directly and through an allowed redirect
        status, body = await predict(routers["allowing"], {"url": f"{source}{path}"})
        assert status == 200, body
        assert body["result"] == {"raw_bytes": 12, "content_type": "application/octet-stream"}


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/to-metadata", "cloud-metadata"), ("/to-ipv6-loopback", "loopback"), ("/to-mapped-loopback", "loopback")],
)
async def test_a_redirect_to_a_blocked_address_is_refused(
    routers: dict[str, str], source: str, path: str, reason: str
) -> None:
    await assert_refused(routers["allowing"], f"{source}{path}", reason)


async def test_a_name_connects_only_to_its_allowed_addresses(routers: dict[str, str], source: str) -> None:
    # `localhost` resolves to 127.0.0.1 (allowed here) and possibly ::1 (not): the fetch must succeed via 127.0.0.1.
    status, body = await predict(routers["allowing"], {"url": f"{source}/to-localhost"})
    assert status == 200, body
    assert body["result"] == {"raw_bytes": 12, "content_type": "application/octet-stream"}


async def test_a_redirect_to_another_scheme_is_refused(routers: dict[str, str], source: str) -> None:
    status, body = await predict(routers["allowing"], {"url": f"{source}/to-file"})
    assert status == 400, body
    assert "scheme 'file' is not allowed" in body["error"]["message"]
