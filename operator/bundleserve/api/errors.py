"""The one error shape of the native API: `{"error": {"code": ..., "message": ...}}` with an honest HTTP status.

Raise a subclass of `ApiError` anywhere in a request path; the HTTP edge turns it into the documented body.
"""

from __future__ import annotations

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
