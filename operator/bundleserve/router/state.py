"""The router's shared state: one typed object per application, stored under `ROUTER_STATE`.

Everything a route needs lives here, so add-on routes (the async API in `async_routes`) reach the same model client,
admission controller, metrics and drain state as the sync path: `state = app[ROUTER_STATE]`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bundleserve.api.endpoint import Endpoint, Routes
from bundleserve.router.admission import AdmissionController
from bundleserve.router.auth import ApiKeys
from bundleserve.router.metrics import RouterMetrics
from bundleserve.router.model_client import ModelClient
from bundleserve.router.settings import Settings

if TYPE_CHECKING:
    from bundleserve.router.fetch import UrlFetcher


class DrainState:
    """Counts requests in progress and tells when, after SIGTERM, the last one has finished.

    `active` covers everything a drain must wait for: queued and running sync calls, open streams, and whatever
    other component calls `enter()`/`leave()` (the async worker for a task it is running).
    """

    __slots__ = ("_drained", "active", "draining", "started")

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self.started = asyncio.Event()
        self._drained = asyncio.Event()

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if self.draining and self.active == 0:
            self._drained.set()

    def begin(self) -> None:
        """Start draining: readiness fails and new requests get 503 from now on."""
        if not self.draining:
            self.draining = True
            self.started.set()
            if self.active == 0:
                self._drained.set()

    @property
    def drained(self) -> bool:
        return self._drained.is_set()

    async def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until draining started and nothing is in progress; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True


class ModelReadiness:
    """Whether the model's ready route answered 200 at the last probe (the router's /readyz follows it)."""

    __slots__ = ("ever_ready", "ready", "wake")

    def __init__(self) -> None:
        self.ready = False
        self.ever_ready = False
        self.wake = asyncio.Event()

    def set(self, ready: bool) -> None:
        self.ready = ready
        self.ever_ready = self.ever_ready or ready

    def lost(self) -> None:
        """A call found the model unreachable: stop routing to it and probe again now."""
        self.ready = False
        self.wake.set()


@dataclass
class RouterState:
    settings: Settings
    model: ModelClient
    admission: AdmissionController
    metrics: RouterMetrics
    api_keys: ApiKeys | None
    drain: DrainState = field(default_factory=DrainState)
    readiness: ModelReadiness = field(default_factory=ModelReadiness)
    fetcher: UrlFetcher | None = None
    #: `bundleserve.queue.results.ResultStore`, created on first use of `return_pickled` (or set by the async setup).
    result_store: Any = None
    #: Free slot for add-ons (the async API keeps its queue client here).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoint(self) -> Endpoint:
        return self.settings.endpoint

    @property
    def routes(self) -> Routes:
        return self.settings.routes

    @property
    def accepting(self) -> bool:
        """New requests are served only when the model is ready and the router is not draining."""
        return self.readiness.ready and not self.drain.draining


ROUTER_STATE: web.AppKey[RouterState] = web.AppKey("router_state", RouterState)
