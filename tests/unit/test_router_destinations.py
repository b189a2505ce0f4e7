"""The url-input destination guard: the pure address policy, literal hosts and its BUNDLESERVE_URL_* configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundleserve.api.errors import InvalidRequest
from bundleserve.edge.config import ConfigError
from bundleserve.outbound.connector import check_literal_host
from bundleserve.outbound.destinations import AddressPolicy, parse_cidrs
from bundleserve.router.settings import build_settings

DEFAULT = AddressPolicy()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "cloud-metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "reserved"),
        ("2001:db8::1", "reserved"),
        ("::7f00:1", "reserved"),  # IPv4-compatible form of 127.0.0.1
        # IPv4 embedded in IPv6 is judged as the IPv4 address it stands for.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud-metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud-metadata"),  # NAT64 of 169.254.169.254
        # Issue 17 (finding 3): private ranges are refused by default, as the CRD text says ...
        ("10.1.2.3", "private"),
        ("172.16.0.5", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd00::5", "private"),
        ("::ffff:10.0.0.1", "private"),
        # ... and metadata services outside 169.254/16 are refused as such.
        ("fd00:ec2::254", "cloud-metadata"),
        ("fd00:ec2::23", "cloud-metadata"),
        ("100.100.100.200", "cloud-metadata"),
        ("::ffff:100.100.100.200", "cloud-metadata"),
        ("168.63.129.16", "cloud-metadata"),
        ("fd20:ce::254", "cloud-metadata"),
        ("169.254.170.2", "cloud-metadata"),
    ],
)
def test_default_policy_refuses_each_class(address: str, reason: str) -> None:
    assert DEFAULT.refusal(address) == reason


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "::ffff:8.8.8.8"])
def test_default_policy_allows_public(address: str) -> None:
    assert DEFAULT.refusal(address) is None


@pytest.mark.parametrize(
    "address", ["10.1.2.3", "172.31.255.1", "192.168.0.1", "100.64.0.1", "fd12::1", "::ffff:10.0.0.1"]
)
def test_private_ranges_can_be_opened(address: str) -> None:
    assert AddressPolicy(block_private=False).refusal(address) is None
    assert AddressPolicy().refusal(address) == "private"


def test_no_allow_list_or_setting_opens_a_metadata_address() -> None:
    everything = parse_cidrs("0.0.0.0/0,::/0", source="A")
    policy = AddressPolicy(allow=everything, block_private=False)
    assert policy.refusal("10.0.0.1") is None  # the allow list wins over every class ...
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:100.100.100.200"):
        assert policy.refusal(address) == "cloud-metadata"  # ... but this one


def test_added_blocks_and_allow_exemptions() -> None:
    policy = AddressPolicy(
        block=parse_cidrs("203.0.114.0/24, 2001:4860::/32", source="B"),
        allow=parse_cidrs("127.0.0.0/8,203.0.114.7", source="A"),
    )
    assert policy.refusal("203.0.114.9") == "operator-blocked"
    assert policy.refusal("2001:4860::8888") == "operator-blocked"
    assert policy.refusal("203.0.114.7") is None  # the allow list wins
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("::ffff:127.0.0.1") is None  # mapped form follows the IPv4 verdict
    assert policy.refusal("::1") == "loopback"  # allowing 127/8 does not allow IPv6 loopback


def test_parse_cidrs() -> None:
    assert [str(n) for n in parse_cidrs(" 10.0.0.0/8 ,, fe80::/10,1.2.3.4", source="X")] == [
        "10.0.0.0/8",
        "fe80::/10",
        "1.2.3.4/32",
    ]
    assert parse_cidrs("", source="X") == ()
    with pytest.raises(ValueError, match=r"X: '10\.0\.0\.0/33' is not an IP network"):
        parse_cidrs("10.0.0.0/8,10.0.0.0/33", source="X")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("127.0.0.1", "loopback address"),
        ("::ffff:169.254.169.254", "cloud-metadata address"),
        ("10.0.0.7", "private address"),
        ("2130706433", "canonical IP address"),  # the OS would read these as 127.0.0.1 when connecting
        ("127.1", "canonical IP address"),
    ],
)
def test_literal_hosts_are_checked(host: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        check_literal_host(host, DEFAULT)
    assert caught.value.status == 400 and caught.value.code == "invalid_request"


def test_literal_and_named_hosts_that_pass() -> None:
    check_literal_host("93.184.216.34", DEFAULT)
    check_literal_host("objects.example.com", DEFAULT)  # names are checked by the resolver, on every connection
    check_literal_host("127.0.0.1", AddressPolicy(allow=parse_cidrs("127.0.0.1", source="A")))


MANIFEST = """\
apiVersion: bundleserve.dev/v1alpha1
kind: Endpoint
metadata: {name: demo}
spec:
  modes: [sync]
  localOnly: true
  bundle: {python: {entrypoint: m:f}}
"""


def test_settings_read_the_guard_from_the_environment(tmp_path: Path) -> None:
    manifest = tmp_path / "demo.yaml"
    manifest.write_text(MANIFEST)
    assert build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:1", env={}).url_policy == AddressPolicy()
    env = {
        "BUNDLESERVE_URL_BLOCK": "203.0.114.0/24",
        "BUNDLESERVE_URL_ALLOW": "127.0.0.0/8",
        "BUNDLESERVE_URL_BLOCK_PRIVATE": "false",
    }
    policy = build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:1", env=env).url_policy
    assert (
        not policy.block_private and policy.refusal("127.0.0.1") is None and policy.refusal("203.0.114.1") is not None
    )
    assert policy.refusal("10.0.0.1") is None
    unset = build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:1", env={}).url_policy
    assert unset.block_private and unset.refusal("10.0.0.1") == "private"  # refused unless opened


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"BUNDLESERVE_URL_BLOCK": "10.0.0.0/8,not-a-cidr"},
            "BUNDLESERVE_URL_BLOCK: 'not-a-cidr' is not an IP network",
        ),
        ({"BUNDLESERVE_URL_ALLOW": "127.0.0.0/40"}, "BUNDLESERVE_URL_ALLOW: '127.0.0.0/40' is not an IP network"),
        ({"BUNDLESERVE_URL_BLOCK_PRIVATE": "sometimes"}, "BUNDLESERVE_URL_BLOCK_PRIVATE must be true or false"),
    ],
)
def test_bad_guard_configuration_fails_the_start(tmp_path: Path, env: dict[str, str], message: str) -> None:
    manifest = tmp_path / "demo.yaml"
    manifest.write_text(MANIFEST)
    with pytest.raises(ConfigError, match=message):
        build_settings(endpoint_file=manifest, model_url="http://127.0.0.1:1", env=env)
