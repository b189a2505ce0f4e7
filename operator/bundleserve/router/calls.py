"""Turn a predict/stream body into what the model call needs (pure; the HTTP edge reads the bytes).

The common body `{"args": {...}}` takes a fast path (one json.loads); anything else is validated by the shared
pydantic `PredictRequest`, so the rules and messages are the same as on the gateway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import PredictRequest
from bundleserve.api.manifest import format_validation_error


@dataclass(slots=True)
class Call:
    """One invocation: JSON `args` or a `url` input, and its options."""

    args: Any = None
    url: str | None = None
    return_pickled: bool = False
    timeout_seconds: float | None = None


def parse_call(body: bytes, *, kwargs_only: bool) -> Call:
    """Parse a request body; `kwargs_only` (Python bundles) requires `args` to be an object of keyword arguments."""
    if not body:
        raise InvalidRequest("the request body is empty: send a JSON object with args or url")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    if type(document) is dict and len(document) == 1 and document.get("args") is not None:
        call = Call(args=document["args"])
    else:
        if not isinstance(document, dict):
            raise InvalidRequest("the request body must be a JSON object with args or url")
        try:
            request = PredictRequest.model_validate(document)
        except ValidationError as error:
            raise InvalidRequest(format_validation_error(error)) from None
        call = Call(request.args, request.url, request.return_pickled, request.timeout_seconds)
    if kwargs_only and call.url is None and not isinstance(call.args, dict):
        raise InvalidRequest("args must be a JSON object (the keyword arguments of the model's function)")
    return call
