"""The SageMaker and Launch dialects on the router's fast edge (`router.fastpath`, `FastEdge.dialects`), on raw
sockets: an in-process router (its fast edge built as `router.server` builds it) in front of the scriptable model
process (tests/integration/test_router_fake_model.py).

The dialects' behaviour is covered through this edge by the boto3 and scale-launch suites (test_sagemaker_boto3.py,
test_launch_dialect.py), whose routers listen the same way; these prove the requests are answered by the fast edge
itself, not handed over to aiohttp: a handed-over connection leaves `FastEdge.connections`, so a request the edge
answered keeps its client's port there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bundleserve.api.errors import ModelError
from bundleserve.api.invocation import StreamChunk
from bundleserve.api.manifest import load_endpoints
from bundleserve.dialects.adapter import FAST_ROUTES
from bundleserve.dialects.sagemaker import eventstream
from bundleserve.dialects.sagemaker.sigv4 import SigV4Config
from bundleserve.edge import hop
from bundleserve.router.app import INVOKER, build_app
from bundleserve.router.fastpath import FastEdge
from bundleserve.router.settings import Settings
from tests.integration.test_gateway_fastpath import read_answer
from tests.integration.test_router_fake_model import start_model, write_endpoint
from tests.support.waiting import async_wait_until


class Router:
    def __init__(self, edge: FastEdge, port: int) -> None:
        self.edge = edge
        self.port = port

    def fast_ports(self) -> list[int]:
        """Client ports of the connections the fast edge holds (a connection handed over to aiohttp leaves it)."""
        return [
            int(connection.transport.get_extra_info("peername")[1])
            for connection in list(self.edge.connections)
            if connection.transport is not None
        ]


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[Router]:
    model, model_url = start_model(tmp_path)
    [(_, endpoint)] = load_endpoints([write_endpoint(tmp_path)])
    signing = SigV4Config(allow_unsigned=True)  # the SageMaker requests here are unsigned
    app = build_app(Settings(endpoint=endpoint, model_url=model_url, sagemaker_signing=signing))
    runner = web.AppRunner(app)
    await runner.setup()
    if runner.server is None:
        raise RuntimeError("no aiohttp server after setup")
    edge = FastEdge(app[INVOKER], runner.server, dialects=app[FAST_ROUTES])
    listener = await asyncio.get_running_loop().create_server(edge, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    return response.status == 200

            await async_wait_until(ready, timeout=30, what="the router sees its model ready")
        yield Router(edge, port)
    finally:
        listener.close()
        edge.close()
        await runner.cleanup()
        model.stop()


def post(target: str, body: bytes, *, extra: str = "") -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n{extra}"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def test_sagemaker_and_launch_calls_are_answered_by_the_fast_edge(router: Router) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(post("/endpoints/fake/invocations", json.dumps({"sm": 1}).encode()))
        status, headers, body = await read_answer(reader)
        assert (status, json.loads(body)) == (200, {"sm": 1})
        assert headers["x-amzn-invoked-production-variant"] == "AllTraffic"
        assert port in router.fast_ports()

        writer.write(post("/endpoints/fake/invocations-response-stream", json.dumps({"words": ["a", "b"]}).encode()))
        status, headers, body = await read_answer(reader)
        assert (status, headers["content-type"]) == (200, eventstream.CONTENT_TYPE)
        assert body == eventstream.payload_part(b"a") + eventstream.payload_part(b"b")
        assert port in router.fast_ports()

        writer.write(post("/v1/sync-tasks?model_endpoint_id=fake", json.dumps({"args": {"v1": True}}).encode()))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["status"], json.loads(json.loads(body)["result"]["result"])) == (
            200,
            "SUCCESS",
            {"v1": True},
        )
        legacy = {"args": {"legacy": 1}, "return_pickled": False}
        writer.write(post("/v1/hosted_inference/task_sync/fake", json.dumps(legacy).encode()))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["state"]) == (200, "SUCCESS")
        assert port in router.fast_ports()

        writer.write(b"GET /healthz HTTP/1.1\r\nHost: router\r\n\r\n")  # an aiohttp route: the connection moves
        assert (await read_answer(reader))[0] == 200
        assert port not in router.fast_ports()
    finally:
        writer.close()


async def test_a_refusal_is_answered_in_the_dialects_shape_before_the_body(router: Router) -> None:
    """Another endpoint's name: SageMaker's ValidationError, answered from the head (the connection then closes,
    as the fast edge closes after any refusal before a body); with no body, in order on a kept connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    try:
        writer.write(post("/endpoints/other/invocations", b"{}"))
        status, headers, body = await read_answer(reader)
        assert (status, headers["x-amzn-errortype"]) == (400, "ValidationError")
        assert json.loads(body)["message"] == "Endpoint other not found."
        async with asyncio.timeout(10):
            assert await reader.read() == b""
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(post("/v1/sync-tasks?model_endpoint_id=other", b""))
        status, _, body = await read_answer(reader)
        assert (status, "detail" in json.loads(body)) == (404, True)
        assert port in router.fast_ports()
        writer.write(post("/v1/sync-tasks", b'{"args": {}}'))  # no model_endpoint_id: Launch's refusal, from the head
        status, _, body = await read_answer(reader)
        answer: Any = json.loads(body)
        assert (status, answer["error"]["code"]) == (400, "invalid_request"), answer
        assert "model_endpoint_id" in answer["detail"]
    finally:
        writer.close()


