"""The Launch dialect's pure parts: request parsing into an Invocation, endpoint descriptions, task bodies, errors."""

from __future__ import annotations

import json

import pytest

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
from bundleserve.api.invocation import PICKLE_CONTENT_TYPE, ModelReply, TaskStatus
from bundleserve.dialects.launch import render
from bundleserve.dialects.launch.models import LegacyTaskRequest, V1TaskRequest, parse_task_request, to_invocation
from bundleserve.queue.tasks import TaskRecord


def _document(model: object) -> object:
    return json.loads(render.dump(model))  # type: ignore[arg-type]


# -- requests ----------------------------------------------------------------------------------------------------


def test_legacy_requests_default_to_pickled_and_v1_requests_do_not() -> None:
    assert parse_task_request(b'{"args": {"a": 1}}', LegacyTaskRequest).return_pickled is True
    assert parse_task_request(b'{"args": {"a": 1}}', V1TaskRequest).return_pickled is False


def test_args_become_the_json_body_of_the_invocation() -> None:
    request = parse_task_request(
        b'{"args": {"a": [1, 2]}, "return_pickled": false, "timeout_seconds": 5}', V1TaskRequest
    )
    invocation = to_invocation(request)
    assert json.loads(invocation.body) == {"a": [1, 2]}
    assert (invocation.raw, invocation.url, invocation.return_pickled, invocation.timeout_seconds) == (
        False,
        None,
        False,
        5,
    )


def test_url_wins_over_args_as_the_legacy_client_warns() -> None:
    request = parse_task_request(b'{"args": {"a": 1}, "url": "https://example.com/x"}', LegacyTaskRequest)
    invocation = to_invocation(request)
    assert (invocation.url, invocation.body) == ("https://example.com/x", b"")


def test_unknown_fields_are_ignored_like_model_engine_does() -> None:
    request = parse_task_request(b'{"args": {}, "num_retries": 2, "something_new": true}', V1TaskRequest)
    assert request.num_retries == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{nope", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b"{}", "one of args or url"),
        (b'{"cloudpickle": "gASVAAAA"}', "cloudpickle inputs are not accepted"),
        (b'{"args": {}, "callback_auth": {"kind": "basic", "username": "u", "password": "p"}}', "needs callback_url"),
        (b'{"args": {}, "timeout_seconds": 0}', "timeout_seconds"),
        (b'{"args": {}, "callback_url": "file:///etc/passwd"}', "callback_url must be an http"),
        (b'{"args": {}, "callback_url": "http://h/", "callback_auth": {"kind": "basic"}}', "username and password"),
    ],
)
def test_bad_requests_are_invalid_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_task_request(body, V1TaskRequest)


# -- endpoints ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modes", "legacy", "v1"),
    [
        ({Mode.SYNC}, "sync", "sync"),
        ({Mode.ASYNC}, "async", "async"),
        ({Mode.SYNC, Mode.ASYNC}, "sync", "sync"),
        ({Mode.STREAMING}, "sync", "streaming"),
        ({Mode.SYNC, Mode.STREAMING, Mode.ASYNC}, "sync", "streaming"),
    ],
)
def test_endpoint_types(modes: set[Mode], legacy: str, v1: str) -> None:
    assert render.legacy_endpoint_type(frozenset(modes)).value == legacy
    assert render.v1_endpoint_type(frozenset(modes)).value == v1


def test_legacy_endpoint_has_the_fields_the_client_reads() -> None:
    view = render.EndpointView(name="echo", modes=frozenset({Mode.SYNC, Mode.ASYNC}), ready=False)
    assert _document(render.build_legacy_endpoint(view)) == {
        "name": "echo",
        "endpoint_type": "sync",
        "bundle_name": "echo",
        "status": "UPDATE_PENDING",
        "resource_settings": {},
        "worker_settings": {},
        "metadata": {},
        "configs": {},
        "destination": "echo",
        "modes": ["sync", "async"],
    }


def test_an_async_only_endpoint_is_ready_without_replicas() -> None:
    view = render.EndpointView(name="jobs", modes=frozenset({Mode.ASYNC}), ready=False)
    assert render.build_v1_endpoint(view).status.value == "READY"


# -- task bodies -------------------------------------------------------------------------------------------------


def _absolute(path: str) -> str:
    return "https://models.example.com" + path


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (TaskStatus.PENDING, "PENDING"),
        (TaskStatus.STARTED, "PENDING"),  # the 0.3.x client raises on any other state
        (TaskStatus.SUCCESS, "SUCCESS"),
        (TaskStatus.FAILURE, "FAILURE"),
        (TaskStatus.EXPIRED, "FAILURE"),
    ],
)
def test_legacy_state(status: TaskStatus, state: str) -> None:
    assert render.legacy_state(status).value == state


