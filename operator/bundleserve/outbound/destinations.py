"""Which addresses a `url` input may reach: a pure policy, so the fetcher can check every address it connects to.

Blocked by default: loopback, link-local (cloud metadata services live at 169.254.169.254), unspecified,
multicast and reserved ranges, in IPv4 and IPv6 (IPv4 embedded in IPv6 is judged as the IPv4 address).
Private ranges stay reachable by default because in-cluster object stores live there; `block_private` refuses them.
Operator-added CIDRs extend the block list; allowed CIDRs are exempt from every block (the allow list wins).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Address classes refused by default, by the name a refusal reports.
DEFAULT_BLOCKED: dict[str, tuple[str, ...]] = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "link-local": ("169.254.0.0/16", "fe80::/10"),
    "unspecified": ("0.0.0.0/8", "::/128"),
    "multicast": ("224.0.0.0/4", "ff00::/8"),
    "reserved": (
        "240.0.0.0/4",  # future use, and the limited broadcast 255.255.255.255
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1..3)
        "198.51.100.0/24",
        "203.0.113.0/24",
        "198.18.0.0/15",  # benchmarking
        "::/96",  # deprecated IPv4-compatible IPv6
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "fec0::/10",  # deprecated site-local
    ),
}
#: Refused only with `block_private` (BUNDLESERVE_URL_BLOCK_PRIVATE).
PRIVATE: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
#: IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64 well-known prefix).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_cidrs(text: str, *, source: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (a bare address means just that address); ValueError naming `source` and the bad item."""
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{source}: {item!r} is not an IP network in CIDR notation (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped or NAT64), so IPv6 cannot sneak past IPv4 blocks."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


@dataclass(frozen=True)
class AddressPolicy:
    """Decides per address; `refusal()` gives the address class to report, never the address itself."""

    block: tuple[IPNetwork, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    block_private: bool = False

    def refusal(self, address: IPAddress | str) -> str | None:
        """None when `address` may be fetched from, else the reason (an address class such as 'link-local')."""
        ip = unwrap(ipaddress.ip_address(address) if isinstance(address, str) else address)
        if _contains(self.allow, ip):
            return None
        for reason, networks in _DEFAULT_NETWORKS.items():
            if _contains(networks, ip):
                return reason
        if self.block_private and _contains(_PRIVATE_NETWORKS, ip):
            return "private"
        if _contains(self.block, ip):
            return "operator-blocked"  # BUNDLESERVE_URL_BLOCK
        return None


def _contains(networks: tuple[IPNetwork, ...], ip: IPAddress) -> bool:
    return any(ip.version == network.version and ip in network for network in networks)


_DEFAULT_NETWORKS = {reason: _networks(cidrs) for reason, cidrs in DEFAULT_BLOCKED.items()}
_PRIVATE_NETWORKS = _networks(PRIVATE)
