"""The activator: sync and streaming calls of an endpoint at zero replicas wait here while a replica starts.

Endpoints with `minReplicas: 0` and the sync or streaming mode (`EndpointSpec.scales_from_zero`) have no replica while
idle. Every call to such an endpoint passes `Activator.admitted` (a small hook right before each way the gateway sends
a call on: the fast edge, `Gateway.forward_to` and `forwarding.RouterHop`; so every dialect). While the endpoint has no ready replica (`EndpointEntry.at_zero`, from the Endpoint's
`status.readyReplicas` the gateway already watches), the call is held:

- bounded by count: at most `HoldSettings.max_held` calls per endpoint wait; one more is answered 429 `overloaded`
  with `Retry-After` at once;
- bounded by the call's own deadline (`hold_seconds`: the endpoint's `invocation.timeoutSeconds`, or the call's own
  shorter `timeout_seconds` where the gateway parsed it): past it the call is answered 504 `timeout` and never
  reaches a replica;
- a client that disconnects simply stops waiting (its handler is cancelled).

Meanwhile the demand goes to the operator's demand gate through Redis (`queue.demand`): a wake message when the first
call is held, and, every `report_seconds` while calls are held or in flight (and once after the last), the endpoint's
demand key with a TTL of its `scaleToZeroAfterSeconds`, so the operator sees the endpoint in use while the key lives
and returns it to zero once it expired. The first call after a quiet spell refreshes the key at once, so a key about
to expire does not let the operator take the replica away under it. The held calls go on as soon as the watch
reports a ready replica.

Limit: a call that reaches a replica the operator is just stopping (the few milliseconds between its read of an
expired key and its patch to 0, or before the watch reports the 0) gets the proxy's 503 after its retries.

Calls of every other endpoint pass without bookkeeping. Memory: a held call keeps its connection and what was read of
its body (nothing for a proxied body, which waits unread in the socket; at most `maxPayloadBytes` for a dialect that
read it first), so `max_held` bounds it per endpoint.

Errors: `api.errors.Overloaded` (429, full), `api.errors.Timeout` (504, deadline), `api.errors.NotFound` (the
Endpoint was deleted while its calls waited); Redis failures are logged, never raised (the calls still wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from bundleserve.api.errors import NotFound, Overloaded, Timeout
from bundleserve.gateway.registry import EndpointEntry, Registry
from bundleserve.queue import demand, keys
from bundleserve.queue.connection import Redis

log = logging.getLogger(__name__)

MAX_HELD_ENV = "BUNDLESERVE_GATEWAY_MAX_HELD_CALLS"


@dataclass(frozen=True)
class HoldSettings:
    """How the gateway holds calls of endpoints at zero replicas (docs/gateway.md, "Scale from zero")."""

    #: False: nothing is held or reported (local mode, whose routers run whatever minReplicas says).
    enabled: bool = True
    #: Calls held per endpoint at once (BUNDLESERVE_GATEWAY_MAX_HELD_CALLS); one more gets 429.
    max_held: int = 100
    #: Seconds between demand reports while calls are held or in flight.
    report_seconds: float = 1.0
    #: Seconds between two looks at the registry while a call waits (the watch updates it in place).
    poll_seconds: float = 0.05


def settings_from_env(env: Mapping[str, str]) -> HoldSettings:
    """HoldSettings from the gateway's environment; ValueError naming the variable for a bad value."""
    raw = env.get(MAX_HELD_ENV, "").strip()
    if not raw:
        return HoldSettings()
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise ValueError(f"{MAX_HELD_ENV} must be a whole number of calls from 1 to 100000, got {raw!r}")
    return HoldSettings(max_held=int(raw))


def hold_seconds(entry: EndpointEntry, request_timeout: float | None) -> float:
    """How long a call may wait for a replica: its own deadline, which is the endpoint's time limit or the call's own
    shorter `timeout_seconds` (a longer one is clamped, as the router does)."""
    limit = float(entry.endpoint.spec.invocation.timeout_seconds)
    return limit if request_timeout is None else min(limit, request_timeout)


def check_room(entry: EndpointEntry, held: int, settings: HoldSettings) -> None:
    """Overloaded (429) when `held` calls already wait for this endpoint's replica."""
    if held >= settings.max_held:
        raise Overloaded(
            f"endpoint {entry.name} is starting from zero replicas and already holds {held} calls; retry shortly",
            retry_after_seconds=1,
        )


def deadline_passed(entry: EndpointEntry, waited: float) -> Timeout:
    return Timeout(
        f"no replica of endpoint {entry.name} was ready within the call's deadline ({waited:.0f} s) while it scaled "
        "from zero"
    )


@dataclass
class EndpointLoad:
    """One endpoint's calls in this gateway: those waiting for a replica, and all in flight (waiting included)."""

    queue: str
    ttl_seconds: float
    held: int = 0
    in_flight: int = 0
    #: A call started or ended since the last report (a report then refreshes the key once more).
    touched: bool = False
    #: Reports being sent in the background (wake messages and first-call refreshes): kept until they finished.
    sending: set[asyncio.Task[None]] = field(default_factory=set)
    #: A wake message is being sent (a burst of held calls makes one).
    waking: bool = False

    def report(self) -> demand.DemandReport:
        return demand.DemandReport(queue=self.queue, held=self.held, ttl_seconds=self.ttl_seconds)


