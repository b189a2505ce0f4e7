"""The internal hop: one parsed invocation handed from a front (the gateway) to the endpoint's router, over HTTP.

A dialect served at the gateway (SageMaker, Launch, OpenAI) parses, gates, reads and verifies a call once, there; the
router must then run exactly that `api.invocation.Invocation`, not a request it parses and checks again. This module
is the wire form of that hand-over, written by the gateway (`encode_headers`) and read by the router's hop routes
(`decode`), both pure:

    POST /internal/v1/endpoints/{name}/invoke          the reply:  200, the model's bytes and Content-Type
    POST /internal/v1/endpoints/{name}/invoke-stream   the reply:  200, `application/vnd.bundleserve.hop-stream` frames

- the body is `Invocation.body` exactly (JSON keyword arguments, or raw bytes), with `Content-Type` its type;
- `Authorization` is the credential the gateway holds for that endpoint (the endpoint's gateway key; none when keys
  are off): the caller's own identity was established at the gateway (API key or SigV4 signature), and the router's
  gate checks the gateway's key like any other;
- every other field of the invocation that is not at its default travels in one header, `X-Bundleserve-Invocation`,
  as ASCII JSON (absent for the common call: keyword arguments and nothing else);
- the router renders a refusal in the native error shape (`api.errors.ApiError.body()`), which the gateway turns back
  into the same error class (`api.errors.error_from_body`) and renders in the client's dialect;
- a stream is a sequence of frames, `D` + 4-byte big-endian length + a chunk's data, and at most one final `E` frame
  carrying a failure after the first chunk as its native error body (status included), so the exact class (a
  ModelError, a Timeout) reaches the dialect, which renders its own mid-stream failure.

Errors: `HopError` (an InvalidRequest) for a header the gateway would never write; `FrameError` for a broken stream.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bundleserve.api.errors import ApiError, InvalidRequest, ModelError, ModelNotReady, error_from_body
from bundleserve.api.invocation import JSON_CONTENT_TYPE, Invocation, StreamChunk

PREDICT_PATH = "/internal/v1/endpoints/{name}/invoke"
STREAM_PATH = "/internal/v1/endpoints/{name}/invoke-stream"
#: The fields of an invocation besides its body and content type (absent: every one at its default).
INVOCATION_HEADER = "X-Bundleserve-Invocation"
INVOCATION_HEADER_RAW = INVOCATION_HEADER.lower().encode()  # as a fast edge's raw header table keys it
STREAM_CONTENT_TYPE = "application/vnd.bundleserve.hop-stream"
#: On a refusal: the error's class when the native code alone does not name it (a ModelNotReady is `unavailable`
#: in the native shape, but the SageMaker dialect answers it differently).
ERROR_KIND_HEADER = "X-Bundleserve-Error-Kind"
_KINDS: dict[str, type[ApiError]] = {"model_not_ready": ModelNotReady}

_FIELDS: tuple[str, ...] = ("raw", "url", "return_pickled", "timeout_seconds", "accept", "custom_attributes")
_FIELDS += ("request_id", "url_body", "idempotency_key")
_DEFAULTS = Invocation()
_FIELD_DEFAULTS = tuple((name, getattr(_DEFAULTS, name)) for name in _FIELDS)
_FRAME_HEAD = struct.Struct(">cI")
DATA, FAILURE = b"D", b"E"
#: A frame larger than this is refused by the reader (a chunk is bounded by the endpoint's limit, far below it).
MAX_FRAME = 1 << 30


class HopError(InvalidRequest):
    """An internal-hop header that does not describe an invocation (only a broken or foreign client sends one)."""


class FrameError(ModelError):
    """The router's hop stream broke its framing (a bug or a cut connection): the stream fails as a model error."""


def encode_headers(inv: Invocation) -> dict[str, str]:
    """The request headers of an invocation's hop (besides Authorization): its content type and, when any field is
    not at its default, the one JSON header (ASCII, so any string survives the HTTP header)."""
    headers = {"Content-Type": inv.content_type or JSON_CONTENT_TYPE}
    fields = {}
    for name, default in _FIELD_DEFAULTS:
        value = getattr(inv, name)
        if value != default:
            fields[name] = value
    if not inv.content_type:  # "no declared type" (SageMaker InputLocation) differs from JSON: said explicitly
        fields["content_type"] = ""
    if fields:
        headers[INVOCATION_HEADER] = json.dumps(fields, separators=(",", ":"))  # ensure_ascii: header-safe
    return headers


