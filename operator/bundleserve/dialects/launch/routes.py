"""The Launch dialect's routes: parse -> invocation core / task service -> render. The calls, the async submissions
and the polls are written once against the transport-neutral seam (`edge.exchange`: `legacy_sync`, `v1_sync`,
`v1_stream`, `legacy_async`, `v1_async`, `legacy_poll`, `legacy_result`, `v1_poll` are head phases) and served by
aiohttp (`dialects.adapter`) and by the fast edges (`operations`), so a client that submits and polls on one
keep-alive connection stays on the fast edge; the endpoint listings are aiohttp handlers.

Legacy routes (PyPI `scale-launch` 0.3.x; the client's `endpoint` is `{server}/v1/hosted_inference`):
  GET  /v1/hosted_inference/endpoints/{name}                       endpoint description (`endpoint_type` sync|async)
  POST /v1/hosted_inference/task_sync/{name}                       sync call, `state` SUCCESS|FAILURE
  POST /v1/hosted_inference/task_async/{name}                      `{"task_id"}`
  GET  /v1/hosted_inference/endpoints/{name}/task_async/{task_id}  `state` PENDING|SUCCESS|FAILURE
  GET  /v1/hosted_inference/endpoints                              `{"endpoints": [...]}` (`list_model_endpoints`)
  GET  /v1/hosted_inference/task/result/{task_id}                  as the poll above, by task id (`get_async_response`)
Current routes (model-engine `/v1`; `model_endpoint_id` is the endpoint's name, as `GET /v1/model-endpoints` says):
  GET  /v1/model-endpoints?name=NAME
  POST /v1/sync-tasks?model_endpoint_id=NAME
  POST /v1/async-tasks?model_endpoint_id=NAME
  GET  /v1/async-tasks/{task_id}
  POST /v1/streaming-tasks?model_endpoint_id=NAME                  text/event-stream

Nothing here decides admission, deadlines, limits, auth or the error cause: `InvocationBackend.gate` (called before
the body is read), `read_body`, `predict` and `stream` do, and `TaskBackend` owns the queue. What an endpoint serves
is learnt from the same gate (a mode it does not serve raises ModeNotServed), so there is no second description of
endpoints to keep in step.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ApiError, InvalidRequest, ModelError, ModeNotServed, NotFound, Unavailable
from bundleserve.api.invocation import Invocation, ModelReply, StreamChunk
from bundleserve.dialects import adapter
from bundleserve.dialects.base import InvocationBackend, Lookup, TaskBackend, WholeCall, absolute_url_of
from bundleserve.dialects.launch import render
from bundleserve.dialects.launch.models import (
    LegacyAsyncSubmitResponse,
    LegacyEndpointList,
    LegacyTaskRequest,
    V1AsyncSubmitResponse,
    V1EndpointList,
    V1TaskRequest,
    parse_task_request,
    task_invocation,
    to_invocation,
)
from bundleserve.edge.exchange import Head, HeadPhase, Prepared, Reply
from bundleserve.queue.tasks import CallbackTarget

LEGACY_BASE = "/v1/hosted_inference"
#: A legacy poll holds up to this long for the task to finish: the 0.3.x client sleeps 2 s between polls, so without
#: it `future.get()` would return up to 2 s after the result exists.
LEGACY_POLL_WAIT_SECONDS = 5.0
_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_JSON_HEADERS = {"Content-Type": _JSON}
LEGACY_SYNC_PATH = f"{LEGACY_BASE}/task_sync/{{name}}"
LEGACY_ASYNC_PATH = f"{LEGACY_BASE}/task_async/{{name}}"
LEGACY_POLL_PATH = f"{LEGACY_BASE}/endpoints/{{name}}/task_async/{{task_id}}"
LEGACY_RESULT_PATH = f"{LEGACY_BASE}/task/result/{{task_id}}"
V1_SYNC_PATH = "/v1/sync-tasks"
V1_ASYNC_PATH = "/v1/async-tasks"
V1_POLL_PATH = "/v1/async-tasks/{task_id}"
V1_STREAM_PATH = "/v1/streaming-tasks"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PickledResults(Protocol):
    """Keeps a sync `return_pickled` result where the client can download it; returns its path or URL.

    The router passes the same store its native predict and async results use (one store, one result route).
    """

    async def keep(self, reply: ModelReply) -> str: ...


#: The result keeper of endpoint `name` (a router: its own store; the gateway: the store of the endpoint's namespace).
ResultsResolver = Callable[[str], PickledResults]


class EndpointGate(Protocol):
    """The part of the core the routes that call no model need (the polls, the listings): the gate, called before
    the body is read. `InvocationBackend` satisfies it; so does the gateway (for routes that name no endpoint, or only
    list them). The routes that take a body gate through the endpoint's own backend (`CallsResolver`), which also
    holds its body limit."""

    def gate(self, name: str | None, authorization: str | None, mode: Mode) -> object: ...


#: The invocation backend of endpoint `name`: a router's core (its own endpoint), or the gateway's per-endpoint
#: backend that hands the parsed call to the endpoint's router in one hop. Raises NotFound for an unknown name.
CallsResolver = Callable[[str], InvocationBackend]

#: The task service of an endpoint by name (None: the v1 poll, which has only the task id); None when the endpoint's
#: async API is not configured. The router binds its one service; the gateway resolves per endpoint.
TaskResolver = Callable[[str | None], TaskBackend | None]

#: The names of the endpoints this server answers for (a router: its own; a gateway: its registry's), for listings.
EndpointNames = Callable[[], Iterable[str]]


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=_JSON)


def _json_reply(body: bytes, status: int = 200) -> Reply:
    return Reply(status, _JSON_HEADERS, body)


def _error_reply(error: ApiError, *, legacy: bool) -> Reply:
    """An error in Launch's shape (FastAPI's `detail` plus the documented error), the legacy or the v1 status."""
    headers = {**error.headers, "Content-Type": _JSON}
    return Reply(render.error_status(error, legacy=legacy), headers, render.error_body(error))


def _error_response(error: ApiError, *, legacy: bool) -> web.Response:
    reply = _error_reply(error, legacy=legacy)
    return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


def _renders_errors(*, legacy: bool) -> Callable[[Handler], Handler]:
    """Every ApiError of a handler in Launch's shape (the router's middleware would render the native one)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ApiError as error:
                return _error_response(error, legacy=legacy)

        return wrapped

    return decorate


