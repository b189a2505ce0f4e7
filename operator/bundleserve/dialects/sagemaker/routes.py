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
from bundleserve.dialects.base import InvocationBackend, Lookup, TaskBackend, WholeCall, absolute_url_of
from bundleserve.dialects.sagemaker import eventstream, protocol, sigv4
from bundleserve.dialects.sagemaker.protocol import Operation
from bundleserve.edge.exchange import Head, HeadPhase, Prepared, Reply
from bundleserve.queue.s3results import failure_url, output_url
from bundleserve.queue.tasks import failure_document

TaskResolver = Callable[[str], TaskBackend]  # endpoint name -> its tasks (raises NotFound for an unknown name)


#: The invocation backend of an endpoint by name: a router's core (its own endpoint), or the gateway's per-endpoint
#: backend. Raises NotFound for a name it does not know.
CallsResolver = Callable[[str], InvocationBackend]

#: The body limit of an async invocation without a backend (the ungated test harness): aiohttp's default.
UNGATED_BODY_BYTES = 1024**2

#: Authorization schemes that carry a bundleserve API key (edge.auth), accepted instead of SigV4 where keys exist.
_API_KEY_SCHEMES = ("bearer", "basic")

log = logging.getLogger(__name__)

INVOKE_PATH = "/endpoints/{name}/invocations"
INVOKE_STREAM_PATH = "/endpoints/{name}/invocations-response-stream"
ASYNC_PATH = "/endpoints/{name}/async-invocations"
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

    # -- InvokeEndpointAsync, and the locations of its output and failure: seam operations too -------------------

    def invoke_async(self, head: Head) -> Prepared | Reply:
        """InvokeEndpointAsync's head phase: the endpoint, the signature's header checks, the operation's headers,
        the gate and the endpoint's queue; the body phase (`_AsyncInvoke`) queues the task and answers 202."""
        request_id = protocol.new_request_id()
        try:
            name = head.params["name"]
            backend = self._backend(name)
            signed, authorization = self._authenticate(head.headers, backend)
            parsed = protocol.parse_request(Operation.INVOKE_ASYNC, name, head.headers, variant=self.settings.variant)
            self._gate(backend, name, signed, authorization, Mode.ASYNC)
            tasks = self._tasks(name)
        except ApiError as error:
            return self.error_reply(error, request_id)
        return _AsyncInvoke(self, head, request_id, backend, signed, parsed, tasks)

    def output(self, head: Head) -> Prepared | Reply:
        """`GET .../async-invocations/{task_id}/output`'s head phase: the result once the task succeeded, else 404."""
        return self._location(head, output=True)

    def failure(self, head: Head) -> Prepared | Reply:
        """`GET .../async-invocations/{task_id}/failure`'s head phase: the failure once the task failed, else 404."""
        return self._location(head, output=False)

    def _location(self, head: Head, *, output: bool) -> Prepared | Reply:
        """The same authentication as the invocations (a signed GET over an empty body), then the endpoint's tasks."""
        request_id = protocol.new_request_id()
        try:
            name = head.params["name"]
            backend = self._backend(name)
            signed, authorization = self._authenticate(head.headers, backend)
            self.verify(head, signed, b"", once=False)
            self._gate(backend, name, signed, authorization, Mode.ASYNC)
            tasks = self._tasks(name)
        except ApiError as error:
            return self.error_reply(error, request_id)
        return _Location(self, tasks, head.params["task_id"], request_id, output=output)

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


def _is_api_key(authorization: str | None) -> bool:
    scheme = (authorization or "").strip().partition(" ")[0].lower()
    return scheme in _API_KEY_SCHEMES


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
    """The dialect's aiohttp routes; sync and stream only when the API has invocation backends (`calls`)."""
    return [adapter.route(method, path, operation) for method, path, operation in operations(api)]


def operations(api: SageMakerApi) -> list[tuple[str, str, HeadPhase]]:
    """The dialect's operations by method and path (all seam operations, served by aiohttp and by a fast edge
    alike); InvokeEndpoint and InvokeEndpointWithResponseStream only when the API has invocation backends."""
    table: list[tuple[str, str, HeadPhase]] = [
        ("POST", ASYNC_PATH, api.invoke_async),
        ("GET", OUTPUT_PATH, api.output),
        ("GET", FAILURE_PATH, api.failure),
    ]
    if api.calls is not None:
        table += [("POST", INVOKE_PATH, api.invoke), ("POST", INVOKE_STREAM_PATH, api.invoke_stream)]
    return table


def add_routes(app: web.Application, api: SageMakerApi) -> None:
    """The dialect's aiohttp routes, and its operations on the server's fast edge when it has one
    (`dialects.adapter.FAST_ROUTES`; not for the ungated test harness, which has no `calls`)."""
    app.add_routes(routes(api))
    fast = adapter.fast_routes(app)
    if fast is not None and api.calls is not None:
        for method, path, operation in operations(api):
            fast.add(method, path, operation)


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


