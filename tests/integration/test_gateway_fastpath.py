"""The gateway's fast edge (`gateway.fastpath`) on raw sockets, in front of a real router and model (the backend of
tests/integration/test_gateway.py): requests pipelined on one connection are answered in order, a connection moves to
aiohttp at its first request the fast edge does not serve and keeps working there, a trickling body gets 408 and is
closed, and the router sees the client's address in X-Forwarded-For. The rest of the gateway's behaviour through the
fast edge is covered by test_gateway.py, whose gateway listens the same way (`gateway.server.Front`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bundleserve.api.credentials import KeysFile
from bundleserve.client import AsyncClient, EndpointRequest, NotFound
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.gateway.app import GATEWAY, GatewayConfig, build_gateway_app
from bundleserve.gateway.fastpath import GatewayConnection, GatewayEdge, _Request
from bundleserve.gateway.registry import Registry
from bundleserve.gateway.server import Front
from bundleserve.gateway.upstream import UpstreamPool
from bundleserve.queue.results import open_result_store, sync_result_key
from tests.integration.test_gateway import backend, entry_for  # noqa: F401 - the module's real router and model
from tests.integration.test_router_fake_model import write_endpoint
from tests.support.processes import free_port


@pytest.fixture
async def front(backend: dict[str, Any]) -> AsyncIterator[int]:  # noqa: F811
    registry = Registry([entry_for(backend["endpoint_file"], backend["router_url"])])
    server = Front(build_gateway_app(registry, GatewayConfig()), ConnectionLimits(idle_seconds=30, body_seconds=1))
    port = free_port()
    await server.start("127.0.0.1", port)
    try:
        yield port
    finally:
        await server.stop()


def predict(args: Any, *, extra: bytes = b"") -> bytes:
    body = json.dumps({"args": args}).encode()
    head = b"POST /v1/endpoints/fake/predict HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # chunked
        parts = []
        while (size := int((await reader.readline()).strip(), 16)) != 0:
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        body = b"".join(parts)
    return status, headers, body


async def test_pipelined_requests_are_answered_in_order(front: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", front)
    try:
        writer.write(b"".join(predict({"n": n}) for n in range(5)))
        answers = [await read_answer(reader) for _ in range(5)]
    finally:
        writer.close()
    assert [(status, json.loads(body)["result"]) for status, _, body in answers] == [(200, {"n": n}) for n in range(5)]


async def test_a_connection_moves_to_aiohttp_at_its_first_other_request_and_keeps_working(front: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", front)
    try:
        writer.write(predict({"a": 1}))
        assert (await read_answer(reader))[0] == 200
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")  # not a hot path: handed over
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["status"]) == (200, "ok")
        writer.write(predict({"b": 2}))  # aiohttp's own proxy route answers it now, the same way
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["result"]) == (200, {"b": 2})
    finally:
        writer.close()


async def test_requests_the_fast_edge_does_not_take_are_answered_by_aiohttp(front: int) -> None:
    """A query string, a chunked body and a refused gate all go to the aiohttp routes, with their usual answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", front)
    try:
        writer.write(predict({"q": 1}).replace(b"/predict HTTP", b"/predict?x=1 HTTP"))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["result"]) == (200, {"q": 1})
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", front)
    try:
        writer.write(predict({"x": 1}).replace(b"/fake/predict", b"/nope/predict"))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["error"]["code"]) == (404, "not_found")
    finally:
        writer.close()