def _endpoint_id(value: str | None) -> str:
    name = (value or "").strip()
    if not name:
        raise InvalidRequest("the query parameter model_endpoint_id is required (the endpoint's name or id)")
    return name


class LaunchRoutes:
    """The Launch routes over one gate, its task services and the endpoints' invocation backends (`calls`): one role
    wherever they are mounted (a router passes its core, the gateway its per-endpoint backends)."""

    def __init__(
        self,
        gate: EndpointGate,
        tasks: TaskResolver,
        *,
        calls: CallsResolver,
        results: ResultsResolver | None = None,
        names: EndpointNames = tuple,
    ) -> None:
        self.names = names
        self.gatekeeper = gate
        self.calls = calls
        self.tasks = tasks
        self.results = results

    def routes(self) -> list[web.RouteDef]:
        legacy, v1 = _renders_errors(legacy=True), _renders_errors(legacy=False)
        return [
            web.get(f"{LEGACY_BASE}/endpoints", legacy(self.legacy_endpoints)),
            web.get(f"{LEGACY_BASE}/endpoints/{{name}}", legacy(self.legacy_endpoint)),
            web.get("/v1/model-endpoints", v1(self.v1_endpoints)),
            *(adapter.route(method, path, operation) for method, path, operation in operations(self)),
        ]

    # -- shared steps ---------------------------------------------------------------------------------------------

    def view(self, name: str, authorization: str | None) -> render.EndpointView:
        """The endpoint as the gate sees it: NotFound / Unauthorized propagate; each mode is served unless the gate
        says ModeNotServed; ready when a sync or streaming call would pass now."""
        modes: set[Mode] = set()
        ready = False
        for mode in Mode:
            try:
                self.gatekeeper.gate(name, authorization, mode)
            except ModeNotServed:
                continue
            except Unavailable:
                modes.add(mode)
                continue
            modes.add(mode)
            ready = ready or mode is not Mode.ASYNC
        return render.EndpointView(name=name, modes=frozenset(modes), ready=ready)

    def _task_backend(self, name: str | None) -> TaskBackend:
        tasks = self.tasks(name)
        if tasks is None:
            raise Unavailable("the async API of this endpoint is not configured (it needs a Redis URL)")
        return tasks

    async def keep(self, head: Head, name: str, reply: ModelReply) -> str:
        """A sync `return_pickled` result kept where the client downloads it: its absolute URL."""
        if self.results is None:
            raise Unavailable("return_pickled needs a result store, which this server has not configured")
        return absolute_url_of(head, await self.results(name).keep(reply))

    # -- legacy ---------------------------------------------------------------------------------------------------

    async def legacy_endpoint(self, request: web.Request) -> web.Response:
        view = self.view(request.match_info["name"], request.headers.get("Authorization"))
        return _json(render.dump(render.build_legacy_endpoint(view)))

    async def legacy_endpoints(self, request: web.Request) -> web.Response:
        """`list_model_endpoints`: every endpoint this server answers for, each as `GET .../endpoints/{name}`
        describes it (the API key is checked as there: Unauthorized is 401 whether or not there are endpoints)."""
        authorization = request.headers.get("Authorization")
        # The gate asks for the API key before anything else; modes and readiness are each endpoint's view's business.
        with contextlib.suppress(ModeNotServed, Unavailable):
            self.gatekeeper.gate(None, authorization, Mode.SYNC)
        views = []
        for name in sorted(set(self.names())):
            try:
                views.append(self.view(name, authorization))
            except NotFound:  # gone between the listing and the gate
                continue
        answer = LegacyEndpointList(endpoints=[render.build_legacy_endpoint(view) for view in views])
        return _json(render.dump(answer))

    def legacy_result(self, head: Head) -> Prepared | Reply:
        """`get_async_response(task_id)`'s head phase: the task found by its id alone (its record names the
        endpoint), answered at once in the legacy poll's shape: `state` PENDING (queued or running), SUCCESS or
        FAILURE (expired too), never a state the 0.3.x client does not know."""
        return self._poll(head, None, wait_seconds=0.0, legacy=True)

    def legacy_sync(self, head: Head) -> Prepared | Reply:
        """`task_sync/{name}`'s head phase (the seam's, `edge.exchange`: served by aiohttp and the fast edges)."""
        return self._prepare(head, Mode.SYNC, legacy=True)

    def legacy_async(self, head: Head) -> Prepared | Reply:
        """`task_async/{name}`'s head phase."""
        return self._submission(head, legacy=True)

    def legacy_poll(self, head: Head) -> Prepared | Reply:
        """The legacy poll's head phase (held up to `LEGACY_POLL_WAIT_SECONDS` for the task to finish)."""
        return self._poll(head, head.params.get("name"), wait_seconds=LEGACY_POLL_WAIT_SECONDS, legacy=True)

    # -- v1 -------------------------------------------------------------------------------------------------------

    async def v1_endpoints(self, request: web.Request) -> web.Response:
        """By name (what clients do): a list of one, or an empty list for an unknown name, as model-engine answers."""
        name = request.query.get("name", "").strip()
        if not name:
            raise InvalidRequest("the query parameter name is required (this server lists endpoints by name)")
        authorization = request.headers.get("Authorization")
        try:
            views: Iterable[render.EndpointView] = [self.view(name, authorization)]
        except NotFound:
            views = []
        answer = V1EndpointList(model_endpoints=[render.build_v1_endpoint(view) for view in views])
        return _json(render.dump(answer))

    def v1_sync(self, head: Head) -> Prepared | Reply:
        """`POST /v1/sync-tasks`'s head phase."""
        return self._prepare(head, Mode.SYNC, legacy=False)

    def v1_async(self, head: Head) -> Prepared | Reply:
        """`POST /v1/async-tasks`'s head phase."""
        return self._submission(head, legacy=False)

    def v1_poll(self, head: Head) -> Prepared | Reply:
        """`GET /v1/async-tasks/{task_id}`'s head phase: by task id only (model-engine's route has no endpoint), so
        the gate checks the API key (and the namespaces it opens)."""
        return self._poll(head, None, wait_seconds=0.0, legacy=False)

    def v1_stream(self, head: Head) -> Prepared | Reply:
        """`POST /v1/streaming-tasks`'s head phase."""
        return self._prepare(head, Mode.STREAMING, legacy=False)

    def _prepare(self, head: Head, mode: Mode, *, legacy: bool) -> Prepared | Reply:
        """The endpoint (from the path, or the v1 query) and its gate, before the body; a refusal in Launch's shape."""
        try:
            name = head.params["name"] if legacy else _endpoint_id(head.query("model_endpoint_id"))
            backend = self.calls(name)
            backend.gate(name, head.headers.get("Authorization"), mode)
        except ApiError as error:
            return _error_reply(error, legacy=legacy)
        call = _SyncCall if mode is Mode.SYNC else _StreamCall
        return call(self, head, name, backend, legacy=legacy)

    # -- async ----------------------------------------------------------------------------------------------------

    def _submission(self, head: Head, *, legacy: bool) -> Prepared | Reply:
        """The endpoint (from the path, or the v1 query), its gate and its queue, before the body."""
        try:
            name = head.params["name"] if legacy else _endpoint_id(head.query("model_endpoint_id"))
            backend = self.calls(name)
            backend.gate(name, head.headers.get("Authorization"), Mode.ASYNC)
            tasks = self._task_backend(name)
        except ApiError as error:
            return _error_reply(error, legacy=legacy)
        return _Submission(backend, tasks, legacy=legacy)

    def _poll(self, head: Head, name: str | None, *, wait_seconds: float, legacy: bool) -> Prepared | Reply:
        """A task's status by id (within endpoint `name`, or found by id alone): the gate (the API key, and for a
        name its async mode), then the lookup in the body phase."""
        try:
            self.gatekeeper.gate(name, head.headers.get("Authorization"), Mode.ASYNC)
            tasks = self._task_backend(name)
        except ApiError as error:
            return _error_reply(error, legacy=legacy)
        return _Poll(head, tasks, head.params["task_id"], wait_seconds, legacy=legacy)