def decode(content_type: str | None, fields_header: str | None, body: bytes) -> Invocation:
    """The invocation the gateway encoded (HopError for a header it would not write)."""
    if not fields_header:
        return Invocation(body=body, content_type=content_type or JSON_CONTENT_TYPE)
    try:
        fields: Any = json.loads(fields_header)
    except ValueError:
        raise HopError(f"{INVOCATION_HEADER} is not JSON") from None
    if not isinstance(fields, dict) or not fields.keys() <= {*_FIELDS, "content_type"}:
        raise HopError(f"{INVOCATION_HEADER} names fields an invocation does not have")
    fields.setdefault("content_type", content_type or JSON_CONTENT_TYPE)
    try:
        return _typed(Invocation(body=body, **fields))
    except TypeError as error:
        raise HopError(f"{INVOCATION_HEADER}: {error}") from None


def _typed(inv: Invocation) -> Invocation:
    """Each field of the right type (a JSON header could carry anything)."""
    flags = (inv.raw, inv.return_pickled, inv.url_body)
    texts = (inv.url, inv.accept, inv.custom_attributes, inv.request_id, inv.idempotency_key)
    timeout = inv.timeout_seconds
    typed = isinstance(inv.content_type, str) and all(isinstance(flag, bool) for flag in flags)
    if not typed or not all(t is None or isinstance(t, str) for t in texts):
        raise HopError(f"{INVOCATION_HEADER} has a field of the wrong type")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise HopError(f"{INVOCATION_HEADER}: timeout_seconds must be a positive number")
    if inv.url is not None and not inv.url.startswith(("http://", "https://")):
        # no more than the public sync routes allow: an s3:// input location is an async-only SageMaker feature
        raise HopError(f"{INVOCATION_HEADER}: a call's url input must be http(s)")
    return inv


def error_headers(error: ApiError) -> dict[str, str]:
    """The headers of a refusal on the hop besides the error's own (`ERROR_KIND_HEADER` when needed)."""
    kind = _kind_of(error)
    return {} if kind is None else {ERROR_KIND_HEADER: kind}


def error_of(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """The router's refusal as the exact error class it raised (`api.errors.error_from_body`, plus the kind)."""
    error = error_from_body(status, body, headers)
    cls = _KINDS.get(headers.get(ERROR_KIND_HEADER, ""))
    if cls is None or type(error) not in cls.__bases__:  # the kind refines the class the code named, nothing else
        return error
    return cls(error.message, headers=dict(error.headers) or None, **error.details)


def _kind_of(error: ApiError) -> str | None:
    return next((kind for kind, cls in _KINDS.items() if type(error) is cls), None)


def data_frame(chunk: bytes) -> bytes:
    return _FRAME_HEAD.pack(DATA, len(chunk)) + chunk


def failure_frame(error: ApiError) -> bytes:
    document = error.body()
    document["status"] = error.status
    kind = _kind_of(error)
    if kind is not None:
        document["kind"] = kind
    payload = json.dumps(document, separators=(",", ":")).encode()
    return _FRAME_HEAD.pack(FAILURE, len(payload)) + payload


@dataclass(slots=True)
class FrameReader:
    """Incremental reader of a hop stream: feed bytes as they arrive, take complete chunks; a failure frame raises
    its error after the chunks before it were taken."""

    buffer: bytes = b""

    def feed(self, data: bytes) -> list[StreamChunk | ApiError]:
        buffer = self.buffer + data if self.buffer else data
        out: list[StreamChunk | ApiError] = []
        offset = 0
        size = _FRAME_HEAD.size
        while len(buffer) - offset >= size:
            kind, length = _FRAME_HEAD.unpack_from(buffer, offset)
            if kind not in (DATA, FAILURE) or length > MAX_FRAME:
                raise FrameError("the router's stream is not in the hop's framing", status_code=None, traceback=None)
            end = offset + size + length
            if len(buffer) < end:
                break
            payload = buffer[offset + size : end]
            out.append(StreamChunk(payload) if kind == DATA else _failure(payload))
            offset = end
        self.buffer = buffer[offset:]
        return out

    @property
    def pending(self) -> bool:
        """Bytes of an incomplete frame are held (at the end of the stream: it was cut)."""
        return bool(self.buffer)


def _failure(payload: bytes) -> ApiError:
    try:
        document = json.loads(payload)
        status, kind = int(document.get("status", 424)), str(document.get("kind", ""))
    except (ValueError, TypeError, AttributeError):
        status, kind = 424, ""
    return error_of(status, payload, {ERROR_KIND_HEADER: kind} if kind else {})
