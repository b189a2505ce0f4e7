"""The gateway's recovery from 410 Gone (a compacted watch history -> list again), against the API emulator: the one
gateway-watch case still on the emulator (tests/integration/test_gateway_watch.py runs the others on the real API
server). Why: the gateway ends its watch on any failure and lists again, so a real 410 reaches it only when it
resumes a watch that ended on its own (WATCH_SECONDS, 300 s) from a version the API server's watch cache no longer
holds; that cannot be brought about in bounded time without a fault-injecting relay in front of the API server, not
written yet (tests/README.md)."""

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
