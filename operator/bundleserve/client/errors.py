"""The SDK's exception hierarchy, mapped from the server's one error shape `{"error": {"code", "message"}}`.

Every class is tied to the server-side class of `bundleserve.api.errors` it mirrors, so an error code and its HTTP
status are defined once (the server's side) and the client only maps them. Catch `BundleserveError` for everything
the SDK raises, `ServerError` for every error answer, or one subclass.

```
BundleserveError
├── ConnectionFailed            no HTTP answer (refused, reset, read timeout of the client)
├── WaitTimeout                 EndpointResponseFuture.get(timeout=...) ran out (also a TimeoutError)
├── ModesUnknown                the server cannot describe the endpoint and no mode was asked for
└── ServerError                 an error answer: .status_code, .code, .message, .details
    ├── InvalidRequest   400    └── ModeNotServed   400 (the endpoint does not serve that mode)
    ├── Unauthorized     401
    ├── NotFound         404
    ├── PayloadTooLarge  413
    ├── ModelError       424    .traceback, .model_status_code, .response (a FAILURE EndpointResponse)
    ├── Overloaded       429    .retry_after (seconds, from Retry-After)
    ├── Unavailable      503    .retry_after
    └── Timeout          504    (also a TimeoutError)
```
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar

from bundleserve.api import errors as server

if TYPE_CHECKING:
    from bundleserve.client.models import EndpointResponse


class BundleserveError(Exception):
    """Base of everything the SDK raises on purpose."""


class ConnectionFailed(BundleserveError):
    """The server gave no HTTP answer: connection refused or reset, or the client's own read timeout."""


class WaitTimeout(BundleserveError, TimeoutError):
    """`EndpointResponseFuture.get(timeout=...)`: the task did not finish in time (it keeps running)."""

    def __init__(self, message: str, *, task_id: str, last_status: str | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.last_status = last_status


class ModesUnknown(BundleserveError):
    """The server has no endpoint description route (a router sidecar of today): ask for a mode explicitly."""


class ServerError(BundleserveError):
    """An error answer of the native API. `api` is the server-side class whose code and status this mirrors."""

    api: ClassVar[type[server.ApiError]] = server.ApiError

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.details: dict[str, Any] = dict(details or {})
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        if not self.status_code:  # raised by the client itself (its own read timeout): no HTTP status to show
            return f"{self.message} ({self.code})"
        return f"{self.message} (HTTP {self.status_code}, {self.code})"


class InvalidRequest(ServerError):
    api: ClassVar[type[server.ApiError]] = server.InvalidRequest


class ModeNotServed(InvalidRequest):
    api: ClassVar[type[server.ApiError]] = server.ModeNotServed


class Unauthorized(ServerError):
    api: ClassVar[type[server.ApiError]] = server.Unauthorized


class NotFound(ServerError):
    api: ClassVar[type[server.ApiError]] = server.NotFound


class PayloadTooLarge(ServerError):
    api: ClassVar[type[server.ApiError]] = server.PayloadTooLarge


class ModelError(ServerError):
    """The model raised, answered an error, or crashed (then `model_status_code` is None)."""

    api: ClassVar[type[server.ApiError]] = server.ModelError

    @property
    def traceback(self) -> str | None:
        value = self.details.get("traceback")
        return value if isinstance(value, str) else None

    @property
    def model_status_code(self) -> int | None:
        value = self.details.get("status_code")
        return value if isinstance(value, int) else None

    @property
    def response(self) -> EndpointResponse:
        """The same failure in Launch's shape: `EndpointResponse(status="FAILURE", traceback=...)`."""
        from bundleserve.client.models import EndpointResponse

        return EndpointResponse(status="FAILURE", traceback=self.traceback, status_code=self.model_status_code)


class _RetryAfter(ServerError):
    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked the client to wait (`Retry-After`), None when it did not say."""
        return parse_retry_after(self.headers.get("retry-after"))


class Overloaded(_RetryAfter):
    api: ClassVar[type[server.ApiError]] = server.Overloaded


class Unavailable(_RetryAfter):
    api: ClassVar[type[server.ApiError]] = server.Unavailable


class Timeout(ServerError, TimeoutError):
    api: ClassVar[type[server.ApiError]] = server.Timeout


_BY_CODE: dict[str, type[ServerError]] = {
    cls.api.code: cls
    for cls in (
        *(InvalidRequest, ModeNotServed, Unauthorized, NotFound, PayloadTooLarge),
        *(ModelError, Overloaded, Unavailable, Timeout),
    )
}
_BY_STATUS: dict[int, type[ServerError]] = {
    cls.api.status: cls
    for cls in (InvalidRequest, Unauthorized, NotFound, PayloadTooLarge, ModelError, Overloaded, Unavailable, Timeout)
}
# Statuses other fronts use for the same meaning (Launch's gateway answers 408 for a timeout; proxies 502).
_BY_STATUS.update({408: Timeout, 502: Unavailable})


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from_answer(status_code: int, headers: Mapping[str, str], body: bytes) -> ServerError:
    """The exception for an error answer: by the body's `error.code` when it has our shape, else by HTTP status.

    Pure (no I/O), so the sync and asyncio clients map identically. Unknown codes fall back to the status's class,
    and unknown statuses to `ServerError` itself, keeping the server's message.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    code, message, details = "", "", {}
    try:
        document = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
    elif isinstance(error, str):  # some fronts answer {"error": "text"}
        message = error
    if not message:
        text = body[:500].decode(errors="replace").strip()
        message = text or f"HTTP {status_code}"
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status_code) or ServerError
    return cls(message, status_code=status_code, code=code or cls.api.code, details=details, headers=lowered)
