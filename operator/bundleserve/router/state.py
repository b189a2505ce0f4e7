"""The router's shared state: one typed object per application, stored under `ROUTER_STATE`.

Everything a route needs lives here, typed, so the async API (`async_routes`), the worker and the dialects reach the
same model client, admission controller, metrics and drain state as the sync path: `state = app[ROUTER_STATE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from bundleserve.api.endpoint import Endpoint, Routes
from bundleserve.edge.auth import ApiKeys
from bundleserve.router.admission import AdmissionController
from bundleserve.router.metrics import RouterMetrics
from bundleserve.router.model_client import ModelClient
from bundleserve.router.settings import Settings

if TYPE_CHECKING:
    from bundleserve.queue.connection import Redis
    from bundleserve.queue.results import ResultStore
    from bundleserve.queue.s3results import S3Objects
    from bundleserve.queue.service import TaskService
    from bundleserve.queue.worker import Worker
    from bundleserve.router.fetch import UrlFetcher
    from bundleserve.router.worker import AsyncMetrics


class DrainState:
    """Counts work in progress and tells when, after SIGTERM, the last of it has finished.

    `active` covers requests (queued and running sync calls, open streams, bodies being read: whoever calls
    `enter()`/`leave()`); `track(busy)` adds other holders counted by a callable (the async worker's running task
    slots, which hold a task before and after their model call). Drained means draining AND nothing held right now:
    it is re-evaluated on every change, never latched, so work that starts after a quiet moment (a worker slot
    picking up a task it had in hand) keeps `/wait-for-drain` waiting and the model alive.
    """

    __slots__ = ("_changed", "_holders", "active", "draining", "started", "stopping")

    #: How often `wait_drained` re-reads tracked holders that do not call `changed()` themselves.
    RECHECK_SECONDS = 0.05

    def __init__(self) -> None:
        #: SIGTERM received: readiness fails and the async worker claims nothing, requests are still served (the
        #: shutdown delay) until `begin()`.
        self.stopping = False
        self.draining = False
        self.active = 0
        self.started = asyncio.Event()
        self._changed = asyncio.Event()
        self._holders: list[Callable[[], int]] = []

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._changed.set()

    def track(self, busy: Callable[[], int]) -> None:
        """Count `busy()` as work in progress too (e.g. the async worker's tasks in flight)."""
        self._holders.append(busy)

    def changed(self) -> None:
        """A tracked holder finished something: re-evaluate now."""
        self._changed.set()

    def stop_routing(self) -> None:
        """SIGTERM: fail readiness and close connections after their answer, but go on serving (`begin` follows)."""
        self.stopping = True

    def begin(self) -> None:
        """Start draining: readiness fails and new requests get 503 from now on."""
        self.stopping = True
        if not self.draining:
            self.draining = True
            self.started.set()
            self._changed.set()

    @property
    def held(self) -> int:
        return self.active + sum(busy() for busy in self._holders)

    @property
    def drained(self) -> bool:
        return self.draining and self.held == 0

    async def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until draining started and nothing is in progress; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                while not self.drained:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.RECHECK_SECONDS if self._holders else None):
                            await self._changed.wait()
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
    #: The store of pickled and large results, created on first use (`router.invoke.result_store`).
    result_store: ResultStore | None = None
    #: The async task service of this endpoint's queue, its Redis client and the async metrics (None: async not
    #: served or no Redis configured). Built with the state, once, by `router.app.build_state`.
    tasks: TaskService | None = None
    queue_redis: Redis | None = None
    async_metrics: AsyncMetrics | None = None
    #: This replica's async worker while the application runs (its lifecycle, not its configuration).
    worker: Worker | None = None

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


def result_store(state: RouterState) -> ResultStore:
    """The store of pickled and large results (`bundleserve.queue.results`), shared by the sync and async paths and
    created on first use with the endpoint's result TTL; in S3 under the endpoint namespace's own prefix."""
    if state.result_store is None:
        from bundleserve.queue.results import for_namespace, open_result_store

        settings = state.settings
        ttl = float(settings.endpoint.spec.async_settings.result_ttl_seconds)
        store = open_result_store(
            settings.results_dir,
            settings.results_url,
            default_ttl_seconds=ttl,
            s3_endpoint=settings.results_s3_endpoint,
        )
        state.result_store = for_namespace(store, settings.endpoint.namespace)
    return state.result_store


def s3_objects(state: RouterState) -> S3Objects | None:
    """Objects by `s3://` URL through the result store's client when results are in S3 (None otherwise)."""
    if not state.settings.results_url:
        return None
    from bundleserve.queue.s3results import objects_of

    return objects_of(result_store(state))
