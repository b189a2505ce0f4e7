"""SageMaker Runtime parsing and rendering: headers -> request -> Invocation, and errors as botocore parses them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import botocore.session
import pytest
from botocore.parsers import create_parser
from multidict import CIMultiDict

from bundleserve.api import errors
from bundleserve.api.invocation import body_input
from bundleserve.dialects.sagemaker import protocol, sigv4
from bundleserve.dialects.sagemaker.protocol import Operation, ValidationError

_MODEL = botocore.session.get_session().get_service_model("sagemaker-runtime")


def _parse_error(reply: protocol.ErrorReply, operation: str = "InvokeEndpoint") -> dict[str, Any]:
    """botocore's own rest-json parser, given exactly what the dialect would send."""
    op = _MODEL.operation_model(operation)
    response = {"status_code": reply.status, "headers": CIMultiDict(reply.headers), "body": reply.body}
    parsed: dict[str, Any] = create_parser("rest-json").parse(response, op.output_shape)
    return parsed


def _headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({name.replace("_", "-"): value for name, value in values.items()})


def test_invoke_headers() -> None:
    request = protocol.parse_request(
        Operation.INVOKE,
        "my-ep",
        CIMultiDict(
            {
                "content-type": "text/csv",
                "accept": "application/json",
                "x-amzn-sagemaker-custom-attributes": "trace=1",
                "X-Amzn-SageMaker-Inference-Id": "abc",
                "X-Amzn-SageMaker-Prefix-Aware-Id": "p",  # a routing hint: accepted and ignored
            }
        ),
    )
    assert (request.content_type, request.accept, request.custom_attributes, request.inference_id) == (
        "text/csv",
        "application/json",
        "trace=1",
        "abc",
    )


def test_stream_reads_accept_from_the_sagemaker_header() -> None:
    headers = CIMultiDict({"Accept": "text/html", "X-Amzn-SageMaker-Accept": "text/event-stream"})
    assert protocol.parse_request(Operation.INVOKE_STREAM, "e", headers).accept == "text/event-stream"


def test_async_reads_its_own_content_type_and_limits() -> None:
    headers = CIMultiDict(
        {
            "X-Amzn-SageMaker-Content-Type": "application/json",
            "X-Amzn-SageMaker-Accept": "text/plain",
            "X-Amzn-SageMaker-InputLocation": "https://data.example/in.json",
            "X-Amzn-SageMaker-RequestTTLSeconds": "60",
            "X-Amzn-SageMaker-InvocationTimeoutSeconds": "3600",
        }
    )
    request = protocol.parse_request(Operation.INVOKE_ASYNC, "e", headers)
    assert request.content_type == "application/json" and request.accept == "text/plain"
    assert request.input_location == "https://data.example/in.json"
    assert (request.request_ttl_seconds, request.invocation_timeout_seconds) == (60, 3600)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Amzn-SageMaker-RequestTTLSeconds", "999999"),
        ("X-Amzn-SageMaker-RequestTTLSeconds", "59"),
        ("X-Amzn-SageMaker-RequestTTLSeconds", "ten"),
        ("X-Amzn-SageMaker-InvocationTimeoutSeconds", "0"),
        ("X-Amzn-SageMaker-InvocationTimeoutSeconds", "3601"),
        ("X-Amzn-SageMaker-InputLocation", "ftp://host/x"),
        ("X-Amzn-SageMaker-Inference-Id", "x" * 65),
        ("X-Amzn-SageMaker-Custom-Attributes", "x" * 1025),
        ("X-Amzn-SageMaker-Custom-Attributes", "caf\u00e9"),
    ],
)
def test_out_of_range_async_headers_are_validation_errors(header: str, value: str) -> None:
    with pytest.raises(ValidationError, match=header.split("-")[-1][:8]):
        protocol.parse_request(Operation.INVOKE_ASYNC, "e", CIMultiDict({header: value}))


@pytest.mark.parametrize("header", sorted(protocol.UNSUPPORTED_HEADERS))
def test_semantics_changing_headers_are_refused(header: str) -> None:
    with pytest.raises(ValidationError, match="not supported"):
        protocol.parse_request(Operation.INVOKE, "e", CIMultiDict({header: "x"}))


