"""API keys: Bearer and Basic-with-key-as-username are accepted; anything else is refused."""

from __future__ import annotations

import base64

import pytest

from bundleserve.edge.auth import ApiKeys, presented_key


def basic(username: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


KEYS = ApiKeys(["key-one", "key-two"])


@pytest.mark.parametrize("header", ["Bearer key-one", "bearer key-two", basic("key-one"), "  Bearer   key-two  "])
def test_accepted(header: str) -> None:
    assert KEYS.allows(header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer key-three",
        "Bearer key-on",
        basic("key-one", "secret"),
        basic("nope"),
        "Basic !!!",
        "Token key-one",
    ],
)
def test_refused(header: str | None) -> None:
    assert not KEYS.allows(header)


def test_presented_key_extracts_the_basic_username() -> None:
    assert presented_key(basic("abc")) == b"abc"


def test_an_empty_key_set_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        ApiKeys([])
