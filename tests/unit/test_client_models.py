"""EndpointRequest's validation and wire body, EndpointResponse's decoding (bundleserve.client.models)."""

from __future__ import annotations

import json

import pytest

from bundleserve.client import EndpointRequest, EndpointResponse, InvalidEndpointRequest, ModelError, Timeout
from bundleserve.client.models import EndpointInfo


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of url or args, got neither"),
        ({"args": {"a": 1}, "url": "https://x/y"}, "exactly one of url or args, got both"),
        ({"url": ""}, "url must be a non-empty string"),
        ({"args": {}, "return_pickled": "yes"}, "return_pickled must be True or False"),
        ({"args": {}, "callback_url": ""}, "callback_url must be a non-empty string"),
        ({"args": {}, "callback_auth_username": "u"}, "callback_auth_username given without callback_auth_kind"),
        ({"args": {}, "callback_url": "http://h/cb", "callback_auth_kind": "token"}, "must be 'basic' or 'mtls'"),
        ({"args": {}, "callback_auth_kind": "basic", "callback_auth_username": "u", "callback_auth_password": "p"},
         "callback_auth_kind needs callback_url"),
        ({"args": {}, "callback_url": "http://h/cb", "callback_auth_kind": "basic", "callback_auth_username": "u"},
         "'basic' needs callback_auth_password"),
        ({"args": {}, "callback_url": "http://h/cb", "callback_auth_kind": "mtls", "callback_auth_cert": "C"},
         "'mtls' needs callback_auth_key"),
        ({"args": {}, "callback_url": "http://h/cb", "callback_auth_kind": "basic", "callback_auth_username": "u",
          "callback_auth_password": "p", "callback_auth_key": "K"}, "callback_auth_key do not apply to callback_auth_kind 'basic'"),
        ({"url": "https://h/" + "x" * 5000}, "url: String should have at most 4096 characters"),
    ],
)  # fmt: skip
def test_invalid_requests_fail_at_construction_with_a_clear_message(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidEndpointRequest) as caught:
        EndpointRequest(**fields)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)  # Launch's client raises ValueError too


def test_the_common_body_is_exactly_args_so_routers_keep_their_fast_path() -> None:
    request = EndpointRequest(args={"x": 1})
    assert request.body(with_callback=False) == {"args": {"x": 1}}
    assert request.request_id and request.request_id_generated  # generated, client side only


def test_every_field_goes_into_the_async_body_in_the_native_shape() -> None:
    with pytest.warns(DeprecationWarning, match="request_id is deprecated"):
        request = EndpointRequest(
            url="https://data.example/in.bin",
            return_pickled=True,
            callback_url="https://hooks.example/done",
            callback_auth_kind="basic",
            callback_auth_username="user",
            callback_auth_password="secret",
            request_id="r-1",
        )
    assert request.body(with_callback=True, timeout_seconds=2.5) == {
        "url": "https://data.example/in.bin",
        "return_pickled": True,
        "timeout_seconds": 2.5,
        "callback_url": "https://hooks.example/done",
        "callback_auth": {"kind": "basic", "username": "user", "password": "secret"},
        "request_id": "r-1",
    }
    assert "callback" not in json.dumps(request.body(with_callback=False))


def test_mtls_credentials_travel_as_cert_and_key_and_never_show_in_repr() -> None:
    request = EndpointRequest(
        args={},
        callback_url="https://hooks.example/done",
        callback_auth_kind="mtls",
        callback_auth_cert="-----BEGIN CERTIFICATE-----",
        callback_auth_key="-----BEGIN PRIVATE KEY-----",
    )
    assert request.body(with_callback=True)["callback_auth"] == {
        "kind": "mtls",
        "cert": "-----BEGIN CERTIFICATE-----",
        "key": "-----BEGIN PRIVATE KEY-----",
    }
    assert "PRIVATE" not in repr(request) and "CERTIFICATE" not in repr(request)
    basic = EndpointRequest(
        args={}, callback_url="http://h/cb", callback_auth_kind="basic", callback_auth_username="u",
        callback_auth_password="hunter2",
    )  # fmt: skip
    assert "hunter2" not in repr(basic)


def test_response_result_is_the_json_text_of_the_value_as_in_launch() -> None:
    response = EndpointResponse.from_native(
        {"status": "SUCCESS", "result": {"y": [1, 2]}, "result_url": None, "traceback": None, "status_code": 200}
    )
    assert json.loads(response.result or "") == {"y": [1, 2]}
    assert response.result_value() == {"y": [1, 2]}
    assert response.status_code == 200 and response.succeeded and response.finished
    assert response.raise_for_status() is response
    none = EndpointResponse.from_native({"status": "SUCCESS", "result": None})
    assert none.result == "null" and none.result_value() is None


def test_a_pickled_result_has_a_url_and_no_result() -> None:
    response = EndpointResponse.from_native({"status": "SUCCESS", "result": None, "result_url": "/v1/tasks/t/result"})
    assert response.result is None and response.result_url == "/v1/tasks/t/result"


def test_failure_and_expiry_raise_on_request() -> None:
    failed = EndpointResponse.from_native(
        {"task_id": "t1", "status": "FAILURE", "traceback": "Traceback\nValueError: bad x", "status_code": 500}
    )
    assert failed.result is None and not failed.succeeded and failed.finished
    with pytest.raises(ModelError) as caught:
        failed.raise_for_status()
    assert caught.value.traceback == "Traceback\nValueError: bad x"
    assert caught.value.model_status_code == 500
    assert caught.value.message == "ValueError: bad x"
    expired = EndpointResponse.from_native({"task_id": "t2", "status": "EXPIRED"})
    with pytest.raises(Timeout, match="t2 expired"):
        expired.raise_for_status()
    pending = EndpointResponse.from_native({"task_id": "t3", "status": "PENDING"})
    assert not pending.finished and pending.raise_for_status() is pending


def test_native_document_round_trips() -> None:
    document = {
        "task_id": "t",
        "status": "SUCCESS",
        "result": [1],
        "result_url": None,
        "traceback": None,
        "status_code": 200,
    }
    assert EndpointResponse.from_native(document).native() == document


def test_endpoint_info_reads_the_documented_shape() -> None:
    info = EndpointInfo.from_document({"name": "echo", "modes": ["sync", "async"], "ready": True, "url": "/x"})
    assert info == EndpointInfo("echo", ("sync", "async"), True)
    assert EndpointInfo.from_document({"name": "e", "modes": ["sync"]}).ready is None
