"""Readiness of endpoints whose routers the gateway can ask directly (local mode): poll each router's /readyz.

In a cluster readiness comes from the Endpoint's Ready condition instead (`gateway.kube`); this loop is for the
local plan, where no controller writes status.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import aiohttp

from bundleserve.gateway.registry import EndpointEntry, Registry


async def router_ready(session: aiohttp.ClientSession, entry: EndpointEntry) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with session.get(entry.router_url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    return False


async def refresh(registry: Registry, session: aiohttp.ClientSession) -> None:
    """One pass: every entry's `ready` set from its router's answer."""
    entries = registry.entries()
    states = await asyncio.gather(*(router_ready(session, entry) for entry in entries))
    for entry, ready in zip(entries, states, strict=True):
        if ready != entry.ready:
            registry.put(replace(entry, ready=ready))


async def poll_readiness(registry: Registry, interval: float = 1.0) -> None:
    """Forever (cancel to stop)."""
    async with aiohttp.ClientSession() as session:
        while True:
            await refresh(registry, session)
            await asyncio.sleep(interval)
