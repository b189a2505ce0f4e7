"""Shared request/response types of the native HTTP API (router, gateway and local mode speak the same bodies)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The router <-> model-container contract (docs/contracts.md): one definition for the runtime, router and worker.
INPUT_HEADER = "X-Bundleserve-Input"  # value "raw": the body is the input bytes, not JSON keyword arguments
RETURN_HEADER = "X-Bundleserve-Return"  # value "pickle": answer with the cloudpickled return value
PICKLE_CONTENT_TYPE = "application/vnd.bundleserve.pickle"


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.EXPIRED)


class CallbackAuthRequest(BaseModel):
    """Per-request callback credentials (Launch's `callback_auth`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["basic", "mtls"]
    username: str | None = None
    password: str | None = None
    cert: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> CallbackAuthRequest:
        if self.kind == "basic" and (self.username is None or self.password is None):
            raise ValueError("callback_auth of kind basic needs username and password")
        if self.kind == "mtls" and (self.cert is None or self.key is None):
            raise ValueError("callback_auth of kind mtls needs cert and key (PEM)")
        return self

    def __repr__(self) -> str:  # never print credentials
        return f"CallbackAuthRequest(kind={self.kind!r})"


class PredictRequest(BaseModel):
    """Body of predict, stream and async submit. Exactly one of `args` / `url`."""

    model_config = ConfigDict(extra="forbid")

    args: Any = None
    url: Annotated[str | None, Field(default=None, max_length=4096)] = None
    return_pickled: bool = False
    timeout_seconds: Annotated[float | None, Field(default=None, gt=0)] = None
    callback_url: Annotated[str | None, Field(default=None, max_length=2048)] = None
    callback_auth: CallbackAuthRequest | None = None
    request_id: Annotated[str | None, Field(default=None, max_length=128)] = None

    @model_validator(mode="after")
    def _exactly_one_input(self) -> PredictRequest:
        if (self.args is None) == (self.url is None):
            raise ValueError("exactly one of args or url is required")
        return self


class InvocationResponse(BaseModel):
    """Answer of predict; also each streaming event and the body of a finished task."""

    status: TaskStatus
    result: Any = None
    result_url: str | None = None
    traceback: str | None = None
    status_code: int | None = None


class TaskResponse(InvocationResponse):
    task_id: str


class AsyncSubmitResponse(BaseModel):
    task_id: str
