"""The SageMaker Runtime routes: parse (protocol, sigv4) -> the core (InvocationBackend, TaskBackend) -> render.

Nothing here decides admission, deadlines, body limits, url fetching or error causes: the core does, and raises the
`ApiError` hierarchy, which `protocol.render_error` turns into SageMaker's error shapes. One role wherever it is
mounted: the router passes its core for every name (the gate answers other names), the gateway a resolver whose
backend gates with the gateway's gate and hands the parsed invocation to the endpoint's router in one hop
(`gateway.forwarding.EndpointCalls`), so a call is parsed, gated, read and verified exactly once.

Async results: the 202 names an output and a failure location. With results in S3 they are `s3://` objects under
the endpoint's S3OutputPath/S3FailurePath, which the worker writes (`TaskBackend.s3_paths`); without S3 they are
absolute URLs served here, `GET /endpoints/{name}/async-invocations/{id}/output` and `.../failure`, 404 until the
task wrote them.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ApiError, ModelError, NotFound, Timeout, Unavailable
from bundleserve.api.invocation import Invocation, ModelReply, StreamChunk, TaskStatus
from bundleserve.dialects import adapter
from bundleserve.dialects.adapter import head_of
from bundleserve.dialects.base import InvocationBackend, TaskBackend, WholeCall, absolute_url
from bundleserve.dialects.sagemaker import eventstream, protocol, sigv4
from bundleserve.dialects.sagemaker.protocol import Operation
from bundleserve.edge.exchange import Head, HeadPhase, Prepared, Reply
from bundleserve.queue.s3results import failure_url, output_url
from bundleserve.queue.tasks import failure_document

TaskResolver = Callable[[str], TaskBackend]  # endpoint name -> its tasks (raises NotFound for an unknown name)


#: The invocation backend of an endpoint by name: a router's core (its own endpoint), or the gateway's per-endpoint
#: backend. Raises NotFound for a name it does not know.
CallsResolver = Callable[[str], InvocationBackend]

#: Authorization schemes that carry a bundleserve API key (edge.auth), accepted instead of SigV4 where keys exist.
_API_KEY_SCHEMES = ("bearer", "basic")

log = logging.getLogger(__name__)

INVOKE_PATH = "/endpoints/{name}/invocations"
INVOKE_STREAM_PATH = "/endpoints/{name}/invocations-response-stream"
OUTPUT_PATH = "/endpoints/{name}/async-invocations/{task_id}/output"
FAILURE_PATH = "/endpoints/{name}/async-invocations/{task_id}/failure"


@dataclass(frozen=True)
class SageMakerSettings:
    """How the dialect is configured on one server (router or gateway)."""

    signing: sigv4.SigV4Config
    python_bundle: Callable[[str], bool]  # endpoint name -> True for a Python bundle (JSON bodies become kwargs)
    #: The production variant served here, which a TargetVariant must name (a router); None on the gateway, whose
    #: backend picks among the endpoint's variants (and refuses an unknown name).
    variant: str | None = protocol.DEFAULT_VARIANT


class SageMakerApi:
    """The handlers of one server: `calls` resolves an endpoint's invocation backend, which gates every request,
    limits its body and runs sync and streaming calls; async submissions and their locations are served over `tasks`,
    which resolves a name too. Without `calls` only the async operation exists, ungated (a test harness)."""

    def __init__(
        self,
        settings: SageMakerSettings,
        *,
        calls: CallsResolver | None = None,
        tasks: TaskResolver | None = None,
    ) -> None:
        self.settings = settings
        self.calls = calls
        self.tasks = tasks
        #: Signatures verified here recently: an exact replay is refused (sigv4.ReplayGuard).
        self.replays = sigv4.ReplayGuard(settings.signing.max_clock_skew_seconds)

    # -- shared steps ----------------------------------------------------------------------------------------------

    def _error(self, error: ApiError, request_id: str) -> web.Response:
        reply = self.error_reply(error, request_id)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    @staticmethod
    def error_reply(error: ApiError, request_id: str) -> Reply:
        reply = protocol.render_error(error, request_id=request_id)
        return Reply(reply.status, reply.headers, reply.body)

    def _backend(self, name: str) -> InvocationBackend | None:
        """The endpoint's backend (None: no gate, the test harness); an unknown name in SageMaker's wording."""
        if self.calls is None:
            return None
        try:
            return self.calls(name)
        except NotFound:
            raise protocol.unknown_endpoint(name) from None

    def _authenticate(
        self, headers: Mapping[str, str], backend: InvocationBackend | None
    ) -> tuple[sigv4.SignedRequest | None, str | None]:
        """Headers-only SigV4 checks; returns the parsed signature and the Authorization for the gate.

        A SigV4 signature (verified over the body once read) is this dialect's authentication: the gate is then
        asked with `authenticated=True`, so a router or gateway with API keys does not also demand one (an AWS SDK
        cannot send it). An API key (`Bearer KEY`, or Basic) instead of a signature is accepted where API keys are
        configured: the gate checks it, as on every other route (a client of a router's own SageMaker routes may
        hold one). Unsigned requests (when allowed) pass their Authorization header, if any, to the gate unchanged.
        """
        signing = self.settings.signing
        authorization = headers.get("Authorization")
        if signing.open or (_is_api_key(authorization) and backend is not None and backend.requires_api_key):
            return None, authorization
        signed = sigv4.parse_authorization(signing, headers)
        return signed, None if signed is not None else authorization

    def _gate(
        self,
        backend: InvocationBackend | None,
        name: str,
        signed: sigv4.SignedRequest | None,
        authorization: str | None,
        mode: Mode,
    ) -> None:
        """The endpoint's one gate, with SageMaker's wording for an unknown endpoint. A signature's key opens only
        its namespaces (`scope`); another namespace's endpoint gets the unknown endpoint's answer."""
        if backend is None:
            return
        scope = self.settings.signing.scope_of(signed.access_key_id) if signed is not None else None
        try:
            backend.gate(name, authorization, mode, authenticated=signed is not None, scope=scope)
        except NotFound:
            raise protocol.unknown_endpoint(name) from None

    @staticmethod
    async def _read_body(backend: InvocationBackend | None, request: web.Request) -> bytes:
        if backend is None:
            return await request.read()
        return await backend.read_body(request)

    def verify(self, head: Head, signed: sigv4.SignedRequest | None, body: bytes, *, once: bool = True) -> None:
        """The signature over the body; `once` (invocations): an exact replay of a verified signature is refused
        (reads of a task's output or failure may repeat: replaying them changes nothing)."""
        if signed is None:
            return
        sigv4.verify_signature(
            self.settings.signing,
            signed,
            method=head.method,
            raw_path=head.raw_path,
            raw_query=head.raw_query,
            header_values=sigv4.request_header_values(list(head.headers.items())),
            body=body,
            secure=head.secure,
        )
        if once:
            self.replays.check(signed, head.headers)

    # -- InvokeEndpoint and InvokeEndpointWithResponseStream: the seam's two phases (`edge.exchange`) --------------

    def invoke(self, head: Head) -> Prepared | Reply:
        """InvokeEndpoint's head phase (served by aiohttp and the fast edges alike)."""
        return self._prepare(head, Operation.INVOKE, Mode.SYNC)

    def invoke_stream(self, head: Head) -> Prepared | Reply:
        """InvokeEndpointWithResponseStream's head phase."""
        return self._prepare(head, Operation.INVOKE_STREAM, Mode.STREAMING)

    def _prepare(self, head: Head, operation: Operation, mode: Mode) -> Prepared | Reply:
        """Everything the head decides: the endpoint's backend, the signature's header checks, the operation's
        headers, the gate; a refusal in SageMaker's error shape."""
        request_id = protocol.new_request_id()
        try:
            name = head.params["name"]
            backend = self._sync_backend(name)
            signed, authorization = self._authenticate(head.headers, backend)
            parsed = protocol.parse_request(operation, name, head.headers, variant=self.settings.variant)
            self._gate(backend, name, signed, authorization, mode)
        except ApiError as error:
            return self.error_reply(error, request_id)
        call = _InvokeCall if operation is Operation.INVOKE else _StreamCall
        return call(self, head, request_id, backend, signed, parsed, self.settings.python_bundle(name))

    # -- InvokeEndpointAsync ---------------------------------------------------------------------------------------

    async def invoke_async(self, request: web.Request) -> web.Response:
        request_id = protocol.new_request_id()
        try:
            name = request.match_info["name"]
            backend = self._backend(name)
            head = head_of(request)
            signed, authorization = self._authenticate(head.headers, backend)
            parsed = protocol.parse_request(Operation.INVOKE_ASYNC, name, head.headers, variant=self.settings.variant)
            self._gate(backend, name, signed, authorization, Mode.ASYNC)
            tasks = self._tasks(name)
            s3_paths = tasks.s3_paths()
            body = await self._read_body(backend, request)
            self.verify(head, signed, body)
            invocation = protocol.build_invocation(
                parsed,
                body,
                python_bundle=self.settings.python_bundle(name),
                allow_s3_input=s3_paths is not None,
            )
            task_id = await tasks.submit(
                invocation,
                callback=None,
                request_ttl_seconds=parsed.request_ttl_seconds,
                invocation_timeout_seconds=parsed.invocation_timeout_seconds,
                s3_paths=s3_paths,
            )
        except ApiError as error:
            return self._error(error, request_id)
        if s3_paths is not None:  # S3 storage: SageMaker's own contract, objects the worker writes
            output, failure = output_url(s3_paths.output, task_id), failure_url(s3_paths.failure, task_id)
        else:  # no S3: the http(s) routes below stand in for the objects
            output = absolute_url(request, OUTPUT_PATH.format(name=name, task_id=task_id))
            failure = absolute_url(request, FAILURE_PATH.format(name=name, task_id=task_id))
        headers = {
            protocol.H_OUTPUT_LOCATION: output,
            protocol.H_FAILURE_LOCATION: failure,
            protocol.H_REQUEST_ID: request_id,
        }
        inference_id = parsed.inference_id or task_id
        return web.json_response({"InferenceId": inference_id}, status=202, headers=headers)

    def _sync_backend(self, name: str) -> InvocationBackend:
        backend = self._backend(name)
        if backend is None:  # the routes are mounted only with `calls`
            raise protocol.unknown_endpoint(name)
        return backend

    def _tasks(self, name: str) -> TaskBackend:
        if self.tasks is None:  # the gate passed (async is served) but no queue is configured on this server
            raise Unavailable(f"async invocations of endpoint {name} need a queue, and none is configured here")
        try:
            return self.tasks(name)
        except NotFound:
            raise protocol.unknown_endpoint(name) from None

    # -- output and failure locations ------------------------------------------------------------------------------

    async def output(self, request: web.Request) -> web.Response:
        request_id = protocol.new_request_id()
        try:
            name, task_id = request.match_info["name"], request.match_info["task_id"]
            tasks = self._location_tasks(request, name)
            record = await tasks.status(task_id, wait_seconds=0)
            if record is None or record.status is not TaskStatus.SUCCESS:
                return _not_written(request_id, "output")
            if record.result_url is None and record.result_json is not None:
                body, content_type = record.result_json.encode("utf-8"), protocol.JSON_TYPE
            else:
                body, content_type = await tasks.result(task_id)
        except ApiError as error:
            return self._error(error, request_id)
        return web.Response(body=body, headers={"Content-Type": content_type, protocol.H_REQUEST_ID: request_id})

    async def failure(self, request: web.Request) -> web.Response:
        request_id = protocol.new_request_id()
        try:
            name, task_id = request.match_info["name"], request.match_info["task_id"]
            record = await self._location_tasks(request, name).status(task_id, wait_seconds=0)
        except ApiError as error:
            return self._error(error, request_id)
        if record is None or record.status not in (TaskStatus.FAILURE, TaskStatus.EXPIRED):
            return _not_written(request_id, "failure")
        body = failure_document(record.status, record.status_code, record.traceback)
        headers = {"Content-Type": protocol.JSON_TYPE, protocol.H_REQUEST_ID: request_id}
        return web.Response(body=body, headers=headers)

    def _location_tasks(self, request: web.Request, name: str) -> TaskBackend:
        """The same authentication as the invocations (a signed GET over an empty body), then the endpoint's tasks."""
        backend = self._backend(name)
        head = head_of(request)
        signed, authorization = self._authenticate(head.headers, backend)
        self.verify(head, signed, b"", once=False)
        self._gate(backend, name, signed, authorization, Mode.ASYNC)
        return self._tasks(name)


def _is_api_key(authorization: str | None) -> bool:
    scheme = (authorization or "").strip().partition(" ")[0].lower()
    return scheme in _API_KEY_SCHEMES


def _not_written(request_id: str, what: str) -> web.Response:
    body = json.dumps({"message": f"the {what} has not been written (yet)"}).encode()
    return web.Response(
        status=404, body=body, headers={"Content-Type": protocol.JSON_TYPE, protocol.H_REQUEST_ID: request_id}
    )


class _Call:
    """An invocation past its head phase: what both operations' body phases share."""

    __slots__ = ("api", "backend", "head", "parsed", "python_bundle", "request_id", "signed")

    def __init__(
        self,
        api: SageMakerApi,
        head: Head,
        request_id: str,
        backend: InvocationBackend,
        signed: sigv4.SignedRequest | None,
        parsed: protocol.SageMakerRequest,
        python_bundle: bool,
    ) -> None:
        self.api = api
        self.head = head
        self.request_id = request_id
        self.backend = backend
        self.signed = signed
        self.parsed = parsed
        self.python_bundle = python_bundle

    @property
    def max_body_bytes(self) -> int:
        return self.backend.max_body_bytes

    async def read_body(self, request: web.Request) -> bytes:
        return await self.backend.read_body(request)

    def refuse(self, error: ApiError) -> Reply:
        return self.api.error_reply(error, self.request_id)

    def invocation(self, body: bytes) -> Invocation:
        """Verify the signature over the body, build the one invocation."""
        self.api.verify(self.head, self.signed, body)
        return protocol.build_invocation(self.parsed, body, python_bundle=self.python_bundle)


class _InvokeCall(_Call, WholeCall):
    """InvokeEndpoint's body phase (`dialects.base.WholeCall`): the model's bytes as they are, with SageMaker's
    headers."""

    __slots__ = ()

    def rendered(self, outcome: ModelReply | ApiError) -> Reply:
        if isinstance(outcome, ApiError):
            return self.refuse(outcome)
        headers = protocol.reply_headers(
            request_id=self.request_id, custom_attributes=outcome.custom_attributes, variant=self.backend.variant
        )
        headers["Content-Type"] = outcome.content_type
        return Reply(200, headers, outcome.body)


class _StreamCall(_Call):
    """InvokeEndpointWithResponseStream's body phase (`edge.exchange.Prepared`)."""

    __slots__ = ()

    async def answer(self, body: bytes) -> Reply:
        """The invocation, the call, its event-stream frames (a failure before the first frame is an ordinary error
        answer)."""
        try:
            invocation = self.invocation(body)
            del body
            backend = self.backend
            stack = contextlib.AsyncExitStack()
            chunks = await stack.enter_async_context(backend.stream(invocation))
        except ApiError as error:
            return self.refuse(error)
        headers = protocol.reply_headers(request_id=self.request_id, custom_attributes=None, variant=backend.variant)
        headers["Content-Type"] = eventstream.CONTENT_TYPE
        headers[protocol.H_SM_CONTENT_TYPE] = self.parsed.accept or protocol.JSON_TYPE
        return Reply(200, headers, chunks=_frames(chunks, python_bundle=self.python_bundle), close=stack.aclose)


async def _frames(chunks: AsyncIterator[StreamChunk], *, python_bundle: bool) -> AsyncIterator[bytes]:
    """Model chunks -> PayloadPart frames; a mid-stream failure ends with one exception frame."""
    try:
        async for chunk in chunks:
            yield eventstream.payload_part(protocol.payload_bytes(chunk.data, python_bundle=python_bundle))
    except Timeout as error:
        yield eventstream.model_stream_error(error.message, eventstream.StreamErrorCode.MODEL_INVOCATION_TIME_EXCEEDED)
    except ModelError as error:
        yield eventstream.model_stream_error(error.message)
    except ApiError as error:
        log.warning("SageMaker stream failed: %s", error.message)
        yield eventstream.internal_stream_failure(error.message)


def routes(api: SageMakerApi) -> list[web.RouteDef]:
    """The dialect's routes; sync and stream only when the API has invocation backends (`calls`)."""
    table = [
        web.post("/endpoints/{name}/async-invocations", api.invoke_async),
        web.get(OUTPUT_PATH, api.output),
        web.get(FAILURE_PATH, api.failure),
    ]
    if api.calls is not None:
        table += [adapter.route("POST", path, operation) for path, operation in sync_operations(api)]
    return table


def sync_operations(api: SageMakerApi) -> list[tuple[str, HeadPhase]]:
    """InvokeEndpoint and InvokeEndpointWithResponseStream by path: the operations a fast edge serves too."""
    return [
        (INVOKE_PATH, api.invoke),
        (INVOKE_STREAM_PATH, api.invoke_stream),
    ]


def add_routes(app: web.Application, api: SageMakerApi) -> None:
    """The dialect's aiohttp routes, and its sync and streaming operations on the server's fast edge when it has one
    (`dialects.adapter.FAST_ROUTES`)."""
    app.add_routes(routes(api))
    fast = adapter.fast_routes(app)
    if fast is not None and api.calls is not None:
        for path, operation in sync_operations(api):
            fast.add("POST", path, operation)


def mount(app: web.Application, core: InvocationBackend, tasks: TaskBackend | None, signing: sigv4.SigV4Config) -> None:
    """The router's mount: the three operations for the router's own endpoint (the gate refuses others); `signing`:
    the router's SigV4 configuration, from its settings (docs/dialects.md, "Signatures").

    Whether JSON bodies become keyword arguments depends on the bundle kind, which the core knows (`is_python`).
    """
    is_python = bool(getattr(core, "is_python", True))
    variant = str(getattr(core, "variant", protocol.DEFAULT_VARIANT))
    settings = SageMakerSettings(signing=signing, python_bundle=lambda _name: is_python, variant=variant)
    resolver: TaskResolver | None = None
    if tasks is not None:
        bound = tasks

        def resolver(_name: str) -> TaskBackend:
            return bound

    add_routes(app, SageMakerApi(settings, calls=lambda _name: core, tasks=resolver))
