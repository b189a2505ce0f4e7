"""Namespace-scoped API keys and per-Endpoint gateway keys (api/credentials.py), issue 17 finding 1."""

from __future__ import annotations

import pytest

from bundleserve.api.credentials import KeysFile, KeysFileError

MASTER = """
# team keys
k-a   team-a
k-ab  team-a,team-b   # shared by two teams
k-admin
"""


def test_scopes_are_read_per_line() -> None:
    keys = KeysFile.parse(MASTER)
    assert keys.namespaces_of(b"k-a") == frozenset({"team-a"})
    assert keys.namespaces_of(b"k-ab") == frozenset({"team-a", "team-b"})
    assert keys.namespaces_of(b"k-admin") is None  # cluster-wide
    assert keys.namespaces_of(b"nope") == frozenset()


def test_a_routers_file_never_holds_a_cluster_wide_key_nor_another_namespaces_key() -> None:
    keys = KeysFile.parse(MASTER)
    lines = keys.router_file("team-b", "echo").splitlines()
    assert lines[0] == keys.gateway_key("team-b", "echo")
    assert sorted(lines[1:]) == ["k-ab"]
    assert "k-admin" not in lines and "k-a" not in lines


def test_gateway_keys_differ_per_endpoint_and_change_with_the_master_file() -> None:
    keys = KeysFile.parse(MASTER)
    one = keys.gateway_key("team-a", "echo")
    assert one != keys.gateway_key("team-b", "echo")
    assert one != keys.gateway_key("team-a", "echo2")
    assert one == KeysFile.parse(MASTER).gateway_key("team-a", "echo")  # operator and gateway agree
    assert one != KeysFile.parse(MASTER + "k-new team-c\n").gateway_key("team-a", "echo")
    assert "k-a" not in one and one.startswith("bsg_")


@pytest.mark.parametrize(
    "line", ["k Team-A", "k ,,", "k a b", "k ns/x", "k a.b"], ids=["upper", "empty", "three", "slash", "dot"]
)
def test_a_malformed_line_is_refused_naming_the_line_not_the_key(line: str) -> None:
    with pytest.raises(KeysFileError, match="line 2") as error:
        KeysFile.parse(f"ok\n{line}\n")
    assert "k " not in str(error.value)
