"""API-key authentication on a real router: /v1 routes need a key; probes and metrics do not."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp

from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.support.processes import http_ok
from tests.support.waiting import wait_until


async def test_api_keys_are_required_when_configured(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("s3cret-key\nother-key\n")
    model, model_url = start_model(tmp_path)
    router, url = start_router(
        tmp_path, write_endpoint(tmp_path), model_url, env={"BUNDLESERVE_API_KEYS_FILE": str(keys)}
    )
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        predict = f"{url}/v1/endpoints/fake/predict"
        basic = "Basic " + base64.b64encode(b"other-key:").decode()
        for header, expected in [
            (None, 401),
            ("Bearer wrong", 401),
            ("Bearer s3cret-key", 200),
            (basic, 200),
        ]:
            headers = {"Authorization": header} if header else {}
            async with http.post(predict, json={"args": {"a": 1}}, headers=headers) as response:
                assert response.status == expected, header
                if expected == 401:
                    assert (await response.json())["error"]["code"] == "unauthorized"
                    assert "Bearer" in response.headers["WWW-Authenticate"]
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            async with http.get(url + path) as response:
                assert response.status == 200, path
        assert "s3cret-key" not in router.log(), "keys never appear in logs"
    finally:
        router.stop()
        model.stop()
