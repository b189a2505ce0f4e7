"""The router's model client against a real aiohttp server on loopback: keep-alive, framing, errors, cancellation."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bundleserve.api.errors import ModelError, Unavailable
from bundleserve.router.core import model_failure
from bundleserve.router.model_client import ModelClient
from tests.support.processes import free_port
from tests.support.waiting import async_wait_until


@pytest.fixture
async def model() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    seen: dict[str, Any] = {"peers": set(), "cancelled": 0, "headers": []}

    async def predict(request: web.Request) -> web.StreamResponse:
        seen["peers"].add(request.transport.get_extra_info("peername") if request.transport else None)
        seen["headers"].append(dict(request.headers))
        body = await request.read()
        if body == b'"fail"':
            error = {"error": {"code": "model_error", "message": "nope", "type": "KeyError", "traceback": "tb"}}
            return web.json_response(error, status=500)
        if body == b'"slow"':
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen["cancelled"] += 1
                raise
        if body == b'"chunked"':
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"[1,", b"2,", b"3]"):
                await response.write(part)
            await response.write_eof()
            return response
        return web.Response(body=body, content_type=request.content_type)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(3):
            await response.write(f"data: {index}\n\n".encode())
        if await request.read() == b'"endless"':
            while True:  # until the client leaves (the write fails, or the handler is cancelled)
                await response.write(b"data: more\n\n")
                await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_post("/stream", stream)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(keepalive_timeout=0.2)
    yield f"http://127.0.0.1:{server.port}", seen
    await server.close()


async def test_connections_are_kept_alive(model: tuple[str, dict[str, Any]]) -> None:
    url, seen = model
    client = ModelClient(url)
    for index in range(20):
        reply = await client.predict("/predict", str(index).encode())
        assert reply.ok and reply.result() == index
    assert len(seen["peers"]) == 1
    await client.close()


async def test_a_connection_the_model_closed_is_not_reused(model: tuple[str, dict[str, Any]]) -> None:
    url, seen = model
    client = ModelClient(url)
    assert (await client.predict("/predict", b"1")).ok

    async def closed_by_the_model() -> bool:  # the server's keep-alive timeout closes the idle connection
        return all(connection.lost for connection in client._idle)

    await async_wait_until(closed_by_the_model, timeout=10, what="the model to close the idle connection")
    assert (await client.predict("/predict", b"2")).result() == 2
    assert len(seen["peers"]) == 2
    await client.close()


async def test_contract_headers_and_chunked_bodies(model: tuple[str, dict[str, Any]]) -> None:
    url, seen = model
    client = ModelClient(url)
    reply = await client.predict("/predict", b"\x00\x01", content_type=b"image/png", raw=True, pickled=True)
    assert reply.body == b"\x00\x01" and reply.content_type == "image/png"
    headers = seen["headers"][-1]
    assert headers["X-Bundleserve-Input"] == "raw" and headers["X-Bundleserve-Return"] == "pickle"
    assert (await client.predict("/predict", b'"chunked"')).result() == [1, 2, 3]
    await client.close()


async def test_model_errors_carry_status_and_traceback(model: tuple[str, dict[str, Any]]) -> None:
    """The client returns any status; the core's mapping turns the runtime's error body into a ModelError."""
    url, _ = model
    client = ModelClient(url)
    reply = await client.predict("/predict", b'"fail"')
    assert reply.status == 500  # the client never raises on status
    error = model_failure(reply.status, reply.body, fallback="failed")
    assert isinstance(error, ModelError)
    body = error.body()["error"]
    assert (body["status_code"], body["traceback"], body["type"], body["message"]) == (500, "tb", "KeyError", "nope")
    await client.close()


async def test_an_unreachable_model_is_unavailable() -> None:
    client = ModelClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable):
        await client.predict("/predict", b"{}")


async def test_cancelling_a_call_cancels_the_model_handler(model: tuple[str, dict[str, Any]]) -> None:
    url, seen = model
    client = ModelClient(url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.predict("/predict", b'"slow"')

    async def cancelled() -> bool:
        return bool(seen["cancelled"] == 1)

    await async_wait_until(cancelled, timeout=5, what="the model handler to be cancelled")
    assert (await client.predict("/predict", b"3")).result() == 3  # the pool recovers with a new connection
    await client.close()


async def test_stream_yields_the_raw_chunks(model: tuple[str, dict[str, Any]]) -> None:
    url, _ = model
    client = ModelClient(url)
    async with client.stream("/stream", b"{}") as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        received = b"".join([chunk async for chunk in stream])
    assert received == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert stream.finished
    await client.close()


async def test_a_stream_left_early_leaves_no_unretrieved_failure(model: tuple[str, dict[str, Any]]) -> None:
    """Found by the OpenAI suite: a client leaving a stream closed the model connection, whose loss then failed a
    future of the exchange nobody awaited any more, and asyncio logged "Future exception was never retrieved"."""
    url, _ = model
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        client = ModelClient(url)
        async with client.stream("/stream", b'"endless"') as stream:
            async for _ in stream:
                break  # leave after the first chunk: the connection is closed, the model's generator cancelled
        exchange = [stream._connection]  # the exchange whose futures are checked; dropped below

        async def lost() -> bool:
            return exchange[0].lost

        await async_wait_until(lost, timeout=5, what="the model connection to be closed")
        exchange.clear()
        del stream
        gc.collect()  # an exception never retrieved is reported when its future is collected
        assert [context.get("message") for context in reported] == []
        await client.close()
    finally:
        loop.set_exception_handler(previous)
