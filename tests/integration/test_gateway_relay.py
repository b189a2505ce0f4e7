"""The gateway's shortest path for a proxied call (`gateway.fastpath._Relayed`, `gateway.upstream.UpstreamPool.relay`):
once the pool holds an idle connection to the router, a call is written to it straight from the client's bytes and
the answer goes back from the router connection's callbacks. What that path must still do, each shown on raw
sockets against a scripted router stand-in (a real TCP server on loopback that speaks HTTP/1.1 keep-alive and does,
per request, what the test tells it):

- a pooled connection that breaks before any answer, and a 503 refusal, are sent again (`send`'s attempts go on);
- an answer that breaks after it began closes the client's connection (it cannot be completed);
- an event stream is flushed to the client piece by piece, not gathered;
- a client that stops reading holds the router back (its answer waits in the router's socket, not our memory);
- a client that leaves closes the router connection (the router sees its client go).

A dialect's sync call (`dialects.base.WholeCall`: SageMaker's InvokeEndpoint, Launch's sync task) takes the same path
over the internal hop (`gateway.fastpath._CallRelayed`): its attempts go on the same way, and whatever the router
answers (the model's reply, a refusal, an answer broken midway) is rendered in the dialect's shape.

The stand-in is a double for the router: it checks the gateway's side of the wire only (the router's own behaviour is
covered with the real router in test_gateway.py and test_gateway_fastpath.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bundleserve.api.endpoint import IMPLICIT_VARIANT
from bundleserve.api.variants import VARIANT_HEADER
from bundleserve.dialects.sagemaker.sigv4 import SigV4Config
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.gateway.app import GATEWAY, GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import Registry
from bundleserve.gateway.server import Front
from bundleserve.gateway.upstream import RouterConnection, UpstreamPool
from tests.integration.test_gateway import entry_for
from tests.integration.test_gateway_fastpath import predict, read_answer
from tests.integration.test_router_fake_model import write_endpoint
from tests.support.processes import free_port
from tests.support.waiting import async_wait_until

Script = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


async def echo(body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Answer the request's body back, keep-alive."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    return True


async def hang_up(body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Read the request and close without a word (a router exiting under a pooled connection)."""
    return False


async def refuse(body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """A draining router's 503 (its model never saw the call), keep-alive."""
    refusal = b'{"error":{"code":"unavailable","message":"the router is shutting down"}}'
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n")
    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(refusal), refusal))
    await writer.drain()
    return True


async def break_midway(body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """The head and half the promised body, then the connection breaks."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
    await writer.drain()
    return False


@dataclass
class StandIn:
    """The router stand-in: each request is answered by the next script (then by `echo`)."""

    scripts: list[Script] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    targets: list[bytes] = field(default_factory=list)  # each request's line
    connections: int = 0
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                self.requests.append(body)
                self.targets.append(head.split(b"\r\n", 1)[0])
                script = self.scripts.pop(0) if self.scripts else echo
                if not await script(body, reader, writer):
                    return
        finally:
            writer.close()


@dataclass
class Setup:
    stand_in: StandIn
    port: int
    relayed: list[RouterConnection | None]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    stand_in = StandIn()
    listener = await asyncio.start_server(stand_in.serve, "127.0.0.1", 0)
    stand_in.port = listener.sockets[0].getsockname()[1]
    registry = Registry([entry_for(write_endpoint(tmp_path), f"http://127.0.0.1:{stand_in.port}")])
    app = build_gateway_app(registry, GatewayConfig(sagemaker_signing=SigV4Config(allow_unsigned=True)))
    pool: UpstreamPool = app[GATEWAY].pool
    relayed: list[RouterConnection | None] = []
    original = pool.relay

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        connection = original(*args, **kwargs)
        relayed.append(connection)  # None: no idle connection, the call went the general way
        return connection

    monkeypatch.setattr(pool, "relay", counted)
    server = Front(app, ConnectionLimits(idle_seconds=30, body_seconds=5))
    port = free_port()
    await server.start("127.0.0.1", port)
    try:
        async with listener:
            yield Setup(stand_in, port, relayed)
    finally:
        await server.stop()


async def warmed(setup: Setup) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection whose first call went through, leaving an idle pooled connection to the router."""
    reader, writer = await setup.connect()
    writer.write(predict({"n": 0}))
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)) == (200, {"args": {"n": 0}})
    return reader, writer


async def test_a_warm_call_takes_the_shortest_path(setup: Setup) -> None:
    reader, writer = await warmed(setup)
    writer.write(predict({"n": 1}))
    status, headers, body = await read_answer(reader)
    assert (status, json.loads(body)) == (200, {"args": {"n": 1}})
    assert headers[VARIANT_HEADER.lower()] == IMPLICIT_VARIANT  # the variant that answered is named, as before
    assert setup.relayed[0] is None and setup.relayed[1] is not None  # cold: the general way; warm: relayed
    assert setup.stand_in.connections == 1  # the second call reused the pooled connection
    writer.close()


