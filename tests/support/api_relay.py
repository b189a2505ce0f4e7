"""A fault-injecting HTTP relay in front of the real API server, for the one failure a test cannot make the real server
produce in bounded time: a watch answered 410 Gone because its history was compacted.

Clients speak plain HTTP to the relay (on loopback) with their own bearer token; the relay forwards each request to
the API server over TLS (the control plane's CA), and streams the answer back, watch streams included. `compact()`
does what an etcd compaction does to the clients of this relay: every open watch gets the API server's own ERROR
event (`Status` 410, reason `Expired`) and ends, watch events that arrive meanwhile are not passed on, and any later
watch from a resourceVersion at or below the one of that moment is answered with the same 410 event; a fresh list
(a newer resourceVersion) and watches from it pass again.

Limits (the relay is a double for the API server's watch history only): plain HTTP to the client (no TLS, no client
certificates: bearer tokens only); GET only (what a watching client sends); resourceVersions compared as integers
(etcd revisions, what kube-apiserver hands out today, though clients must treat them as opaque).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

GONE = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version (compacted by the test relay)",
        "reason": "Expired",
        "code": 410,
    },
}


@dataclass
class ApiRelay:
    upstream: str  # https://127.0.0.1:PORT of the API server
    ca_file: Path
    url: str = ""
    compacted_at: int = 0
    gone_sent: int = 0  # 410 events sent (ended watches and refused ones)
    _watches: set[asyncio.Event] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> ApiRelay:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        app = web.Application()
        app.router.add_get("/{path:.*}", self._relay)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        for ended in self._watches:
            ended.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def compact(self, resource_version: int) -> None:
        """History up to `resource_version` is gone: open watches end with 410, older watches are refused with it."""
        self.compacted_at = resource_version
        for ended in self._watches:
            ended.set()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        watching = request.query.get("watch") in ("true", "1")
        since = request.query.get("resourceVersion", "")
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if watching and since.isdigit() and int(since) <= self.compacted_at:
            await response.prepare(request)
            await response.write(json.dumps(GONE).encode() + b"\n")
            self.gone_sent += 1
            return response
        headers = {key: value for key, value in request.headers.items() if key in ("Authorization", "Accept")}
        # A watch counts as open from here, not from the upstream's answer: a compaction while the API server has not
        # answered yet ends it too (it passed the check above with a version that is now compacted).
        ended = asyncio.Event()
        if watching:
            self._watches.add(ended)
        try:
            async with self._session.get(
                self.upstream + request.path, params=request.query, headers=headers, timeout=aiohttp.ClientTimeout()
            ) as upstream:
                if not watching or upstream.status != 200:
                    return web.Response(status=upstream.status, body=await upstream.read(),
                                        content_type=upstream.content_type)  # fmt: skip
                await response.prepare(request)
                await self._stream(upstream, response, ended)
                return response
        finally:
            self._watches.discard(ended)

    async def _stream(
        self, upstream: aiohttp.ClientResponse, response: web.StreamResponse, ended: asyncio.Event
    ) -> None:
        """Pass watch lines on until the upstream ends or `compact()` ends this watch with the 410 event."""
        lines = upstream.content.__aiter__()
        while not ended.is_set():
            next_line = asyncio.ensure_future(lines.__anext__())
            stop = asyncio.ensure_future(ended.wait())
            done, _ = await asyncio.wait({next_line, stop}, return_when=asyncio.FIRST_COMPLETED)
            if next_line not in done:
                next_line.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_line
                break
            stop.cancel()
            try:
                line = next_line.result()
            except StopAsyncIteration:
                return
            await response.write(line)
        await response.write(json.dumps(GONE).encode() + b"\n")
        self.gone_sent += 1
