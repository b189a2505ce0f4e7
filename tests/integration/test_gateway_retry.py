"""The gateway sends a call again when its router answered nothing or refused it with 503 (`gateway.proxy.send`), as
happens when a replica stops under load: here a real TCP server on loopback reads each request and closes the connection without answering
for the first `drop` connections (what a router exiting does to a request that landed on its closing keep-alive
connection). The real-node case is tests/integration/test_node_scenarios.py (rolling update under load)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from bundleserve.api.errors import Unavailable
from bundleserve.api.invocation import Invocation
from bundleserve.api.manifest import load_endpoints
from bundleserve.gateway import proxy
from bundleserve.gateway.forwarding import RouterHop
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.gateway.upstream import UpstreamPool


@dataclass
class Dropping:
    """Answers the hop's reply (the model's bytes: here the arguments echoed) after closing the first `drop` requests
    unanswered."""

    drop: int
    requests: int = 0
    port: int = 0
    #: Answer the dropped requests with a draining router's 503 instead of closing them unanswered.
    refuse: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            body = await reader.readexactly(length)
            self.requests += 1
            if self.requests <= self.drop:
                if self.refuse:
                    refusal = b'{"error":{"code":"unavailable","message":"the router is shutting down"}}'
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n")
                    writer.write(b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(refusal), refusal))
                    await writer.drain()
                return
            answer = body  # the hop's answer is the model's reply: this stand-in model echoes its arguments
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def dropping() -> AsyncIterator[Dropping]:
    server = Dropping(drop=2)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server


def _hop(pool: UpstreamPool, port: int, directory: Path) -> RouterHop:
    manifest = directory / "e.yaml"
    spec = {"modes": ["sync"], "localOnly": True, "bundle": {"python": {"entrypoint": "m:f"}}}
    document = {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "e"}, "spec": spec}
    manifest.write_text(yaml.safe_dump(document))
    [(_, endpoint)] = load_endpoints([manifest])
    return RouterHop(pool, EndpointEntry(endpoint, f"http://127.0.0.1:{port}"), None)


async def test_a_call_whose_router_answered_nothing_is_sent_again(dropping: Dropping, tmp_path: Path) -> None:
    with closing(UpstreamPool()) as session:
        reply = await _hop(session, dropping.port, tmp_path).predict(Invocation(body=b'{"n": 1}'))
    assert json.loads(reply.body) == {"n": 1}
    assert dropping.requests == 3  # two unanswered, the third answered


async def test_a_call_a_draining_router_refused_is_sent_again(dropping: Dropping, tmp_path: Path) -> None:
    """Found by the rolling update on the real node: a stopping replica still gets connections from the Service and
    refuses them with 503 ("shutting down; retry on another replica"); its model never saw the call."""
    dropping.refuse = True
    with closing(UpstreamPool()) as session:
        reply = await _hop(session, dropping.port, tmp_path).predict(Invocation(body=b'{"n": 4}'))
    assert json.loads(reply.body) == {"n": 4}
    assert dropping.requests == 3  # two refused, the third answered


async def test_the_attempts_are_bounded(dropping: Dropping, tmp_path: Path) -> None:
    dropping.drop = 100
    with closing(UpstreamPool()) as session, pytest.raises(Unavailable):
        await _hop(session, dropping.port, tmp_path).predict(Invocation(body=b'{"n": 2}'))
    assert dropping.requests == len(proxy.RETRY_DELAYS) + 1


async def test_refusals_are_resent_a_few_times_only(dropping: Dropping, tmp_path: Path) -> None:
    """An endpoint whose routers all refuse (none ready) is answered within about two seconds, not the whole window."""
    dropping.refuse, dropping.drop = True, 100
    with closing(UpstreamPool()) as session, pytest.raises(Unavailable):
        await _hop(session, dropping.port, tmp_path).predict(Invocation(body=b'{"n": 5}'))
    assert dropping.requests == proxy.REFUSED_ATTEMPTS + 1


async def test_a_streamed_body_is_not_sent_again(dropping: Dropping) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"args": {"n": 3}}'

    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await proxy.send(session, "POST", f"http://127.0.0.1:{dropping.port}/", data=body(),
                             headers={"Content-Length": "18"})  # fmt: skip
    assert dropping.requests == 1
