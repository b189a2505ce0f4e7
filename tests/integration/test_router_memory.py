"""The router's memory is bounded by the Endpoint's own limits (issue 17, finding 4), for the three measured cases:

- one 150 MiB body (maxPayloadBytes 160 MiB);
- 60 concurrent 6 MiB bodies while the model holds them (the defaults: concurrency 8, maxQueued 80);
- 40 uploads of 6 MiB stalled just before their last byte.

Each case runs on a fresh router subprocess and reads its peak resident set (VmHWM, what the kernel's OOM killer
compares with the container's limit) from /proc; the bound is `router_memory_limit(endpoint)`, the limit the
Deployment builder gives the router container. The router must still serve afterwards. Barriers, not sleeps.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bundleserve.api.manifest import load_endpoints
from bundleserve.controller.builders.deployment import router_memory_limit
from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.support.processes import http_ok
from tests.support.waiting import async_wait_until, wait_until

MIB = 1024 * 1024


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


@pytest.fixture
def model(tmp_path: Path) -> Iterator[str]:
    server, url = start_model(tmp_path)
    try:
        yield url
    finally:
        server.stop()


def _router(directory: Path, model_url: str, invocation: dict[str, Any]) -> tuple[Any, str, int]:
    endpoint_file = write_endpoint(directory, modes=("sync",), invocation={"timeoutSeconds": 120, **invocation})
    [(_, endpoint)] = load_endpoints([endpoint_file])
    server, url = start_router(directory, endpoint_file, model_url)
    wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
    return server, url, router_memory_limit(endpoint)


def _body(size: int, **args: Any) -> bytes:
    """A JSON body of `size` bytes: the args plus one padding string."""
    head = json.dumps({"args": {**args, "pad": ""}}).encode()
    return head[:-3] + b"a" * (size - len(head)) + head[-3:]


async def _post(url: str, body: bytes) -> int:
    data = io.BytesIO(body)  # aiohttp streams a file-like body (raw bytes this large would block its loop)
    async with aiohttp.ClientSession() as http, http.post(f"{url}/v1/endpoints/fake/predict", data=data) as response:
        await response.read()
        return response.status


async def _waiting(model_url: str, gate: str, count: int) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{model_url}/gates/{gate}") as response:
        return bool((await response.json())["waiting"] == count)


async def test_one_150_mib_body(tmp_path: Path, model: str) -> None:
    server, url, limit = _router(tmp_path, model, {"maxPayloadBytes": 160 * MIB, "concurrency": 1, "maxQueued": 0})
    try:
        status = await _post(url, _body(150 * MIB, n=1))
        assert status == 200
        peak = _status(server.process.pid, "VmHWM")
        print(f"peak {peak / MIB:.0f} MiB, limit {limit / MIB:.0f} MiB")  # the measurement, for docs/benchmarks
        assert peak < limit, f"peak RSS {peak / MIB:.0f} MiB over the router's limit {limit / MIB:.0f} MiB"
        assert await _post(url, _body(1024, n=2)) == 200
    finally:
        server.stop()


async def test_sixty_concurrent_6_mib_bodies_with_a_slow_model(tmp_path: Path, model: str) -> None:
    server, url, limit = _router(tmp_path, model, {})  # the defaults: 6 MiB, concurrency 8, maxQueued 80
    try:
        calls = [asyncio.ensure_future(_post(url, _body(6 * MIB - 4096, hold="sixty", n=n))) for n in range(60)]
        await async_wait_until(lambda: _waiting(model, "sixty", 8), timeout=60, what="the model holds 8 calls")
        await async_wait_until(
            lambda: _queued(url, 52), timeout=60, what="52 requests queued behind the 8 in the model"
        )
        peak = _status(server.process.pid, "VmHWM")
        print(f"peak {peak / MIB:.0f} MiB, limit {limit / MIB:.0f} MiB")  # the measurement, for docs/benchmarks
        async with aiohttp.ClientSession() as http, http.post(f"{model}/gates/sixty") as response:
            assert response.status == 200
        assert await asyncio.gather(*calls) == [200] * 60
        assert peak < limit, f"peak RSS {peak / MIB:.0f} MiB over the router's limit {limit / MIB:.0f} MiB"
    finally:
        server.stop()


async def _queued(url: str, count: int) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    return f'bundleserve_router_queued_requests{{endpoint="fake"}} {float(count)}' in text


async def test_forty_stalled_6_mib_uploads(tmp_path: Path, model: str) -> None:
    server, url, limit = _router(tmp_path, model, {})
    port = int(url.rsplit(":", 1)[1])
    body = _body(6 * MIB - 4096, n=1)
    head = f"POST /v1/endpoints/fake/predict HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    sockets: list[socket.socket] = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(head + body[:-1])  # everything but the last byte: the upload stalls
            sockets.append(sock)
        await async_wait_until(lambda: _settled(port), timeout=60, what="the router read what was sent")
        peak = _status(server.process.pid, "VmHWM")
        print(f"peak {peak / MIB:.0f} MiB, limit {limit / MIB:.0f} MiB")  # the measurement, for docs/benchmarks
        assert peak < limit, f"peak RSS {peak / MIB:.0f} MiB over the router's limit {limit / MIB:.0f} MiB"
        assert await _post(url, _body(1024, n=2)) == 200  # still serving
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


async def _settled(port: int) -> bool:
    """Every byte sent toward the router's port was read by it: no receive queue on its side of our connections, and
    nothing left in our send queues (kernel counters in /proc/net/tcp, both ends are on loopback)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        tx_queue, rx_queue = (int(value, 16) for value in fields[4].split(":"))
        if fields[3] == "01" and ((local_port == port and rx_queue) or (remote_port == port and tx_queue)):
            return False
    return True
