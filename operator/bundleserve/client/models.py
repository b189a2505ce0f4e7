"""Launch's request and response types: `EndpointRequest`, `EndpointResponse`, plus `EndpointInfo` for listings.

`EndpointRequest` has exactly the fields of Launch's client and validates them when it is built, so a bad request
fails where it is written, not later on a worker. The server-side body model (`bundleserve.api.PredictRequest`)
checks the rest (lengths, the callback auth rules), so both sides apply one set of rules.
"""

from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from bundleserve.api.invocation import CallbackAuthRequest, PredictRequest, TaskStatus
from bundleserve.api.manifest import format_validation_error
from bundleserve.client.errors import BundleserveError, ModelError, Timeout

CallbackAuthKind = Literal["basic", "mtls"]
_BASIC_FIELDS = ("callback_auth_username", "callback_auth_password")
_MTLS_FIELDS = ("callback_auth_cert", "callback_auth_key")


class InvalidEndpointRequest(BundleserveError, ValueError):
    """An `EndpointRequest` that cannot be sent (raised by its constructor)."""


@dataclass(frozen=True, kw_only=True)
class EndpointRequest:
    """One invocation's input and options, with Launch's field names.

    Exactly one of `url` (the model receives the bytes found there) or `args` (the model's keyword arguments).
    Callbacks (`callback_url`, `callback_auth_*`) apply to async endpoints; credentials never appear in `repr`.
    `request_id` is deprecated, as in Launch: a client-side id (generated when missing) sent as `X-Request-Id`;
    only an id the caller chose is also sent in the body.
    """

    url: str | None = None
    args: Any = None
    callback_url: str | None = None
    callback_auth_kind: CallbackAuthKind | None = None
    callback_auth_username: str | None = None
    callback_auth_password: str | None = field(default=None, repr=False)
    callback_auth_cert: str | None = field(default=None, repr=False)
    callback_auth_key: str | None = field(default=None, repr=False)
    return_pickled: bool = False
    request_id: str | None = None
    #: The production variant to call (sent as X-Bundleserve-Variant; docs/operator.md, "Production variants").
    #: None: the gateway picks one by weight.
    variant: str | None = None
    #: True when `request_id` was generated here (then it is not sent in the body).
    request_id_generated: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise InvalidEndpointRequest(problem)
        try:
            self.wire(with_callback=True)  # the server's own body model: lengths, auth completeness
        except ValidationError as error:
            raise InvalidEndpointRequest(f"invalid EndpointRequest: {format_validation_error(error)}") from None
        if self.request_id is None:
            object.__setattr__(self, "request_id", uuid.uuid4().hex)
            object.__setattr__(self, "request_id_generated", True)
        else:
            warnings.warn(
                "EndpointRequest.request_id is deprecated (as in Launch); it is sent as X-Request-Id and in the body",
                DeprecationWarning,
                stacklevel=3,
            )

    def _problem(self) -> str | None:
        if self.url is None and self.args is None:
            return "EndpointRequest needs exactly one of url or args, got neither"
        if self.url is not None and self.args is not None:
            return "EndpointRequest needs exactly one of url or args, got both"
        if self.url is not None and (not isinstance(self.url, str) or not self.url):
            return "url must be a non-empty string (the location of the model's input)"
        if not isinstance(self.return_pickled, bool):
            return f"return_pickled must be True or False, got {self.return_pickled!r}"
        if self.variant is not None and (not isinstance(self.variant, str) or not self.variant):
            return "variant must be a non-empty string (a production variant's name)"
        if self.callback_url is not None and (not isinstance(self.callback_url, str) or not self.callback_url):
            return "callback_url must be a non-empty string"
        given = [name for name in _BASIC_FIELDS + _MTLS_FIELDS if getattr(self, name) is not None]
        kind = self.callback_auth_kind
        if kind is None:
            return f"{', '.join(given)} given without callback_auth_kind ('basic' or 'mtls')" if given else None
        if kind not in ("basic", "mtls"):
            return f"callback_auth_kind must be 'basic' or 'mtls', got {kind!r}"
        if self.callback_url is None:
            return "callback_auth_kind needs callback_url (the credentials are for that URL)"
        needed, foreign = (_BASIC_FIELDS, _MTLS_FIELDS) if kind == "basic" else (_MTLS_FIELDS, _BASIC_FIELDS)
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            return f"callback_auth_kind {kind!r} needs {' and '.join(missing)}"
        wrong = [name for name in foreign if getattr(self, name) is not None]
        if wrong:
            return f"{', '.join(wrong)} do not apply to callback_auth_kind {kind!r}"
        return None

    @property
    def callback_auth(self) -> CallbackAuthRequest | None:
        if self.callback_auth_kind is None:
            return None
        return CallbackAuthRequest(
            kind=self.callback_auth_kind,
            username=self.callback_auth_username,
            password=self.callback_auth_password,
            cert=self.callback_auth_cert,
            key=self.callback_auth_key,
        )

    def wire(self, *, with_callback: bool, timeout_seconds: float | None = None) -> PredictRequest:
        """The native API body model (`with_callback` only for async submissions)."""
        return PredictRequest(
            args=self.args,
            url=self.url,
            return_pickled=self.return_pickled,
            timeout_seconds=timeout_seconds,
            callback_url=self.callback_url if with_callback else None,
            callback_auth=self.callback_auth if with_callback else None,
            request_id=None if self.request_id_generated else self.request_id,
        )

    def body(self, *, with_callback: bool, timeout_seconds: float | None = None) -> dict[str, Any]:
        """The JSON body: only the fields that differ from the server's defaults, so the common `{"args": ...}`
        body keeps the routers' fast path."""
        return self.wire(with_callback=with_callback, timeout_seconds=timeout_seconds).model_dump(
            mode="json", exclude_defaults=True
        )

    @property
    def has_callback(self) -> bool:
        return self.callback_url is not None


