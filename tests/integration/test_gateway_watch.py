"""The gateway's Endpoint watch against the real API server (`kube_cluster`): the first listing, status changes and
deletions, readiness after the first listing, with a ServiceAccount token bound to the gateway's read-only Role as
the chart grants it (namespaced scope: get/list/watch on Endpoints), so the real authorizer checks every request.

Moved from the API emulator. Recovery from 410 Gone goes through tests/support/api_relay.py, a fault-injecting relay
in front of the real API server (a compacted watch history cannot be brought about on the real server in bounded
time: the gateway lists again after every watch, so it would need its watch cache to drop a version within a test).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bundleserve.gateway.kube import EndpointWatch, KubeAccess
from bundleserve.gateway.registry import Registry
from tests.integration.cluster_harness import install_release
from tests.support.api_relay import ApiRelay
from tests.support.cluster import ControlPlane
from tests.support.waiting import async_wait_until, wait_until

GROUP_VERSION = "bundleserve.dev/v1alpha1"
NS = "bs-gateway-watch"
GATEWAY = "gateway"


def endpoint(name: str, modes: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"modes": modes, "bundle": {"image": "example.com/m:1", "python": {"entrypoint": "m:predict"}}},
    }


@pytest.fixture(scope="module")
def access(kube_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> KubeAccess:
    """The chart applied (its Endpoint CRD), a namespace, and the gateway's identity in it."""
    install_release(kube_cluster)  # the CRD as the chart renders it: the object every module applies
    kube_cluster.create_namespace(NS)
    rules = [{"apiGroups": ["bundleserve.dev"], "resources": ["endpoints"], "verbs": ["get", "list", "watch"]}]
    for doc in (
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": GATEWAY, "namespace": NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": GATEWAY, "namespace": NS}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": GATEWAY, "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GATEWAY},
         "subjects": [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": NS}]},
    ):  # fmt: skip
        kube_cluster.apply(doc)
    token = tmp_path_factory.mktemp("gateway") / "token"
    token.write_text(kube_cluster.service_account_token(NS, GATEWAY) + "\n")
    return KubeAccess(server=kube_cluster.url, token_file=token, ca_file=kube_cluster.pki / "ca.crt")


@pytest.fixture
async def watched(access: KubeAccess) -> AsyncIterator[tuple[Registry, list[bool]]]:
    registry = Registry()
    synced: list[bool] = []
    watch = EndpointWatch(access, registry, [NS], on_synced=lambda: synced.append(True))
    task = asyncio.create_task(watch.run())
    try:
        yield registry, synced
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _delete(plane: ControlPlane, name: str) -> None:
    plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", NS, name))
    wait_until(lambda: plane.get(GROUP_VERSION, "Endpoint", NS, name) is None, timeout=30, what=f"{name} deleted")


async def test_listing_then_watching_follows_endpoints(
    kube_cluster: ControlPlane, watched: tuple[Registry, list[bool]]
) -> None:
    registry, synced = watched
    kube_cluster.apply(endpoint("echo", ["sync", "async"]))
    await async_wait_until(lambda: _async(registry.find("echo") is not None), timeout=30, what="echo listed")
    assert synced
    entry = registry.resolve("echo")
    assert entry.describe() == {"name": "echo", "modes": ["sync", "async"], "ready": False}
    assert entry.router_url == f"http://echo.{NS}.svc.cluster.local"

    url = "http://elsewhere.example:80"  # whatever status.url says, the gateway calls the Endpoint's own Service
    status = {
        "url": url,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "ReplicasAvailable", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
    }  # fmt: skip
    kube_cluster.request(
        "PATCH",
        kube_cluster.path(GROUP_VERSION, "Endpoint", NS, "echo") + "/status",
        {"status": status},
        content_type="application/merge-patch+json",
    )
    await async_wait_until(lambda: _async(registry.resolve("echo").ready), timeout=30, what="echo ready")
    assert registry.resolve("echo").router_url == f"http://echo.{NS}.svc.cluster.local"

    _delete(kube_cluster, "echo")
    await async_wait_until(lambda: _async(registry.find("echo") is None), timeout=30, what="echo removed")


async def test_a_compacted_history_is_recovered_by_listing_again(
    kube_cluster: ControlPlane, access: KubeAccess
) -> None:
    """The open watch ends with the API server's 410 ERROR event and every watch from the old version is refused the
    same way, so the gateway sees what was created afterwards only if it lists again (it does, after any watch)."""
    relay = await ApiRelay(kube_cluster.url, kube_cluster.pki / "ca.crt").start()
    registry = Registry()
    watch = EndpointWatch(KubeAccess(server=relay.url, token_file=access.token_file), registry, [NS])
    task = asyncio.create_task(watch.run())
    try:
        kube_cluster.apply(endpoint("first", ["sync"]))
        await async_wait_until(lambda: _async(registry.find("first") is not None), timeout=30, what="first listed")
        listed = kube_cluster.request("GET", kube_cluster.path(GROUP_VERSION, "Endpoint", NS))
        relay.compact(int(listed["metadata"]["resourceVersion"]))
        kube_cluster.apply(endpoint("second", ["streaming"]))
        await async_wait_until(lambda: _async(registry.find("second") is not None), timeout=30, what="second listed")
        assert {e.name for e in registry.entries()} >= {"first", "second"}
        assert relay.gone_sent >= 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await relay.stop()
        for name in ("first", "second"):
            _delete(kube_cluster, name)


async def _async(value: bool) -> bool:
    return value


async def test_the_cluster_gateway_is_ready_after_the_first_listing(
    kube_cluster: ControlPlane, access: KubeAccess
) -> None:
    import aiohttp
    from aiohttp import web

    from bundleserve.gateway.app import GatewayConfig
    from bundleserve.gateway.server import build_cluster_app
    from tests.support.processes import free_port

    kube_cluster.apply(endpoint("listed", ["sync"]))
    app = build_cluster_app(GatewayConfig(), access, [NS])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    return response.status == 200

            await async_wait_until(ready, timeout=30, what="the gateway to list Endpoints")
            async with http.get(f"http://127.0.0.1:{port}/v1/endpoints") as response:
                listed = (await response.json())["endpoints"]
                assert {"name": "listed", "modes": ["sync"], "ready": False} in listed, listed
    finally:
        await runner.cleanup()
        _delete(kube_cluster, "listed")


def test_the_gateway_outside_a_cluster_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundleserve.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["gateway", "--port", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bundleserve gateway: not running in a Kubernetes pod")
