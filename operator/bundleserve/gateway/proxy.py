"""Forward one request unchanged to an endpoint's router, streaming both ways.

Why streaming and not buffering: server-sent events and event streams must reach the client chunk by chunk, and a
large body should not sit twice in memory (small bodies and answers with a declared length, up to `BUFFER_BYTES`,
go in one piece: cheaper, and nothing to stream). The endpoint's body limit is enforced here BEFORE the router sees a
complete request: by Content-Length up front, and for a chunked body by counting while forwarding; once the count
passes the limit the upstream request is aborted (the router never receives a complete, cut body) and the client
gets 413, as the router would have answered.

A client that goes away cancels the handler (the gateway runs with handler cancellation on), which closes the
upstream connection, which the router propagates to the model.

A router that goes away is tried again (`send`): when a replica stops (pod deleted, rolling update), the Service
keeps sending new connections to its address until kube-proxy has caught up (refused), and the router closes the
idle keep-alive connections of the gateway's pool as it exits (a request written onto one meets a closed connection
before any answer), or, when the connection reaches it while it drains, it refuses with 503 ("shutting down; retry on
another replica": its model never sees the call). In all three cases a body the gateway holds in memory is sent
again, a few times within `RETRY_DELAYS`; a streamed body cannot be replayed and fails with 503 as before. Found on the real node: a rolling
update under load failed about 1 request in 80 without it (tests/integration/test_node_scenarios.py). Limit: a
router killed while it held the request (no answer at all) looks the same, so such a call may run again on another
replica, as the client's own retry of the 503 would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from bundleserve.api.errors import Unavailable
from bundleserve.edge.connections import BodyDeadlinePassed
from bundleserve.edge.errors import too_large
from bundleserve.gateway.registry import EndpointEntry

#: Headers that describe one hop's connection, never forwarded (RFC 9110 section 7.6.1, plus the framing ones that
#: aiohttp recomputes for the next hop).
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Content-Length", "Host",
    )
)  # fmt: skip


logger = logging.getLogger(__name__)

#: Seconds between the attempts of one call whose router answered nothing (then one last attempt): about six seconds
#: in all, what kube-proxy can take on a busy node to stop routing to a stopped pod (each new connection picks a
#: replica at random, so a few attempts also get past one dead address among live ones).
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.5, 2.0)
#: A router's refusal before its model is reached: not ready, or shutting down ("retry on another replica").
REFUSED = 503
#: How many of those attempts a 503 refusal gets (about two seconds): a draining replica is passed by quickly, and an
#: endpoint that is not ready at all is answered without waiting the whole window.
REFUSED_ATTEMPTS = 4

#: The failures where the router answered nothing: connection refused or reset, or closed before an answer.
_NO_ANSWER = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


async def send(
    session: aiohttp.ClientSession, method: str, url: str, *, data: bytes | AsyncIterator[bytes] | None, **kwargs: Any
) -> aiohttp.ClientResponse:
    """`session.request`, tried again after RETRY_DELAYS while the router answers nothing or refuses with 503 (its
    model never saw the call), and `data` can be replayed (in memory or absent). The caller releases the response
    (`async with`)."""
    if data is None or isinstance(data, bytes):
        refusals = 0
        for delay in RETRY_DELAYS:
            try:
                response = await session.request(method, url, data=data, **kwargs)
            except _NO_ANSWER as error:
                logger.info("no answer from %s (%s: %s); again in %.2fs", url, type(error).__name__, error, delay)
            else:
                refusals += response.status == REFUSED
                if response.status != REFUSED or refusals > REFUSED_ATTEMPTS:
                    return response
                response.release()
                logger.info("%s refused the call (503: not ready or shutting down); again in %.2fs", url, delay)
            await asyncio.sleep(delay)
    return await session.request(method, url, data=data, **kwargs)


#: Bodies up to this size with a declared length are read whole and sent in one write (as nginx buffers small
#: bodies); larger or chunked ones, and every answer without a length (event streams), are streamed chunk by chunk.
BUFFER_BYTES = 64 * 1024


def upstream_headers(request: web.BaseRequest) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones, plus X-Forwarded-* so the router builds absolute URLs for the
    client's view of the address (an existing X-Forwarded-* from a proxy in front of us is kept)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers.setdefault("X-Forwarded-Host", request.host)
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    peer = request.remote
    if peer:
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return headers


def downstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


class BodyCap:
    """Counts the bytes of a forwarded body; `exceeded` tells the proxy that an upstream failure was our own abort."""

    def __init__(self, request: web.BaseRequest, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.seen = 0
        self.exceeded = False
        self.timed_out: BodyDeadlinePassed | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.content.iter_any():
                self.seen += len(chunk)
                if self.seen > self.limit:
                    self.exceeded = True
                    raise too_large(None, self.limit)
                yield chunk
        except BodyDeadlinePassed as error:  # the client's body trickled past the deadline: the upstream call ends
            self.timed_out = error
            raise


async def forward(
    request: web.Request,
    entry: EndpointEntry,
    session: aiohttp.ClientSession,
    *,
    path_qs: str | None = None,
    read_body: bytes | None = None,
    authorization: str | None = None,
    replace_authorization: bool = False,
    reply_headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Proxy `request` to the entry's router (same method, path and query unless `path_qs` is given).

    `read_body`: the body, already read under the limit by a caller that needed it first (the SageMaker dialect
    verifies its signature over it). `replace_authorization`: the client's Authorization is not sent on, but
    `authorization` (None: no header), for a credential only the gateway could check (a SigV4 signature).
    `reply_headers`: set on the answer besides the router's (the variant that answered).
    """
    limit = entry.max_payload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length, limit)
    url = entry.router_url + (path_qs if path_qs is not None else request.rel_url.raw_path_qs)
    headers = upstream_headers(request)
    if replace_authorization:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if authorization is not None:
            headers["Authorization"] = authorization
    cap = BodyCap(request, limit)
    body: bytes | AsyncIterator[bytes] | None = None
    if read_body is not None:
        body = read_body
        headers["Content-Length"] = str(len(read_body))
    elif request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)  # same framing upstream: no re-chunking
    if read_body is None and request.body_exists:
        small = request.content_length is not None and request.content_length <= BUFFER_BYTES
        body = await request.read() if small else cap.chunks()
    response: web.StreamResponse | None = None
    try:
        upstream_response = await send(session, request.method, url, data=body, headers=headers, auto_decompress=False)
        async with upstream_response as upstream:
            if cap.exceeded:
                raise too_large(None, limit)
            headers_out = downstream_headers(upstream.headers)
            headers_out.update(reply_headers or {})
            length = upstream.content_length
            if length is not None and length <= BUFFER_BYTES:  # a small, complete answer: one write
                return web.Response(status=upstream.status, body=await upstream.read(), headers=headers_out)
            response = web.StreamResponse(status=upstream.status, headers=headers_out)
            if length is not None:
                response.content_length = length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientError, OSError) as error:
        if cap.timed_out is not None:
            raise cap.timed_out from None
        if cap.exceeded:
            raise too_large(None, limit) from None
        if response is None and isinstance(error, aiohttp.ClientConnectionError | OSError):
            raise Unavailable(
                f"endpoint {entry.name} is not reachable (no ready router answered)", headers={"Retry-After": "1"}
            ) from None
        raise


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The whole body, refused with 413 by Content-Length before reading, and for chunked bodies as soon as the
    count passes the limit (memory stays bounded by the limit)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length, limit)
    parts: list[bytes] = []
    seen = 0
    async for chunk in request.content.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise too_large(None, limit)
        parts.append(chunk)
    return b"".join(parts)
