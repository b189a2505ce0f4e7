"""Every range of the url destination guard's blocked-address table, named one by one (issue 9: "tests that would
not notice" a CIDR removed from the table).

The expected table is written out here, independent of the code's, so dropping (or adding) a range fails a test:
the first and last address of each range are refused with the range's reason, and the table itself matches.
"""

from __future__ import annotations

import ipaddress

import pytest

# The one import of the module under test (it may move; re-point this line).
from bundleserve.outbound.destinations import DEFAULT_BLOCKED, PRIVATE, AddressPolicy

#: (CIDR, the reason a refusal reports), in the order the policy checks the classes.
BLOCKED = [
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved"),
    ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"),
    ("198.18.0.0/15", "reserved"),
    ("::/96", "reserved"),
    ("100::/64", "reserved"),
    ("2001:db8::/32", "reserved"),
    ("fec0::/10", "reserved"),
]
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]


def expected_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The first class (in table order) whose range holds the address: `::` is unspecified before it is reserved."""
    return next(reason for cidr, reason in BLOCKED if address in ipaddress.ip_network(cidr))


def edges(cidr: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    network = ipaddress.ip_network(cidr)
    return [network[0], network[-1]]


@pytest.mark.parametrize(("cidr", "reason"), BLOCKED, ids=[cidr for cidr, _ in BLOCKED])
def test_each_blocked_range_is_refused_at_both_ends(cidr: str, reason: str) -> None:
    for address in edges(cidr):
        assert AddressPolicy().refusal(address) == expected_reason(address), address
    middle = ipaddress.ip_network(cidr)[ipaddress.ip_network(cidr).num_addresses // 2]
    assert AddressPolicy().refusal(middle) == reason


@pytest.mark.parametrize(
    ("cidr", "outside"),
    [
        ("127.0.0.0/8", "128.0.0.0"),
        ("169.254.0.0/16", "169.255.0.0"),
        ("169.254.0.0/16", "169.253.255.255"),
        ("224.0.0.0/4", "223.255.255.255"),
        ("192.0.2.0/24", "192.0.3.0"),
        ("198.18.0.0/15", "198.20.0.0"),
        ("198.18.0.0/15", "198.17.255.255"),
        ("203.0.113.0/24", "203.0.114.0"),
        ("2001:db8::/32", "2001:db9::"),
        ("fe80::/10", "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ],
)
def test_the_ranges_end_where_they_should(cidr: str, outside: str) -> None:
    """An address just outside a range is not refused (a widened range would block the Internet next to it)."""
    assert ipaddress.ip_address(outside) not in ipaddress.ip_network(cidr)
    assert AddressPolicy().refusal(outside) is None


def test_the_code_blocks_exactly_the_named_ranges() -> None:
    table = [(cidr, reason) for reason, cidrs in DEFAULT_BLOCKED.items() for cidr in cidrs]
    assert sorted(table) == sorted(BLOCKED)


@pytest.mark.parametrize("cidr", PRIVATE_RANGES)
def test_each_private_range_is_refused_unless_opened(cidr: str) -> None:
    """Refused by default since issue 17 (the CRD text promised it; the code let them through)."""
    for address in edges(cidr):
        assert AddressPolicy().refusal(address) == "private"
        assert AddressPolicy(block_private=False).refusal(address) is None
    assert sorted(PRIVATE) == sorted(PRIVATE_RANGES)
