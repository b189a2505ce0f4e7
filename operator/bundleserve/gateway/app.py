"""The gateway's aiohttp application: one front for many endpoints, addressed by name.

- sync and streaming requests are proxied unchanged to the endpoint's router (`gateway.proxy`);
- async submissions, task status and stored results are served from the queue directly (`gateway.tasks`), so they
  work while the endpoint has no ready replica;
- `GET /v1/endpoints[/{name}]` lists and describes what the registry holds (`gateway.registry`);
- the SageMaker Runtime and Launch dialects (`gateway.dialects`): their async operations over the same queues,
  their sync and streaming calls proxied to the endpoint's router.

Errors use the one rendering middleware of `edge.errors` and the API-key gate of `edge.auth`, as the router does: a
client cannot tell the gateway's refusals from a router's. The gateway never imports the router (an import contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bundleserve import __version__
from bundleserve.api.credentials import KeysFile, plain_keys
from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import InvalidRequest, NotFound, Unavailable
from bundleserve.api.invocation import IDEMPOTENCY_HEADER, Invocation, ModelReply
from bundleserve.dialects import openapi
from bundleserve.dialects.adapter import FAST_ROUTES
from bundleserve.dialects.base import PUBLIC_URL, TaskBackend, public_base_url
from bundleserve.dialects.launch import routes as launch
from bundleserve.dialects.native.tasks import accepted_body, parse_wait, submit_native, task_body
from bundleserve.dialects.openai import routes as openai_routes
from bundleserve.dialects.sagemaker import routes as sagemaker
from bundleserve.dialects.sagemaker import sigv4
from bundleserve.edge.auth import ApiKeys, presented_key, require_key
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.edge.errors import render_errors
from bundleserve.edge.exchange import FastRoutes
from bundleserve.gateway.activator import Activator, HoldSettings
from bundleserve.gateway.docs import add_docs_routes
from bundleserve.gateway.forwarding import EndpointCalls
from bundleserve.gateway.openai_models import GatewayModels
from bundleserve.gateway.proxy import forward, read_capped
from bundleserve.gateway.registry import EndpointEntry, Registry, require_mode
from bundleserve.gateway.tasks import EndpointQueues
from bundleserve.gateway.upstream import UpstreamPool
from bundleserve.gateway.variants import VARIANT_HEADER, pick_variant, request_key, stable_draw
from bundleserve.queue import keys
from bundleserve.queue.config import QueueLimits
from bundleserve.queue.results import (
    ResultStore,
    for_namespace,
    keep_sync_result,
    open_result_store,
    sync_result_owner,
)
from bundleserve.queue.service import S3AsyncPaths, SubmitChecks, stored_result
from bundleserve.queue.tasks import CallbackTarget, TaskRecord

_JSON = "application/json"
#: The namespaces the current request's credential reaches (None: every namespace), set by `Gateway.gate` for the
#: rest of the request's handler (aiohttp runs each request in its own task, so the value never leaks to another
#: request). Routes addressed by task id alone read it; unset means no gate ran and nothing is visible (fail closed).
_SCOPE: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("bundleserve_gateway_scope")


@dataclass
class GatewayConfig:
    redis_url: str | None = None
    #: Cluster-wide keys as a plain set (local mode, tests); `keys_file` takes precedence.
    api_keys: frozenset[str] = frozenset()
    #: The master keys file with namespace scopes (api/credentials.py); None: `api_keys` (if any) are cluster-wide.
    keys_file: KeysFile | None = None
    #: Where routers store pickled/large results when no S3 store is configured (shared in local mode).
    results_dir: Path = Path("/var/lib/bundleserve/results")
    results_url: str | None = None
    #: The S3-compatible server of `results_url` (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; None: AWS itself).
    results_s3_endpoint: str | None = None
    #: What async submissions must pass before they are queued (url schemes, callback destinations), as on routers.
    submit_checks: SubmitChecks = field(default_factory=SubmitChecks)
    #: Who may call the SageMaker dialect (SigV4 keys, unsigned access; BUNDLESERVE_SAGEMAKER_*, as on routers).
    sagemaker_signing: sigv4.SigV4Config = field(default_factory=sigv4.SigV4Config)
    #: How calls of endpoints at zero replicas are held while one starts (gateway.activator).
    hold: HoldSettings = field(default_factory=HoldSettings)
    #: Keep-alive/head and body deadlines of the gateway's connections (edge.connections).
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: The public base URL (BUNDLESERVE_PUBLIC_URL; None: from each request's forwarding headers).
    public_url: str | None = None
    #: The deployment's queue knobs for the endpoints' queues (read once at start, as routers do).
    queue_limits: QueueLimits = field(default_factory=QueueLimits)
    #: Extra aiohttp sub-setups, each called with (app, gateway) after the built-in dialects.
    dialects: list[Callable[[web.Application, Gateway], None]] = field(default_factory=list)


class Gateway:
    """The handlers, bound once to the registry, the upstream session and the queues."""

    def __init__(self, registry: Registry, config: GatewayConfig) -> None:
        self.registry = registry
        self.config = config
        self.keys_file = config.keys_file or (plain_keys(config.api_keys) if config.api_keys else None)
        self.keys = ApiKeys(self.keys_file.all_keys()) if self.keys_file is not None else None
        self.session: aiohttp.ClientSession | None = None
        #: The pooled raw client to the routers, for the fast edge's hot paths (`gateway.fastpath`).
        self.pool = UpstreamPool()
        self.queues: EndpointQueues | None = None
        #: Holds calls of endpoints at zero replicas; reports demand once the queues' Redis client exists.
        self.activator = Activator(registry, config.hold, None)
        #: False until the registry's source has delivered its first complete listing (cluster watch).
        self.synced = True
        self._store: ResultStore | None = None
        #: The uniform draw of the weighted variant split (gateway.variants.pick_variant).
        self.draw: Callable[[], float] = random.random

    # -- the gate every /v1 route passes before reading a body -------------------------------------------------

    def gate(
        self,
        name: str | None,
        authorization: str | None,
        mode: Mode | None,
        *,
        authenticated: bool = False,
        scope: frozenset[str] | None = None,
    ) -> EndpointEntry | None:
        """API key (unless a dialect verified its own credential: `authenticated`, whose namespaces are `scope`,
        None: cluster-wide), then name (an endpoint outside the credential's namespaces answers as an unknown name,
        before its modes are looked at) and mode; `name=None` (a route addressed by task id only) checks the key alone. Readiness is the router's to judge: a request to
        an endpoint without a ready replica gets the router's (or the proxy's) 503 (unless the endpoint scales from
        zero: then the activator holds it before forwarding), and async submissions never depend on it. The dialects' forwarding mounts call this same method (it satisfies their gate Protocols)."""
        if not authenticated:
            scope = self._admit(authorization)
        _SCOPE.set(scope)
        if name is None:
            return None
        return self._resolve(name, mode, scope)

    def _admit(self, authorization: str | None) -> frozenset[str] | None:
        """The API key checked; the namespaces it reaches (None: every one)."""
        require_key(self.keys, authorization)
        return self.scope(authorization)

    def _resolve(self, name: str, mode: Mode | None, scope: frozenset[str] | None) -> EndpointEntry:
        entry = self.registry.resolve(name)
        if scope is not None and entry.namespace not in scope:
            raise NotFound(f"unknown endpoint {name!r}")  # the same answer as a name that does not exist
        if mode is not None:
            require_mode(entry, mode)
        return entry

    def scope(self, authorization: str | None) -> frozenset[str] | None:
        """The namespaces the (already accepted) credential reaches: None for a cluster-wide key or keys off."""
        if self.keys_file is None:
            return None
        key = presented_key(authorization)
        return frozenset() if key is None else self.keys_file.namespaces_of(key)

    def gate_entry(self, name: str, authorization: str | None, mode: Mode | None) -> EndpointEntry:
        """`gate` for a route that names its endpoint: the entry, never None."""
        scope = self._admit(authorization)
        _SCOPE.set(scope)
        return self._resolve(name, mode, scope)

    @property
    def requires_api_key(self) -> bool:
        return self.keys is not None

    def upstream_authorization(self, entry: EndpointEntry) -> str | None:
        """The credential the gateway sends a router: never the client's own, but that endpoint's gateway key
        (api/credentials.py), which only that endpoint's routers accept; None when the gateway has no keys (then
        neither have the routers)."""
        if self.keys_file is None:
            return None
        return f"Bearer {self.keys_file.gateway_key(entry.namespace, entry.name)}"

    def variant_entry(
        self, entry: EndpointEntry, requested: str | None, key: str | None = None
    ) -> tuple[EndpointEntry, str]:
        """The entry aimed at one production variant's routers (the named one, else a weighted pick, drawn from the
        idempotency `key` when the call has one), and its name. UnknownVariant for a name the endpoint lacks."""
        routes = entry.routes
        if requested is None and len(routes) == 1:  # no split to draw (the usual endpoint: one implicit variant)
            route = routes[0]
        else:
            route = pick_variant(routes, requested, stable_draw(key) if key is not None else self.draw())
        if route.router_url == entry.router_url:
            return entry, route.name
        return dataclasses.replace(entry, router_url=route.router_url), route.name

    async def forward_to(
        self,
        request: web.Request,
        entry: EndpointEntry,
        *,
        read_body: bytes | None = None,
        requested_variant: str | None = None,
    ) -> web.StreamResponse:
        """Proxy to the routers of one of the entry's variants (`requested_variant`, else a weighted pick) with the
        gateway's credential for that endpoint in place of the client's; the answer names the variant. An endpoint at
        zero replicas holds the call in the activator first."""
        key = request_key(request.headers)
        target, variant = self.variant_entry(entry, requested_variant, key)
        async with self.activator.admitted(target):
            return await forward(
                request,
                target,
                self.upstream(),
                read_body=read_body,
                authorization=self.upstream_authorization(entry),
                replace_authorization=True,
                reply_headers={VARIANT_HEADER: variant},
            )

    def admit(self, entry: EndpointEntry, request_timeout: float | None) -> AbstractAsyncContextManager[EndpointEntry]:
        """The activator's hook for a dialect that hands parsed calls on itself (`gateway.forwarding.RouterHop`)."""
        return self.activator.admitted(entry, request_timeout=request_timeout)

    def require_queues(self) -> EndpointQueues:
        if self.queues is None:
            raise Unavailable("the gateway has no Redis URL (--redis-url or BUNDLESERVE_REDIS_URL): async is off")
        return self.queues

    def upstream(self) -> aiohttp.ClientSession:
        if self.session is None:  # only before the app's startup or after its cleanup: no request runs then
            raise Unavailable("the gateway is not started: its client session starts with the app")
        return self.session

    # -- handlers ----------------------------------------------------------------------------------------------

    async def list_endpoints(self, request: web.Request) -> web.Response:
        return web.Response(body=self.description(None, request.headers.get("Authorization")), content_type=_JSON)

    async def describe(self, request: web.Request) -> web.Response:
        document = self.description(request.match_info["name"], request.headers.get("Authorization"))
        return web.Response(body=document, content_type=_JSON)

    def description(self, name: str | None, authorization: str | None) -> bytes:
        """`GET /v1/endpoints/{name}`'s document (the SDK's `describe`, before its first call), or with no name
        the listing of the endpoints the caller's key reaches (another namespace's names are not listed either).
        Both edges call this: the SDK describes on the connection it then calls on, which must stay on the fast
        edge."""
        if name is not None:
            return json.dumps(self.gate_entry(name, authorization, None).describe()).encode()
        self.gate(None, authorization, None)
        scope = _SCOPE.get(frozenset())
        entries = [entry for entry in self.registry.entries() if scope is None or entry.namespace in scope]
        return json.dumps({"endpoints": [entry.describe() for entry in entries]}).encode()

    def gate_name(self, request: web.Request, mode: Mode | None) -> EndpointEntry:
        return self.gate_entry(request.match_info["name"], request.headers.get("Authorization"), mode)

    def calls(self, name: str) -> EndpointCalls:
        """For the dialects' sync and streaming calls: endpoint `name`'s invocation backend here (this gate and the
        endpoint's body limit; the parsed call handed to its router in one hop, `gateway.forwarding`)."""
        return EndpointCalls(self, name)

    def results(self, name: str) -> KeptResults:
        """For the Launch dialect's sync `return_pickled`: where the endpoint's result is kept (its namespace's store,
        the one its routers and the gateway's result route read)."""
        return KeptResults(self, self.registry.resolve(name))

    def result_store(self) -> ResultStore:
        """The result store (the queues' when async is configured; else opened on first use, so a gateway without
        a writable results directory starts, and only a call that needs the store is refused)."""
        if self.queues is not None:
            return self.queues.store
        if self._store is None:
            try:
                config = self.config
                self._store = open_result_store(
                    config.results_dir, config.results_url, s3_endpoint=config.results_s3_endpoint
                )
            except OSError as error:
                raise Unavailable(f"the gateway's result store is not usable: {error.strerror}") from None
        return self._store

    async def predict(self, request: web.Request) -> web.StreamResponse:
        entry = self.gate_name(request, Mode.SYNC)
        return await self.forward_to(request, entry, requested_variant=request.headers.get(VARIANT_HEADER))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        entry = self.gate_name(request, Mode.STREAMING)
        return await self.forward_to(request, entry, requested_variant=request.headers.get(VARIANT_HEADER))

    def task_service(self, name: str) -> TaskBackend:
        """For the dialects' async adapters: the endpoint's tasks by name (NotFound, Unavailable); a submission to an
        endpoint with variants goes to one variant's queue, picked by weight."""
        return self.require_queues().backend(self.registry.resolve(name, Mode.ASYNC), self.draw)

    def task_owner(self) -> TaskOwners:
        """For routes addressed by task id alone (Launch's `GET /v1/async-tasks/{id}`): the task's own endpoint."""
        return TaskOwners(self)

    async def submit(self, request: web.Request) -> web.Response:
        entry = self.gate_name(request, Mode.ASYNC)  # accepted at zero replicas: queued tasks wait for a worker
        self.require_queues()
        body = await read_capped(request, entry.max_payload_bytes)
        answer = await self.submitted(
            entry, body, request.headers.get(IDEMPOTENCY_HEADER), request.headers.get(VARIANT_HEADER)
        )
        return web.Response(status=202, body=answer, content_type=_JSON)

    async def submitted(
        self, entry: EndpointEntry, body: bytes, idempotency: str | None, variant: str | None = None
    ) -> bytes:
        """A native async submission (gate passed, body read) queued, to the named variant's queue or one picked by
        weight; the 202's body. Both edges call this."""
        task_id = await submit_native(
            self.require_queues().backend(entry, self.draw, variant),
            body,
            kwargs_only=entry.endpoint.spec.bundle.is_python,
            idempotency=idempotency,
        )
        return accepted_body(task_id)

    async def task_status(self, request: web.Request) -> web.Response:
        """Found among the endpoints the caller's key reaches; that endpoint's service long-polls its `done` channel."""
        self.gate(None, request.headers.get("Authorization"), None)
        answer = await self.status_document(
            request.match_info["task_id"], request.query.get("wait"), request.headers, request.scheme
        )
        return web.Response(body=answer, content_type=_JSON)

    async def status_document(
        self, task_id: str, wait: str | None, headers: Mapping[str, str], scheme: str = "http"
    ) -> bytes:
        """The status document of a task the current credential reaches (`gate` ran in this context); NotFound for
        any other. Both edges call this."""
        found = await self.task_owner().locate(task_id, wait_seconds=parse_wait(wait))
        if found is None:
            raise NotFound(f"no task {task_id!r} (unknown, or its result expired)")
        record, variant = found
        # an absolute result_url, as routers make it
        public_url = public_base_url(headers, scheme=scheme, configured=self.config.public_url)
        return task_body(record, public_url, variant=variant)

    async def task_result(self, request: web.Request) -> web.Response:
        """Only a task of an endpoint the caller's key reaches (as the status route): a task id is no credential."""
        self.gate(None, request.headers.get("Authorization"), None)
        data, content_type = await self.task_owner().result(request.match_info["task_id"])
        return web.Response(body=data, content_type=content_type)

    def in_scope(self, entry: EndpointEntry) -> bool:
        """Whether the current request's credential (`_SCOPE`, set by `gate`) reaches the entry's namespace."""
        scope = _SCOPE.get(frozenset())
        return scope is None or entry.namespace in scope

    def visible_queues(self) -> dict[str, tuple[EndpointEntry, str | None]]:
        """Queue id -> (entry, declared variant or None) of the async endpoints the current request's credential
        reaches (`_SCOPE`): an endpoint's own queue, or each of its variants' queues."""
        scope = _SCOPE.get(frozenset())
        return {
            keys.queue_id(entry.namespace, entry.name, variant): (entry, variant)
            for entry in self.registry.entries()
            if entry.serves(Mode.ASYNC) and (scope is None or entry.namespace in scope)
            for variant in _variant_queues(entry)
        }

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready once the registry is synced: the gateway can route; each endpoint's readiness is in /v1/endpoints."""
        if not self.synced:
            raise Unavailable("the endpoint registry has not been listed yet")
        return web.json_response({"status": "ready"})

    async def openapi_json(self, request: web.Request) -> web.Response:
        document = openapi.build_document(request.app, title="bundleserve gateway", version=__version__)
        document["paths"].update(_gateway_paths())
        return web.json_response(document)