async def test_the_hops_stream_route_is_answered_by_the_fast_edge(router: Router) -> None:
    """The gateway's hand-over of a parsed stream (`router.hop`, a seam operation): data frames, then one failure
    frame for a failure after the first chunk; an unknown name is refused in the native shape."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(post("/internal/v1/endpoints/fake/invoke-stream", json.dumps({"words": ["a", "b"]}).encode()))
        status, headers, body = await read_answer(reader)
        assert (status, headers["content-type"]) == (200, hop.STREAM_CONTENT_TYPE)
        frames = hop.FrameReader().feed(body)
        assert [frame.data for frame in frames if isinstance(frame, StreamChunk)] == [b'"a"', b'"b"']  # the events
        assert len(frames) == 2
        assert port in router.fast_ports()

        failing = {"words": ["a", "b"], "fail_after": 1}
        writer.write(post("/internal/v1/endpoints/fake/invoke-stream", json.dumps(failing).encode()))
        status, _, body = await read_answer(reader)
        first, failure = hop.FrameReader().feed(body)
        assert status == 200 and isinstance(first, StreamChunk) and first.data == b'"a"'
        assert isinstance(failure, ModelError)
        assert port in router.fast_ports()

        writer.write(post("/internal/v1/endpoints/other/invoke-stream", b""))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["error"]["code"]) == (404, "not_found")
        assert port in router.fast_ports()
    finally:
        writer.close()


async def test_native_streams_are_answered_by_the_fast_edge(router: Router) -> None:
    """Native SSE (a seam operation since the gateway relays it over pooled connections: a stream handed to aiohttp
    would leave that connection on aiohttp's slower path for every later call)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(post("/v1/endpoints/fake/stream", json.dumps({"args": {"words": ["a", {"n": 1}]}}).encode()))
        status, headers, body = await read_answer(reader)
        assert (status, headers["content-type"]) == (200, "text/event-stream")
        events = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]
        assert events == [{"status": "SUCCESS", "result": "a"}, {"status": "SUCCESS", "result": {"n": 1}}]
        assert port in router.fast_ports()

        failing = {"args": {"words": ["a", "b"], "fail_after": 1}}
        writer.write(post("/v1/endpoints/fake/stream", json.dumps(failing).encode()))
        status, _, body = await read_answer(reader)
        events = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]
        assert status == 200 and [event["status"] for event in events] == ["SUCCESS", "FAILURE"]

        writer.write(post("/v1/endpoints/fake/stream", b"{oops"))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["error"]["code"]) == (400, "invalid_request")
        writer.write(post("/v1/endpoints/other/stream", b""))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["error"]["code"]) == (404, "not_found")
        assert port in router.fast_ports()
    finally:
        writer.close()
