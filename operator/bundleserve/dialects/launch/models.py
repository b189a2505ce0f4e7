"""Request and response bodies of the Launch dialect (pydantic at the boundary), and their parsing into an `Invocation`.

Two generations share one request shape with different defaults: the legacy `task_sync`/`task_async` bodies of the
0.3.x client default `return_pickled` to true (the client always sends it), model-engine's `/v1` bodies default it to
false. Unknown request fields are ignored, as model-engine's own request models do, so a newer client's extra field
does not break an older server. `cloudpickle` inputs (pickled arguments) are refused: unpickling a client's bytes
would run the client's code inside the router.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import CallbackAuthRequest, Invocation, args_only, parse_json_body


class LaunchTaskStatus(StrEnum):
    """model-engine's task statuses (`/v1`); the legacy `state` field uses PENDING, SUCCESS and FAILURE only."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class EndpointType(StrEnum):
    SYNC = "sync"
    ASYNC = "async"
    STREAMING = "streaming"


class EndpointStatus(StrEnum):
    """model-engine's endpoint statuses; bundleserve reports READY or UPDATE_PENDING (not ready yet)."""

    READY = "READY"
    UPDATE_PENDING = "UPDATE_PENDING"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: Annotated[str | None, Field(default=None, max_length=4096)] = None
    args: Any = None
    cloudpickle: str | None = None
    callback_url: Annotated[str | None, Field(default=None, max_length=2048)] = None
    callback_auth: CallbackAuthRequest | None = None
    timeout_seconds: Annotated[float | None, Field(default=None, gt=0)] = None
    #: model-engine retries a sync call its forwarder refused (429); the core queues instead, so it is accepted
    #: and has no effect.
    num_retries: Annotated[int | None, Field(default=None, ge=0)] = None
    return_pickled: bool = False


_R = TypeVar("_R", bound=_Request)


class LegacyTaskRequest(_Request):
    """`POST task_sync/{name}` and `task_async/{name}` of the 0.3.x client."""

    return_pickled: bool = True


class V1TaskRequest(_Request):
    """`POST /v1/sync-tasks`, `/v1/async-tasks`, `/v1/streaming-tasks` (model-engine's EndpointPredictV1Request)."""

    return_pickled: bool = False


def parse_task_request(body: bytes, model: type[_R]) -> _R:
    """The request model from a body; InvalidRequest with a readable reason."""
    if not body.strip():
        raise InvalidRequest("the request body is empty: send a JSON object with args or url")
    request = parse_json_body(body, model)
    if request.cloudpickle is not None:
        raise InvalidRequest("cloudpickle inputs are not accepted: send args (JSON) or url")
    if request.url is None and request.args is None:
        raise InvalidRequest("one of args or url is required")
    if request.callback_auth is not None and request.callback_url is None:
        raise InvalidRequest("callback_auth needs callback_url")
    if request.callback_url is not None and urlsplit(request.callback_url).scheme.lower() not in ("http", "https"):
        raise InvalidRequest("callback_url must be an http(s) URL")
    return request


def to_invocation(request: _Request, *, request_id: str | None = None) -> Invocation:
    """The core's invocation. With both `url` and `args`, `url` wins: the 0.3.x client sends both and warns that
    args will be ignored."""
    if request.url is not None:
        return Invocation(
            url=request.url,
            return_pickled=request.return_pickled,
            timeout_seconds=request.timeout_seconds,
            request_id=request_id,
        )
    return Invocation(
        body=json.dumps(request.args, separators=(",", ":")).encode(),
        return_pickled=request.return_pickled,
        timeout_seconds=request.timeout_seconds,
        request_id=request_id,
    )


def task_invocation(body: bytes, model: type[_R]) -> Invocation:
    """A sync or streaming task's body as the core's invocation: `parse_task_request` then `to_invocation`, with a
    fast path for the common body `{"args": VALUE}` (`api.invocation.args_only`): VALUE's JSON text goes to the
    model as the client sent it (the same value; `to_invocation` re-encodes it compactly), with the model's default
    `return_pickled`. Every other body, and every refusal, takes the pydantic path, so the rules and the messages are
    the same (tests/unit/test_dialects_launch.py checks both paths agree)."""
    fast = args_only(body)
    if fast is not None:
        return Invocation(body=fast[0], return_pickled=_default_pickled(model))
    return to_invocation(parse_task_request(body, model))


def _default_pickled(model: type[_Request]) -> bool:
    return bool(model.model_fields["return_pickled"].default)


# -- responses ---------------------------------------------------------------------------------------------------


class LegacyEndpoint(BaseModel):
    """`GET {base}/endpoints/{name}`: what the 0.3.x client's `ModelEndpoint.from_dict` reads."""

    name: str
    endpoint_type: EndpointType
    bundle_name: str
    status: EndpointStatus
    resource_settings: dict[str, Any] = Field(default_factory=dict)
    worker_settings: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    configs: dict[str, Any] = Field(default_factory=dict)
    destination: str
    #: bundleserve's addition: every invocation mode the endpoint serves (the type names one of them).
    modes: list[str] = Field(default_factory=list)


class LegacyTaskResponse(BaseModel):
    """Sync answer and async poll of the 0.3.x client (`state`, one of PENDING/SUCCESS/FAILURE)."""

    state: LaunchTaskStatus
    result: str | None = None
    result_url: str | None = None
    traceback: str | None = None
    status_code: int | None = None


class LegacyAsyncSubmitResponse(BaseModel):
    task_id: str


class V1Endpoint(BaseModel):
    """One item of `GET /v1/model-endpoints` (the fields of model-engine's GetModelEndpointV1Response that
    bundleserve knows; `id` is the endpoint's name, so no lookup is ever needed)."""

    id: str
    name: str
    endpoint_type: EndpointType
    destination: str
    bundle_name: str
    status: EndpointStatus
    metadata: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    post_inference_hooks: list[str] = Field(default_factory=list)
    modes: list[str] = Field(default_factory=list)


class LegacyEndpointList(BaseModel):
    """`GET {base}/endpoints`: the 0.3.x client's `list_model_endpoints` keeps the `sync` and `async` entries."""

    endpoints: list[LegacyEndpoint]


class V1EndpointList(BaseModel):
    model_endpoints: list[V1Endpoint]


class V1Result(BaseModel):
    """The `result` object of model-engine's task bodies: the JSON text of the return value, or a pickle's URL."""

    result: str | None = None
    result_url: str | None = None


class V1TaskResponse(BaseModel):
    """SyncEndpointPredictV1Response; each streaming event has the same shape."""

    status: LaunchTaskStatus
    result: V1Result | None = None
    traceback: str | None = None
    status_code: int | None = None


class V1AsyncTaskResponse(V1TaskResponse):
    """GetAsyncTaskV1Response."""

    task_id: str


class V1AsyncSubmitResponse(BaseModel):
    """CreateAsyncTaskV1Response."""

    task_id: str