@pytest.mark.parametrize(
    ("script", "connections"),
    [(hang_up, 2), (refuse, 1)],
    ids=["no answer: sent again on a new connection", "503 refusal: sent again, the connection kept"],
)
async def test_a_call_on_the_shortest_path_that_got_no_answer_is_sent_again(
    setup: Setup, script: Script, connections: int
) -> None:
    reader, writer = await warmed(setup)
    setup.stand_in.scripts.append(script)
    writer.write(predict({"n": 2}))
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)) == (200, {"args": {"n": 2}})
    assert setup.relayed[-1] is not None  # it began on the shortest path
    assert len(setup.stand_in.requests) == 3  # the warm-up, the one not answered, the one answered
    assert setup.stand_in.connections == connections
    writer.close()


async def test_an_answer_that_breaks_after_it_began_closes_the_clients_connection(setup: Setup) -> None:
    reader, writer = await warmed(setup)
    setup.stand_in.scripts.append(break_midway)
    writer.write(predict({"n": 4}))
    rest = await asyncio.wait_for(reader.read(), timeout=10)  # to the end: the gateway closed the connection
    assert b" 200 " not in rest  # the broken answer was never passed on as complete
    assert len(setup.stand_in.requests) == 2  # not sent again: the router answered (its model may have run)
    writer.close()


async def test_an_event_stream_is_flushed_piece_by_piece(setup: Setup) -> None:
    reader, writer = await warmed(setup)
    second = asyncio.Event()

    async def stream(body: bytes, reader_: asyncio.StreamReader, writer_: asyncio.StreamWriter) -> bool:
        writer_.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer_.write(b"b\r\ndata: one\n\n\r\n")
        await writer_.drain()
        await asyncio.wait_for(second.wait(), timeout=10)  # the second piece only after the client has the first
        writer_.write(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")
        await writer_.drain()
        return True

    setup.stand_in.scripts.append(stream)
    writer.write(predict({"n": 5}).replace(b"/predict", b"/stream"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    assert b" 200 " in head and b"transfer-encoding: chunked" in head.lower()
    assert await asyncio.wait_for(reader.readuntil(b"data: one\n\n\r\n"), timeout=10)
    second.set()
    assert await asyncio.wait_for(reader.readuntil(b"data: two\n\n\r\n0\r\n\r\n"), timeout=10)
    assert setup.relayed[-1] is not None
    writer.close()


async def test_a_client_that_stops_reading_holds_the_router_back(setup: Setup) -> None:
    size = 32 * 1024 * 1024
    router_side: list[asyncio.StreamWriter] = []

    async def large(body: bytes, reader_: asyncio.StreamReader, writer_: asyncio.StreamWriter) -> bool:
        router_side.append(writer_)
        writer_.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
        writer_.write(b"z" * size)
        await writer_.drain()
        return True

    reader, writer = await warmed(setup)
    setup.stand_in.scripts.append(large)
    writer.write(predict({"n": 6}))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)  # the client reads the head only
    assert b"content-length: %d" % size in head.lower()
    upstream = setup.relayed[-1]
    assert upstream is not None
    # The gateway stops reading the router while its client does not read ...
    await async_wait_until(lambda: _true(upstream.paused), timeout=10, what="the router connection paused")
    # ... so most of the answer waits in the router's socket, not in the gateway's memory.
    assert router_side[0].transport.get_write_buffer_size() > size // 4
    received = len(await asyncio.wait_for(reader.readexactly(size), timeout=60))
    assert received == size
    writer.close()


async def _true(value: bool) -> bool:
    return value


async def leave_during_a_call(setup: Setup, request: bytes) -> None:
    """The client sends `request` and leaves while the router holds it; returns once the router saw its connection
    closed (EOF), and fails if it never does."""
    _, writer = await warmed(setup)
    gone = asyncio.Event()

    async def hold(body: bytes, reader_: asyncio.StreamReader, writer_: asyncio.StreamWriter) -> bool:
        await asyncio.wait_for(reader_.read(), timeout=10)  # returns at EOF: the gateway closed this connection
        gone.set()
        return False

    setup.stand_in.scripts.append(hold)
    writer.write(request)
    await async_wait_until(lambda: _true(len(setup.stand_in.requests) == 2), timeout=10)
    assert setup.relayed[-1] is not None
    writer.close()
    await asyncio.wait_for(gone.wait(), timeout=10)


async def test_a_client_that_leaves_closes_the_router_connection(setup: Setup) -> None:
    await leave_during_a_call(setup, predict({"n": 7}))


# -- a dialect's sync call over the internal hop ------------------------------------------------------------------


def invoke_endpoint(body: bytes) -> bytes:
    """SageMaker's InvokeEndpoint, unsigned (the fixture's gateway allows it)."""
    head = b"POST /endpoints/fake/invocations HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def launch_sync(args: dict[str, int]) -> bytes:
    """Launch's `POST /v1/sync-tasks`."""
    body = json.dumps({"args": args}).encode()
    head = b"POST /v1/sync-tasks?model_endpoint_id=fake HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def test_a_warm_dialect_call_takes_the_shortest_path_over_the_hop(setup: Setup) -> None:
    reader, writer = await warmed(setup)
    writer.write(invoke_endpoint(b'{"n": 1}'))
    status, headers, body = await read_answer(reader)
    assert (status, json.loads(body)) == (200, {"n": 1})  # the stand-in echoes the invocation's body
    assert headers["x-amzn-invoked-production-variant"] == IMPLICIT_VARIANT  # rendered as SageMaker answers
    assert headers["x-amzn-requestid"]
    assert setup.relayed[-1] is not None  # relayed, not sent by a task
    assert setup.stand_in.targets[-1] == b"POST /internal/v1/endpoints/fake/invoke HTTP/1.1"  # the parsed call
    writer.write(launch_sync({"n": 2}))
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["status"] == "SUCCESS"
    assert setup.relayed[-1] is not None
    assert setup.stand_in.connections == 1  # every call on the one pooled connection
    writer.close()


@pytest.mark.parametrize(
    ("script", "connections"),
    [(hang_up, 2), (refuse, 1)],
    ids=["no answer: sent again on a new connection", "503 refusal: sent again, the connection kept"],
)
async def test_a_dialect_call_on_the_shortest_path_that_got_no_answer_is_sent_again(
    setup: Setup, script: Script, connections: int
) -> None:
    reader, writer = await warmed(setup)
    setup.stand_in.scripts.append(script)
    writer.write(invoke_endpoint(b'{"n": 3}'))
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)) == (200, {"n": 3})
    assert setup.relayed[-1] is not None
    assert setup.stand_in.requests[1:] == [b'{"n": 3}', b'{"n": 3}']  # the same invocation, twice
    assert setup.stand_in.connections == connections
    writer.close()