def _variant_queues(entry: EndpointEntry) -> list[str | None]:
    """The declared variants whose queues hold the endpoint's tasks; [None]: the endpoint's own queue."""
    return [v.name for v in entry.variants] or [None]


class KeptResults:
    """`dialects.launch.routes.PickledResults` of one endpoint at the gateway: its namespace's store, its TTL."""

    def __init__(self, gateway: Gateway, entry: EndpointEntry) -> None:
        self.gateway = gateway
        self.entry = entry

    async def keep(self, reply: ModelReply) -> str:
        entry = self.entry
        store = for_namespace(self.gateway.result_store(), entry.namespace)
        ttl = float(entry.endpoint.spec.async_settings.result_ttl_seconds)
        return await keep_sync_result(store, entry.namespace, entry.name, reply, ttl)


class TaskOwners:
    """A `TaskBackend` for a task id alone: the task's record names its endpoint, whose service answers.

    Submitting needs an endpoint, so `submit` refuses; the status long-poll and stored results work for any task.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def submit(
        self,
        inv: Invocation,
        *,
        callback: CallbackTarget | None,
        request_ttl_seconds: float | None,
        invocation_timeout_seconds: float | None,
        s3_paths: S3AsyncPaths | None = None,
    ) -> str:
        raise InvalidRequest("a submission must name its endpoint")

    def s3_paths(self) -> S3AsyncPaths | None:
        return None  # no endpoint, no paths: SageMaker submissions always name their endpoint

    async def _owner(self, task_id: str) -> tuple[EndpointEntry, str | None, TaskRecord] | None:
        visible = self.gateway.visible_queues()
        found = await self.gateway.require_queues().owner(task_id, list(visible))
        return None if found is None else (*visible[found[0]], found[1])

    async def locate(self, task_id: str, *, wait_seconds: float) -> tuple[TaskRecord, str | None] | None:
        """The task's record (long-polled as `status`) and the declared variant it was given (None: none)."""
        found = await self._owner(task_id)
        if found is None:
            return None
        entry, variant, record = found
        if wait_seconds > 0:
            service = self.gateway.require_queues().service(entry, variant)
            waited = await service.status(task_id, wait_seconds=wait_seconds)
            return None if waited is None else (waited, variant)
        return record, variant

    async def status(self, task_id: str, *, wait_seconds: float) -> TaskRecord | None:
        found = await self.locate(task_id, wait_seconds=wait_seconds)
        return None if found is None else found[0]

    async def result(self, task_id: str) -> tuple[bytes, str]:
        """An async result of a visible task, or a sync result (`results.sync_result_key`) of a visible endpoint."""
        queues = self.gateway.require_queues()
        if keys.is_task_id(task_id):
            found = await self._owner(task_id)
            if found is None:
                raise NotFound(f"no stored result for {task_id!r} (unknown, inline, or expired)")
            return await stored_result(queues.store_of(found[0].namespace), task_id)
        owner = sync_result_owner(task_id)
        scope = _SCOPE.get(frozenset())
        if owner is not None and (scope is None or owner[0] in scope):
            return await stored_result(queues.store_of(owner[0]), task_id, owner=owner, tasks=False)
        return await stored_result(queues.store, task_id, owner=("", ""), tasks=False)  # 400 if malformed, else 404


