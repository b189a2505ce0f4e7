"""What a dialect may depend on: the invocation core and the task service, as Protocols, plus shared helpers.

The router's `InvocationCore` and the queue's `TaskService` satisfy these; dialect modules import this module only
(layering: `api` <- `queue` <- `edge` <- `dialects` <- `router` | `gateway`), so a dialect cannot reach the model client, Redis or router
state behind the core's back.

Mounting: a dialect module offers a `DialectMount`, a function the router's `build_app` calls once with the
application, the core and (when the endpoint serves async and a queue is configured) the task service. The router
lists its mounts in one place, `bundleserve.router.app.DIALECTS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ApiError
from bundleserve.api.invocation import Invocation, ModelReply, StreamChunk
from bundleserve.edge.exchange import Head, Reply
from bundleserve.queue.service import S3AsyncPaths
from bundleserve.queue.tasks import CallbackTarget, TaskRecord

#: The configured public base URL of the API (e.g. `https://models.example.com`); wins over request headers.
PUBLIC_URL_ENV = "BUNDLESERVE_PUBLIC_URL"


class CallBackend(Protocol):
    """The call half of an invocation core: runs an invocation that already passed the gate.

    The router's `InvocationCore` is one; a front whose model runs elsewhere (the gateway's `RouterHop`, which hands
    the parsed invocation to the endpoint's router in one hop) is another, so a dialect renders the same reply types
    wherever it is mounted. Errors are `bundleserve.api.errors.ApiError` subclasses.
    """

    async def predict(self, inv: Invocation) -> ModelReply:
        """One model call under the endpoint's deadline and admission; a 2xx reply or an ApiError."""
        ...

    def stream(self, inv: Invocation) -> AbstractAsyncContextManager[AsyncIterator[StreamChunk]]:
        """A streaming model call: entering waits (within the deadline) for the first chunk or raises ApiError;
        the iterator raises ModelError on a failure mid-stream; leaving early disconnects the model."""
        ...


class InvocationBackend(CallBackend, Protocol):
    """The sync/stream half of the invocation core (`bundleserve.router.core.InvocationCore`): the gate and the body
    limit of one endpoint, and its calls.

    Errors are `bundleserve.api.errors.ApiError` subclasses; the dialect renders them in its own shape.
    """

    def gate(
        self,
        name: str | None,
        authorization: str | None,
        mode: Mode,
        *,
        authenticated: bool = False,
        scope: frozenset[str] | None = None,
    ) -> None:
        """Refuse before the body is read: unknown endpoint (NotFound), API key (Unauthorized; skipped when the
        dialect says `authenticated`, having verified a credential of its own, which opens the namespaces `scope`,
        None: all; an endpoint outside them is NotFound), mode not served (ModeNotServed), draining or not ready
        (Unavailable; not for async submissions)."""
        ...

    def authorize(self, authorization: str | None) -> None:
        """The API key check alone (Unauthorized), for routes that call no model (a listing, a stored result)."""
        ...

    @property
    def variant(self) -> str:
        """The production variant that serves the calls: a router's own (AllTraffic without variants); at the
        gateway, the one the last `predict`/`stream` call was sent to (picked when the call is made)."""
        ...

    @property
    def requires_api_key(self) -> bool:
        """True when the gate checks API keys (so a presented API key is a real credential, not decoration)."""
        ...

    async def read_body(self, request: web.Request) -> bytes:
        """The request body under the endpoint's limit (PayloadTooLarge, by Content-Length before reading)."""
        ...

    @property
    def max_body_bytes(self) -> int:
        """The endpoint's body limit (`maxPayloadBytes`), for a fast edge that reads the body itself; valid after
        `gate`."""
        ...


class WholeCall(ABC):
    """A sync call past its head phase (an `edge.exchange.Prepared`) whose body phase comes in three steps, so that a
    transport can make the model call itself: `invocation(body)`, the backend's `predict`, `rendered(outcome)`.

    `answer` (what aiohttp and the router's fast edge await) is exactly those three steps. The gateway's fast edge
    takes them apart: it builds the invocation, sends it to the endpoint's router and renders the router's answer
    from its connections' callbacks (`gateway.fastpath`: no task and no future per call), so a dialect's sync call
    there costs about what a native predict costs. `rendered` covers every outcome of an invocation that does not
    ask for a pickled return (`Invocation.return_pickled`: the result is kept for download first, I/O that
    `answer_invocation` does).
    """

    __slots__ = ()
    backend: InvocationBackend

    @abstractmethod
    def refuse(self, error: ApiError) -> Reply:
        """`error` in the dialect's shape (`edge.exchange.Prepared.refuse`)."""

    @abstractmethod
    def invocation(self, body: bytes) -> Invocation:
        """The one invocation the body makes (a signature over it checked first where the dialect has one); an
        ApiError is answered with `refuse`."""

    @abstractmethod
    def rendered(self, outcome: ModelReply | ApiError) -> Reply:
        """The client's answer to the call's outcome: the model's reply, or the error the call raised."""

    async def answer(self, body: bytes) -> Reply:
        try:
            invocation = self.invocation(body)
        except ApiError as error:
            return self.refuse(error)
        del body
        return await self.answer_invocation(invocation)

    async def answer_invocation(self, invocation: Invocation) -> Reply:
        """The call and its rendering, once the invocation is built."""
        try:
            outcome: ModelReply | ApiError = await self.backend.predict(invocation)
        except ApiError as error:
            outcome = error
        return self.rendered(outcome)


