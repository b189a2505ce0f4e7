"""The url guard's resolver keeps only the allowed addresses of a name (issue 9: a resolver handing back every
address, blocked ones included, left the suite green; only a host where `localhost` also resolves to ::1 noticed).

The name's addresses come from a stub in place of aiohttp's default resolver (no DNS server or hosts entry can be
set up here). Its limit: it stands for what the OS resolver answers; the guard's own code runs unchanged.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

# The one import of the module under test (it may move; re-point this line).
from bundleserve.outbound import connector as guarded
from bundleserve.outbound.destinations import AddressPolicy, parse_cidrs

ADDRESSES = {
    "mixed.test": ["169.254.169.254", "93.184.216.34", "::1", "2606:2800:220:1::1"],
    "metadata.test": ["169.254.169.254", "fd00:ec2::254"],
    "local.test": ["127.0.0.1", "::1"],
}


class StubResolver(AbstractResolver):
    """Answers like the OS resolver would for the names above, in the given order."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in ADDRESSES[host]
        ]

    async def close(self) -> None:
        return None


@pytest.fixture(autouse=True)
def stub_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guarded, "DefaultResolver", StubResolver)


def hosts(found: list[Any]) -> list[str]:
    return [entry["host"] for entry in found]


async def test_blocked_addresses_of_a_name_are_dropped_and_the_allowed_ones_kept_in_order() -> None:
    resolver = guarded.GuardedResolver(AddressPolicy())
    assert hosts(await resolver.resolve("mixed.test", 443, socket.AF_UNSPEC)) == ["93.184.216.34", "2606:2800:220:1::1"]
    await resolver.close()


async def test_a_name_with_only_blocked_addresses_is_refused_with_the_first_reason() -> None:
    resolver = guarded.GuardedResolver(AddressPolicy(block_private=True))
    with pytest.raises(guarded.BlockedDestination) as caught:
        await resolver.resolve("metadata.test", 80, socket.AF_UNSPEC)
    assert caught.value.reason == "cloud-metadata"


async def test_allowing_ipv4_loopback_keeps_ipv6_loopback_blocked() -> None:
    resolver = guarded.GuardedResolver(AddressPolicy(allow=parse_cidrs("127.0.0.0/8", source="test")))
    assert hosts(await resolver.resolve("local.test", 80, socket.AF_UNSPEC)) == ["127.0.0.1"]
