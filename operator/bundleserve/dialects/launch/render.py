"""Pure rendering of the Launch dialect: endpoint descriptions, task bodies, stream events, and errors.

The mapping of causes to `ApiError` classes lives in the core; this module only decides how each class looks to a
Launch client, in one table (`ERROR_TABLE`). Two rules come from Launch itself rather than from HTTP taste:
- a model failure on a sync or streaming call is HTTP 200 with status FAILURE, the traceback and the model's
  `status_code` (both clients read the body, not the status);
- the 0.3.x client knows the states PENDING, SUCCESS and FAILURE only (anything else raises in `future.get()`), so
  the legacy `state` reports a started task as PENDING; the `/v1` status keeps STARTED, as model-engine's DTO has it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import (
    ApiError,
    InvalidRequest,
    ModelError,
    ModeNotServed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Timeout,
    Unauthorized,
    Unavailable,
)
from bundleserve.api.invocation import ModelReply, TaskStatus, loads_json
from bundleserve.dialects.launch.models import (
    EndpointStatus,
    EndpointType,
    LaunchTaskStatus,
    LegacyEndpoint,
    LegacyTaskResponse,
    V1AsyncTaskResponse,
    V1Endpoint,
    V1Result,
    V1TaskResponse,
)
from bundleserve.queue.tasks import TaskRecord

EXPIRED_TRACEBACK = "the task expired before a worker ran it (its request TTL passed)"


# -- errors ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaunchStatuses:
    """The HTTP status of one error class on the legacy routes and on the `/v1` routes."""

    legacy: int
    v1: int


#: THE mapping of the documented error hierarchy to Launch statuses (looked up along the class's MRO; a class not
#: listed keeps its own status). Timeouts are 408 on both, as model-engine answers: the 0.3.x client retries
#: 503/504/520/524 on every verb and sends nothing that tells a retry from a new call, so a 504 after the model
#: ran would run it up to three times (issue 17). 503 is answered only before the model was reached.
ERROR_TABLE: Mapping[type[ApiError], LaunchStatuses] = {
    InvalidRequest: LaunchStatuses(400, 400),
    ModeNotServed: LaunchStatuses(400, 400),  # model-engine: "wrong endpoint type" is a 400
    Unauthorized: LaunchStatuses(401, 401),
    NotFound: LaunchStatuses(404, 404),
    PayloadTooLarge: LaunchStatuses(413, 413),
    ModelError: LaunchStatuses(424, 424),  # only where no task body can carry it (sync/stream render FAILURE)
    Overloaded: LaunchStatuses(429, 429),
    Unavailable: LaunchStatuses(503, 503),
    Timeout: LaunchStatuses(408, 408),
}


def error_status(error: ApiError, *, legacy: bool) -> int:
    for cls in type(error).__mro__:
        statuses = ERROR_TABLE.get(cls)
        if statuses is not None:
            return statuses.legacy if legacy else statuses.v1
    return error.status


def error_body(error: ApiError) -> bytes:
    """FastAPI's `{"detail": message}` (what model-engine answers and clients print) plus bundleserve's documented
    `{"error": {"code", "message"}}`."""
    document = {"detail": error.message, "error": {"code": error.code, "message": error.message}}
    return json.dumps(document, separators=(",", ":")).encode()


# -- endpoints ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What the dialect knows about an endpoint: its name, the modes it serves, and whether it takes sync calls now."""

    name: str
    modes: frozenset[Mode]
    ready: bool

    @property
    def mode_names(self) -> list[str]:
        return [mode.value for mode in Mode if mode in self.modes]


def legacy_endpoint_type(modes: frozenset[Mode]) -> EndpointType:
    """The 0.3.x client builds a SyncEndpoint or an AsyncEndpoint from this (any other value raises): async only
    when async is served and sync is not; `task_async` works on any endpoint that serves async either way."""
    if Mode.ASYNC in modes and Mode.SYNC not in modes:
        return EndpointType.ASYNC
    return EndpointType.SYNC


def v1_endpoint_type(modes: frozenset[Mode]) -> EndpointType:
    """model-engine's single type: streaming endpoints also take sync tasks, so streaming wins, then sync."""
    if Mode.STREAMING in modes:
        return EndpointType.STREAMING
    if Mode.SYNC in modes:
        return EndpointType.SYNC
    return EndpointType.ASYNC


def _status(view: EndpointView) -> EndpointStatus:
    # An async-only endpoint takes tasks at zero replicas: it is READY in the sense clients care about.
    if view.ready or view.modes == frozenset({Mode.ASYNC}):
        return EndpointStatus.READY
    return EndpointStatus.UPDATE_PENDING


def build_legacy_endpoint(view: EndpointView) -> LegacyEndpoint:
    return LegacyEndpoint(
        name=view.name,
        endpoint_type=legacy_endpoint_type(view.modes),
        bundle_name=view.name,
        status=_status(view),
        destination=view.name,
        modes=view.mode_names,
    )


def build_v1_endpoint(view: EndpointView) -> V1Endpoint:
    return V1Endpoint(
        id=view.name,
        name=view.name,
        endpoint_type=v1_endpoint_type(view.modes),
        destination=view.name,
        bundle_name=view.name,
        status=_status(view),
        modes=view.mode_names,
    )


# -- results -----------------------------------------------------------------------------------------------------


def result_text(reply: ModelReply) -> str:
    """The JSON text of the model's return value (Launch clients `json.loads` it): a JSON answer as sent, anything
    else (a runnable image's text) encoded as a JSON string."""
    if reply.is_json:
        try:
            text = reply.body.decode()
            loads_json(text)
        except ValueError:
            pass
        else:
            return text.strip()
    return json.dumps(reply.result())


