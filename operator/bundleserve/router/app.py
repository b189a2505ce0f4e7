"""Build the router's aiohttp application for one endpoint: routes, shared state, background probe, add-ons.

`build_app(settings)` is all a caller needs (the CLI server, tests, local mode). Every route goes through the one
`InvocationCore` (`router.core`): the native sync/stream routes (`router.invoke`), the native async API
(`router.async_routes`, when the endpoint serves async) and every dialect in `DIALECTS`, each mounted with the core
and the endpoint's `TaskService` (see docs/router.md, "Invocation core").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bundleserve import __version__
from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import Unavailable
from bundleserve.dialects import adapter, openapi
from bundleserve.dialects.adapter import FAST_ROUTES
from bundleserve.dialects.base import PUBLIC_URL, DialectMount, InvocationBackend, TaskBackend
from bundleserve.dialects.launch import routes as launch
from bundleserve.dialects.openai import routes as openai_routes
from bundleserve.dialects.sagemaker import routes as sagemaker_routes
from bundleserve.edge.auth import ApiKeys
from bundleserve.edge.errors import error_response, render_errors
from bundleserve.edge.exchange import FastRoutes
from bundleserve.queue.service import stored_result as stored
from bundleserve.router import async_routes, hop
from bundleserve.router.admission import AdmissionController
from bundleserve.router.core import BODY_RESERVED, InvocationCore
from bundleserve.router.fetch import UrlFetcher
from bundleserve.router.invoke import Invoker, PickledResults
from bundleserve.router.metrics import RouterMetrics
from bundleserve.router.model_client import ModelClient
from bundleserve.router.readiness import readiness_probe
from bundleserve.router.settings import Settings
from bundleserve.router.state import ROUTER_STATE, DrainState, RouterState, result_store
from bundleserve.router.worker import AsyncMetrics

log = logging.getLogger(__name__)

CORE = web.AppKey("invocation_core", InvocationCore)  # the one invocation path of this router
INVOKER = web.AppKey("invoker", Invoker)  # the native sync/stream handlers, shared with the fast path (router.fastpath)


def _mount_sagemaker(app: web.Application, core: InvocationBackend, tasks: TaskBackend | None) -> None:
    """The SageMaker dialect for this router's endpoint, signed as the router's settings say."""
    sagemaker_routes.mount(app, core, tasks, app[ROUTER_STATE].settings.sagemaker_signing)


def _mount_launch(app: web.Application, core: InvocationBackend, tasks: TaskBackend | None) -> None:
    """The Launch dialect for this router's endpoint, keeping sync pickled results where native predict keeps them."""
    state = app[ROUTER_STATE]
    results = PickledResults(state)
    launch.add_routes(
        app,
        core,
        lambda _name: core,
        lambda _name: tasks,
        results=lambda _name: results,
        names=lambda: (state.settings.name,),
    )


def _mount_openai(app: web.Application, core: InvocationBackend, tasks: TaskBackend | None) -> None:
    """The OpenAI dialect for this router's endpoint (its models: the endpoint, when it declares spec.openai)."""
    openai_routes.mount(app, core, tasks, app[ROUTER_STATE].settings.endpoint)


#: Every dialect the router serves besides the native API, mounted by `build_app` as `mount(app, core, tasks)`.
#: A dialect module exposes one `DialectMount` (see `bundleserve.dialects.base`) and is listed here, once.
DIALECTS: list[DialectMount] = [_mount_sagemaker, _mount_launch, _mount_openai]


def release_bodies(admission: AdmissionController) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Frees the body place `InvocationCore.read_body` took for a request, when its handler ends (its answer,
    streamed or not, is out): the bound on bodies in memory covers the whole request, not only the read."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            if request.get(BODY_RESERVED):
                admission.release_body()

    return middleware