class _Gated:
    """A request with a body past its endpoint's gate: the endpoint's body limit and reader, Launch's error shape
    (legacy or v1). What the body phases of calls and submissions share (`edge.exchange.Prepared`)."""

    __slots__ = ("backend", "legacy")

    def __init__(self, backend: InvocationBackend, *, legacy: bool) -> None:
        self.backend = backend
        self.legacy = legacy

    @property
    def max_body_bytes(self) -> int:
        return self.backend.max_body_bytes

    async def read_body(self, request: web.Request) -> bytes:
        return await self.backend.read_body(request)

    def refuse(self, error: ApiError) -> Reply:
        return _error_reply(error, legacy=self.legacy)


class _Submission(_Gated):
    """An async task's body phase: the task request parsed, queued, its id answered."""

    __slots__ = ("tasks",)

    def __init__(self, backend: InvocationBackend, tasks: TaskBackend, *, legacy: bool) -> None:
        super().__init__(backend, legacy=legacy)
        self.tasks = tasks

    async def answer(self, body: bytes) -> Reply:
        try:
            task = parse_task_request(body, LegacyTaskRequest if self.legacy else V1TaskRequest)
            del body
            callback = CallbackTarget(task.callback_url, task.callback_auth) if task.callback_url else None
            task_id = await self.tasks.submit(
                to_invocation(task), callback=callback, request_ttl_seconds=None, invocation_timeout_seconds=None
            )
        except ApiError as error:
            return self.refuse(error)
        submitted = (
            LegacyAsyncSubmitResponse(task_id=task_id) if self.legacy else V1AsyncSubmitResponse(task_id=task_id)
        )
        return _json_reply(render.dump(submitted))


