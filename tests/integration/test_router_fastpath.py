"""The fast edge's own HTTP handling (router.fastpath), on raw sockets against a router subprocess.

The router's behaviour (errors, limits, metrics) is covered through this edge by the other router tests; these pin the
HTTP/1.1 framing: keep-alive, pipelining, chunked bodies, 413 before the body, 400 on a malformed head, the handover
to aiohttp in the middle of a connection, and a client leaving mid-request.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from bundleserve.api.manifest import parse_endpoint
from bundleserve.router.app import INVOKER, build_app
from bundleserve.router.fastpath import FastEdge
from bundleserve.router.settings import Settings
from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.integration.test_router_sync import LIMITS, model_stats, pair, wait_until_async
from tests.support.processes import http_ok
from tests.support.waiting import wait_until

__all__ = ["pair"]  # a fixture shared with the sync tests (one router + model per module)

PATH = "/v1/endpoints/fake/predict"


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        yield reader, writer
    finally:
        writer.close()


def post(body: bytes, *, path: str = PATH, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def args(**values: Any) -> bytes:
    return json.dumps({"args": values}).encode()


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    async with asyncio.timeout(10):
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return Reply(status, headers, b"")
        body = await reader.readexactly(int(headers["content-length"]))
        return Reply(status, headers, body)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(10):
        assert await reader.read() == b""


async def test_keep_alive_serves_several_requests_on_one_connection(pair: dict[str, Any]) -> None:
    async with connect(pair["url"]) as (reader, writer):
        for n in range(3):
            writer.write(post(args(n=n)))
            reply = await read_reply(reader)
            assert reply.status == 200
            assert reply.json()["result"] == {"n": n}
            assert "connection" not in reply.headers


async def test_http_1_0_gets_its_answer_and_the_connection_closes(pair: dict[str, Any]) -> None:
    async with connect(pair["url"]) as (reader, writer):
        writer.write(post(args(old=True)).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        reply = await read_reply(reader)
        assert (reply.status, reply.json()["result"], reply.headers["connection"]) == (200, {"old": True}, "close")
        await assert_closed(reader)


async def test_pipelined_requests_are_answered_in_order(pair: dict[str, Any]) -> None:
    async with connect(pair["url"]) as (reader, writer):
        writer.write(b"".join(post(args(n=n)) for n in range(5)))
        results = [(await read_reply(reader)).json()["result"]["n"] for _ in range(5)]
    assert results == [0, 1, 2, 3, 4]


async def test_chunked_body_is_read_and_the_next_request_follows(pair: dict[str, Any]) -> None:
    body = args(text="chunked")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]))
    head = f"POST {PATH} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    async with connect(pair["url"]) as (reader, writer):
        writer.write(head + chunks + b"0\r\n\r\n" + post(args(after=True)))  # pipelined behind the chunked one
        first, second = await read_reply(reader), await read_reply(reader)
    assert (first.status, first.json()["result"]) == (200, {"text": "chunked"})
    assert (second.status, second.json()["result"]) == (200, {"after": True})


async def test_oversized_content_length_is_413_before_the_body_is_sent(pair: dict[str, Any]) -> None:
    size = LIMITS["maxPayloadBytes"] + 1
    async with connect(pair["url"]) as (reader, writer):
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n{{".encode())
        reply = await read_reply(reader)  # only one byte of the body was sent
        assert reply.status == 413
        assert reply.json()["error"]["code"] == "payload_too_large"
        assert reply.headers["connection"] == "close"
        writer.write(b"x" * 100)  # a client still sending is not reset; the connection ends
        await assert_closed(reader)


async def test_expect_100_continue_gets_the_interim_answer(pair: dict[str, Any]) -> None:
    body = args(expected=True)
    async with connect(pair["url"]) as (reader, writer):
        writer.write(post(body, extra="Expect: 100-continue\r\n")[: -len(body)])
        assert (await read_reply(reader)).status == 100
        writer.write(body)
        reply = await read_reply(reader)
    assert (reply.status, reply.json()["result"]) == (200, {"expected": True})


@pytest.mark.parametrize(
    "head",
    [f"POST {PATH} HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", f"POST {PATH} HTTP/1.1 trailing junk\r\n\r\n"],
    ids=["header", "request-line"],
)
async def test_malformed_head_on_the_fast_route_is_400_and_closes(pair: dict[str, Any], head: str) -> None:
    async with connect(pair["url"]) as (reader, writer):
        writer.write(head.encode() + post(args(n=1)))  # the request behind it is not answered
        reply = await read_reply(reader)
        assert reply.status == 400
        assert reply.json()["error"]["code"] == "invalid_request"
        await assert_closed(reader)


async def test_garbage_request_line_is_400_from_aiohttp_and_closes(pair: dict[str, Any]) -> None:
    async with connect(pair["url"]) as (reader, writer):
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        assert (await read_reply(reader)).status == 400  # aiohttp's own plain-text 400, as before the fast edge
        await assert_closed(reader)


async def test_connection_is_handed_over_to_aiohttp_mid_connection(pair: dict[str, Any]) -> None:
    async with connect(pair["url"]) as (reader, writer):
        writer.write(post(args(n=1)))
        assert (await read_reply(reader)).json()["result"] == {"n": 1}
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        metrics = await read_reply(reader)
        assert metrics.status == 200
        assert b"bundleserve_router_requests_total" in metrics.body
        writer.write(post(args(n=2)))  # now served by aiohttp on the same connection
        assert (await read_reply(reader)).json()["result"] == {"n": 2}
        writer.write(b"HEAD " + PATH.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 405")


async def test_a_pipelined_other_request_behind_predicts_is_handed_over(pair: dict[str, Any]) -> None:
    probe = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    async with connect(pair["url"]) as (reader, writer):
        writer.write(post(args(n=1)) + probe + post(args(n=2)))
        replies = [await read_reply(reader) for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    assert replies[1].json() == {"status": "ok"}
    assert replies[2].json()["result"] == {"n": 2}


async def test_client_leaving_mid_request_cancels_the_model_call(
    pair: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    await model_stats(http, pair, reset=True)
    async with connect(pair["url"]) as (_, writer):
        writer.write(post(args(sleep=4)))
        await wait_until_async(lambda: model_stats(http, pair), lambda s: s["current"] == 1)
    await wait_until_async(lambda: model_stats(http, pair), lambda s: s["current"] == 0, timeout=3)
    async with http.get(f"{pair['url']}/metrics") as response:
        text = await response.text()
    assert 'bundleserve_router_requests_total{endpoint="fake",mode="sync",outcome="cancelled"}' in text


async def test_sigterm_drains_fast_and_handed_over_connections(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    model, model_url = start_model(tmp_path)
    router, url = start_router(tmp_path, write_endpoint(tmp_path, invocation={"timeoutSeconds": 10}), model_url)
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        async with connect(url) as (fast, fast_writer), connect(url) as (handed, handed_writer):
            handed_writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_reply(handed)).status == 200  # this connection now belongs to aiohttp
            fast_writer.write(post(args(sleep=0.5, via="fast")))
            handed_writer.write(post(args(sleep=0.5, via="aiohttp")))
            await wait_until_async(lambda: model_stats(http, {"model_url": model_url}), lambda s: s["current"] == 2)
            router.signal(signal.SIGTERM)
            fast_reply, handed_reply = await read_reply(fast), await read_reply(handed)
            assert (fast_reply.status, fast_reply.json()["result"]["via"]) == (200, "fast")
            assert (handed_reply.status, handed_reply.json()["result"]["via"]) == (200, "aiohttp")
            await assert_closed(fast)  # idle connections are closed once drained
            await assert_closed(handed)
        assert router.process.wait(15) == 0
    finally:
        router.stop()
        model.stop()


async def test_idle_connections_are_closed_after_the_keep_alive_timeout(tmp_path: Path) -> None:
    spec = {"modes": ["sync"], "localOnly": True, "bundle": {"python": {"entrypoint": "m:f"}}}
    manifest = {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "fake"}}
    settings = Settings(endpoint=parse_endpoint(manifest | {"spec": spec}), model_url="http://127.0.0.1:1")
    app = build_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    listener = await asyncio.get_running_loop().create_server(
        FastEdge(app[INVOKER], runner.server, idle_seconds=0.3), "127.0.0.1", 0
    )
    try:
        port = listener.sockets[0].getsockname()[1]
        async with connect(f"http://127.0.0.1:{port}") as (reader, writer):
            writer.write(post(args(n=1)))
            assert (await read_reply(reader)).status == 503  # answered (no model here), then left idle
            await assert_closed(reader)
    finally:
        listener.close()
        await runner.cleanup()
