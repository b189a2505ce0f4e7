"""The pinned connection of the destination guard: every address aiohttp connects to comes from a resolver that
checked it, so the connection goes to exactly the address that was checked (no second lookup to rebind); the Host
header and TLS SNI still carry the URL's host name. IP-literal hosts never reach a resolver: `check_literal_host`.
"""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from bundleserve.api.errors import InvalidRequest
from bundleserve.outbound.destinations import AddressPolicy


class BlockedDestination(OSError):
    """The url's host is (or resolves to) an address the policy refuses; `reason` is the address class."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def refused(reason: str, what: str = "url") -> InvalidRequest:
    return InvalidRequest(f"{what} destination refused: {reason} address")


def check_literal_host(host: str, policy: AddressPolicy, *, what: str = "url") -> None:
    """IP-literal hosts never reach the resolver (aiohttp connects to them directly), so they are checked here.

    Numeric hosts that are not canonical addresses (`2130706433`, `127.1`) would be expanded by the OS at connect time,
    after any check: they are refused.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or host.replace(".", "").isdigit():
            raise InvalidRequest(f"{what} host must be a host name or a canonical IP address") from None
        return
    reason = policy.refusal(address)
    if reason is not None:
        raise refused(reason, what)


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver and drops refused addresses; nothing left means BlockedDestination."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner: AbstractResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        found = await self._inner.resolve(host, port, family)
        reasons = [self._policy.refusal(entry["host"]) for entry in found]
        allowed = [entry for entry, reason in zip(found, reasons, strict=True) if reason is None]
        if not allowed:
            raise BlockedDestination(next((r for r in reasons if r is not None), "blocked"))
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def guarded_connector(policy: AddressPolicy, **options: object) -> aiohttp.TCPConnector:
    """A connector that resolves through the guard (`options` go to aiohttp.TCPConnector)."""
    return aiohttp.TCPConnector(resolver=GuardedResolver(policy), **options)  # type: ignore[arg-type]
