"""Request decoding, result encoding and server-sent event framing (bundleserve.bundle.serialization)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import cloudpickle
import numpy as np
import pytest

from bundleserve.bundle.errors import NotSerializable
from bundleserve.bundle.serialization import (
    Inputs,
    decode_inputs,
    encode_json,
    encode_pickle,
    is_json_content_type,
    sse_event,
)


@pytest.mark.parametrize(
    ("body", "content_type", "raw", "expected"),
    [
        (b'{"a": 1}', "application/json", False, Inputs(kwargs={"a": 1})),
        (b'{"a": 1}', "application/json; charset=utf-8", False, Inputs(kwargs={"a": 1})),
        (b'{"a": 1}', "application/vnd.api+json", False, Inputs(kwargs={"a": 1})),
        (b'{"a": 1}', "application/json", True, Inputs(body=b'{"a": 1}')),
        (b'{"a": 1}', "text/plain", False, Inputs(body=b'{"a": 1}')),
        (b'{"a": 1}', "", False, Inputs(body=b'{"a": 1}')),
        (b"[1, 2]", "application/json", False, Inputs(body=b"[1, 2]")),
        (b"{not json", "application/json", False, Inputs(body=b"{not json")),
        (b"", "application/json", False, Inputs()),
        (b"  ", "", False, Inputs()),
        (b"", "", True, Inputs(body=b"")),
        (b"5.1,3.5\n", "text/csv", False, Inputs(body=b"5.1,3.5\n")),
    ],
)
def test_decode_inputs(body: bytes, content_type: str, raw: bool, expected: Inputs) -> None:
    assert decode_inputs(body, content_type=content_type, raw=raw) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [("application/json", True), ("Application/JSON ; charset=utf-8", True), ("application/ld+json", True),
     ("text/json-ish", False), ("text/plain", False), ("", False)],
)  # fmt: skip
def test_is_json_content_type(content_type: str, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


@dataclass
class Point:
    x: int
    y: int


def test_encode_json_is_compact_utf8_and_understands_numpy_and_dataclasses() -> None:
    value = {"array": np.array([1.5, 2.0]), "scalar": np.int64(3), "point": Point(1, 2), "text": "é\nz"}
    encoded = encode_json(value)
    assert json.loads(encoded) == {"array": [1.5, 2.0], "scalar": 3, "point": {"x": 1, "y": 2}, "text": "é\nz"}
    assert b"\n" not in encoded and "é".encode() in encoded


@pytest.mark.parametrize(
    ("value", "fragment"),
    [({1, 2}, "set"), (object(), "object"), (float("nan"), "float"), (b"bytes", "bytes"), ({(1, 2): 3}, "dict")],
)
def test_unserialisable_results_get_a_clear_error(value: object, fragment: str) -> None:
    with pytest.raises(NotSerializable) as caught:
        encode_json(value)
    error = caught.value.body()["error"]
    assert error["code"] == "not_serializable" and caught.value.status == 500
    assert f"({fragment})" in error["message"] and "return_pickled" in error["message"]


def test_pickle_round_trips_what_json_cannot_carry() -> None:
    assert cloudpickle.loads(encode_pickle({1, 2})) == {1, 2}
    assert cloudpickle.loads(encode_pickle(lambda x: x + 1))(1) == 2


def test_unpicklable_results_are_not_serializable() -> None:
    with pytest.raises(NotSerializable, match="cannot be pickled"):
        encode_pickle(threading.Lock())


def test_sse_event_frames() -> None:
    assert sse_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse_event(b"{}", event="error") == b"event: error\ndata: {}\n\n"
