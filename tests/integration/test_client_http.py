"""The SDK's HTTP contract, observed from the server side on loopback: exact bodies and headers, the endpoint
description routes, retries, long-polls, error answers, and where the API key may go. Both clients, same checks.

The server is the recording native-API server of test_client_harness (see there why it exists); the same calls
against a real router and real local mode are in test_client_router.py and tests/e2e/test_client_local_mode.py.
"""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Iterator

import pytest

from bundleserve.api import errors as server
from bundleserve.client import (
    AsyncClient,
    AsyncEndpoint,
    Client,
    EndpointRequest,
    ModeNotServed,
    NotFound,
    Overloaded,
    RetryPolicy,
    ServerError,
    Timeout,
    Unavailable,
    WaitTimeout,
    aio,
    errors,
)
from bundleserve.client.models import EndpointInfo
from tests.integration.test_client_harness import Recorder, static_app
from tests.support.processes import free_port
from tests.support.waiting import wait_until

ENDPOINTS = [
    {"name": "echo", "modes": ["sync", "streaming", "async"], "ready": True},
    {"name": "jobs", "modes": ["async"], "ready": False},
    {"name": "words", "modes": ["streaming"], "ready": True},
]
FAST_RETRIES = RetryPolicy(max_attempts=3, backoff_seconds=0.01, max_delay_seconds=1)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder(endpoints=[dict(e) for e in ENDPOINTS]).start()
    try:
        yield server
    finally:
        server.stop()


def error_answer(error: server.ApiError) -> tuple[int, dict[str, str], bytes]:
    return error.status, error.headers, json.dumps(error.body()).encode()


# -- what reaches the server --------------------------------------------------------------------------------


def test_sync_request_reaches_the_server_as_documented(recorder: Recorder) -> None:
    with Client(recorder.url, api_key="key-1") as client:
        echo = client.endpoint("echo", mode="sync")
        request = EndpointRequest(args={"x": [1, 2]}, return_pickled=True)
        echo.predict(request, timeout_seconds=3)
        echo.predict(EndpointRequest(args={"plain": True}))
    first, second = recorder.requests("/v1/endpoints/echo/predict")
    assert first.method == "POST"
    assert first.json() == {"args": {"x": [1, 2]}, "return_pickled": True, "timeout_seconds": 3}
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["Authorization"] == "Bearer key-1"
    assert first.headers["X-Request-Id"] == request.request_id
    assert second.body == b'{"args":{"plain":true}}'  # exactly the routers' fast-path shape


def test_async_request_carries_url_callback_auth_and_request_id(recorder: Recorder) -> None:
    with pytest.warns(DeprecationWarning):
        request = EndpointRequest(
            url="https://data.example/input.bin",
            callback_url="https://hooks.example/done",
            callback_auth_kind="basic",
            callback_auth_username="hook-user",
            callback_auth_password="hook-secret",
            request_id="my-id",
        )
    with Client(recorder.url) as client:
        future = client.endpoint("jobs").predict(request, timeout_seconds=9.5)
    (seen,) = recorder.requests("/v1/endpoints/jobs/async")
    assert seen.json() == {
        "url": "https://data.example/input.bin",
        "timeout_seconds": 9.5,
        "callback_url": "https://hooks.example/done",
        "callback_auth": {"kind": "basic", "username": "hook-user", "password": "hook-secret"},
        "request_id": "my-id",
    }
    assert seen.headers["X-Request-Id"] == "my-id"
    assert "Authorization" not in seen.headers  # no API key configured
    assert future.task_id == f"task-{len(recorder.seen)}"  # the id the server answered


def test_streaming_request_and_events(recorder: Recorder) -> None:
    with (
        Client(recorder.url) as client,
        client.endpoint("words").predict(EndpointRequest(args={"words": ["a", {"b": 1}, "c"]})) as stream,
    ):
        assert [event.result_value() for event in stream] == ["a", {"b": 1}, "c"]
    (seen,) = recorder.requests("/v1/endpoints/words/stream")
    assert seen.json() == {"args": {"words": ["a", {"b": 1}, "c"]}}


def test_callbacks_are_refused_for_sync_calls_before_anything_is_sent(recorder: Recorder) -> None:
    request = EndpointRequest(args={}, callback_url="https://hooks.example/done")
    with Client(recorder.url) as client, pytest.raises(ValueError, match="async endpoints only"):
        client.endpoint("echo", mode="sync").predict(request)
    assert recorder.requests("/v1/endpoints/echo/predict") == []


# -- endpoint descriptions ----------------------------------------------------------------------------------


