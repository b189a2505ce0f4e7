"""`python -m tests.support.tcp_relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT`: a byte relay.

Why: the test control plane's API server listens on 127.0.0.1 only (other suites share it), while the node lives in a
network namespace of its own that reaches the host through a veth. The node harness runs this relay on the host end
of the veth so the kubelet, kube-proxy, CoreDNS and pods (through the `kubernetes` Service) reach the API server.
TLS passes through untouched (end to end between the client and the API server). Prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, listen_host, listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    listen_host, listen_port, target_host, target_port = argv
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(listen_host, int(listen_port), target_host, int(target_port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