def chunk_text(data: bytes) -> str:
    """The JSON text of one stream chunk: JSON data as sent, anything else as a JSON string."""
    try:
        text = data.decode()
        loads_json(text)
    except ValueError:
        return json.dumps(data.decode("utf-8", errors="replace"))
    return text.strip()


def legacy_state(status: TaskStatus) -> LaunchTaskStatus:
    if status in (TaskStatus.PENDING, TaskStatus.STARTED):
        return LaunchTaskStatus.PENDING
    if status is TaskStatus.SUCCESS:
        return LaunchTaskStatus.SUCCESS
    return LaunchTaskStatus.FAILURE  # FAILURE, EXPIRED


def v1_status(status: TaskStatus) -> LaunchTaskStatus:
    if status is TaskStatus.EXPIRED:
        return LaunchTaskStatus.FAILURE
    return LaunchTaskStatus(status.value)


def _failure_traceback(record: TaskRecord) -> str | None:
    if record.status is TaskStatus.EXPIRED:
        return record.traceback or EXPIRED_TRACEBACK
    return record.traceback


def build_legacy_task(record: TaskRecord, absolute: Callable[[str], str]) -> LegacyTaskResponse:
    """The async poll body; `absolute` turns a stored result's path into the URL the client downloads."""
    state = legacy_state(record.status)
    if state is LaunchTaskStatus.SUCCESS:
        return LegacyTaskResponse(
            state=state,
            result=None if record.result_url else record.result_json,
            result_url=absolute(record.result_url) if record.result_url else None,
            status_code=record.status_code,
        )
    if state is LaunchTaskStatus.FAILURE:
        return LegacyTaskResponse(state=state, traceback=_failure_traceback(record), status_code=record.status_code)
    return LegacyTaskResponse(state=state)


def build_v1_task(record: TaskRecord, absolute: Callable[[str], str]) -> V1AsyncTaskResponse:
    status = v1_status(record.status)
    if status is LaunchTaskStatus.SUCCESS:
        result = (
            V1Result(result_url=absolute(record.result_url))
            if record.result_url
            else V1Result(result=record.result_json)
        )
        return V1AsyncTaskResponse(task_id=record.task_id, status=status, result=result, status_code=record.status_code)
    if status is LaunchTaskStatus.FAILURE:
        return V1AsyncTaskResponse(
            task_id=record.task_id,
            status=status,
            traceback=_failure_traceback(record),
            status_code=record.status_code,
        )
    return V1AsyncTaskResponse(task_id=record.task_id, status=status)


def model_failure(error: ModelError) -> tuple[str, int | None]:
    """(traceback, the model's status code) of a model failure; the message stands in for a missing traceback."""
    traceback = error.details.get("traceback") or error.message
    status_code = error.details.get("status_code")
    return str(traceback), status_code if isinstance(status_code, int) else None


def build_legacy_sync(*, result: str | None = None, result_url: str | None = None) -> LegacyTaskResponse:
    return LegacyTaskResponse(state=LaunchTaskStatus.SUCCESS, result=result, result_url=result_url, status_code=200)


#: JSON string literals as pydantic writes them (UTF-8, not \u-escaped): the hand-assembled bodies below.
_STRING = json.JSONEncoder(ensure_ascii=False)
_LEGACY_SYNC = (b'{"state":"SUCCESS","result":', b',"result_url":null,"traceback":null,"status_code":200}')
_V1_SYNC = (b'{"status":"SUCCESS","result":{"result":', b',"result_url":null},"traceback":null,"status_code":200}')


def sync_success_body(result: str, *, legacy: bool) -> bytes:
    """`dump(build_legacy_sync(result=result))` or `dump(build_v1_sync(result=result))`, byte for byte, assembled
    from the fixed shape around the one variable string: the body of every successful sync task, so it skips the
    model's construction and serialization (tests/unit/test_dialects_launch.py proves the bytes equal)."""
    head, tail = _LEGACY_SYNC if legacy else _V1_SYNC
    return head + _STRING.encode(result).encode() + tail


def build_legacy_failure(error: ModelError) -> LegacyTaskResponse:
    traceback, status_code = model_failure(error)
    return LegacyTaskResponse(state=LaunchTaskStatus.FAILURE, traceback=traceback, status_code=status_code)


def build_v1_sync(*, result: str | None = None, result_url: str | None = None) -> V1TaskResponse:
    return V1TaskResponse(
        status=LaunchTaskStatus.SUCCESS, result=V1Result(result=result, result_url=result_url), status_code=200
    )


def build_v1_failure(error: ModelError) -> V1TaskResponse:
    traceback, status_code = model_failure(error)
    return V1TaskResponse(status=LaunchTaskStatus.FAILURE, traceback=traceback, status_code=status_code)


def dump(model: BaseModel) -> bytes:
    """The JSON body of a response model (every field present, nulls included, as model-engine answers)."""
    return model.model_dump_json().encode()


def sse_event(model: BaseModel) -> bytes:
    """One server-sent event of `/v1/streaming-tasks`."""
    return b"data: " + dump(model) + b"\n\n"


def stream_chunk_event(data: bytes) -> bytes:
    return sse_event(V1TaskResponse(status=LaunchTaskStatus.SUCCESS, result=V1Result(result=chunk_text(data))))


def stream_failure_event(error: ModelError) -> bytes:
    return sse_event(build_v1_failure(error))
