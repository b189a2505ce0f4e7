"""Which addresses a `url` input may reach: a pure policy, so the fetcher can check every address it connects to.

Blocked by default: cloud metadata services (also those outside 169.254/16: AWS's `fd00:ec2::/64`, Alibaba's
100.100.100.200, Azure's 168.63.129.16, GCE's IPv6 `fd20:ce::254`), loopback, link-local, unspecified, multicast,
reserved and private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7: pod, service and node networks live
there), in IPv4 and IPv6 (IPv4 embedded in IPv6 is judged as the IPv4 address). This is what the CRD text promises
("private and loopback addresses are refused in a cluster"); `block_private=False` (BUNDLESERVE_URL_BLOCK_PRIVATE=
false) opens the private ranges again. Operator-added CIDRs extend the block list; allowed CIDRs (an in-cluster object
store) are exempt from every block except the metadata addresses, which nothing opens.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud metadata and host-agent addresses: refused always, even inside an allowed CIDR (their answers are the node's
#: or the cloud account's credentials). 169.254.169.254 (AWS, GCP, Azure, OpenStack, ...) is link-local too.
METADATA: tuple[str, ...] = (
    "169.254.169.254/32",
    "169.254.170.2/32",  # AWS ECS task metadata and credentials
    "169.254.170.23/32",  # AWS EKS pod identity agent
    "169.254.0.23/32",  # Tencent Cloud
    "100.100.100.200/32",  # Alibaba Cloud
    "168.63.129.16/32",  # Azure WireServer
    "192.0.0.192/32",  # Oracle Cloud (older instances)
    "fd00:ec2::/64",  # AWS IPv6: IMDS fd00:ec2::254, DNS ::253, EKS pod identity ::23
    "fd20:ce::254/128",  # GCE IPv6 metadata
)
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
#: Refused unless `block_private` is off (BUNDLESERVE_URL_BLOCK_PRIVATE=false).
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
    block_private: bool = True

    def refusal(self, address: IPAddress | str) -> str | None:
        """None when `address` may be fetched from, else the reason (an address class such as 'link-local')."""
        ip = unwrap(ipaddress.ip_address(address) if isinstance(address, str) else address)
        if _contains(_METADATA_NETWORKS, ip):
            return "cloud-metadata"
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
_METADATA_NETWORKS = _networks(METADATA)
