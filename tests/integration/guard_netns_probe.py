"""Run by tests/integration/test_destination_guard_netns.py inside a network namespace of its own (`unshare -n`, only
`lo` up): the destination guard's answers for addresses it must refuse, and for an open and a closed loopback port.
Prints one JSON object. Nothing here can reach another machine: in that namespace every non-loopback address is
unreachable, so a refusal the guard misses shows up as a connection error instead of the refusal text."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from bundleserve.api.errors import InvalidRequest
from bundleserve.outbound.destinations import AddressPolicy, parse_cidrs
from bundleserve.queue.callbacks import CallbackSender, RetryPolicy
from bundleserve.queue.tasks import CallbackTarget
from bundleserve.router.fetch import UrlFetcher

MUST_REFUSE = (
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[fd00::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://[::ffff:100.100.100.200]/",
    "http://168.63.129.16/",
    "http://[fd20:ce::254]/",
    "http://127.0.0.1:9/",
)
SCHEMES = frozenset({"http", "https"})


async def fetch_text(fetcher: UrlFetcher, url: str) -> str:
    try:
        await fetcher.fetch(url, schemes=SCHEMES, max_bytes=1024)
    except InvalidRequest as error:
        return error.message
    return "fetched"


async def main() -> dict[str, object]:
    # The defaults, except that loopback is allowed for the open/closed comparison below (and not for the list).
    default = AddressPolicy()
    loopback = AddressPolicy(allow=parse_cidrs("127.0.0.0/8", source="probe"))
    policy = RetryPolicy(max_attempts=1, base_delay_seconds=0.01, max_delay_seconds=0.01, timeout_seconds=2)
    out: dict[str, object] = {}
    fetcher, sender = UrlFetcher(default), CallbackSender(destinations=default, policy=policy)
    out["fetch"] = {url: await fetch_text(fetcher, url) for url in MUST_REFUSE}
    out["callback"] = {url: (await sender.attempt(CallbackTarget(url), {})).error for url in MUST_REFUSE}
    await fetcher.close()
    await sender.close()

    # An open port that is not HTTP (accepts, then closes) and a closed port.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.0\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    open_port = server.sockets[0].getsockname()[1]
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    fetcher, sender = UrlFetcher(loopback), CallbackSender(destinations=loopback, policy=policy)
    out["open"] = await fetch_text(fetcher, f"http://127.0.0.1:{open_port}/")
    out["closed"] = await fetch_text(fetcher, f"http://127.0.0.1:{closed_port}/")
    out["callback_open"] = (await sender.attempt(CallbackTarget(f"http://127.0.0.1:{open_port}/"), {})).error
    out["callback_closed"] = (await sender.attempt(CallbackTarget(f"http://127.0.0.1:{closed_port}/"), {})).error
    await fetcher.close()
    await sender.close()
    server.close()
    return out


if __name__ == "__main__":
    json.dump(asyncio.run(main()), sys.stdout)