def _gateway_paths() -> dict[str, Any]:
    """The routes only the gateway has (the router module describes the shared ones)."""
    endpoint_schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "modes": {"type": "array", "items": {"type": "string", "enum": [m.value for m in Mode]}},
            "ready": {"type": "boolean"},
            "variants": {
                "type": "array",
                "description": "The production variants (spec.variants) and their weights; absent without variants",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "weight": {"type": "integer"}},
                    "required": ["name", "weight"],
                },
            },
        },
        "required": ["name", "modes", "ready"],
    }
    error = {"$ref": "#/components/responses/Error"}
    return {
        "/v1/endpoints": {
            "get": {
                "summary": "List the endpoints the gateway routes to",
                "operationId": "listEndpoints",
                "responses": {
                    "200": {
                        "description": "Every endpoint, with its modes and readiness",
                        "content": {
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {"endpoints": {"type": "array", "items": endpoint_schema}},
                                }
                            }
                        },
                    },
                    "401": error,
                },
            }
        },
        "/v1/endpoints/{name}": {
            "get": {
                "summary": "Describe one endpoint",
                "operationId": "describeEndpoint",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The endpoint", "content": {_JSON: {"schema": endpoint_schema}}},
                    "401": error,
                    "404": error,
                },
            }
        },
    }


