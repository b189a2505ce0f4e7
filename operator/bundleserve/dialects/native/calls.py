"""The native dialect's parse: a predict/stream body straight into the one request type, `api.invocation.Invocation`
(pure; the HTTP edge reads the bytes).

The common body `{"args": {...}}` takes a fast path (one json.loads, the args' JSON text kept as the client sent it);
anything else is validated by the shared pydantic `PredictRequest`, so the rules and messages are the same as on the
gateway.
"""

from __future__ import annotations

import json
import re

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import (
    JSON_CONTENT_TYPE,
    Invocation,
    PredictRequest,
    encode_args,
    idempotency_key,
    parse_json_body,
)

_FAST_HEAD = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"args"[ \t\n\r]*:[ \t\n\r]*')
_FAST_TAIL = re.compile(r"[ \t\n\r]*\}[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _fast_args(body: bytes) -> tuple[bytes, bool] | None:
    """`{"args": VALUE}` and nothing else: VALUE's JSON text exactly as sent (no re-encoding), and whether VALUE is
    a JSON object.

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
    return args_json, is_object


def parse_request(body: bytes) -> PredictRequest:
    """The full request model from a non-empty body; InvalidRequest with a readable reason (the slow, general path)."""
    return parse_json_body(body, PredictRequest)


def parse_invocation(body: bytes, *, kwargs_only: bool, idempotency: str | None = None) -> Invocation:
    """A predict/stream body as the core's invocation: the JSON `args` (keyword arguments for a Python bundle), or a
    `url` input, and its options. `kwargs_only` (Python bundles) requires `args` to be an object of keyword
    arguments; `idempotency`: the client's `Idempotency-Key` header (its retries of this call run the model once).
    InvalidRequest with a readable reason for a body that is refused."""
    if not body:
        raise InvalidRequest("the request body is empty: send a JSON object with args or url")
    fast = _fast_args(body)
    if fast is not None:
        args_json, is_object = fast
        if kwargs_only and not is_object:
            raise InvalidRequest(_KWARGS_ONLY)
        key = idempotency_key("native", idempotency)  # after the body's checks, as before: their errors first
        return Invocation(body=args_json, content_type=JSON_CONTENT_TYPE, idempotency_key=key)
    request = parse_request(body)
    if kwargs_only and request.url is None and not isinstance(request.args, dict):
        raise InvalidRequest(_KWARGS_ONLY)
    return Invocation(
        body=b"" if request.url is not None else encode_args(request.args),
        content_type=JSON_CONTENT_TYPE,
        url=request.url,
        return_pickled=request.return_pickled,
        timeout_seconds=request.timeout_seconds,
        idempotency_key=idempotency_key("native", idempotency),
    )


_KWARGS_ONLY = "args must be a JSON object (the keyword arguments of the model's function)"