async def test_a_body_that_trickles_past_the_deadline_gets_408_and_is_closed(front: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", front)
    try:
        request = predict({"slow": True})
        writer.write(request[:-5])  # the head and most of the body; the rest never comes
        status, headers, body = await read_answer(reader)
        assert (status, json.loads(body)["error"]["code"]) == (408, "request_timeout")
        assert headers.get("connection") == "close"
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed
    finally:
        writer.close()


def test_the_router_gets_the_request_with_this_hops_headers(backend: dict[str, Any]) -> None:  # noqa: F811
    """Hop-by-hop headers dropped, the client's Authorization replaced by the endpoint's gateway key, X-Forwarded-For
    extended by the client's address, X-Forwarded-Host/-Proto added unless a proxy in front set them."""
    entry = entry_for(backend["endpoint_file"], backend["router_url"])
    app = build_gateway_app(Registry([entry]), GatewayConfig(api_keys=frozenset({"s3cret"})))
    gateway = app[GATEWAY]
    connection = GatewayConnection(GatewayEdge(gateway, None, UpstreamPool()))  # type: ignore[arg-type]
    connection.peer = b"198.51.100.2"
    headers = [
        (b"host", b"models.example.com"),
        (b"authorization", b"Bearer s3cret"),
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-forwarded-proto", b"https"),
        (b"idempotency-key", b"k-1"),
        (b"content-length", b"2"),
    ]
    address, head = connection._upstream_head(
        _Request(entry, b"/v1/endpoints/fake/predict", headers, 2, True, router_url=entry.router_url)
    )
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/endpoints/fake/predict HTTP/1.1" and head.endswith(b"\r\n\r\n")
    fields = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
    names = [name.lower() for name, _ in fields]
    found = dict((name.lower(), value) for name, value in fields)
    assert address == ("127.0.0.1", int(backend["router_url"].rsplit(":", 1)[1]))
    assert "keep-alive" not in names and "connection" not in names and names.count("host") == 1
    assert found["host"] == backend["router_url"].removeprefix("http://")
    assert found["authorization"] == f"Bearer {gateway.upstream_authorization(entry).removeprefix('Bearer ')}"
    assert found["authorization"] != "Bearer s3cret"
    assert found["x-forwarded-for"] == "203.0.113.7, 198.51.100.2"
    assert (found["x-forwarded-proto"], found["x-forwarded-host"]) == ("https", "models.example.com")
    assert (found["idempotency-key"], found["content-length"]) == ("k-1", "2")
    assert names.count("content-length") == 1 and names.count("authorization") == 1


async def test_a_task_is_visible_to_the_keys_of_its_namespace_only_also_on_one_shared_connection(
    backend: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Submit and status on the fast edge: the status lookup sees exactly the namespaces of the key of its own
    request, also when requests of different keys share one connection and one moves it to aiohttp midway (the
    scope the gate records must not leak from one request's context into another's)."""
    master = KeysFile.parse("k-default default\nk-other other\n")
    endpoint_file = write_endpoint(tmp_path, name="queued", modes=("async",))  # no router: the task stays PENDING
    registry = Registry([entry_for(endpoint_file, f"http://127.0.0.1:{free_port()}")])
    config = GatewayConfig(redis_url=backend["valkey"].url, results_dir=tmp_path / "results", keys_file=master)
    server = Front(build_gateway_app(registry, config), ConnectionLimits())
    port = free_port()
    await server.start("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    def status(task_id: str, key: str) -> bytes:
        return f"GET /v1/tasks/{task_id} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n".encode()

    try:
        body = b'{"args": {"n": 1}}'
        writer.write(
            b"POST /v1/endpoints/queued/async HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer k-default\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        code, _, answer = await read_answer(reader)
        assert code == 202, answer
        task_id = json.loads(answer)["task_id"]
        writer.write(status(task_id, "k-default"))
        code, _, answer = await read_answer(reader)
        assert (code, json.loads(answer)["status"]) == (200, "PENDING")
        writer.write(status(task_id, "k-other"))
        assert (await read_answer(reader))[0] == 404  # another namespace's key: as an unknown task
        writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer k-default\r\n\r\n")
        assert (await read_answer(reader))[0] == 200  # handed over to aiohttp
        writer.write(f"GET /v1/tasks/{task_id}/result HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        assert (await read_answer(reader))[0] == 401  # no key, no scope: nothing carried over from before
        writer.write(status(task_id, "k-other"))
        assert (await read_answer(reader))[0] == 404
    finally:
        writer.close()
        await server.stop()


async def test_the_sdk_describes_and_calls_on_one_connection_that_stays_on_the_fast_edge(
    backend: dict[str, Any],  # noqa: F811
) -> None:
    """The SDK's documented flow, `client.endpoint(name)` (a description first) then calls, on its one pooled
    connection: the description and the listing are answered by the fast edge too, so the calls after them are not
    handed over to aiohttp; an unknown name is still aiohttp's 404 in the native shape."""
    registry = Registry([entry_for(backend["endpoint_file"], backend["router_url"])])
    server = Front(build_gateway_app(registry, GatewayConfig()), ConnectionLimits())
    port = free_port()
    await server.start("127.0.0.1", port)
    edge = server.edge
    if edge is None:
        raise RuntimeError("the gateway has no fast edge")
    try:
        async with AsyncClient(f"http://127.0.0.1:{port}") as client:
            endpoint = await client.endpoint("fake")
            assert len(edge.connections) == 1  # the description was answered by the fast edge
            for value in (1, 2):
                answer = await endpoint.predict(EndpointRequest(args={"n": value}))
                assert answer.result_value() == {"n": value}
            assert len(edge.connections) == 1
            assert [info.name for info in await client.endpoints()] == ["fake"]
            assert len(edge.connections) == 1
            with pytest.raises(NotFound):
                await client.describe("nope")
    finally:
        await server.stop()


async def test_a_stored_result_is_downloaded_on_the_fast_edge(
    backend: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A `return_pickled` result's download (`GET /v1/tasks/{key}/result`, what the SDK's `load_pickled_result`
    fetches on the connection it calls on) is answered by the fast edge: the bytes as stored, with their type, and
    the connection stays there for the next call; an unknown key is 404 in the native shape there too."""
    registry = Registry([entry_for(backend["endpoint_file"], backend["router_url"])])
    config = GatewayConfig(redis_url=backend["valkey"].url, results_dir=tmp_path / "results")
    store = open_result_store(config.results_dir)
    key = sync_result_key("default", "fake")
    await store.put(key, b"\x80pickled", "application/x-python-pickle")
    server = Front(build_gateway_app(registry, config), ConnectionLimits())
    port = free_port()
    await server.start("127.0.0.1", port)
    edge = server.edge
    if edge is None:
        raise RuntimeError("the gateway has no fast edge")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /v1/tasks/{key}/result HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        status, headers, body = await read_answer(reader)
        assert (status, headers["content-type"], body) == (200, "application/x-python-pickle", b"\x80pickled")
        assert len(edge.connections) == 1
        unknown = sync_result_key("default", "fake")
        writer.write(f"GET /v1/tasks/{unknown}/result HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["error"]["code"]) == (404, "not_found")
        writer.write(predict({"after": 1}))
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)["result"]) == (200, {"after": 1})
        assert len(edge.connections) == 1
    finally:
        writer.close()
        await server.stop()