def test_v1_keeps_started_and_reports_expired_as_failure() -> None:
    assert render.v1_status(TaskStatus.STARTED).value == "STARTED"
    record = TaskRecord(task_id="t1", endpoint="e", status=TaskStatus.EXPIRED)
    assert _document(render.build_v1_task(record, _absolute)) == {
        "task_id": "t1",
        "status": "FAILURE",
        "result": None,
        "traceback": render.EXPIRED_TRACEBACK,
        "status_code": None,
    }


def test_legacy_task_success_inline_and_pickled() -> None:
    inline = TaskRecord(task_id="t", endpoint="e", status=TaskStatus.SUCCESS, result_json='{"a":1}', status_code=200)
    assert _document(render.build_legacy_task(inline, _absolute)) == {
        "state": "SUCCESS",
        "result": '{"a":1}',
        "result_url": None,
        "traceback": None,
        "status_code": 200,
    }
    pickled = TaskRecord(task_id="t", endpoint="e", status=TaskStatus.SUCCESS, result_url="/v1/tasks/t/result")
    body = render.build_legacy_task(pickled, _absolute)
    assert (body.result, body.result_url) == (None, "https://models.example.com/v1/tasks/t/result")


def test_v1_task_success_nests_the_result() -> None:
    record = TaskRecord(task_id="t", endpoint="e", status=TaskStatus.SUCCESS, result_json="[1,2]", status_code=200)
    assert _document(render.build_v1_task(record, _absolute)) == {
        "task_id": "t",
        "status": "SUCCESS",
        "result": {"result": "[1,2]", "result_url": None},
        "traceback": None,
        "status_code": 200,
    }


def test_failures_carry_traceback_and_the_models_status() -> None:
    error = ModelError("the model failed", status_code=500, traceback="Traceback: boom")
    assert _document(render.build_legacy_failure(error)) == {
        "state": "FAILURE",
        "result": None,
        "result_url": None,
        "traceback": "Traceback: boom",
        "status_code": 500,
    }
    bare = ModelError("the model failed", status_code=None, traceback=None)
    assert render.build_v1_failure(bare).traceback == "the model failed"


def test_result_text_is_json_text() -> None:
    assert render.result_text(ModelReply(200, b' {"a": 1}\n', "application/json")) == '{"a": 1}'
    assert render.result_text(ModelReply(200, b"plain words", "text/plain")) == '"plain words"'
    assert render.result_text(ModelReply(200, b"not json", "application/json")) == '"not json"'
    assert render.chunk_text(b'"one"') == '"one"'
    assert render.chunk_text(b"raw \xff") == json.dumps("raw \ufffd")


def test_stream_events_are_sse_frames() -> None:
    assert render.stream_chunk_event(b'"w"') == (
        b'data: {"status":"SUCCESS","result":{"result":"\\"w\\"","result_url":null},"traceback":null,'
        b'"status_code":null}\n\n'
    )
    failure = render.stream_failure_event(ModelError("m", status_code=500, traceback="tb"))
    assert json.loads(failure.removeprefix(b"data: ")) == {
        "status": "FAILURE",
        "result": None,
        "traceback": "tb",
        "status_code": 500,
    }


def test_pickle_replies_are_not_mistaken_for_json() -> None:
    assert not ModelReply(200, b"\x80\x05", PICKLE_CONTENT_TYPE).is_json


# -- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "legacy", "v1"),
    [
        (InvalidRequest("x"), 400, 400),
        (ModeNotServed("x"), 400, 400),
        (Unauthorized("x"), 401, 401),
        (NotFound("x"), 404, 404),
        (PayloadTooLarge("x"), 413, 413),
        (ModelError("x"), 424, 424),
        (Overloaded("x"), 429, 429),
        (Unavailable("x"), 503, 503),
        (Timeout("x"), 408, 408),
        (ApiError("x"), 500, 500),
    ],
)
def test_one_table_maps_the_error_hierarchy(error: ApiError, legacy: int, v1: int) -> None:
    assert render.error_status(error, legacy=True) == legacy
    assert render.error_status(error, legacy=False) == v1


def test_a_subclass_takes_its_parents_row() -> None:
    class Draining(Unavailable):
        code = "draining"

    assert render.error_status(Draining("x"), legacy=False) == 503


def test_error_body_is_fastapi_detail_plus_the_documented_error() -> None:
    assert json.loads(render.error_body(NotFound("no endpoint 'x'"))) == {
        "detail": "no endpoint 'x'",
        "error": {"code": "not_found", "message": "no endpoint 'x'"},
    }
