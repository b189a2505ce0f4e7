"""Parsing predict/stream bodies straight into the one `Invocation`: the fast path and the validated path agree; bad
bodies get clear 400s."""

from __future__ import annotations

import json

import pytest

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import Invocation, encode_args
from bundleserve.dialects.native.calls import parse_invocation


def test_plain_args_take_the_fast_path_and_keep_their_text() -> None:
    body = b' { "args" :\n{"x": 1, "s": "\\u00e9:}"} }\n'
    assert parse_invocation(body, kwargs_only=True) == Invocation(body=b'{"x": 1, "s": "\\u00e9:}"}')


def test_the_fast_path_keeps_only_the_args_text() -> None:
    """The body is held once (issue 17): the decoded value is dropped, the text is the body's own bytes."""
    body = b'{"args": {"x": "' + b"a" * 100_000 + b'"}}'
    assert parse_invocation(body, kwargs_only=True).body == body[9:-1]
    assert parse_invocation('{"args": {"é": 1}}'.encode(), kwargs_only=True).body == '{"é": 1}'.encode()


def test_a_duplicated_args_key_takes_the_validated_path() -> None:
    invocation = parse_invocation(b'{"args": {"a": 1}, "args": {"b": 2}}', kwargs_only=True)
    assert invocation.body == encode_args({"b": 2})


def test_options_are_read() -> None:
    body = json.dumps({"url": "https://example.com/a.png", "return_pickled": True, "timeout_seconds": 2.5}).encode()
    assert parse_invocation(body, kwargs_only=True) == Invocation(
        body=b"", url="https://example.com/a.png", return_pickled=True, timeout_seconds=2.5
    )


def test_the_idempotency_key_names_the_call_across_retries() -> None:
    invocation = parse_invocation(b'{"args": {}}', kwargs_only=True, idempotency="k-1")
    assert invocation.idempotency_key is not None and "k-1" in invocation.idempotency_key
    assert parse_invocation(b'{"args": {}}', kwargs_only=True).idempotency_key is None


def test_runnable_images_may_take_any_json_args() -> None:
    assert parse_invocation(b'{"args": [1, 2]}', kwargs_only=False).body == b"[1, 2]"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"\xff\xfe", "not valid JSON"),
        (b'"text"', "JSON object"),
        (b'{"args": null}', "exactly one"),
        (b'{"args": {}, "url": "http://x"}', "exactly one"),
        (b'{"args": 3}', "keyword arguments"),
        (b'{"args": {}, "timeout_seconds": -1}', "timeout_seconds"),
        (b'{"args": {}, "extra": true}', "extra"),
    ],
)
def test_bad_bodies(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_invocation(body, kwargs_only=True)
    assert fragment in error.value.message