class _Poll(Lookup):
    """A task's status lookup, past its gate."""

    __slots__ = ("head", "legacy", "task_id", "tasks", "wait_seconds")

    def __init__(self, head: Head, tasks: TaskBackend, task_id: str, wait_seconds: float, *, legacy: bool) -> None:
        self.head = head
        self.tasks = tasks
        self.task_id = task_id
        self.wait_seconds = wait_seconds
        self.legacy = legacy

    def refuse(self, error: ApiError) -> Reply:
        return _error_reply(error, legacy=self.legacy)

    async def answer(self, body: bytes) -> Reply:
        try:
            record = await self.tasks.status(self.task_id, wait_seconds=self.wait_seconds)
        except ApiError as error:
            return self.refuse(error)
        if record is None:
            return self.refuse(NotFound(f"no task {self.task_id!r} (unknown, or its result expired)"))
        absolute = functools.partial(absolute_url_of, self.head)
        if self.legacy:
            return _json_reply(render.dump(render.build_legacy_task(record, absolute)))
        return _json_reply(render.dump(render.build_v1_task(record, absolute)))


class _Call(_Gated):
    """A sync or streaming task past its gate: what both body phases share."""

    __slots__ = ("head", "name", "routes")

    def __init__(
        self, routes: LaunchRoutes, head: Head, name: str, backend: InvocationBackend, *, legacy: bool
    ) -> None:
        super().__init__(backend, legacy=legacy)
        self.routes = routes
        self.head = head
        self.name = name

    def invocation(self, body: bytes) -> Invocation:
        return task_invocation(body, LegacyTaskRequest if self.legacy else V1TaskRequest)


