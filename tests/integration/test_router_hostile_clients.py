"""Hostile clients at the fast edge (issue 9, item 5), on raw sockets against a router subprocess.

Refusals come before the body is read (401 without a key, 413 for a body announced too large by Content-Length or by
a chunk size); a chunk whose data runs past its declared size is refused without being buffered (RSS of the router
measured from /proc); a trickling body (slowloris) gets 408 at the body deadline and the connection is closed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.integration.test_router_fastpath import args, assert_closed, connect, post, read_reply
from tests.support.processes import http_ok
from tests.support.waiting import wait_until

LIMIT = 1024 * 1024  # maxPayloadBytes of the endpoint under test
KEY = "hostile-test-key"
AUTH = f"Authorization: Bearer {KEY}\r\n"
PATH = "/v1/endpoints/fake/predict"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("hostile")
    keys = directory / "api-keys"
    keys.write_text(KEY + "\n")
    model, model_url = start_model(directory)
    server = None
    try:
        endpoint = write_endpoint(directory, invocation={"maxPayloadBytes": LIMIT, "timeoutSeconds": 10})
        env = {"BUNDLESERVE_API_KEYS_FILE": str(keys), "BUNDLESERVE_BODY_TIMEOUT_SECONDS": "1"}
        server, url = start_router(directory, endpoint, model_url, env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        yield {"url": url, "server": server, "port": int(url.rsplit(":", 1)[1])}
    finally:
        if server is not None:
            server.stop()
        model.stop()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (what the kernel's OOM killer counts)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def chunked_head(extra: str = AUTH) -> bytes:
    return f"POST {PATH} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_missing_api_key_is_401_before_the_body_is_sent(router: dict[str, Any], framing: str) -> None:
    if framing == "chunked":
        head = chunked_head(extra="")
    else:
        head = f"POST {PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: {LIMIT}\r\n\r\n".encode()
    async with connect(router["url"]) as (reader, writer):
        writer.write(head)  # not a byte of the body
        reply = await read_reply(reader)
        assert reply.status == 401
        assert reply.json()["error"]["code"] == "unauthorized"
        assert reply.headers["connection"] == "close"
        await assert_closed(reader)


async def test_a_request_without_a_body_refused_by_the_gate_keeps_the_connection(router: dict[str, Any]) -> None:
    async with connect(router["url"]) as (reader, writer):
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode())
        assert (await read_reply(reader)).status == 401
        writer.write(post(args(n=1), extra=AUTH))  # nothing was left unread: the connection stays usable
        reply = await read_reply(reader)
        assert (reply.status, reply.json()["result"]) == (200, {"n": 1})


async def test_a_chunk_announced_larger_than_the_limit_is_413_before_its_data(router: dict[str, Any]) -> None:
    async with connect(router["url"]) as (reader, writer):
        writer.write(chunked_head() + b"%x\r\n" % (LIMIT + 1))
        reply = await read_reply(reader)
        assert reply.status == 413
        assert reply.json()["error"]["code"] == "payload_too_large"
        await assert_closed(reader)


def _send_and_collect(port: int, parts: Iterator[bytes]) -> bytes:
    """Send every part (stopping when the router closes), then read what the router answered until it closed.

    A blocking socket: the kernel hands out the bytes received before a reset, which asyncio's streams drop.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            for part in parts:
                sock.sendall(part)
        except OSError:  # closed by the router while we were still sending
            pass
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:  # reset after the answer
            pass
        return bytes(received)


async def test_a_chunk_that_never_ends_is_refused_without_being_buffered(router: dict[str, Any]) -> None:
    """The chunk announces LIMIT bytes, then 16 MiB follow without the CRLF that would end it."""
    pid = router["server"].process.pid
    garbage = 16 * 1024 * 1024

    def parts() -> Iterator[bytes]:
        yield chunked_head() + b"%x\r\n" % LIMIT
        piece = b"x" * 65536
        for _ in range((LIMIT + garbage) // len(piece)):
            yield piece

    before = rss_bytes(pid)
    received = await asyncio.to_thread(_send_and_collect, router["port"], parts())
    grown = rss_bytes(pid) - before
    assert grown < 8 * 1024 * 1024, f"the router grew by {grown} bytes while refusing the body"
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert b'"code":"invalid_request"' in received and b"longer than its declared size" in received
    assert wait_until(lambda: http_ok(f"{router['url']}/healthz"), timeout=10, what="router still serving")


async def test_a_body_split_at_every_byte_is_read(router: dict[str, Any]) -> None:
    """The scanner's partial states: size lines, chunk data, CRLFs and trailers arriving one byte at a time."""
    body = args(split="everywhere")
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]))
    message = chunked_head() + chunks + b"0\r\nX-Trailer: yes\r\n\r\n" + post(args(after=True), extra=AUTH)
    async with connect(router["url"]) as (reader, writer):
        for index in range(len(message)):
            writer.write(message[index : index + 1])
            await writer.drain()
        first, second = await read_reply(reader), await read_reply(reader)
    assert (first.status, first.json()["result"]) == (200, {"split": "everywhere"})
    assert (second.status, second.json()["result"]) == (200, {"after": True})


async def test_a_trickling_body_gets_408_at_the_body_deadline(router: dict[str, Any]) -> None:
    """BUNDLESERVE_BODY_TIMEOUT_SECONDS=1 here: a byte every 0.1 s never completes the 1000-byte body in time."""
    async with connect(router["url"]) as (reader, writer):
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Length: 1000\r\n\r\n{{".encode())
        answer = asyncio.ensure_future(read_reply(reader))

        async def trickle() -> None:
            for _ in range(999):
                writer.write(b" ")
                await asyncio.sleep(0.1)  # the attacker's pace, not a synchronisation

        sending = asyncio.ensure_future(trickle())
        try:
            reply = await answer
        finally:
            sending.cancel()
        assert reply.status == 408
        assert reply.json()["error"]["code"] == "request_timeout"
        assert "BUNDLESERVE_BODY_TIMEOUT_SECONDS" in reply.json()["error"]["message"]
        await assert_closed(reader)