GATEWAY = web.AppKey("gateway", Gateway)


def add_dialect_routes(app: web.Application, gateway: Gateway) -> None:
    """SageMaker Runtime, Launch and OpenAI on the gateway (docs/gateway.md, "Dialects"): gated by `Gateway.gate`, async
    over the endpoints' queues (so submissions work at zero replicas), sync and streaming calls parsed here once and
    handed to the endpoint's router in one hop (`Gateway.calls`)."""

    def python_bundle(name: str) -> bool:
        return gateway.registry.resolve(name).endpoint.spec.bundle.is_python

    signing = gateway.config.sagemaker_signing
    api = sagemaker.SageMakerApi(
        sagemaker.SageMakerSettings(signing=signing, python_bundle=python_bundle, variant=None),
        calls=gateway.calls,
        tasks=gateway.task_service,
    )
    sagemaker.add_routes(app, api)

    def launch_tasks(name: str | None) -> TaskBackend:
        return gateway.task_owner() if name is None else gateway.task_service(name)

    def names() -> list[str]:
        return [entry.name for entry in gateway.registry.entries()]

    launch.add_routes(app, gateway, gateway.calls, launch_tasks, results=gateway.results, names=names)
    # OpenAI: parsed here once, each call handed to the endpoint's router in one hop (gateway.forwarding).
    openai_routes.add_routes(app, GatewayModels(gateway))


