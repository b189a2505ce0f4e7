"""`gateway.forwarding.RouterHop` against a real aiohttp server speaking the router's end of the internal hop
(`edge.hop`) on loopback: a stream read to its end gives its connection back to the pool (the next call reuses it),
a stream left early closes its connection, which is how the router learns to stop the model, and the invocation
arrives as the gateway parsed it. (The real router's end is exercised by every dialect test through the gateway.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from bundleserve.api.errors import ModelError, NotFound, Overloaded
from bundleserve.api.invocation import Invocation
from bundleserve.api.manifest import load_endpoints
from bundleserve.edge import hop as wire
from bundleserve.gateway.forwarding import RouterHop
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.gateway.upstream import UpstreamPool


class Router:
    """What the hop talks to: the stream route answering `events` data frames (a `delay` apart)."""

    def __init__(self) -> None:
        self.peers: list[object] = []
        self.disconnected = asyncio.Event()
        self.events = 3
        self.delay = 0.0
        self.fail_after: int | None = None
        self.seen: tuple[object, object] | None = None
        self.unknown = False

    async def predict(self, request: web.Request) -> web.Response:
        inv = wire.decode(
            request.headers.get("Content-Type"), request.headers.get(wire.INVOCATION_HEADER), await request.read()
        )
        args = json.loads(inv.body)
        if "boom" in args:
            error = {"code": "overloaded", "message": "full"}
            return web.json_response({"error": error}, status=429, headers={"Retry-After": "7"})
        self.seen = (inv, request.headers.get("Authorization"))
        return web.json_response({"echo": args})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        await request.read()
        if self.unknown:
            return web.json_response({"error": {"code": "not_found", "message": "gone"}}, status=404)
        response = web.StreamResponse(headers={"Content-Type": wire.STREAM_CONTENT_TYPE})
        await response.prepare(request)
        try:
            for index in range(self.events):
                if self.fail_after == index:
                    await response.write(wire.failure_frame(ModelError("boom", status_code=500, traceback="tb")))
                    break
                await response.write(wire.data_frame(b'"t%d"' % index))
                await asyncio.sleep(self.delay)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise
        return response


@pytest.fixture
async def hop(tmp_path: Path) -> AsyncIterator[tuple[RouterHop, Router]]:
    router = Router()
    app = web.Application()
    app.router.add_post(wire.STREAM_PATH.format(name="e"), router.stream)
    app.router.add_post(wire.PREDICT_PATH.format(name="e"), router.predict)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    manifest = tmp_path / "e.yaml"
    spec = {"modes": ["streaming"], "localOnly": True, "bundle": {"python": {"entrypoint": "m:f"}}}
    document = {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "e"}, "spec": spec}
    manifest.write_text(yaml.safe_dump(document))
    [(_, endpoint)] = load_endpoints([manifest])
    pool = UpstreamPool()
    try:
        yield RouterHop(pool, EndpointEntry(endpoint, f"http://127.0.0.1:{port}"), "Bearer k"), router
    finally:
        pool.close()
    await runner.cleanup()


async def read_all(hop: RouterHop) -> list[bytes]:
    async with hop.stream(Invocation(body=b"{}")) as chunks:
        return [chunk.data async for chunk in chunks]


async def test_a_finished_stream_gives_its_connection_back(hop: tuple[RouterHop, Router]) -> None:
    client, router = hop
    for _ in range(3):
        assert await read_all(client) == [b'"t0"', b'"t1"', b'"t2"']
    assert len(router.peers) == 3 and len(set(router.peers)) == 1


async def test_a_stream_left_early_closes_its_connection(hop: tuple[RouterHop, Router]) -> None:
    client, router = hop
    router.events, router.delay = 200, 0.02
    async with client.stream(Invocation(body=b"{}")) as chunks:
        async for chunk in chunks:
            assert chunk.data == b'"t0"'
            break
    await asyncio.wait_for(router.disconnected.wait(), timeout=10)


async def test_failures_come_back_as_the_errors_they_were(hop: tuple[RouterHop, Router]) -> None:
    client, router = hop
    router.fail_after = 1
    received = []
    with pytest.raises(ModelError) as failed:
        async with client.stream(Invocation(body=b"{}")) as chunks:
            async for chunk in chunks:
                received.append(chunk.data)
    assert received == [b'"t0"']
    assert (failed.value.message, failed.value.details["status_code"]) == ("boom", 500)
    router.unknown = True
    with pytest.raises(NotFound):
        await read_all(client)


async def test_predict_sends_the_invocation_as_it_was_parsed(hop: tuple[RouterHop, Router]) -> None:
    client, router = hop
    reply = await client.predict(Invocation(body=b'{"a":1}', timeout_seconds=5.0))
    assert (reply.status, reply.result()) == (200, {"echo": {"a": 1}})
    assert router.seen == (Invocation(body=b'{"a":1}', timeout_seconds=5.0), "Bearer k")
    with pytest.raises(Overloaded) as refused:
        await client.predict(Invocation(body=b'{"boom":1}'))
    assert refused.value.headers == {"Retry-After": "7"}