def test_listing_and_mode_choice_from_the_documented_shape(recorder: Recorder) -> None:
    with Client(recorder.url) as client:
        assert client.endpoints() == [
            EndpointInfo("echo", ("sync", "streaming", "async"), True),
            EndpointInfo("jobs", ("async",), False),
            EndpointInfo("words", ("streaming",), True),
        ]
        assert type(client.endpoint("echo")).__name__ == "SyncEndpoint"
        assert type(client.endpoint("echo", mode="streaming")).__name__ == "StreamingEndpoint"
        jobs = client.endpoint("jobs")
        assert type(jobs).__name__ == "AsyncEndpoint" and jobs.info == EndpointInfo("jobs", ("async",), False)
        with pytest.raises(ModeNotServed, match="serves async, not sync"):
            client.endpoint("jobs", mode="sync")
        with pytest.raises(NotFound):
            client.endpoint("nope")
    assert recorder.requests("/v1/endpoints/nope")[0].method == "GET"


def test_without_a_description_route_the_listing_decides(recorder: Recorder) -> None:
    """Local mode of today: `GET /v1/endpoints` exists, `GET /v1/endpoints/{name}` does not."""
    recorder.describe = False
    with Client(recorder.url) as client:
        assert client.endpoint("words").info == EndpointInfo("words", ("streaming",), True)
        with pytest.raises(NotFound, match="unknown endpoint 'nope'"):
            client.endpoint("nope")


def test_a_server_that_cannot_describe_endpoints_takes_the_asked_mode(recorder: Recorder) -> None:
    """A router sidecar without the description routes: the mode the caller asks for is assumed."""
    recorder.describe = recorder.listed = False
    with Client(recorder.url) as client:
        with pytest.raises(errors.ModesUnknown, match="pass mode="):
            client.endpoint("jobs")
        jobs = client.endpoint("jobs", mode="async")
        assert isinstance(jobs, AsyncEndpoint) and jobs.info is None
        assert jobs.predict(EndpointRequest(args={})).task_id
        with pytest.raises(NotFound, match="does not list endpoints"):
            client.endpoints()


# -- retries ------------------------------------------------------------------------------------------------


def test_refusals_are_retried_honouring_retry_after(recorder: Recorder) -> None:
    path = "/v1/endpoints/echo/predict"
    recorder.script[path] = [
        error_answer(server.Overloaded("busy", retry_after_seconds=0)),
        error_answer(server.Unavailable("draining", headers={"Retry-After": "0"})),
    ]
    with Client(recorder.url, retry=FAST_RETRIES) as client:
        response = client.endpoint("echo", mode="sync").predict(EndpointRequest(args={"n": 1}))
    assert response.result_value() == {"n": 1}
    assert len(recorder.requests(path)) == 3


def test_without_a_policy_nothing_is_retried_and_retry_after_is_reported(recorder: Recorder) -> None:
    path = "/v1/endpoints/echo/predict"
    recorder.script[path] = [error_answer(server.Overloaded("busy", retry_after_seconds=4))]
    with Client(recorder.url) as client, pytest.raises(Overloaded) as caught:
        client.endpoint("echo", mode="sync").predict(EndpointRequest(args={}))
    assert caught.value.retry_after == 4.0 and len(recorder.requests(path)) == 1


def test_a_retry_after_beyond_the_cap_is_not_waited_for(recorder: Recorder) -> None:
    path = "/v1/endpoints/echo/predict"
    recorder.script[path] = [error_answer(server.Unavailable("later", headers={"Retry-After": "3600"}))]
    with Client(recorder.url, retry=FAST_RETRIES) as client, pytest.raises(Unavailable):
        client.endpoint("echo", mode="sync").predict(EndpointRequest(args={}))
    assert len(recorder.requests(path)) == 1


def test_a_request_that_may_have_reached_the_model_is_retried_only_when_asked(recorder: Recorder) -> None:
    path = "/v1/endpoints/jobs/async"
    recorder.script[path] = [error_answer(server.Timeout("slow")), error_answer(server.Timeout("slow"))]
    with Client(recorder.url, retry=FAST_RETRIES) as client, pytest.raises(Timeout):
        client.endpoint("jobs").predict(EndpointRequest(args={}))
    assert len(recorder.requests(path)) == 1
    unsafe = RetryPolicy(max_attempts=3, backoff_seconds=0.01, retry_unsafe=True)
    with Client(recorder.url, retry=unsafe) as client:
        future = client.endpoint("jobs", mode="async").predict(EndpointRequest(args={}))
    assert future.task_id and len(recorder.requests(path)) == 3


def test_connection_refused_is_retried_then_reported(recorder: Recorder) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    with Client(dead, retry=FAST_RETRIES) as client, pytest.raises(errors.ConnectionFailed, match="ConnectError"):
        client.endpoint("echo", mode="sync").predict(EndpointRequest(args={}))


