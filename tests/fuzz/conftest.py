"""Fixtures of the fuzz tier: a real router in front of the real bundle runtime serving the echo example.

Every fuzz test is bounded (a fixed number of derandomized examples, so the same inputs on every run; hypothesis's
example database is off) and checks what a hostile client must never get: a 500, a hang, or unbounded memory.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from bundleserve.api.manifest import parse_endpoint
from bundleserve.router.app import INVOKER, build_app
from bundleserve.router.fastpath import FastEdge
from bundleserve.router.settings import Settings
from tests.support.processes import REPO, Server, bundleserve, free_port, http_ok
from tests.support.waiting import wait_until

NAME = "fuzz"
LIMIT = 64 * 1024
ENDPOINT = {
    "apiVersion": "bundleserve.dev/v1alpha1",
    "kind": "Endpoint",
    "metadata": {"name": NAME},
    "spec": {
        "modes": ["sync", "streaming"],
        "localOnly": True,
        "bundle": {"python": {"entrypoint": "echo_model:predict"}},
        "invocation": {"maxPayloadBytes": LIMIT, "timeoutSeconds": 10},
    },
}


@dataclass
class Target:
    url: str
    port: int
    server: Server | None = None


@pytest.fixture(scope="session")
def echo_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bundle runtime serving examples/echo (the real model side of the router contract)."""
    directory = tmp_path_factory.mktemp("fuzz-model")
    port = free_port()
    argv = bundleserve("bundle", "serve", "--entrypoint", "echo_model:predict", "--port", str(port))
    server = Server([*argv, "--path", str(REPO / "examples" / "echo")], log_path=directory / "model.log")
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/readyz")
    yield url
    server.stop()


@pytest.fixture(scope="session")
def router_process(echo_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """`bundleserve router` as a subprocess (its RSS is read from /proc)."""
    directory = tmp_path_factory.mktemp("fuzz-router")
    endpoint = directory / "endpoint.yaml"
    endpoint.write_text(yaml.safe_dump(ENDPOINT))
    port = free_port()
    argv = bundleserve("router", "--endpoint-file", str(endpoint), "--model-url", echo_model, "--port", str(port))
    server = Server([*argv, "--host", "127.0.0.1"], log_path=directory / "router.log")
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/healthz")
    wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
    yield Target(url, port, server)
    assert server.process.poll() is None, server.log()
    server.stop()


@dataclass
class InProcess:
    """The router's app and fast edge in this process, on a loop in a thread, listening on loopback."""

    target: Target
    edge: FastEdge
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="session")
def router_in_process(echo_model: str) -> Iterator[InProcess]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-router", daemon=True)
    thread.start()
    settings = Settings(endpoint=parse_endpoint(ENDPOINT), model_url=echo_model, host="127.0.0.1")

    async def start() -> tuple[web.AppRunner, asyncio.Server, FastEdge]:
        app = build_app(settings)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        assert runner.server is not None
        edge = FastEdge(app[INVOKER], runner.server, body_seconds=2.0)
        listener = await asyncio.get_running_loop().create_server(edge, "127.0.0.1", 0)
        return runner, listener, edge

    runner, listener, edge = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    port = listener.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="in-process router ready")
    yield InProcess(Target(url, port), edge, loop)

    async def stop() -> None:
        listener.close()
        edge.close()
        await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def exchange(port: int, data: bytes, *, quiet: float = 0.3, close_within: float = 10.0) -> bytes:
    """Send `data` on a fresh connection, collect what comes back until the router is quiet for `quiet` seconds,
    then half-close: the router must close the connection within `close_within` seconds (no hang)."""
    with socket.create_connection(("127.0.0.1", port), timeout=close_within) as sock:
        received = bytearray()
        try:
            sock.sendall(data)
            sock.settimeout(quiet)
            while chunk := sock.recv(65536):
                received += chunk
            return bytes(received)  # the router closed first
        except TimeoutError:
            pass
        except OSError:  # reset by the router after an error answer
            return bytes(received)
        sock.settimeout(close_within)
        try:
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            raise AssertionError(f"the connection stayed open after our EOF; sent {data[:120]!r}") from None
        except OSError:
            pass
        return bytes(received)


def statuses(received: bytes) -> list[int]:
    """The status codes of the HTTP responses in `received` (heads only; bodies may hold anything)."""
    found = []
    for line in received.split(b"\r\n"):
        if line.startswith(b"HTTP/1.") and len(line) >= 12 and line[9:12].isdigit():
            found.append(int(line[9:12]))
    return found


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
