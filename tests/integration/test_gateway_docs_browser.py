"""`GET /docs` in a real browser (Debian's headless Chromium): the page loads its assets from the gateway itself and
lists the routes of /openapi.json. `make test` installs chromium when it is missing."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from aiohttp import web

from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import Registry
from tests.support.processes import free_port


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is missing: `make test` installs it (apt-get install -y chromium)"
    return found


async def test_the_api_page_renders_the_routes_without_internet(tmp_path: Path) -> None:
    runner = web.AppRunner(build_gateway_app(Registry(), GatewayConfig()))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        process = await asyncio.create_subprocess_exec(
            chromium(),
            "--headless",
            "--no-sandbox",  # runs as root in CI
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",  # nothing but our own server may be asked for anything
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            f"http://127.0.0.1:{port}/docs",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        dom, errors = await asyncio.wait_for(process.communicate(), 100)
    finally:
        await runner.cleanup()
    page = dom.decode(errors="replace")
    assert process.returncode == 0, errors.decode(errors="replace")[-2000:]
    assert "swagger-ui" in page
    for path in ("/v1/endpoints/{name}/predict", "/v1/endpoints/{name}/stream", "/v1/tasks/{task_id}", "/v1/endpoints"):
        assert f'data-path="{path}"' in page, f"{path} is not listed on the page"
