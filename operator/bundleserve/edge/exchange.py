"""The transport-neutral seam of a dialect operation: a head phase over the request head, a body phase over the body.

A dialect's operation (SageMaker's InvokeEndpoint, Launch's sync task, ...) is written once, against these types, and
served by two transports: aiohttp (`dialects.adapter.serve`, for every route) and the fast edges (`router.fastpath`,
`gateway.fastpath`, for the hot ones). The split follows what each transport can do before it reads the body:

1. `HeadPhase(head) -> Prepared | Reply`, synchronous and headers-only: route parameters, the dialect's header parse,
   its credential's header checks and the endpoint's gate. A refusal comes back as a `Reply` already rendered in the
   dialect's own error shape, so a fast edge answers it without reading the body (and without aiohttp).
2. `Prepared.answer(body) -> Reply`: what needs the body (a signature over it, the one `Invocation` built from it),
   the call, and the rendering: a whole body, or `Reply.chunks` for a stream (each chunk already framed, flushed as
   it comes; `Reply.close` ends the call when the client leaves or the stream ends).

The transport reads the body in between, bounded by `Prepared.max_body_bytes`; a refusal it makes itself (a body
too large, the body deadline, no body place on a router) is rendered by `Prepared.refuse`, in the dialect's shape.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from bundleserve.api.errors import ApiError


@dataclass(frozen=True, slots=True)
class Head:
    """One request's head, parsed once by the transport that took it."""

    method: str
    raw_path: str
    raw_query: str
    #: Case-insensitive, every value kept (SigV4 reads the raw list, the dialects read one value by name).
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    #: The path's parameters, by name (e.g. `name` of `/endpoints/{name}/invocations`).
    params: Mapping[str, str] = field(default_factory=dict)
    #: The request came over TLS to this server (SigV4's UNSIGNED-PAYLOAD is accepted only then).
    secure: bool = False
    #: The configured public base URL of this server (BUNDLESERVE_PUBLIC_URL), for absolute URLs in answers.
    public_url: str | None = None

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name` (None: absent)."""
        raw = self.raw_query
        if not raw:
            return None
        if "%" not in raw and "+" not in raw:  # nothing to unquote: parse_qsl's split alone (a third of its cost)
            for field_ in raw.split("&"):
                if field_:
                    key, _, value = field_.partition("=")
                    if key == name:
                        return value
            return None
        for key, value in parse_qsl(raw, keep_blank_values=True):
            if key == name:
                return value
        return None

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"


@dataclass(slots=True)
class Reply:
    """A dialect's answer: status, headers (Content-Type among them) and a whole body, or a stream of chunks."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    #: A streamed body: chunks already framed by the dialect (event-stream frames, SSE events), each flushed.
    chunks: AsyncIterator[bytes] | None = None
    #: Ends the call behind `chunks` (leaves the backend's stream); the transport awaits it once, whatever happened.
    close: Callable[[], Awaitable[None]] | None = None

    async def finish(self) -> None:
        """Release what the streamed call holds (idempotent)."""
        chunks, close = self.chunks, self.close
        self.chunks = self.close = None
        try:
            if chunks is not None and hasattr(chunks, "aclose"):
                await chunks.aclose()
        finally:
            if close is not None:
                await close()


class Prepared(Protocol):
    """A request that passed its head phase: its body limit, and the body phase."""

    @property
    def max_body_bytes(self) -> int:
        """The largest body the endpoint accepts (`maxPayloadBytes`)."""
        ...

    def refuse(self, error: ApiError) -> Reply:
        """`error` (raised by the transport: body too large, body deadline, no body place) in the dialect's shape."""
        ...

    async def answer(self, body: bytes) -> Reply:
        """The body phase: every `ApiError` comes back rendered in the dialect's shape; anything else is a bug."""
        ...

    async def read_body(self, request: web.Request) -> bytes:
        """aiohttp's way to the body (the fast edges read it themselves): through the endpoint's backend, its limit
        and, on a router, a body place and the drain; raises the backend's ApiError (rendered by `refuse`)."""
        ...


#: A dialect operation's head phase.
HeadPhase = Callable[[Head], "Prepared | Reply"]


@dataclass(frozen=True, slots=True)
class FastRoute:
    """One dialect operation a fast edge may serve: its method and path (a pattern whose named groups are `params`)."""

    method: str
    path: re.Pattern[str]
    operation: HeadPhase
    #: The template's literal start (`/endpoints/`), which a request line must begin with to be matched at all.
    prefix: str


class FastRoutes:
    """The dialect operations of one server that its fast edge serves itself (the rest go to aiohttp)."""

    def __init__(self, routes: Sequence[FastRoute] = ()) -> None:
        self.routes = list(routes)

    def add(self, method: str, path: str, operation: HeadPhase) -> None:
        """`path` in aiohttp's template form (`/endpoints/{name}/invocations`): each `{param}` is one segment."""
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
        self.routes.append(FastRoute(method, re.compile(pattern + r"\Z"), operation, path.partition("{")[0]))

    def match(self, method: str, raw_path: str) -> tuple[HeadPhase, dict[str, str]] | None:
        for route in self.routes:
            if route.method == method and raw_path.startswith(route.prefix):  # the literal start: no regex to fail
                found = route.path.match(raw_path)
                if found is not None:
                    return route.operation, found.groupdict()
        return None

    def __bool__(self) -> bool:
        return bool(self.routes)


def headers_of(raw: Sequence[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """A fast edge's raw header list (names as sent or lower-cased) as the case-insensitive headers of a `Head`."""
    return CIMultiDict([(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw])  # a list: 2x faster