def close_when_stopping(drain: DrainState) -> Callable[..., Awaitable[web.StreamResponse]]:
    """After SIGTERM every answer closes its connection (the fast edge does the same), so keep-alive clients such as
    the gateway reconnect, and the cluster sends them to another replica."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if drain.stopping:
            response.force_close()
        return response

    return middleware


def build_state(settings: Settings, model: ModelClient | None = None) -> RouterState:
    """Every part of one router, built once from its settings (the composition root of the router process)."""
    invocation = settings.endpoint.spec.invocation
    metrics = RouterMetrics(settings.name)
    admission = AdmissionController(invocation.concurrency, invocation.max_queued)
    metrics.track(lambda: admission.in_model, lambda: admission.queued)
    state = RouterState(
        settings=settings,
        model=model or ModelClient(settings.model_url),
        admission=admission,
        metrics=metrics,
        api_keys=ApiKeys(settings.api_keys) if settings.api_keys else None,
        fetcher=UrlFetcher(settings.url_policy),  # created here so every path (sync, async worker) uses the policy
    )
    if settings.serves(Mode.ASYNC):  # the task service, once per process: the async routes, dialects and worker
        built = async_routes.build_tasks(state)
        if built is not None:
            state.tasks, state.queue_redis = built
            state.async_metrics = AsyncMetrics(state)
    return state


def build_app(settings: Settings, *, model: ModelClient | None = None) -> web.Application:
    state = build_state(settings, model)
    app = web.Application(
        # the body deadline sees the rendered answer; a body place is freed whatever the handler did
        middlewares=[
            settings.connection_limits.middleware(),
            close_when_stopping(state.drain),
            release_bodies(state.admission),
            render_errors,
        ],
        client_max_size=settings.endpoint.spec.invocation.max_payload_bytes,
    )
    app[ROUTER_STATE] = state
    if settings.public_url:
        app[PUBLIC_URL] = settings.public_url
    core = app[CORE] = InvocationCore(state)
    invoker = app[INVOKER] = Invoker(core)
    # The exact path of our own endpoint resolves by dictionary lookup; the templated one answers 404 for other names.
    own_path, any_path = f"/v1/endpoints/{settings.name}", "/v1/endpoints/{name}"
    if settings.serves(Mode.SYNC):
        app.router.add_post(f"{own_path}/predict", invoker.predict)
        app.router.add_post(f"{any_path}/predict", invoker.predict)
    app[FAST_ROUTES] = FastRoutes()  # the operations the fast edge serves too (native stream; each dialect's own)
    if settings.serves(Mode.STREAMING):
        app.router.add_routes(
            [adapter.route("POST", f"{path}/stream", invoker.stream) for path in (own_path, any_path)]
        )
        app[FAST_ROUTES].add("POST", f"{any_path}/stream", invoker.stream)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/wait-for-drain", wait_for_drain)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.cleanup_ctx.append(readiness_probe)
    app.cleanup_ctx.append(_close_clients)
    tasks = async_routes.setup(app, state, core) if settings.serves(Mode.ASYNC) else None
    if not _has_route(app, "GET", "/v1/tasks/{}/result"):
        app.router.add_get("/v1/tasks/{task_id}/result", stored_result)
    for mount in DIALECTS:
        mount(app, core, tasks)
    hop.add_routes(app, core)  # the gateway's hand-over of calls its dialects parsed (edge.hop)
    return app


def _has_route(app: web.Application, method: str, template: str) -> bool:
    return any(openapi.route_key(m, p) == (method, template) for m, p in openapi.registered_routes(app))


async def _close_clients(app: web.Application) -> AsyncIterator[None]:
    yield
    state = app[ROUTER_STATE]
    await state.model.close()
    if state.fetcher is not None:
        await state.fetcher.close()


# -- probes and documents ------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[ROUTER_STATE]
    if state.drain.stopping:
        return error_response(Unavailable("draining"))
    if not state.readiness.ready:
        return error_response(Unavailable("the model is not ready"))
    worker = state.worker
    if worker is not None and not worker.healthy:
        return error_response(Unavailable(f"the async worker is not healthy: {worker.problem}"))
    return web.json_response({"status": "ready"})


async def wait_for_drain(request: web.Request) -> web.Response:
    """For the model container's preStop hook: block until the router received SIGTERM and finished its requests.

    Bounded by the shutdown delay plus the grace period so a hook never hangs longer than the pod may live.
    """
    state = request.app[ROUTER_STATE]
    grace = state.settings.shutdown_delay_seconds + state.settings.grace_seconds
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await state.drain.started.wait()
    drained = await state.drain.wait_drained(max(0.0, deadline - loop.time()))
    return web.json_response({"drained": drained, "active": state.drain.held})


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[ROUTER_STATE].metrics.registry
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi_json(request: web.Request) -> web.Response:
    state = request.app[ROUTER_STATE]
    document = openapi.build_document(
        request.app, title=f"bundleserve router: {state.settings.name}", version=__version__
    )
    return web.json_response(document)


async def stored_result(request: web.Request) -> web.Response:
    """A `return_pickled` result stored by this router (when the async API, which also serves this route, is off)."""
    state = request.app[ROUTER_STATE]
    request.app[CORE].authorize(request.headers.get("Authorization"))
    owner = (state.settings.endpoint.namespace, state.settings.name)  # a sync router holds no tasks: only its own
    data, content_type = await stored(result_store(state), request.match_info["task_id"], owner=owner, tasks=False)
    return web.Response(body=data, content_type=content_type)
