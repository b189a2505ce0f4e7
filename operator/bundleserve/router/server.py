"""`bundleserve router`: serve one endpoint until SIGTERM, then drain gracefully and exit 0.

Drain: readiness fails at once; new requests are served for the shutdown delay (BUNDLESERVE_SHUTDOWN_DELAY_SECONDS, 0
by default; the operator sets it in pods), then get 503, requests in progress (streams included) may finish within the
grace period (the invocation timeout + 5 s, or BUNDLESERVE_DRAIN_SECONDS), and `GET /wait-for-drain` (the model
container's preStop hook) returns once the last one finished, so the model outlives every request routed to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from bundleserve import logs
from bundleserve.api.endpoint import Mode
from bundleserve.dialects.adapter import FAST_ROUTES
from bundleserve.edge.config import ConfigError
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.edge.loop import run
from bundleserve.router.app import INVOKER, build_app
from bundleserve.router.fastpath import FastEdge
from bundleserve.router.settings import Settings, build_settings
from bundleserve.router.state import ROUTER_STATE, RouterState

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    app = build_app(settings)
    state = app[ROUTER_STATE]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before listening: a SIGTERM during start-up also drains
        loop.add_signal_handler(sig, stop.set)
    limits = settings.connection_limits
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0, **limits.server_kwargs()
    )
    await runner.setup()
    edge: FastEdge | None = None
    listener: asyncio.Server | None = None
    try:
        edge = None if runner.server is None else fast_edge(app, runner.server, limits)
        if edge is not None:
            listener = await loop.create_server(edge, settings.host, settings.port, backlog=2048, reuse_address=True)
        else:
            site = web.TCPSite(runner, settings.host, settings.port, backlog=2048, reuse_address=True)
            await site.start()
        modes = ",".join(mode.value for mode in settings.endpoint.spec.modes)
        log.info(
            "router for endpoint %s (%s) listening on http://%s:%d, model at %s",
            settings.name,
            modes,
            settings.host,
            settings.port,
            settings.model_url,
        )
        await stop.wait()
        await _shutdown_delay(state, stop, settings.shutdown_delay_seconds)
        grace = settings.grace_seconds
        log.info("draining: %d requests and tasks in progress, up to %.0f s", state.drain.held, grace)
        state.drain.begin()
        if not await state.drain.wait_drained(grace):
            log.warning("grace period over with %d requests and tasks still in progress", state.drain.held)
        log.info("drained; stopping")
    finally:
        if listener is not None:
            listener.close()
        if edge is not None:
            edge.close()
        await runner.cleanup()


def fast_edge(app: web.Application, server: web.Server, limits: ConnectionLimits) -> FastEdge | None:
    """The router's fast edge in front of `server` (aiohttp's handler for `app`), or None when it has nothing to
    serve: native predict when the endpoint serves sync calls, and the dialects' operations (`FAST_ROUTES`: a
    streaming-only endpoint's OpenAI completions, for one). Every other request is handed over to aiohttp on the
    same connection."""
    dialects = app.get(FAST_ROUTES)
    native = app[ROUTER_STATE].settings.serves(Mode.SYNC)
    if not native and not dialects:
        return None
    return FastEdge(
        app[INVOKER],
        server,
        idle_seconds=limits.idle_seconds,
        body_seconds=limits.body_seconds,
        dialects=dialects,
        native=native,
    )


async def _shutdown_delay(state: RouterState, stop: asyncio.Event, seconds: float) -> None:
    """Serve on, unready, for `seconds` after SIGTERM (a second signal ends it early): until the cluster stops routing
    to this pod, new calls still arrive, and answering them beats refusing them. Answers close their connection, so
    keep-alive clients reconnect to another replica."""
    state.drain.stop_routing()
    if seconds <= 0:
        return
    log.info("stopping: serving %.0f s more while the cluster stops routing here", seconds)
    stop.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def main(args: argparse.Namespace) -> int:
    logs.configure()
    try:
        settings = build_settings(
            endpoint_file=args.endpoint_file,
            model_url=args.model_url,
            host=args.host,
            port=args.port,
            redis_url=args.redis_url,
            variant=args.variant,
        )
    except ConfigError as error:
        print(f"bundleserve router: {error}", file=sys.stderr)
        return 2
    try:
        run(serve(settings))
    except OSError as error:
        print(
            f"bundleserve router: cannot listen on {settings.host}:{settings.port}: {error.strerror}", file=sys.stderr
        )
        return 1
    return 0