def build_gateway_app(registry: Registry, config: GatewayConfig) -> web.Application:
    """The application; the caller runs it (`gateway.server`, local mode) and keeps `app[GATEWAY].registry` fed."""
    gateway = Gateway(registry, config)
    # the body deadline outermost: it sees the rendered answer and closes the connection after a 408
    app = web.Application(middlewares=[config.connections.middleware(), render_errors], client_max_size=0)
    app[GATEWAY] = gateway
    app[FAST_ROUTES] = FastRoutes()  # the dialect operations the fast edge serves too (`add_dialect_routes`)
    if config.public_url:
        app[PUBLIC_URL] = config.public_url

    async def clients(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        # no cookie jar: a proxy must never keep one client's Set-Cookie and replay it to the next client
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            gateway.session = session
            if config.redis_url:
                gateway.queues = EndpointQueues(
                    config.redis_url,
                    results_dir=config.results_dir,
                    results_url=config.results_url,
                    results_s3_endpoint=config.results_s3_endpoint,
                    checks=config.submit_checks,
                    limits=config.queue_limits,
                )
                gateway.activator.redis = gateway.queues.redis
            reporter = asyncio.create_task(gateway.activator.report_forever(), name="bundleserve-demand-reports")
            try:
                yield
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
                gateway.pool.close()
                if gateway.queues is not None:
                    await gateway.queues.close()

    app.cleanup_ctx.append(clients)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/openapi.json", gateway.openapi_json)
    add_docs_routes(app)
    app.router.add_get("/v1/endpoints", gateway.list_endpoints)
    app.router.add_get("/v1/endpoints/{name}", gateway.describe)
    app.router.add_post("/v1/endpoints/{name}/predict", gateway.predict)
    app.router.add_post("/v1/endpoints/{name}/stream", gateway.stream)
    app.router.add_post("/v1/endpoints/{name}/async", gateway.submit)
    app.router.add_get("/v1/tasks/{task_id}", gateway.task_status)
    app.router.add_get("/v1/tasks/{task_id}/result", gateway.task_result)
    add_dialect_routes(app, gateway)
    for setup in config.dialects:
        setup(app, gateway)
    return app