def test_target_variant_must_be_ours() -> None:
    ok = protocol.parse_request(Operation.INVOKE, "e", CIMultiDict({"X-Amzn-SageMaker-Target-Variant": "AllTraffic"}))
    assert ok.endpoint == "e"
    with pytest.raises(ValidationError, match="production variant"):
        protocol.parse_request(Operation.INVOKE, "e", CIMultiDict({"X-Amzn-SageMaker-Target-Variant": "canary"}))
    green = CIMultiDict({"X-Amzn-SageMaker-Target-Variant": "green"})
    assert protocol.parse_request(Operation.INVOKE, "e", green, variant="green").endpoint == "e"  # a green router
    with pytest.raises(ValidationError, match="'green' is not served here"):
        protocol.parse_request(Operation.INVOKE, "e", green, variant="blue")
    # A front (the gateway) leaves the check to its own pick among the endpoint's variants.
    assert protocol.parse_request(Operation.INVOKE, "e", green, variant=None).endpoint == "e"


@pytest.mark.parametrize("name", ["-bad", "bad-", "has_underscore", "x" * 64, "d.t"])
def test_endpoint_names_follow_the_service_pattern(name: str) -> None:
    with pytest.raises(ValidationError, match="endpointName"):
        protocol.parse_request(Operation.INVOKE, name, CIMultiDict())


def _invocation(content_type: str | None, body: bytes, *, python_bundle: bool = True) -> Any:
    headers = CIMultiDict({"Content-Type": content_type} if content_type else {})
    request = protocol.parse_request(Operation.INVOKE, "e", headers)
    return protocol.build_invocation(request, body, python_bundle=python_bundle)


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8"])
def test_a_json_object_becomes_keyword_arguments_for_python_bundles(content_type: str | None) -> None:
    inv = _invocation(content_type, b'{"x": 1}')
    assert inv.raw is False and json.loads(inv.body) == {"x": 1}
    assert inv.content_type == (content_type or "application/json")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/csv", b"1,2\n"), ("application/json", b"[1, 2]"), (None, b"\x89PNG"), ("application/json", b"{bad")],
)
def test_other_bodies_reach_python_bundles_as_bytes(content_type: str | None, body: bytes) -> None:
    inv = _invocation(content_type, body)
    assert inv.raw is True and inv.body == body
    assert inv.content_type == (content_type or "application/octet-stream")


def test_runnable_images_get_the_raw_body_and_content_type() -> None:
    inv = _invocation("application/json; charset=utf-8", b'{"x": 1}', python_bundle=False)
    assert (inv.raw, inv.body, inv.content_type) == (True, b'{"x": 1}', "application/json; charset=utf-8")


def _async(headers: dict[str, str], body: bytes, **kwargs: Any) -> Any:
    request = protocol.parse_request(Operation.INVOKE_ASYNC, "e", CIMultiDict(headers))
    return protocol.build_invocation(request, body, python_bundle=True, **kwargs)


def test_async_takes_exactly_one_input() -> None:
    location = {"X-Amzn-SageMaker-InputLocation": "https://data.example/in"}
    by_url = _async({**location, "X-Amzn-SageMaker-InvocationTimeoutSeconds": "30"}, b"")
    assert (by_url.url, by_url.raw, by_url.body, by_url.timeout_seconds) == ("https://data.example/in", True, b"", None)
    inline = _async({"X-Amzn-SageMaker-Content-Type": "application/json"}, b'{"a": 2}')
    assert inline.url is None and inline.raw is False
    with pytest.raises(ValidationError, match="not both"):
        _async(location, b"{}")
    with pytest.raises(ValidationError, match="needs a request body"):
        _async({}, b"")


def test_an_input_location_is_the_body_with_the_declared_type() -> None:
    """The InputLocation object is judged like an inline body once fetched: the invocation carries the client's
    declared type ("" for none), not the type the source will report."""
    location = {"X-Amzn-SageMaker-InputLocation": "https://data.example/in"}
    declared = _async({**location, "X-Amzn-SageMaker-Content-Type": "application/json"}, b"")
    assert (declared.url_body, declared.content_type) == (True, "application/json")
    assert _async(location, b"").content_type == ""
    assert not _async({"X-Amzn-SageMaker-Content-Type": "text/csv"}, b"1,2").url_body


