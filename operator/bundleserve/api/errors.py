"""The one error shape of the native API: `{"error": {"code": ..., "message": ...}}` with an honest HTTP status.

Raise a subclass of `ApiError` anywhere in a request path; the HTTP edge turns it into the documented body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar


class ApiError(Exception):
    """Base of every error a client may see. `status` is the HTTP status, `code` a stable machine-readable name."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update(self.details)
        return {"error": error}


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"


class UnknownVariant(InvalidRequest):
    """The request names a production variant the endpoint does not have (X-Bundleserve-Variant, or SageMaker's
    TargetVariant: rendered there as ValidationError)."""

    code = "unknown_variant"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class ModeNotServed(ApiError):
    """The endpoint exists but does not serve this invocation mode."""

    status = 400
    code = "mode_not_served"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class RequestTimeout(ApiError):
    """The client did not send its whole request within the time allowed (a trickling body: slowloris)."""

    status = 408
    code = "request_timeout"


class ModelError(ApiError):
    """The model raised or answered an error; `traceback` and the model's `status_code` travel with it."""

    status = 424
    code = "model_error"


class Overloaded(ApiError):
    status = 429
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_seconds: int = 1, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_seconds)}, **details)


class Unavailable(ApiError):
    """Not ready yet, draining, or a dependency (the queue) is down."""

    status = 503
    code = "unavailable"


class ModelNotReady(Unavailable):
    """The model has not become ready yet (loading); same native shape as Unavailable, but dialects tell it apart
    (SageMaker answers ModelNotReadyException)."""


class Timeout(ApiError):
    status = 504
    code = "timeout"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


#: Each documented code and its class (ModelNotReady shares `unavailable` with Unavailable, its base).
_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        UnknownVariant,
        Unauthorized,
        NotFound,
        ModeNotServed,
        PayloadTooLarge,
        RequestTimeout,
        ModelError,
        Overloaded,
        Unavailable,
        Timeout,
    )
}


def error_from_body(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """The inverse of `ApiError.body()`: a refusal in the native shape, as the error it was.

    For a front that handed a call to an endpoint's router (the gateway) and renders the router's refusal in its own
    dialect. `Retry-After` is kept; details (`status_code`, `traceback`, ...) travel on. An answer without the
    native body is an Unavailable for 502-504 (a proxy or load balancer in between) and an internal error otherwise.
    """
    retry_after = headers.get("Retry-After")
    kept = {"Retry-After": retry_after} if retry_after else None
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, TypeError, KeyError):
        if status in (502, 503, 504):
            return Unavailable(f"the endpoint's router is not reachable (HTTP {status})", headers=kept)
        return ApiError(f"the endpoint's router answered HTTP {status}")
    details = {key: value for key, value in error.items() if key not in ("code", "message")}
    cls = _BY_CODE.get(code)
    if cls is None:
        return ApiError(message, headers=kept, **details)
    if cls is Overloaded:
        seconds = int(retry_after) if retry_after and retry_after.isdigit() else 1
        return Overloaded(message, retry_after_seconds=seconds, **details)
    return cls(message, headers=kept, **details)
