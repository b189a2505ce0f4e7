"""The event-stream encoder against botocore's own decoder (prelude and message CRCs, headers, payloads)."""

from __future__ import annotations

import json
import os

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from bundleserve.dialects.sagemaker import eventstream


def _decode(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, message.payload) for message in buffer]


def test_known_good_frame_matches_the_reference_bytes() -> None:
    frame = eventstream.payload_part(b"data: hel")
    assert len(frame) == 114
    assert frame[:12].hex() == "0000007200000059f4878596"
    assert frame[-4:].hex() == "062654e0"


@pytest.mark.parametrize("size", [0, 1, 9, 255, 4096, 65535, 65536, 300_000, 1024 * 1024])
def test_payload_parts_decode_with_botocore(size: int) -> None:
    payload = os.urandom(size)
    ((headers, decoded),) = _decode(eventstream.payload_part(payload))
    assert decoded == payload
    assert headers == {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }


def test_many_frames_in_one_buffer_split_anywhere() -> None:
    parts = [b"", b"a", os.urandom(1000), "é€".encode()]
    data = b"".join(eventstream.payload_part(part) for part in parts)
    buffer = EventStreamBuffer()
    decoded = []
    for start in range(0, len(data), 7):  # the client receives arbitrary TCP chunks
        buffer.add_data(data[start : start + 7])
        decoded.extend(message.payload for message in buffer)
    assert decoded == parts


def test_model_stream_error_frame() -> None:
    ((headers, payload),) = _decode(eventstream.model_stream_error("boom"))
    assert headers == {
        ":exception-type": "ModelStreamError",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert json.loads(payload) == {"Message": "boom", "ErrorCode": "StreamBroken"}
    ((_, timed_out),) = _decode(
        eventstream.model_stream_error("slow", eventstream.StreamErrorCode.MODEL_INVOCATION_TIME_EXCEEDED)
    )
    assert json.loads(timed_out)["ErrorCode"] == "ModelInvocationTimeExceeded"


def test_internal_stream_failure_frame() -> None:
    ((headers, payload),) = _decode(eventstream.internal_stream_failure("ours"))
    assert headers[":exception-type"] == "InternalStreamFailure"
    assert headers[":message-type"] == "exception"
    assert json.loads(payload) == {"Message": "ours"}


def test_a_corrupted_frame_is_refused_by_botocore() -> None:
    frame = bytearray(eventstream.payload_part(b"payload"))
    frame[-6] ^= 0xFF  # flip a payload byte: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        _decode(bytes(frame))


def test_oversized_chunks_are_split_into_frames_under_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventstream, "MAX_PAYLOAD_BYTES", 1000)
    payload = os.urandom(2500)
    decoded = _decode(eventstream.payload_part(payload))
    assert [len(part) for _, part in decoded] == [1000, 1000, 500]
    assert b"".join(part for _, part in decoded) == payload