@pytest.mark.parametrize(
    ("body", "content_type", "python_bundle", "expected"),
    [
        (b'{"a": 4}', "application/json", True, ("application/json", False)),
        (b'{"a": 4}', None, True, ("application/json", False)),
        (b'{"a": 4}', "application/vnd.x+json; charset=utf-8", True, ("application/vnd.x+json; charset=utf-8", False)),
        (b"[1, 2]", "application/json", True, ("application/json", True)),
        (b'{"a": 4}', "text/csv", True, ("text/csv", True)),
        (b"\x89PNG", None, True, ("application/octet-stream", True)),
        (b'{"a": 4}', None, False, ("application/octet-stream", True)),
    ],
)
def test_body_input_is_the_one_rule(
    body: bytes, content_type: str | None, python_bundle: bool, expected: tuple[str, bool]
) -> None:
    assert body_input(body, content_type, python_bundle=python_bundle) == expected


def test_s3_input_needs_s3_configured() -> None:
    location = {"X-Amzn-SageMaker-InputLocation": "s3://bucket/key"}
    with pytest.raises(ValidationError, match="S3"):
        _async(location, b"")
    assert _async(location, b"", allow_s3_input=True).url == "s3://bucket/key"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'"text \\u00e9"', "text é".encode()),
        (b'{"a": [1, 2]}', b'{"a": [1, 2]}'),
        (b"3", b"3"),
        (b"not json", b"not json"),
    ],
)
def test_python_stream_items_are_json_unless_str(data: bytes, expected: bytes) -> None:
    assert protocol.payload_bytes(data, python_bundle=True) == expected


def test_runnable_image_stream_chunks_pass_through() -> None:
    assert protocol.payload_bytes(b'"quoted"', python_bundle=False) == b'"quoted"'


# -- errors, parsed by botocore itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (protocol.unknown_endpoint("nope"), 400, "ValidationError"),
        (errors.InvalidRequest("bad"), 400, "ValidationError"),
        (errors.ModeNotServed("no async"), 400, "ValidationError"),
        (errors.PayloadTooLarge("big"), 413, "ValidationError"),
        (errors.Overloaded("busy", retry_after_seconds=2), 503, "ServiceUnavailable"),
        (errors.Unavailable("draining"), 503, "ServiceUnavailable"),
        (errors.ModelNotReady("loading"), 429, "ModelNotReadyException"),
        (errors.Timeout("too slow"), 424, "ModelError"),
        (errors.ApiError("bug"), 500, "InternalFailure"),
        (sigv4.SignatureRejected("bad sig"), 403, "InvalidSignatureException"),
        (sigv4.UnrecognizedClient("who"), 403, "UnrecognizedClientException"),
        (sigv4.MissingAuthenticationToken("none"), 403, "MissingAuthenticationTokenException"),
    ],
)
def test_errors_render_as_botocore_parses_them(error: errors.ApiError, status: int, code: str) -> None:
    reply = protocol.render_error(error, request_id="rid-1")
    assert reply.status == status
    parsed = _parse_error(reply)
    assert parsed["Error"]["Code"] == code
    assert parsed["Error"]["Message"] == error.message
    assert parsed["ResponseMetadata"]["RequestId"] == "rid-1"
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == status


def test_overload_keeps_retry_after() -> None:
    reply = protocol.render_error(errors.Overloaded("busy", retry_after_seconds=3), request_id="r")
    assert reply.headers["Retry-After"] == "3"


def test_model_error_carries_the_models_status_and_message() -> None:
    error = errors.ModelError("the model failed", status_code=500, traceback="Traceback ...\nValueError: no")
    reply = protocol.render_error(error, request_id="r")
    assert reply.status == 424
    parsed = _parse_error(reply)
    assert parsed["Error"]["Code"] == "ModelError"
    body = json.loads(reply.body)
    assert body["OriginalStatusCode"] == 500
    assert body["OriginalMessage"].endswith("ValueError: no")


def test_every_api_error_class_has_a_row() -> None:
    """A new ApiError subclass falls through to a documented row, never an exception."""

    def subclasses(cls: type[errors.ApiError]) -> list[type[errors.ApiError]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in subclasses(child))]

    for cls in subclasses(errors.ApiError):
        try:
            instance = cls("m")
        except TypeError:
            continue
        assert protocol.error_shape(instance).status >= 400


def test_success_headers() -> None:
    assert protocol.reply_headers(request_id="r", custom_attributes="a=b") == {
        "x-Amzn-Invoked-Production-Variant": "AllTraffic",
        "x-amzn-RequestId": "r",
        "X-Amzn-SageMaker-Custom-Attributes": "a=b",
    }


def test_request_ids_are_distinct_version_4_uuids() -> None:
    ids = {protocol.new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
