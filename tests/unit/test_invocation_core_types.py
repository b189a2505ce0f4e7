"""The invocation core's pure parts: a task carries any Invocation, the public URL helper, the failure mapping."""

from __future__ import annotations

import json

import pytest

from bundleserve.api.errors import InvalidRequest, ModelError
from bundleserve.api.invocation import Invocation, ModelReply
from bundleserve.dialects.base import public_base_url, read_public_url
from bundleserve.queue.tasks import TaskRequest
from bundleserve.router.core import model_failure


@pytest.mark.parametrize(
    "inv",
    [
        Invocation(body=b'{"x":1}', request_id="r1", timeout_seconds=3.0),
        Invocation(body=b"\x00\xffbinary", content_type="image/png", raw=True, custom_attributes="trace=1"),
        Invocation(url="https://example.com/in.bin", return_pickled=True, accept="application/json"),
    ],
    ids=["json-args", "raw-bytes", "url"],
)
def test_a_task_request_carries_an_invocation_through_its_record(inv: Invocation) -> None:
    stored = TaskRequest.loads(TaskRequest.from_invocation(inv).dumps())
    assert stored.to_invocation() == inv


def test_raw_bytes_are_base64_in_the_record_not_json_text() -> None:
    record = json.loads(TaskRequest.from_invocation(Invocation(body=b"\xff\x00", raw=True)).dumps())
    assert record["raw_b64"] == "/wA="


def test_a_plain_native_body_loads_as_before() -> None:
    assert TaskRequest.loads(b'{"args": {"a": 1}}').to_invocation().body == b'{"a":1}'


@pytest.mark.parametrize(
    ("headers", "env", "expected"),
    [
        ({"Host": "router:8080"}, {}, "http://router:8080"),
        (
            {"Host": "router:8080", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com, proxy"},
            {},
            "https://api.example.com",
        ),
        (
            {"Host": "router:8080"},
            {"BUNDLESERVE_PUBLIC_URL": "https://models.example.com/"},
            "https://models.example.com",
        ),
    ],
    ids=["host", "forwarded", "configured"],
)
def test_the_public_base_url(headers: dict[str, str], env: dict[str, str], expected: str) -> None:
    assert public_base_url(headers, configured=read_public_url(env)) == expected


def test_invalid_arguments_of_the_runtime_are_the_clients_mistake() -> None:
    body = json.dumps({"error": {"code": "invalid_arguments", "message": "predict: missing argument 'x'"}}).encode()
    error = model_failure(400, body, fallback="failed")
    assert isinstance(error, InvalidRequest) and "'x'" in error.message
    other = model_failure(400, json.dumps({"error": {"code": "bad", "message": "no"}}).encode(), fallback="failed")
    assert isinstance(other, ModelError) and other.details["status_code"] == 400


def test_model_reply_is_the_one_reply_type() -> None:
    reply = ModelReply(200, b'{"a": 1}', "application/json; charset=utf-8", custom_attributes="c")
    assert (reply.ok, reply.is_json, reply.is_pickle, reply.result(), reply.status_code) == (
        True,
        True,
        False,
        {"a": 1},
        200,
    )