#: The largest body a lookup (a GET: a task's poll, an async output) may carry; it is read and ignored. The
#: scale-launch 0.3.x client sends `{}` with its GETs, so a lookup with a body is normal; a larger one is 413.
LOOKUP_BODY_BYTES = 4096


class Lookup(ABC):
    """A GET past its head phase (an `edge.exchange.Prepared`): it reads stored state and takes no body. One that
    comes anyway is dropped (`LOOKUP_BODY_BYTES` at most on the fast edges; aiohttp drops it unread)."""

    __slots__ = ()

    @property
    def max_body_bytes(self) -> int:
        return LOOKUP_BODY_BYTES

    async def read_body(self, request: web.Request) -> bytes:
        return b""

    @abstractmethod
    def refuse(self, error: ApiError) -> Reply:
        """`error` in the dialect's shape (`edge.exchange.Prepared.refuse`)."""

    @abstractmethod
    async def answer(self, body: bytes) -> Reply:
        """The lookup, rendered (`body` is ignored)."""


class TaskBackend(Protocol):
    """The async half (`bundleserve.queue.service.TaskService`), bound to one endpoint's queue."""

    async def submit(
        self,
        inv: Invocation,
        *,
        callback: CallbackTarget | None,
        request_ttl_seconds: float | None,
        invocation_timeout_seconds: float | None,
        s3_paths: S3AsyncPaths | None = None,
    ) -> str:
        """Queue the invocation; returns the task id. Raising means the task will never run. With `s3_paths` (from
        `s3_paths()`), the worker writes the task's SageMaker output and failure objects there."""
        ...

    def s3_paths(self) -> S3AsyncPaths | None:
        """The endpoint's SageMaker S3 output/failure paths when results are stored in S3; None: not configured."""
        ...

    async def status(self, task_id: str, *, wait_seconds: float) -> TaskRecord | None:
        """The task's record (long-polling up to `wait_seconds` for a terminal state); None when unknown/expired."""
        ...

    async def result(self, task_id: str) -> tuple[bytes, str]:
        """A stored (large or pickled) result and its content type; NotFound/InvalidRequest otherwise."""
        ...


#: How a dialect adds its routes: `mount(app, core, tasks)`; `tasks` is None when async is not served/configured.
DialectMount = Callable[[web.Application, InvocationBackend, TaskBackend | None], None]


#: The configured public base URL on a server's application (set by its composition root when configured), for the
#: dialects' `absolute_url`.
PUBLIC_URL = web.AppKey("public_url", str)


def read_public_url(env: Mapping[str, str]) -> str | None:
    """`BUNDLESERVE_PUBLIC_URL` without its trailing slash (None: not set); read once, by a process's settings."""
    configured = env.get(PUBLIC_URL_ENV, "").strip()
    return configured.rstrip("/") or None


def public_base_url(headers: Mapping[str, str], *, scheme: str = "http", configured: str | None = None) -> str:
    """The absolute base URL clients reach us at, without a trailing slash.

    `configured` (`BUNDLESERVE_PUBLIC_URL`, `read_public_url`) when set (behind a gateway or ingress that rewrites
    hosts, the only reliable answer); else the first `X-Forwarded-Proto` / `X-Forwarded-Host` (set by ingress
    controllers), else the request's own scheme and `Host`.
    """
    if configured:
        return configured.rstrip("/")
    proto = _first(headers.get("X-Forwarded-Proto")) or scheme
    host = _first(headers.get("X-Forwarded-Host")) or headers.get("Host") or "localhost"
    return f"{proto}://{host}"


def absolute_url(request: web.Request, path: str) -> str:
    """`path` (e.g. `/v1/tasks/ID/result`) made absolute for the client of `request` (see `public_base_url`; the
    configured URL is the application's `PUBLIC_URL`)."""
    if path.startswith(("http://", "https://", "s3://")):
        return path
    base = public_base_url(request.headers, scheme=request.scheme, configured=request.app.get(PUBLIC_URL))
    return base + (path if path.startswith("/") else "/" + path)


def absolute_url_of(head: Head, path: str) -> str:
    """`absolute_url` for a transport-neutral request head (`edge.exchange.Head`)."""
    if path.startswith(("http://", "https://", "s3://")):
        return path
    base = public_base_url(head.headers, scheme=head.scheme, configured=head.public_url)
    return base + (path if path.startswith("/") else "/" + path)


def _first(value: str | None) -> str | None:
    """The first entry of a comma-separated forwarding header (the client-facing hop)."""
    if not value:
        return None
    first = value.split(",")[0].strip()
    return first or None
