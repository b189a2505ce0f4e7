"""The one rendering of errors at every HTTP edge: `{"error": {"code", "message", ...}}` with its status.

`error_answer` is the server-independent form (the router's fast edge writes it itself); `error_response` the aiohttp
one; `render_errors` the middleware that turns any `ApiError` (and aiohttp's own 404/405/400) into that shape on the
router and on the gateway alike, so a client cannot tell which of them refused. `too_large` is the one refusal of a
body over an endpoint's `maxPayloadBytes`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from bundleserve.api.errors import ApiError, InvalidRequest, NotFound, PayloadTooLarge
from bundleserve.edge.exchange import Reply

log = logging.getLogger(__name__)

_JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response, independent of the HTTP server that sends it (aiohttp or a fast edge)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = _JSON_TYPE


def error_answer(error: ApiError) -> Answer:
    """The one native rendering of an error: `{"error": {"code", "message", ...}}` with its status and headers."""
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    return Answer(error.status, body, error.headers)


def as_response(answer: Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)
    for name, value in answer.headers.items():
        response.headers[name] = value
    return response


def as_reply(answer: Answer) -> Reply:
    """An answer as the dialect seam's `Reply` (`edge.exchange`), for a seam operation in the native shape."""
    return Reply(answer.status, {**answer.headers, "Content-Type": answer.content_type}, answer.body)


def error_response(error: ApiError) -> web.Response:
    return as_response(error_answer(error))


def too_large(length: int | None, limit: int) -> PayloadTooLarge:
    """The one refusal of a request body over the endpoint's `maxPayloadBytes` (every HTTP edge)."""
    size = "" if length is None else f" ({length} bytes)"
    return PayloadTooLarge(f"the request body{size} is larger than the limit of {limit} bytes")


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class HttpError(ApiError):
    """Any other aiohttp error (bad request line, ...) in the one error shape; its status is set per instance."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]


@web.middleware
async def render_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The single edge that turns errors into the documented JSON shape (invocation routes render their own)."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error)
    except web.HTTPException as error:
        return _http_error(request, error)
    except Exception:  # a bug of ours: log it, answer in the documented shape
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(ApiError("internal error"))


def _http_error(request: web.Request, error: web.HTTPException) -> web.StreamResponse:
    """aiohttp's own errors (unknown route, wrong method, ...) in the one shape; redirects pass through."""
    if error.status < 400:
        raise error
    api_error: ApiError
    if error.status == 404:
        api_error = NotFound(f"no route {request.method} {request.path}")
    elif error.status == 405:
        api_error = MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
    elif error.status == 400:
        api_error = InvalidRequest(error.reason or "bad request")
    else:
        api_error = HttpError(error.status, error.reason or "request failed")
    response = error_response(api_error)
    if error.status == 405 and "Allow" in error.headers:
        response.headers["Allow"] = error.headers["Allow"]
    return response