# -- error answers ------------------------------------------------------------------------------------------

ERRORS = [
    (server.InvalidRequest("bad"), errors.InvalidRequest),
    (server.ModeNotServed("no"), errors.ModeNotServed),
    (server.Unauthorized("key"), errors.Unauthorized),
    (server.NotFound("gone"), errors.NotFound),
    (server.PayloadTooLarge("big"), errors.PayloadTooLarge),
    (server.Overloaded("busy"), errors.Overloaded),
    (server.Unavailable("down"), errors.Unavailable),
    (server.Timeout("slow"), errors.Timeout),
]


@pytest.mark.parametrize(("raised", "expected"), ERRORS, ids=lambda v: type(v).__name__)
def test_every_error_status_raises_its_class_for_every_call(
    recorder: Recorder, raised: server.ApiError, expected: type[ServerError]
) -> None:
    for path in ("/v1/endpoints/echo/predict", "/v1/endpoints/echo/stream", "/v1/endpoints/echo/async", "/v1/tasks/t"):
        recorder.script[path] = [error_answer(raised)]
    with Client(recorder.url) as client:
        calls = [
            lambda: client.endpoint("echo", mode="sync").predict(EndpointRequest(args={})),
            lambda: client.endpoint("echo", mode="streaming").predict(EndpointRequest(args={})),
            lambda: client.endpoint("echo", mode="async").predict(EndpointRequest(args={})),
            lambda: client.task("t").get(timeout=5),
        ]
        for call in calls:
            with pytest.raises(expected) as caught:
                call()
            assert caught.value.message == raised.message and caught.value.status_code == raised.status


def test_a_model_failure_is_a_failure_response_as_in_launch(recorder: Recorder) -> None:
    failure = server.ModelError("ValueError: x", traceback="Traceback...\nValueError: x", status_code=500)
    recorder.script["/v1/endpoints/echo/predict"] = [error_answer(failure)]
    recorder.script["/v1/endpoints/echo/stream"] = [error_answer(failure)]
    with Client(recorder.url) as client:
        response = client.endpoint("echo", mode="sync").predict(EndpointRequest(args={}))
        events = list(client.endpoint("echo", mode="streaming").predict(EndpointRequest(args={})))
    assert (response.status, response.traceback, response.status_code) == ("FAILURE", failure.details["traceback"], 500)
    assert events == [response]
    with pytest.raises(errors.ModelError) as caught:
        response.raise_for_status()
    assert caught.value.traceback == failure.details["traceback"]


# -- futures ------------------------------------------------------------------------------------------------


def test_get_blocks_on_the_long_poll_and_returns_when_the_task_finishes(recorder: Recorder) -> None:
    with Client(recorder.url) as client:
        future = client.endpoint("jobs").predict(EndpointRequest(args={}))
        assert future.task_id is not None
        with pytest.raises(WaitTimeout) as caught:
            future.get(timeout=0.3)
        assert isinstance(caught.value, TimeoutError) and caught.value.last_status == "PENDING"
        polls = recorder.requests(f"/v1/tasks/{future.task_id}")
        assert polls and all(0 < float(p.query["wait"]) <= 0.3 for p in polls)
        assert len(polls) == 1  # held by the server for the whole wait: no polling loop
        recorder.finish(future.task_id, {"answer": 42})
        response = future.get(timeout=10)
    assert response.result_value() == {"answer": 42} and response.task_id == future.task_id
    assert future.done() and future.get() is response  # remembered: no further request
    assert len(recorder.requests(f"/v1/tasks/{future.task_id}")) == 2


def test_a_task_finishing_during_the_long_poll_answers_that_same_poll(recorder: Recorder) -> None:
    def finish_once_polled() -> None:
        wait_until(lambda: recorder.requests("/v1/tasks/later"), timeout=10, what="the first long-poll")
        recorder.finish("later", "done")

    finisher = threading.Thread(target=finish_once_polled, daemon=True)
    finisher.start()
    with Client(recorder.url) as client:
        response = client.task("later").get(timeout=30)
    finisher.join(10)
    assert response.result_value() == "done"
    (poll,) = recorder.requests("/v1/tasks/later")  # one request, released by the finish
    assert float(poll.query["wait"]) > 1


