"""Bodies in and out of the runtime: request decoding, JSON/pickle results, server-sent event frames.

The rules (docs/contracts.md): a JSON object body becomes keyword arguments; a raw body (header
`X-Bundleserve-Input: raw`, a non-JSON content type, or JSON that is not an object) arrives as bytes in the first
positional argument. Results are JSON unless `X-Bundleserve-Return: pickle` asks for cloudpickle.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from bundleserve.api.invocation import INPUT_HEADER, PICKLE_CONTENT_TYPE, RETURN_HEADER
from bundleserve.bundle.errors import NotSerializable, describe

__all__ = ["INPUT_HEADER", "PICKLE_CONTENT_TYPE", "RETURN_HEADER"]  # re-exported for the runtime's modules

JSON_CONTENT_TYPE = "application/json"
EVENT_STREAM_CONTENT_TYPE = "text/event-stream"


@dataclass(frozen=True)
class Inputs:
    """What the callable receives from one request: keyword arguments, or the raw body as its first argument."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    body: bytes | None = None


def is_json_content_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_CONTENT_TYPE or (media.startswith("application/") and media.endswith("+json"))


def decode_inputs(body: bytes, *, content_type: str, raw: bool) -> Inputs:
    if raw:
        return Inputs(body=body)
    if not body.strip():
        return Inputs()
    if not is_json_content_type(content_type):
        return Inputs(body=body)
    try:
        document = json.loads(body)
    except ValueError:
        return Inputs(body=body)
    if isinstance(document, dict):
        return Inputs(kwargs=document)
    return Inputs(body=body)


def _json_fallback(value: Any) -> Any:
    """Common model outputs that are JSON in spirit: numpy arrays/scalars (`tolist`) and dataclass instances."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    to_list = getattr(value, "tolist", None)
    if callable(to_list):
        return to_list()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode_json(value: Any, *, what: str = "result") -> bytes:
    """Strict JSON (no NaN/Infinity): a client in any language must be able to parse it."""
    try:
        text = json.dumps(value, default=_json_fallback, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as error:
        raise NotSerializable(
            f"the {what} ({type(value).__name__}) is not JSON-serialisable: {describe(error)}; return JSON types "
            "(dict, list, str, int, float, bool, None) or ask for a pickled result (return_pickled)",
            type=type(error).__name__,
        ) from None
    return text.encode("utf-8")


def encode_pickle(value: Any) -> bytes:
    try:
        data: bytes = cloudpickle.dumps(value)
    except Exception as error:
        raise NotSerializable(
            f"the result ({type(value).__name__}) cannot be pickled: {describe(error)}", type=type(error).__name__
        ) from None
    return data


def sse_event(data: bytes, *, event: str | None = None) -> bytes:
    """One server-sent event. `data` is compact JSON, so it holds no newline and fits one `data:` line."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + data + b"\n\n"
