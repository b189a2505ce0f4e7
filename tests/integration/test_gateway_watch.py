"""The gateway's Endpoint watch against an API server over HTTP (the project's emulator, bearer-token auth): the first
listing, status changes, deletions, and recovery when the watch history is compacted (410 Gone -> list again).

Limits of the double: the emulator is not the real kube-apiserver; RBAC (the chart's least-privilege Role) is
checked by rendering the chart, not by an authorizer here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bundleserve.gateway.kube import EndpointWatch, KubeAccess
from bundleserve.gateway.registry import Registry
from tests.support.k8s.emulator import TOKEN, KubernetesEmulator
from tests.support.processes import REPO
from tests.support.waiting import async_wait_until

CRD = REPO / "crds" / "endpoints.bundleserve.dev.yaml"
RESOURCE = "endpoints.bundleserve.dev"


def endpoint(name: str, modes: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"modes": modes, "bundle": {"image": "example.com/m:1", "python": {"entrypoint": "m:predict"}}},
    }


@pytest.fixture
async def watched(k8s_api: KubernetesEmulator, tmp_path: Path) -> AsyncIterator[tuple[Registry, list[bool]]]:
    k8s_api.install_crd(CRD)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    registry = Registry()
    synced: list[bool] = []
    watch = EndpointWatch(
        KubeAccess(server=k8s_api.url, token_file=token), registry, on_synced=lambda: synced.append(True)
    )
    task = asyncio.create_task(watch.run())
    try:
        yield registry, synced
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_listing_then_watching_follows_endpoints(
    k8s_api: KubernetesEmulator, watched: tuple[Registry, list[bool]]
) -> None:
    registry, synced = watched
    k8s_api.create(endpoint("echo", ["sync", "async"]))
    await async_wait_until(lambda: _async(registry.find("echo") is not None), timeout=10, what="echo listed")
    assert synced
    entry = registry.resolve("echo")
    assert entry.describe() == {"name": "echo", "modes": ["sync", "async"], "ready": False}
    assert entry.router_url == "http://echo.default.svc.cluster.local"

    url = "http://elsewhere.example:80"  # whatever status.url says, the gateway calls the Endpoint's own Service
    status = {
        "url": url,
        "conditions": [{"type": "Ready", "status": "True", "reason": "ReplicasAvailable", "message": ""}],
    }
    k8s_api.patch(RESOURCE, "echo", {"status": status}, "default", subresource="status")
    await async_wait_until(lambda: _async(registry.resolve("echo").ready), timeout=10, what="echo ready")
    assert registry.resolve("echo").router_url == "http://echo.default.svc.cluster.local"

    k8s_api.delete(RESOURCE, "echo", "default")
    await async_wait_until(lambda: _async(registry.find("echo") is None), timeout=10, what="echo removed")


async def test_a_compacted_history_is_recovered_by_listing_again(
    k8s_api: KubernetesEmulator, watched: tuple[Registry, list[bool]]
) -> None:
    registry, _ = watched
    k8s_api.create(endpoint("first", ["sync"]))
    await async_wait_until(lambda: _async(registry.find("first") is not None), timeout=10, what="first listed")
    k8s_api.expire_watch_history()
    k8s_api.drop_watches()
    k8s_api.create(endpoint("second", ["streaming"]))
    await async_wait_until(lambda: _async(registry.find("second") is not None), timeout=15, what="second listed")
    assert [e.name for e in registry.entries()] == ["first", "second"]


async def _async(value: bool) -> bool:
    return value


async def test_the_cluster_gateway_is_ready_after_the_first_listing(
    k8s_api: KubernetesEmulator, tmp_path: Path
) -> None:
    import aiohttp
    from aiohttp import web

    from bundleserve.gateway.app import GatewayConfig
    from bundleserve.gateway.server import build_cluster_app
    from tests.support.processes import free_port

    k8s_api.install_crd(CRD)
    k8s_api.create(endpoint("echo", ["sync"]))
    token = tmp_path / "token"
    token.write_text(TOKEN)
    app = build_cluster_app(GatewayConfig(), KubeAccess(server=k8s_api.url, token_file=token), ["default"])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    return response.status == 200

            await async_wait_until(ready, timeout=10, what="the gateway to list Endpoints")
            async with http.get(f"http://127.0.0.1:{port}/v1/endpoints") as response:
                assert await response.json() == {"endpoints": [{"name": "echo", "modes": ["sync"], "ready": False}]}
    finally:
        await runner.cleanup()


def test_the_gateway_outside_a_cluster_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundleserve.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["gateway", "--port", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bundleserve gateway: not running in a Kubernetes pod")
