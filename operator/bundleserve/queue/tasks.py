"""The task record: what a submission stores in Redis and what `GET /v1/tasks/{id}` reads back.

A record is a Redis hash of strings (`bundleserve:task:<id>`). States move PENDING -> STARTED -> (PENDING again on a
retry) -> one terminal state (SUCCESS, FAILURE, EXPIRED); the Lua scripts in `scripts.py` are the only writers of
`status`, and they never change a terminal one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bundleserve.api.invocation import (
    JSON_CONTENT_TYPE,
    CallbackAuthRequest,
    Invocation,
    PredictRequest,
    TaskResponse,
    TaskStatus,
)

TERMINAL = tuple(s.value for s in TaskStatus if s.terminal)

#: Fields returned to clients; `request` and `callback_auth` (credentials) are never read by the status path.
STATUS_FIELDS = (
    "endpoint",
    "namespace",
    "status",
    "result",
    "result_url",
    "traceback",
    "status_code",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "callback_status",
    "callback_attempts",
    "callback_error",
)


@dataclass(frozen=True)
class TaskRequest:
    """What the worker hands to the model: the validated submission minus callback details.

    Native submissions carry JSON `args` (or a `url`); dialects that pass bytes through (SageMaker's non-JSON bodies)
    carry `raw_body` with its `content_type`, stored base64 in the record. `to_invocation()` is the one conversion to
    the core's `Invocation`, so the async worker makes the same model call as the sync path.
    """

    args: Any = None
    url: str | None = None
    return_pickled: bool = False
    timeout_seconds: float | None = None
    request_id: str | None = None
    raw_body: bytes | None = field(default=None, repr=False)
    content_type: str | None = None
    custom_attributes: str | None = None
    accept: str | None = None
    #: The `url` object is the request body itself (SageMaker's InputLocation, `Invocation.url_body`); `content_type`
    #: is then the client's declared type ("" for none).
    url_body: bool = False
    #: SageMaker's S3 output and failure paths (`s3://bucket/prefix`) for this task, fixed at submission from the
    #: endpoint's settings: the worker writes the result to `s3objects.output_url(...)`, a failure to `failure_url`.
    s3_output_path: str | None = None
    s3_failure_path: str | None = None

    @classmethod
    def from_predict(cls, request: PredictRequest) -> TaskRequest:
        return cls(
            args=request.args,
            url=request.url,
            return_pickled=request.return_pickled,
            timeout_seconds=request.timeout_seconds,
            request_id=request.request_id,
        )

    @classmethod
    def from_invocation(cls, inv: Invocation) -> TaskRequest:
        """A dialect's invocation as a task: JSON keyword arguments stay JSON (readable in the record), raw bytes
        travel base64."""
        common: dict[str, Any] = {
            "url": inv.url,
            "return_pickled": inv.return_pickled,
            "timeout_seconds": inv.timeout_seconds,
            "request_id": inv.request_id,
            "custom_attributes": inv.custom_attributes,
            "accept": inv.accept,
        }
        if inv.url is not None:
            if inv.url_body:
                return cls(url_body=True, content_type=inv.content_type, **common)
            return cls(**common)
        if not inv.raw:
            return cls(args=json.loads(inv.body) if inv.body else {}, **common)
        return cls(raw_body=inv.body, content_type=inv.content_type, **common)

    def to_invocation(self) -> Invocation:
        if self.raw_body is not None:
            body, content_type, raw = self.raw_body, self.content_type or "application/octet-stream", True
        elif self.url is not None and self.url_body:
            body, content_type, raw = b"", self.content_type or "", True
        elif self.url is not None:
            body, content_type, raw = b"", JSON_CONTENT_TYPE, False
        else:
            body, content_type, raw = json.dumps(self.args, separators=(",", ":")).encode(), JSON_CONTENT_TYPE, False
        return Invocation(
            body=body,
            content_type=content_type,
            raw=raw,
            url=self.url,
            return_pickled=self.return_pickled,
            timeout_seconds=self.timeout_seconds,
            accept=self.accept,
            custom_attributes=self.custom_attributes,
            request_id=self.request_id,
            url_body=self.url_body,
        )

    def dumps(self) -> str:
        body: dict[str, Any] = {"args": self.args, "url": self.url, "return_pickled": self.return_pickled}
        if self.timeout_seconds is not None:
            body["timeout_seconds"] = self.timeout_seconds
        if self.request_id is not None:
            body["request_id"] = self.request_id
        if self.raw_body is not None:
            body["raw_b64"] = base64.b64encode(self.raw_body).decode("ascii")
            body["content_type"] = self.content_type
        if self.url_body:
            body["url_body"] = True
            body["content_type"] = self.content_type
        for name in ("custom_attributes", "accept", "s3_output_path", "s3_failure_path"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> TaskRequest:
        body = json.loads(raw)
        encoded = body.get("raw_b64")
        return cls(
            args=body.get("args"),
            url=body.get("url"),
            return_pickled=bool(body.get("return_pickled", False)),
            timeout_seconds=body.get("timeout_seconds"),
            request_id=body.get("request_id"),
            raw_body=base64.b64decode(encoded) if encoded is not None else None,
            content_type=body.get("content_type"),
            custom_attributes=body.get("custom_attributes"),
            accept=body.get("accept"),
            url_body=bool(body.get("url_body", False)),
            s3_output_path=body.get("s3_output_path"),
            s3_failure_path=body.get("s3_failure_path"),
        )


@dataclass(frozen=True)
class CallbackTarget:
    """Where and how to deliver the completion callback (credentials stay out of repr and logs)."""

    url: str
    auth: CallbackAuthRequest | None = field(default=None, repr=False)

    def dumps(self) -> str:
        auth = self.auth.model_dump(exclude_none=True) if self.auth else None
        return json.dumps({"url": self.url, "auth": auth}, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> CallbackTarget:
        body = json.loads(raw)
        auth = CallbackAuthRequest.model_validate(body["auth"]) if body.get("auth") else None
        return cls(url=str(body["url"]), auth=auth)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _float(value: bytes | str | None) -> float | None:
    text = _text(value)
    return float(text) if text else None


def _int(value: bytes | str | None) -> int | None:
    text = _text(value)
    return int(text) if text else None


@dataclass(frozen=True)
class TaskRecord:
    """A task as read from Redis (status fields only)."""

    task_id: str
    endpoint: str
    status: TaskStatus
    result_json: str | None = None
    result_url: str | None = None
    traceback: str | None = None
    status_code: int | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    callback_status: str | None = None
    callback_attempts: int = 0
    callback_error: str | None = None
    #: With `endpoint`, which queue the task belongs to (a Redis may hold same-named endpoints of two namespaces).
    namespace: str = ""

    @classmethod
    def from_fields(cls, task_id: str, values: Mapping[str, bytes | str | None]) -> TaskRecord | None:
        status = _text(values.get("status"))
        if status is None:
            return None
        return cls(
            task_id=task_id,
            endpoint=_text(values.get("endpoint")) or "",
            status=TaskStatus(status),
            result_json=_text(values.get("result")),
            result_url=_text(values.get("result_url")) or None,
            traceback=_text(values.get("traceback")) or None,
            status_code=_int(values.get("status_code")),
            created_at=_float(values.get("created_at")),
            started_at=_float(values.get("started_at")),
            finished_at=_float(values.get("finished_at")),
            attempts=_int(values.get("attempts")) or 0,
            callback_status=_text(values.get("callback_status")) or None,
            callback_attempts=_int(values.get("callback_attempts")) or 0,
            callback_error=_text(values.get("callback_error")) or None,
            namespace=_text(values.get("namespace")) or "",
        )

    @property
    def result(self) -> Any:
        return json.loads(self.result_json) if self.result_json else None

    def to_response(self) -> TaskResponse:
        """The public body: only terminal tasks carry result/traceback (a retried task's last error stays internal)."""
        finished = self.status.terminal
        return TaskResponse(
            task_id=self.task_id,
            status=self.status,
            result=self.result if finished else None,
            result_url=self.result_url if finished else None,
            traceback=self.traceback if finished else None,
            status_code=self.status_code if finished else None,
        )

    def callback_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"task_id": self.task_id, "status": self.status.value, "traceback": self.traceback}
        if self.result_url:
            body["result_url"] = self.result_url
        else:
            body["result"] = self.result
        return body


def failure_document(status: TaskStatus, status_code: int | None, traceback: str | None) -> bytes:
    """The body of SageMaker's failure location for a FAILURE or EXPIRED task (the http(s) route and the S3 object
    alike): `{"status", "message", "status_code", "traceback"}`."""
    expired = status is TaskStatus.EXPIRED
    body = {
        "status": status.value,
        "message": "the request expired in the queue before it ran" if expired else "the model failed",
        "status_code": status_code,
        "traceback": traceback,
    }
    return json.dumps(body).encode("utf-8")