@dataclass(frozen=True)
class EndpointResponse:
    """Launch's response: `status`, `result_url`, `result`, `traceback`, plus `status_code` and `task_id`.

    `result` is the JSON text of the model's return value, as in Launch (`json.loads(response.result)`, or
    `result_value()`); with `return_pickled` it is None and `result_url` points at the pickled value.
    """

    status: str
    result_url: str | None = None
    result: str | None = None
    traceback: str | None = None
    status_code: int | None = None
    task_id: str | None = None
    #: The production variant that answered a sync call (the gateway's X-Bundleserve-Variant) or that an async task
    #: was given; None when the server did not say (a router called directly, a task of an Endpoint without variants).
    variant: str | None = None

    @classmethod
    def from_native(cls, document: dict[str, Any]) -> EndpointResponse:
        """From a native API body (predict answer, stream event, task status)."""
        status = str(document.get("status") or "UNDEFINED")
        result_url = document.get("result_url")
        value = document.get("result")
        text = None if result_url or (value is None and status != TaskStatus.SUCCESS) else json.dumps(value)
        status_code = document.get("status_code")
        task_id = document.get("task_id")
        return cls(
            status=status,
            result_url=result_url if isinstance(result_url, str) else None,
            result=text,
            traceback=document.get("traceback") if isinstance(document.get("traceback"), str) else None,
            status_code=status_code if isinstance(status_code, int) else None,
            task_id=task_id if isinstance(task_id, str) else None,
            variant=document.get("variant") if isinstance(document.get("variant"), str) else None,
        )

    @property
    def succeeded(self) -> bool:
        return self.status == TaskStatus.SUCCESS

    @property
    def finished(self) -> bool:
        return self.status in (TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.EXPIRED)

    def result_value(self) -> Any:
        """The model's return value decoded from `result` (None when there is none, e.g. a pickled result)."""
        return None if self.result is None else json.loads(self.result)

    def raise_for_status(self) -> EndpointResponse:
        """Return self when it succeeded (or is still running); raise `ModelError` for FAILURE, `Timeout` for EXPIRED."""
        if self.status == TaskStatus.FAILURE:
            message = (self.traceback or "the model failed").strip().splitlines()[-1]
            details = {"traceback": self.traceback, "status_code": self.status_code}
            raise ModelError(message, status_code=424, code=ModelError.api.code, details=details)
        if self.status == TaskStatus.EXPIRED:
            raise Timeout(
                f"task {self.task_id} expired before a worker ran it", status_code=504, code="expired", details={}
            )
        return self

    def native(self) -> dict[str, Any]:
        """The native API's document for this response (the decoded result), e.g. to print it as JSON."""
        document: dict[str, Any] = {"status": self.status, "result": self.result_value(), "result_url": self.result_url}
        document.update(traceback=self.traceback, status_code=self.status_code)
        if self.task_id is not None:
            document = {"task_id": self.task_id, **document}
        return document


@dataclass(frozen=True)
class EndpointInfo:
    """What `GET /v1/endpoints[/{name}]` says about one endpoint; `ready` is None when the server did not say."""

    name: str
    modes: tuple[str, ...]
    ready: bool | None = None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> EndpointInfo:
        modes = document.get("modes") or ()
        ready = document.get("ready")
        return cls(
            name=str(document["name"]),
            modes=tuple(str(m) for m in modes),
            ready=ready if isinstance(ready, bool) else None,
        )