class Activator:
    """Holds calls of endpoints at zero replicas and reports the demand of endpoints that scale from zero."""

    def __init__(self, registry: Registry, settings: HoldSettings, redis: Redis | None) -> None:
        self.registry = registry
        self.settings = settings
        self.redis = redis
        self.loads: dict[tuple[str, str], EndpointLoad] = {}
        self._failing = False

    def passes(self, entry: EndpointEntry) -> bool:
        """The endpoint's calls need no turn and no bookkeeping here (it does not scale from zero, or holding is off):
        a caller may send them on without `admitted`."""
        return not entry.endpoint.spec.scales_from_zero or not self.settings.enabled

    def admitted(
        self, entry: EndpointEntry, *, request_timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[EndpointEntry]:
        """The call's turn: at once for an endpoint that does not scale from zero or has a ready replica; after a
        replica became ready otherwise (Overloaded, Timeout, NotFound). Yields `entry` as given (the caller chose where
        the call goes, e.g. a production variant's routers); the call counts as in flight until the block ends."""
        if self.passes(entry):
            return contextlib.nullcontext(entry)  # no bookkeeping: not even a generator per call
        return self._counted(entry, request_timeout)

    @contextlib.asynccontextmanager
    async def _counted(self, entry: EndpointEntry, request_timeout: float | None) -> AsyncIterator[EndpointEntry]:
        """`admitted` for an endpoint that scales from zero: in flight (and held while at zero) until the block ends."""
        spec = entry.endpoint.spec
        key = (entry.namespace, entry.name)
        load = self.loads.get(key)
        first = load is None
        if load is None:
            load = self.loads[key] = EndpointLoad(keys.queue_id(*key), spec.scaling.idle_seconds_before_zero)
        load.ttl_seconds = spec.scaling.idle_seconds_before_zero
        load.in_flight += 1
        load.touched = True
        try:
            if entry.at_zero:
                await self._hold(entry, load, hold_seconds(entry, request_timeout))
            elif first:
                # The first call after a quiet spell is reported now, not at the next tick: the key may be about to
                # expire, and the operator must not take the replica away under this call.
                self._send_in_background(load, publish=False)
            yield entry
        finally:
            load.in_flight -= 1
            load.touched = True

    async def _hold(self, entry: EndpointEntry, load: EndpointLoad, seconds: float) -> None:
        """Until the registry's entry of the endpoint has a ready replica (Overloaded, Timeout, NotFound)."""
        check_room(entry, load.held, self.settings)
        load.held += 1
        started = time.monotonic()
        try:
            self._wake(load)
            while True:
                current = self.registry.get(entry.namespace, entry.name)
                if current is None:
                    raise NotFound(f"unknown endpoint {entry.name!r}")
                if not current.at_zero or not current.endpoint.spec.scales_from_zero:
                    log.info(
                        "%s/%s: replica ready after %.1f s", entry.namespace, entry.name, time.monotonic() - started
                    )
                    return
                waited = time.monotonic() - started
                if waited >= seconds:
                    raise deadline_passed(entry, seconds)
                await asyncio.sleep(min(self.settings.poll_seconds, seconds - waited))
        finally:
            load.held -= 1

    def _wake(self, load: EndpointLoad) -> None:
        """Tell the operator now (in the background: the call waits either way, and a slow Redis must not add to it)."""
        self._send_in_background(load, publish=True)

    def _send_in_background(self, load: EndpointLoad, *, publish: bool) -> None:
        """One wake in flight per endpoint (a burst makes one); a refresh only follows a quiet spell, so it is rare."""
        if self.redis is None or (publish and load.waking):
            return
        load.waking = load.waking or publish
        task = asyncio.create_task(self._send(load, publish), name=f"bundleserve-demand-{load.queue}")
        load.sending.add(task)
        task.add_done_callback(load.sending.discard)

    async def _send(self, load: EndpointLoad, publish: bool) -> None:
        """The report is taken when the task runs: the calls of a burst that arrived meanwhile count too, so the
        operator starts enough replicas for them (held / targetConcurrency)."""
        if self.redis is None:
            return
        try:
            if publish:
                await demand.wake(self.redis, load.report())
            else:
                await demand.report(self.redis, [load.report()])
        except Exception as error:  # Redis down: the calls wait on; the reports retry every tick
            log.warning("cannot report demand for %s: %s", load.queue, error)
        finally:
            if publish:
                load.waking = False

    def due_reports(self) -> list[demand.DemandReport]:
        """The reports of this tick: endpoints with calls in flight or a call that started or ended since the last."""
        due = []
        for key, load in list(self.loads.items()):
            if load.in_flight or load.touched:
                due.append(load.report())
                load.touched = False
            elif not load.sending:
                del self.loads[key]  # idle and reported: forgotten until its next call
        return due

    async def report_forever(self) -> None:
        """Every `report_seconds`, the due reports in one round trip (cancel to stop)."""
        while True:
            await asyncio.sleep(self.settings.report_seconds)
            reports = self.due_reports()
            if not reports or self.redis is None:
                continue
            try:
                await demand.report(self.redis, reports)
                if self._failing:
                    log.info("demand reports reach Redis again")
                self._failing = False
            except Exception as error:  # logged once per outage; the next tick tries again
                if not self._failing:
                    log.warning("cannot report demand to Redis: %s", error)
                self._failing = True
                unsent = {report.queue for report in reports}
                for load in self.loads.values():  # report these again next tick
                    load.touched = load.touched or load.queue in unsent
