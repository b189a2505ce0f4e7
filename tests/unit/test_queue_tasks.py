"""Pure parts of the queue: task records, key names, config derivation, retry delays, the recent-results cache."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import CallbackAuthRequest, Invocation, PredictRequest, TaskStatus
from bundleserve.dialects.native.tasks import parse_submission, parse_wait, task_body
from bundleserve.queue import keys
from bundleserve.queue.callbacks import Outcome, RetryPolicy
from bundleserve.queue.config import Durability, QueueConfig, QueueLimits
from bundleserve.queue.recent import RecentResults
from bundleserve.queue.tasks import CallbackTarget, TaskRecord, TaskRequest


def test_task_request_round_trips_through_json() -> None:
    request = TaskRequest.from_predict(
        PredictRequest(args={"a": [1, "é"]}, return_pickled=True, timeout_seconds=2.5, request_id="r1")
    )
    assert TaskRequest.loads(request.dumps()) == request
    assert TaskRequest.loads(TaskRequest(url="http://h/x").dumps()) == TaskRequest(url="http://h/x")


def test_a_sagemaker_input_location_task_keeps_its_body_semantics_through_json() -> None:
    """The InputLocation object is the body: the declared content type (none: "") and `url_body` survive the queue,
    and so do the S3 output/failure paths the worker writes to."""
    inv = Invocation(body=b"", content_type="", raw=True, url="s3://in/k.json", url_body=True, request_id="i1")
    request = replace(TaskRequest.from_invocation(inv), s3_output_path="s3://out/o", s3_failure_path="s3://out/f")
    loaded = TaskRequest.loads(request.dumps())
    assert loaded == request
    assert loaded.to_invocation() == inv
    native = TaskRequest.from_invocation(Invocation(url="http://h/x", raw=True))
    assert not TaskRequest.loads(native.dumps()).to_invocation().url_body


def test_callback_target_round_trips_and_hides_credentials() -> None:
    auth = CallbackAuthRequest(kind="basic", username="u", password="hunter2")
    target = CallbackTarget("https://hooks.example/done", auth)
    assert CallbackTarget.loads(target.dumps()) == target
    assert "hunter2" not in repr(target)
    assert CallbackTarget.loads(CallbackTarget("http://h/cb").dumps()).auth is None


def record(status: TaskStatus, **fields: object) -> TaskRecord:
    values = {"status": status.value, "endpoint": "e", **{k: str(v) for k, v in fields.items()}}
    found = TaskRecord.from_fields("t" * 32, values)
    assert found is not None
    return found


def test_only_terminal_tasks_expose_result_and_traceback() -> None:
    retried = record(TaskStatus.PENDING, traceback="first attempt failed", status_code=500, attempts=1)
    response = retried.to_response()
    assert (response.status, response.traceback, response.status_code) == (TaskStatus.PENDING, None, None)
    done = record(TaskStatus.SUCCESS, result='{"y": 2}', status_code=200, attempts=2)
    assert done.to_response().result == {"y": 2}
    assert done.attempts == 2
    assert TaskRecord.from_fields("x", {"status": None}) is None


def test_callback_body_has_result_or_result_url() -> None:
    inline = record(TaskStatus.SUCCESS, result="[1]")
    assert inline.callback_body() == {"task_id": "t" * 32, "status": "SUCCESS", "result": [1], "traceback": None}
    stored = record(TaskStatus.SUCCESS, result_url="/v1/tasks/x/result")
    assert stored.callback_body() == {
        "task_id": "t" * 32,
        "status": "SUCCESS",
        "result_url": "/v1/tasks/x/result",
        "traceback": None,
    }


def test_status_body_splices_the_stored_json_result() -> None:
    body = json.loads(task_body(record(TaskStatus.SUCCESS, result='{"a": [1, 2]}', status_code=200)))
    assert body == {
        "task_id": "t" * 32,
        "status": "SUCCESS",
        "result": {"a": [1, 2]},
        "result_url": None,
        "traceback": None,
        "status_code": 200,
    }
    pending = json.loads(task_body(record(TaskStatus.STARTED, traceback="hidden")))
    assert (pending["status"], pending["result"], pending["traceback"]) == ("STARTED", None, None)


def test_key_names_are_per_endpoint_and_documented() -> None:
    queue = keys.queue_id("default", "echo")
    assert queue == "default/echo"
    assert keys.stream(queue) == "bundleserve:{default/echo}:stream"
    assert keys.dead_letter(queue) == "bundleserve:{default/echo}:dead"
    assert keys.done_channel(queue) == "bundleserve:{default/echo}:done"
    assert keys.stream(keys.queue_id("team-b", "echo")) != keys.stream(queue)
    assert keys.GROUP == "workers"
    task_id = keys.new_task_id()
    assert keys.is_task_id(task_id) and keys.task("ns/ep", task_id) == f"bundleserve:{{ns/ep}}:task:{task_id}"
    assert not keys.is_task_id("../x") and not keys.is_task_id(task_id.upper())


ENDPOINT = """
apiVersion: bundleserve.dev/v1alpha1
kind: Endpoint
metadata: {name: slow}
spec:
  modes: [async]
  localOnly: true
  bundle: {python: {entrypoint: m:f}}
  invocation: {concurrency: 3}
  async:
    requestTTLSeconds: 600
    invocationTimeoutSeconds: 20
    maxAttempts: 5
    resultTTLSeconds: 120
    callback: {url: "https://hooks.example/done", auth: {kind: basic, secretName: cb}}
