"""The native dialect's parse: a predict/stream body straight into the one request type, `api.invocation.Invocation`
(pure; the HTTP edge reads the bytes).

The common body `{"args": {...}}` takes a fast path (`api.invocation.args_only`: one decode, the args' JSON text
kept as the client sent it); anything else is validated by the shared pydantic `PredictRequest`, so the rules and messages are the same as on the
gateway.
"""

from __future__ import annotations

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import (
    JSON_CONTENT_TYPE,
    Invocation,
    PredictRequest,
    args_only,
    encode_args,
    idempotency_key,
    parse_json_body,
)


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
    fast = args_only(body)
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
