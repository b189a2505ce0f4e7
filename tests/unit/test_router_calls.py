"""Parsing predict/stream bodies: the fast path and the validated path agree; bad bodies get clear 400s."""

from __future__ import annotations

import json

import pytest

from bundleserve.api.errors import InvalidRequest
from bundleserve.dialects.native.calls import Call, parse_call


def test_plain_args_take_the_fast_path_and_keep_their_text() -> None:
    body = b' { "args" :\n{"x": 1, "s": "\\u00e9:}"} }\n'
    assert parse_call(body, kwargs_only=True) == Call(args_json=b'{"x": 1, "s": "\\u00e9:}"}', is_object=True)


def test_the_fast_path_keeps_only_the_args_text() -> None:
    """The body is held once (issue 17): the decoded value is dropped, the text is the body's own bytes."""
    body = b'{"args": {"x": "' + b"a" * 100_000 + b'"}}'
    call = parse_call(body, kwargs_only=True)
    assert call.args is None and call.args_json == body[9:-1] and call.is_object
    assert parse_call('{"args": {"é": 1}}'.encode(), kwargs_only=True).args_json == '{"é": 1}'.encode()


def test_a_duplicated_args_key_takes_the_validated_path() -> None:
    call = parse_call(b'{"args": {"a": 1}, "args": {"b": 2}}', kwargs_only=True)
    assert call.args == {"b": 2} and call.args_json is None


def test_options_are_read() -> None:
    body = json.dumps({"url": "https://example.com/a.png", "return_pickled": True, "timeout_seconds": 2.5}).encode()
    assert parse_call(body, kwargs_only=True) == Call(None, "https://example.com/a.png", True, 2.5)


def test_runnable_images_may_take_any_json_args() -> None:
    call = parse_call(b'{"args": [1, 2]}', kwargs_only=False)
    assert call.args_json == b"[1, 2]" and not call.is_object


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
        parse_call(body, kwargs_only=True)
    assert fragment in error.value.message