class _SyncCall(_Call, WholeCall):
    """A sync task's body phase (`dialects.base.WholeCall`): the result, or a model failure, in Launch's task
    shape; a pickled result is kept for download and answered by its URL."""

    __slots__ = ()

    def rendered(self, outcome: ModelReply | ApiError) -> Reply:
        if isinstance(outcome, ModelError):
            failure = render.build_legacy_failure(outcome) if self.legacy else render.build_v1_failure(outcome)
            return _json_reply(render.dump(failure))
        if isinstance(outcome, ApiError):
            return self.refuse(outcome)
        return _json_reply(render.sync_success_body(render.result_text(outcome), legacy=self.legacy))

    async def answer_invocation(self, invocation: Invocation) -> Reply:
        if not invocation.return_pickled:
            return await super().answer_invocation(invocation)
        try:
            reply = await self.backend.predict(invocation)
        except ApiError as error:
            return self.rendered(error)
        try:
            result_url = await self.routes.keep(self.head, self.name, reply)
        except ApiError as error:
            return self.refuse(error)
        answer = (
            render.build_legacy_sync(result_url=result_url)
            if self.legacy
            else render.build_v1_sync(result_url=result_url)
        )
        return _json_reply(render.dump(answer))


class _StreamCall(_Call):
    """A streaming task's body phase: server-sent events; a model failure before the first chunk is a 200 stream
    whose one event is the failure, a failure after it one final FAILURE event."""

    __slots__ = ()

    async def answer(self, body: bytes) -> Reply:
        try:
            invocation = self.invocation(body)
            del body
            if invocation.return_pickled:
                raise InvalidRequest("return_pickled is not available for streaming")
            stack = contextlib.AsyncExitStack()
            try:
                chunks = await stack.enter_async_context(self.backend.stream(invocation))
            except ModelError as error:
                return Reply(200, _SSE_HEADERS, render.stream_failure_event(error))
        except ApiError as error:
            return self.refuse(error)
        return Reply(200, _SSE_HEADERS, chunks=_events(chunks), close=stack.aclose)


async def _events(chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield render.stream_chunk_event(chunk.data)
    except ModelError as error:  # mid-stream: one final FAILURE event
        yield render.stream_failure_event(error)


def operations(routes: LaunchRoutes) -> list[tuple[str, str, HeadPhase]]:
    """Every seam operation by method and path (calls, async submissions, polls): served by aiohttp and by a
    server's fast edge alike."""
    return [
        ("POST", LEGACY_SYNC_PATH, routes.legacy_sync),
        ("POST", LEGACY_ASYNC_PATH, routes.legacy_async),
        ("GET", LEGACY_POLL_PATH, routes.legacy_poll),
        ("GET", LEGACY_RESULT_PATH, routes.legacy_result),
        ("POST", V1_SYNC_PATH, routes.v1_sync),
        ("POST", V1_ASYNC_PATH, routes.v1_async),
        ("GET", V1_POLL_PATH, routes.v1_poll),
        ("POST", V1_STREAM_PATH, routes.v1_stream),
    ]


def add_routes(
    app: web.Application,
    gate: EndpointGate,
    calls: CallsResolver,
    tasks: TaskResolver,
    *,
    results: ResultsResolver | None = None,
    names: EndpointNames = tuple,
) -> None:
    """Mount the Launch routes: on a router for its own endpoint (`gate` and every backend its core, `names` its
    name), on the gateway for its registry's endpoints (`gate` the gateway, `calls` its per-endpoint backends, so
    sync and streaming calls are parsed here once and handed to the endpoint's router in one hop)."""
    launch = LaunchRoutes(gate, tasks, calls=calls, results=results, names=names)
    app.router.add_routes(launch.routes())
    fast = adapter.fast_routes(app)
    if fast is not None:
        for method, path, operation in operations(launch):
            fast.add(method, path, operation)