async def test_a_dialect_answer_that_breaks_midway_is_an_error_in_the_dialects_shape(setup: Setup) -> None:
    reader, writer = await warmed(setup)
    setup.stand_in.scripts.append(break_midway)
    writer.write(invoke_endpoint(b'{"n": 4}'))
    status, headers, body = await read_answer(reader)
    assert status == 503 and "x-amzn-requestid" in headers  # SageMaker's error answer, not a broken 200
    assert "not reachable" in json.loads(body)["message"]
    assert len(setup.stand_in.requests) == 2  # not sent again: the router answered (its model may have run)
    writer.write(invoke_endpoint(b'{"n": 5}'))  # the client's connection goes on
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)) == (200, {"n": 5})
    writer.close()


async def test_a_model_failure_the_router_answers_is_rendered_in_the_dialects_shape(setup: Setup) -> None:
    async def model_failed(body: bytes, reader_: asyncio.StreamReader, writer_: asyncio.StreamWriter) -> bool:
        failure = b'{"error":{"code":"model_error","message":"division by zero","status_code":500}}'
        writer_.write(b"HTTP/1.1 424 Failed Dependency\r\nContent-Type: application/json\r\n")
        writer_.write(b"Content-Length: %d\r\n\r\n%s" % (len(failure), failure))
        await writer_.drain()
        return True

    reader, writer = await warmed(setup)
    setup.stand_in.scripts.append(model_failed)
    writer.write(launch_sync({"n": 6}))
    status, _, body = await read_answer(reader)
    document = json.loads(body)
    assert status == 200 and document["status"] == "FAILURE"  # Launch's sync task answers a model failure so
    assert "division by zero" in json.dumps(document)
    assert setup.relayed[-1] is not None
    writer.close()


async def test_a_client_that_leaves_during_a_dialect_call_closes_the_router_connection(setup: Setup) -> None:
    await leave_during_a_call(setup, invoke_endpoint(b'{"n": 7}'))


async def test_many_pipelined_dialect_calls_refused_in_their_body_phase_are_all_answered_in_order(setup: Setup) -> None:
    """A refusal of the body phase (here: a body that is no JSON) is answered from the fast edge's own loop; a client
    pipelining many of them gets every answer, in order, on its connection (and never sends the router one)."""
    reader, writer = await warmed(setup)
    count = 600
    broken = b"POST /v1/sync-tasks?model_endpoint_id=fake HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n{oops"
    writer.write(broken * count + launch_sync({"n": 8}))
    for _ in range(count):
        status, _, _ = await read_answer(reader)
        assert status == 400  # Launch's refusal of a task body it cannot read
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["status"] == "SUCCESS"  # the connection went on
    assert len(setup.stand_in.requests) == 2  # the warm-up and the last call: no refused one reached the router
    writer.close()