"""


def test_config_follows_the_endpoint_spec() -> None:
    config = QueueConfig.from_endpoint(Endpoint.model_validate(yaml.safe_load(ENDPOINT)), QueueLimits.from_env({}))
    assert (config.endpoint, config.concurrency, config.max_attempts) == ("slow", 3, 5)
    assert config.visibility_timeout_seconds == 20 + config.visibility_grace_seconds
    assert config.record_ttl_seconds == 600 + 20 + 120
    assert config.durability is Durability.FSYNC
    assert config.default_callback == CallbackTarget("https://hooks.example/done")
    assert config.default_callback_secret == "cb"
    memory = QueueLimits.from_env({"BUNDLESERVE_QUEUE_DURABILITY": "memory"})
    assert (
        QueueConfig.from_endpoint(Endpoint.model_validate(yaml.safe_load(ENDPOINT)), memory).durability
        is Durability.MEMORY
    )


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BUNDLESERVE_QUEUE_DURABILITY", "disk"),
        ("BUNDLESERVE_QUEUE_MAX_BACKLOG", "-1"),
        ("BUNDLESERVE_QUEUE_MAX_BACKLOG_BYTES", "1k"),
        ("BUNDLESERVE_REDIS_TIMEOUT_SECONDS", "2"),
        ("BUNDLESERVE_REDIS_TIMEOUT_SECONDS", "soon"),
        ("BUNDLESERVE_REDIS_TIMEOUT_SECONDS", "nan"),
    ],
)
def test_a_bad_queue_knob_is_refused_naming_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=name):
        QueueLimits.from_env({name: raw})


def test_the_observed_server_config_reaches_every_queue_of_the_process() -> None:
    limits = QueueLimits.from_env(
        {
            "BUNDLESERVE_REDIS_APPENDONLY": "yes",
            "BUNDLESERVE_REDIS_APPENDFSYNC": "always",
            "BUNDLESERVE_REDIS_TIMEOUT_SECONDS": "4.5",
        }
    )
    assert limits.redis_timeout_seconds == 4.5
    config = QueueConfig.from_endpoint(Endpoint.model_validate(yaml.safe_load(ENDPOINT)), limits)
    assert dict(config.observed_server_config) == {"appendonly": "yes", "appendfsync": "always"}


def test_retry_delays_are_jittered_and_capped() -> None:
    policy = RetryPolicy(base_delay_seconds=1, max_delay_seconds=5)
    for attempt in range(1, 10):
        for _ in range(50):
            assert 0 <= policy.delay(attempt) <= min(5, 2 ** (attempt - 1))
    assert len({policy.delay(4) for _ in range(20)}) > 1
    assert Outcome(False, 3, "HTTP 500").fields() == {
        "callback_status": "failed",
        "callback_attempts": 3,
        "callback_error": "HTTP 500",
    }


def test_recent_results_keep_terminal_records_within_bounds() -> None:
    cache = RecentResults(max_bytes=16 * 1024, max_age_seconds=60)
    cache.put(record(TaskStatus.STARTED))
    assert len(cache) == 0
    for i in range(100):
        cache.put(TaskRecord(task_id=f"{i:032x}", endpoint="e", status=TaskStatus.SUCCESS, result_json="1" * 500))
    assert 0 < len(cache) < 100
    assert cache.get(f"{99:032x}") is not None and cache.get(f"{0:032x}") is None
    expired = RecentResults(max_age_seconds=-1)
    expired.put(record(TaskStatus.FAILURE))
    assert expired.get("t" * 32) is None


@pytest.mark.parametrize(("raw", "expected"), [(None, 0.0), ("", 0.0), ("0", 0.0), ("2.5", 2.5), ("300", 300.0)])
def test_wait_parameter(raw: str | None, expected: float) -> None:
    assert parse_wait(raw) == expected


@pytest.mark.parametrize("raw", ["x", "-1", "301", "nan"])
def test_bad_wait_parameter(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_wait(raw)


def test_submission_parsing_accepts_callbacks() -> None:
    body = b'{"args": {"a": 1}, "callback_url": "https://h/cb", "callback_auth": {"kind": "basic", "username": "u", "password": "p"}}'
    parsed = parse_submission(body, kwargs_only=True)
    assert parsed.callback_auth is not None and parsed.callback_auth.username == "u"
