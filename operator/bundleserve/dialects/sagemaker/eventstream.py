"""The `application/vnd.amazon.eventstream` encoder for InvokeEndpointWithResponseStream.

Only what the SageMaker Runtime response stream needs: `PayloadPart` event frames and the two exception frames
(`ModelStreamError`, `InternalStreamFailure`). Every header is a string header (type 7); every frame carries its own
prelude CRC and message CRC (zlib CRC-32), which AWS SDKs verify before decoding anything. Frame boundaries carry no
meaning for the client (it re-splits the bytes itself), so the router may forward model chunks as they arrive.
"""

from __future__ import annotations

import json
import struct
import zlib
from enum import StrEnum

CONTENT_TYPE = "application/vnd.amazon.eventstream"

# Limits of the format (botocore refuses larger frames); a model chunk above the payload limit is split.
MAX_HEADERS_BYTES = 128 * 1024
MAX_PAYLOAD_BYTES = 24 * 1024 * 1024

_STRING_HEADER = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
_OCTET_STREAM = "application/octet-stream"  # the Rust SDK rejects PayloadPart frames of any other content type


class StreamErrorCode(StrEnum):
    """`ErrorCode` of a ModelStreamError frame (the values the service documents)."""

    MODEL_INVOCATION_TIME_EXCEEDED = "ModelInvocationTimeExceeded"
    STREAM_BROKEN = "StreamBroken"


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
    if len(raw_name) > 255 or len(raw_value) > 0xFFFF:
        raise ValueError(f"event-stream header {name!r} too long")
    return bytes([len(raw_name)]) + raw_name + bytes([_STRING_HEADER]) + struct.pack(">H", len(raw_value)) + raw_value


def encode_frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One event-stream message: prelude (total and header length) + prelude CRC + headers + payload + message CRC."""
    encoded = b"".join(_header(name, value) for name, value in headers)
    if len(encoded) > MAX_HEADERS_BYTES:
        raise ValueError("event-stream headers exceed 128 KiB")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError("event-stream payload exceeds 24 MiB")
    prelude = _PRELUDE.pack(len(encoded) + len(payload) + 16, len(encoded))
    message = prelude + _CRC.pack(zlib.crc32(prelude)) + encoded + payload
    return message + _CRC.pack(zlib.crc32(message))


def payload_part(data: bytes) -> bytes:
    """The frames of one model chunk: usually one `PayloadPart` event; more when the chunk exceeds the frame limit."""
    headers = [(":event-type", "PayloadPart"), (":content-type", _OCTET_STREAM), (":message-type", "event")]
    if len(data) <= MAX_PAYLOAD_BYTES:
        return encode_frame(headers, data)
    return b"".join(
        encode_frame(headers, data[start : start + MAX_PAYLOAD_BYTES])
        for start in range(0, len(data), MAX_PAYLOAD_BYTES)
    )


def _exception(kind: str, message: str, error_code: str | None) -> bytes:
    body: dict[str, str] = {"Message": message}
    if error_code is not None:
        body["ErrorCode"] = error_code
    headers = [(":exception-type", kind), (":content-type", "application/json"), (":message-type", "exception")]
    return encode_frame(headers, json.dumps(body).encode("utf-8"))


def model_stream_error(message: str, error_code: StreamErrorCode = StreamErrorCode.STREAM_BROKEN) -> bytes:
    """The last frame of a stream whose model failed after the first chunk (botocore raises ModelStreamError)."""
    return _exception("ModelStreamError", message, error_code.value)


def internal_stream_failure(message: str) -> bytes:
    """The last frame of a stream that broke on our side (botocore raises InternalStreamFailure)."""
    return _exception("InternalStreamFailure", message, None)
