"""Turn a predict/stream body into what the model call needs (pure; the HTTP edge reads the bytes).

The common body `{"args": {...}}` takes a fast path (one json.loads); anything else is validated by the shared
pydantic `PredictRequest`, so the rules and messages are the same as on the gateway.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import PredictRequest, parse_json_body


@dataclass(slots=True)
class Call:
    """One invocation: JSON `args` or a `url` input, and its options."""

    args: Any = None
    url: str | None = None
    return_pickled: bool = False
    timeout_seconds: float | None = None
    #: The JSON text of `args` as the client sent it, when it could be cut out of the body unchanged (then `args`
    #: is None: the decoded value is not kept, so a request body is held once, as this text).
    args_json: bytes | None = None
    #: `args` is a JSON object (the keyword arguments a Python bundle needs).
    is_object: bool = False


_FAST_HEAD = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"args"[ \t\n\r]*:[ \t\n\r]*')
_FAST_TAIL = re.compile(r"[ \t\n\r]*\}[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _fast_args(body: bytes) -> Call | None:
    """`{"args": VALUE}` and nothing else: VALUE's JSON text exactly as sent (no re-encoding).

    Memory: the decoded value only proves the text is valid JSON and is dropped at once; what stays is the args text,
    cut from the body's bytes (for an ASCII body character offsets are byte offsets). Parsing is synchronous, so the
    transient copies (text, decoded value) exist for one request at a time.
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    head = _FAST_HEAD.match(text)
    if head is None:
        return None
    try:
        args, end = _DECODER.raw_decode(text, head.end())
    except (ValueError, RecursionError):  # the general path below gives the reason (too deep: 400)
        return None
    if args is None or _FAST_TAIL.fullmatch(text, end) is None:
        return None
    is_object = isinstance(args, dict)
    del args
    start = head.end()
    if text.isascii():
        del text
        args_json = body[start:end]
    else:
        args_json = text[start:end].encode()
    return Call(args_json=args_json, is_object=is_object)


def parse_request(body: bytes) -> PredictRequest:
    """The full request model from a non-empty body; InvalidRequest with a readable reason (the slow, general path)."""
    return parse_json_body(body, PredictRequest)


def parse_call(body: bytes, *, kwargs_only: bool) -> Call:
    """Parse a request body; `kwargs_only` (Python bundles) requires `args` to be an object of keyword arguments."""
    if not body:
        raise InvalidRequest("the request body is empty: send a JSON object with args or url")
    call = _fast_args(body)
    if call is None:
        request = parse_request(body)
        call = Call(
            request.args,
            request.url,
            request.return_pickled,
            request.timeout_seconds,
            is_object=isinstance(request.args, dict),
        )
    if kwargs_only and call.url is None and not call.is_object:
        raise InvalidRequest("args must be a JSON object (the keyword arguments of the model's function)")
    return call