def test_batch_submits_every_request_and_keeps_failures_in_their_futures(recorder: Recorder) -> None:
    path = "/v1/endpoints/jobs/async"
    recorder.script[path] = [error_answer(server.PayloadTooLarge("too big"))]
    requests = [EndpointRequest(args={"i": i}) for i in range(6)]
    with Client(recorder.url, max_batch_concurrency=3) as client:
        futures = client.endpoint("jobs").predict_batch(requests)
    assert len(futures) == 6
    failed = [f for f in futures if f.error is not None]
    assert len(failed) == 1 and failed[0].task_id is None
    with pytest.raises(errors.PayloadTooLarge):
        failed[0].get()
    bodies = sorted(json.dumps(s.json()) for s in recorder.requests(path))
    assert bodies == sorted(json.dumps({"args": {"i": i}}) for i in range(6))


# -- pickled results and where the key goes -----------------------------------------------------------------


def test_pickled_results_need_an_explicit_trust_and_the_key_stays_home(recorder: Recorder) -> None:
    value = {"weights": [0.5, 1.5]}
    foreign = static_app({"/bucket/obj": (pickle.dumps(value), "application/octet-stream")})
    recorder.script["/v1/tasks/t1/result"] = [(200, {}, pickle.dumps(value))]
    try:
        with Client(recorder.url, api_key="secret-key") as client:
            from bundleserve.client import EndpointResponse

            local = EndpointResponse(status="SUCCESS", result_url="/v1/tasks/t1/result")
            presigned = EndpointResponse(status="SUCCESS", result_url=f"{foreign.url}/bucket/obj?X-Sig=1")
            with pytest.raises(ValueError, match="trusted_source=True"):
                client.load_pickled_result(local, trusted_source=False)
            with pytest.raises(ValueError, match="no result_url"):
                client.load_pickled_result(EndpointResponse(status="SUCCESS", result="1"), trusted_source=True)
            assert client.load_pickled_result(local, trusted_source=True) == value
            assert client.load_pickled_result(presigned, trusted_source=True) == value
    finally:
        foreign.stop()
    (fetched,) = recorder.requests("/v1/tasks/t1/result")
    assert fetched.headers["Authorization"] == "Bearer secret-key"


# -- the asyncio client mirrors the blocking one ------------------------------------------------------------


async def test_async_client_sends_the_same_requests(recorder: Recorder) -> None:
    async with AsyncClient(recorder.url, api_key="key-2", retry=FAST_RETRIES) as client:
        echo = await client.endpoint("echo")
        assert isinstance(echo, aio.SyncEndpoint)
        recorder.script["/v1/endpoints/echo/predict"] = [error_answer(server.Overloaded("busy", retry_after_seconds=0))]
        response = await echo.predict(EndpointRequest(args={"x": 1}, return_pickled=True), timeout_seconds=2)
        stream = await (await client.endpoint("words")).predict(EndpointRequest(args={"words": ["p", "q"]}))
        async with stream:
            chunks = [event.result_value() async for event in stream]
        jobs = await client.endpoint("jobs")
        assert isinstance(jobs, aio.AsyncEndpoint)
        future = await jobs.predict(EndpointRequest(args={"j": 1}))
        with pytest.raises(WaitTimeout):
            await future.get(timeout=0.2)
        assert future.task_id is not None
        recorder.finish(future.task_id, [1])
        finished = await future
        futures = await jobs.predict_batch([EndpointRequest(args={"i": i}) for i in range(4)])
        listed = await client.endpoints()
    assert response.result_value() == {"x": 1} and chunks == ["p", "q"] and finished.result_value() == [1]
    assert len(futures) == 4 and all(f.task_id for f in futures)
    assert [info.name for info in listed] == ["echo", "jobs", "words"]
    first, second = recorder.requests("/v1/endpoints/echo/predict")
    assert first.body == second.body  # retried once after the 429
    assert second.json() == {"args": {"x": 1}, "return_pickled": True, "timeout_seconds": 2}
    assert second.headers["Authorization"] == "Bearer key-2"


@pytest.mark.parametrize(("raised", "expected"), ERRORS, ids=lambda v: type(v).__name__)
async def test_async_client_maps_every_error_status(
    recorder: Recorder, raised: server.ApiError, expected: type[ServerError]
) -> None:
    for path in ("/v1/endpoints/echo/predict", "/v1/endpoints/echo/stream", "/v1/endpoints/echo/async", "/v1/tasks/t"):
        recorder.script[path] = [error_answer(raised)]
    async with AsyncClient(recorder.url) as client:
        with pytest.raises(expected):
            await (await client.endpoint("echo", mode="sync")).predict(EndpointRequest(args={}))
        with pytest.raises(expected):
            await (await client.endpoint("echo", mode="streaming")).predict(EndpointRequest(args={}))
        with pytest.raises(expected):
            await (await client.endpoint("echo", mode="async")).predict(EndpointRequest(args={}))
        with pytest.raises(expected):
            await client.task("t").get(timeout=5)
