"""Probe the model's ready route: every 50 ms until it answers 200 (so the pod becomes routable fast), then slowly.

A call that finds the model unreachable wakes the probe at once, so readiness follows a crashed model quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from bundleserve.api.errors import ApiError
from bundleserve.router.state import ROUTER_STATE, RouterState

log = logging.getLogger(__name__)


async def probe_once(state: RouterState, *, timeout: float = 1.0) -> bool:
    try:
        async with asyncio.timeout(timeout):
            reply = await state.model.get(state.routes.ready)
    except (ApiError, OSError, TimeoutError):
        return False
    except Exception:  # a probe must never die: log, and count as not ready
        log.exception("model readiness probe failed")
        return False
    return reply.status == 200


async def probe_forever(state: RouterState) -> None:
    settings = state.settings
    readiness = state.readiness
    while True:
        ready = await probe_once(state)
        if ready != readiness.ready:
            log.info("model %s", "ready" if ready else "not ready")
        readiness.set(ready)
        readiness.wake.clear()
        interval = settings.probe_slow_seconds if ready else settings.probe_fast_seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await readiness.wake.wait()


async def readiness_probe(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the probe for the application's lifetime."""
    task = asyncio.create_task(probe_forever(app[ROUTER_STATE]), name="model-readiness-probe")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