class _AsyncInvoke:
    """InvokeEndpointAsync's body phase (`edge.exchange.Prepared`): the signature over the body, the one invocation,
    queued; 202 with the locations its output and failure will be written to."""

    __slots__ = ("api", "backend", "head", "parsed", "request_id", "signed", "tasks")

    def __init__(
        self,
        api: SageMakerApi,
        head: Head,
        request_id: str,
        backend: InvocationBackend | None,
        signed: sigv4.SignedRequest | None,
        parsed: protocol.SageMakerRequest,
        tasks: TaskBackend,
    ) -> None:
        self.api = api
        self.head = head
        self.request_id = request_id
        self.backend = backend
        self.signed = signed
        self.parsed = parsed
        self.tasks = tasks

    @property
    def max_body_bytes(self) -> int:
        # Without a backend (the ungated test harness, served by aiohttp only) aiohttp's own limit applies.
        return UNGATED_BODY_BYTES if self.backend is None else self.backend.max_body_bytes

    async def read_body(self, request: web.Request) -> bytes:
        return await (request.read() if self.backend is None else self.backend.read_body(request))

    def refuse(self, error: ApiError) -> Reply:
        return self.api.error_reply(error, self.request_id)

    async def answer(self, body: bytes) -> Reply:
        api, head, parsed, tasks = self.api, self.head, self.parsed, self.tasks
        try:
            s3_paths = tasks.s3_paths()
            api.verify(head, self.signed, body)
            invocation = protocol.build_invocation(
                parsed,
                body,
                python_bundle=api.settings.python_bundle(parsed.endpoint),
                allow_s3_input=s3_paths is not None,
            )
            del body
            task_id = await tasks.submit(
                invocation,
                callback=None,
                request_ttl_seconds=parsed.request_ttl_seconds,
                invocation_timeout_seconds=parsed.invocation_timeout_seconds,
                s3_paths=s3_paths,
            )
        except ApiError as error:
            return self.refuse(error)
        name = parsed.endpoint
        if s3_paths is not None:  # S3 storage: SageMaker's own contract, objects the worker writes
            output, failure = output_url(s3_paths.output, task_id), failure_url(s3_paths.failure, task_id)
        else:  # no S3: the http(s) routes stand in for the objects
            output = absolute_url_of(head, OUTPUT_PATH.format(name=name, task_id=task_id))
            failure = absolute_url_of(head, FAILURE_PATH.format(name=name, task_id=task_id))
        headers = {
            "Content-Type": protocol.JSON_TYPE,
            protocol.H_OUTPUT_LOCATION: output,
            protocol.H_FAILURE_LOCATION: failure,
            protocol.H_REQUEST_ID: self.request_id,
        }
        return Reply(202, headers, json.dumps({"InferenceId": parsed.inference_id or task_id}).encode())


class _Location(Lookup):
    """The output or failure location of an async invocation, past its gate: the object once the task wrote it, else
    404."""

    __slots__ = ("api", "output", "request_id", "task_id", "tasks")

    def __init__(self, api: SageMakerApi, tasks: TaskBackend, task_id: str, request_id: str, *, output: bool) -> None:
        self.api = api
        self.tasks = tasks
        self.task_id = task_id
        self.request_id = request_id
        self.output = output

    def refuse(self, error: ApiError) -> Reply:
        return self.api.error_reply(error, self.request_id)

    async def answer(self, body: bytes) -> Reply:
        tasks, task_id, request_id = self.tasks, self.task_id, self.request_id
        try:
            record = await tasks.status(task_id, wait_seconds=0)
            if not self.output:
                if record is None or record.status not in (TaskStatus.FAILURE, TaskStatus.EXPIRED):
                    return _not_written(request_id, "failure")
                document = failure_document(record.status, record.status_code, record.traceback)
                return Reply(200, {"Content-Type": protocol.JSON_TYPE, protocol.H_REQUEST_ID: request_id}, document)
            if record is None or record.status is not TaskStatus.SUCCESS:
                return _not_written(request_id, "output")
            if record.result_url is None and record.result_json is not None:
                result, content_type = record.result_json.encode("utf-8"), protocol.JSON_TYPE
            else:
                result, content_type = await tasks.result(task_id)
        except ApiError as error:
            return self.refuse(error)
        return Reply(200, {"Content-Type": content_type, protocol.H_REQUEST_ID: request_id}, result)


def _not_written(request_id: str, what: str) -> Reply:
    body = json.dumps({"message": f"the {what} has not been written (yet)"}).encode()
    return Reply(404, {"Content-Type": protocol.JSON_TYPE, protocol.H_REQUEST_ID: request_id}, body)
