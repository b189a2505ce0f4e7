"""SageMaker Runtime on the wire, pure: request headers -> typed request -> `Invocation`, reply/errors -> HTTP parts.

No I/O here: the routes (`dialects.sagemaker.routes`) read the request, call these functions, call the core and
send what these functions build. The facts come from botocore's own service model (`sagemaker-runtime`
2017-05-13, rest-json) and its parsers: botocore reads an error's code from the `x-amzn-ErrorType` header and its
message from the body's `message`/`Message`; modeled members (ModelError's OriginalStatusCode, ...) from the body.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from multidict import istr

from bundleserve.api import errors
from bundleserve.api.invocation import SDK_INVOCATION_ID_HEADER, Invocation, body_input, idempotency_key, loads_json
from bundleserve.dialects.sagemaker import sigv4

JSON_TYPE = "application/json"
OCTET_STREAM = "application/octet-stream"
DEFAULT_VARIANT = "AllTraffic"  # the variant name SageMaker gives a single-variant endpoint

# Header names (case-insensitive on the wire; these are botocore's spellings). As `istr`, a case-insensitive lookup in
# the request's headers (`multidict.CIMultiDict`) skips folding the name again: a third of its cost; elsewhere they
# are the plain strings they spell.
H_CONTENT_TYPE: str = istr("Content-Type")
H_ACCEPT: str = istr("Accept")
H_SM_CONTENT_TYPE: str = istr("X-Amzn-SageMaker-Content-Type")
H_SM_ACCEPT: str = istr("X-Amzn-SageMaker-Accept")
H_CUSTOM_ATTRIBUTES: str = istr("X-Amzn-SageMaker-Custom-Attributes")
H_INFERENCE_ID: str = istr("X-Amzn-SageMaker-Inference-Id")
H_INPUT_LOCATION: str = istr("X-Amzn-SageMaker-InputLocation")
H_REQUEST_TTL: str = istr("X-Amzn-SageMaker-RequestTTLSeconds")
H_INVOCATION_TIMEOUT: str = istr("X-Amzn-SageMaker-InvocationTimeoutSeconds")
H_TARGET_VARIANT: str = istr("X-Amzn-SageMaker-Target-Variant")
H_OUTPUT_LOCATION = "X-Amzn-SageMaker-OutputLocation"
H_FAILURE_LOCATION = "X-Amzn-SageMaker-FailureLocation"
H_INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"
H_REQUEST_ID = "x-amzn-RequestId"
H_ERROR_TYPE = "X-Amzn-ErrorType"

# Request headers whose meaning we do not implement and that would change the result if ignored: refused with a
# ValidationError naming the feature. (PrefixAwareId is a routing hint only; it is accepted and ignored.)
UNSUPPORTED_HEADERS: Mapping[str, str] = {
    istr("X-Amzn-SageMaker-Target-Model"): "multi-model endpoints (TargetModel)",
    istr("X-Amzn-SageMaker-Target-Container-Hostname"): "multi-container endpoints (TargetContainerHostname)",
    istr("X-Amzn-SageMaker-Inference-Component"): "inference components (InferenceComponentName)",
    istr("X-Amzn-SageMaker-Session-Id"): "stateful sessions (SessionId)",
    istr("X-Amzn-SageMaker-Enable-Explanations"): "SageMaker Clarify explanations (EnableExplanations)",
    istr("X-Amzn-SageMaker-S3OutputPathExtension"): "S3 output path extensions (S3OutputPathExtension)",
    istr("X-Amzn-SageMaker-Filename"): "output file names (Filename)",
}

_SDK_INVOCATION_ID: str = istr(SDK_INVOCATION_ID_HEADER)

ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
INPUT_LOCATION = re.compile(r"(https|http|s3)://([^/]+)/?(.*)")
REQUEST_TTL_RANGE = (60, 21600)
INVOCATION_TIMEOUT_RANGE = (1, 3600)
_HEADER_VALUE_MAX = 1024


class Operation(StrEnum):
    INVOKE = "InvokeEndpoint"
    INVOKE_ASYNC = "InvokeEndpointAsync"
    INVOKE_STREAM = "InvokeEndpointWithResponseStream"


class ValidationError(errors.InvalidRequest):
    """A request the SageMaker model forbids (pattern, range, unsupported feature). Native code: invalid_request."""


@dataclass(frozen=True, slots=True)
class SageMakerRequest:
    """The members of one of the three operations, taken from the path and headers (the body comes later)."""

    operation: Operation
    endpoint: str
    content_type: str | None
    accept: str | None
    custom_attributes: str | None
    inference_id: str | None
    #: botocore's `amz-sdk-invocation-id` (the same on every retry of one call), as an Invocation idempotency key.
    idempotency_key: str | None = None
    #: TargetVariant: the production variant the call names (None: any, picked by weight).
    target_variant: str | None = None
    input_location: str | None = None
    request_ttl_seconds: int | None = None
    invocation_timeout_seconds: int | None = None


def _ascii_header(headers: Mapping[str, str], name: str, *, min_length: int = 0) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if not value.isascii() or len(value) > _HEADER_VALUE_MAX or len(value) < min_length:
        raise ValidationError(f"{name} must be {min_length}..{_HEADER_VALUE_MAX} ASCII characters")
    return value


def _int_header(headers: Mapping[str, str], name: str, bounds: tuple[int, int]) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    low, high = bounds
    try:
        number = int(value.strip())
    except ValueError:
        raise ValidationError(f"{name} must be an integer between {low} and {high}, got {value!r}") from None
    if not low <= number <= high:
        raise ValidationError(f"{name} must be between {low} and {high}, got {number}")
    return number


def check_endpoint_name(name: str) -> str:
    if len(name) > 63 or ENDPOINT_NAME.fullmatch(name) is None:
        raise ValidationError(
            f"1 validation error detected: Value {name!r} at 'endpointName' failed to satisfy constraint: "
            "Member must have length less than or equal to 63 and match pattern ^[a-zA-Z0-9](-*[a-zA-Z0-9])*"
        )
    return name


def parse_request(
    operation: Operation, endpoint: str, headers: Mapping[str, str], *, variant: str | None = DEFAULT_VARIANT
) -> SageMakerRequest:
    """Path and headers of one operation, validated (ValidationError on anything the service would refuse).

    `variant`: the production variant served here (a router), which a TargetVariant must name; None on a front that
    picks among the endpoint's variants itself (the gateway's `EndpointCalls` refuses an unknown one,
    `UnknownVariant`, rendered as ValidationError too)."""
    check_endpoint_name(endpoint)
    for name, feature in UNSUPPORTED_HEADERS.items():
        if name in headers:
            raise ValidationError(f"{feature} are not supported by this endpoint; remove the {name} header")
    target_variant = headers.get(H_TARGET_VARIANT)
    if target_variant is not None and variant is not None and target_variant != variant:
        raise ValidationError(
            f"the production variant {target_variant!r} is not served here (this endpoint's router serves {variant!r})"
        )
    inference_id = headers.get(H_INFERENCE_ID)
    if inference_id is not None and not (1 <= len(inference_id) <= 64 and inference_id.isascii()):
        raise ValidationError(f"{H_INFERENCE_ID} must be 1..64 ASCII characters")
    custom = _ascii_header(headers, H_CUSTOM_ATTRIBUTES)
    retried = idempotency_key("sagemaker", headers.get(_SDK_INVOCATION_ID))
    if operation is Operation.INVOKE_ASYNC:
        location = _ascii_header(headers, H_INPUT_LOCATION, min_length=1)
        if location is not None and INPUT_LOCATION.fullmatch(location) is None:
            raise ValidationError(f"{H_INPUT_LOCATION} must be an https:// (or http://, s3://) URL")
        return SageMakerRequest(
            operation,
            endpoint,
            content_type=_ascii_header(headers, H_SM_CONTENT_TYPE),
            accept=_ascii_header(headers, H_SM_ACCEPT),
            custom_attributes=custom,
            inference_id=inference_id,
            idempotency_key=retried,
            input_location=location,
            request_ttl_seconds=_int_header(headers, H_REQUEST_TTL, REQUEST_TTL_RANGE),
            invocation_timeout_seconds=_int_header(headers, H_INVOCATION_TIMEOUT, INVOCATION_TIMEOUT_RANGE),
        )
    accept_header = H_SM_ACCEPT if operation is Operation.INVOKE_STREAM else H_ACCEPT
    return SageMakerRequest(
        operation,
        endpoint,
        content_type=_ascii_header(headers, H_CONTENT_TYPE),
        accept=_ascii_header(headers, accept_header),
        custom_attributes=custom,
        inference_id=inference_id,
        idempotency_key=retried,
        target_variant=target_variant,
    )


def build_invocation(
    request: SageMakerRequest,
    body: bytes,
    *,
    python_bundle: bool,
    allow_s3_input: bool = False,
    timeout_seconds: float | None = None,
) -> Invocation:
    """What the model receives, by the rule in docs/dialects.md.

    A Python bundle gets a JSON object body (Content-Type application/json, `+json` or absent) as keyword arguments,
    any other body as bytes (`api.invocation.body_input`). A runnable image gets the raw body and content type
    unchanged. An async request has exactly one input: the inline body or `X-Amzn-SageMaker-InputLocation`, whose
    object the core fetches (http(s) through the destination guard, s3 through the S3 client) and then treats
    exactly as an inline body (`Invocation.url_body`).
    An async request's InvocationTimeoutSeconds and RequestTTLSeconds go to the task service, not into the Invocation.
    """
    if request.operation is Operation.INVOKE_ASYNC:
        if request.input_location is not None and body:
            raise ValidationError(f"give either {H_INPUT_LOCATION} or a request body, not both")
        if request.input_location is None and not body:
            raise ValidationError(f"an async invocation needs a request body or {H_INPUT_LOCATION}")
    if request.input_location is not None:
        if request.input_location.startswith("s3://") and not allow_s3_input:
            raise ValidationError("s3:// input locations need S3 storage configured on this deployment")
        return Invocation(
            body=b"",
            content_type=request.content_type or "",
            raw=True,
            url=request.input_location,
            timeout_seconds=timeout_seconds,
            accept=request.accept,
            custom_attributes=request.custom_attributes,
            request_id=request.inference_id,
            idempotency_key=request.idempotency_key,
            url_body=True,
        )
    content_type, raw = body_input(body, request.content_type, python_bundle=python_bundle)
    return Invocation(
        body=body,
        content_type=content_type,
        raw=raw,
        url=None,
        timeout_seconds=timeout_seconds,
        accept=request.accept,
        custom_attributes=request.custom_attributes,
        request_id=request.inference_id,
        idempotency_key=request.idempotency_key,
        variant=request.target_variant,
    )


# -- replies -------------------------------------------------------------------------------------------------------


def new_request_id() -> str:
    """A random (version 4) UUID in its text form, as SageMaker's request ids are; formatted from 16 random bytes
    directly, which costs a third of `str(uuid.uuid4())` on every call of the dialect."""
    digits = os.urandom(16).hex()
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def reply_headers(*, request_id: str, custom_attributes: str | None, variant: str = DEFAULT_VARIANT) -> dict[str, str]:
    """Headers every successful answer carries (botocore maps them to InvokedProductionVariant, CustomAttributes)."""
    headers = {H_INVOKED_VARIANT: variant, H_REQUEST_ID: request_id}
    if custom_attributes is not None:
        headers[H_CUSTOM_ATTRIBUTES] = custom_attributes
    return headers


def payload_bytes(data: bytes, *, python_bundle: bool) -> bytes:
    """One model stream event as PayloadPart bytes.

    A Python bundle's events are JSON (the runtime encodes each yielded item): a yielded `str` becomes its text, any
    other item stays JSON-encoded. A runnable image's chunks pass through unchanged.
    """
    if not python_bundle:
        return data
    try:
        value = loads_json(data)
    except ValueError:
        return data
    return value.encode("utf-8") if isinstance(value, str) else data


# -- errors --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorShape:
    status: int
    code: str


# THE mapping from the ApiError hierarchy to SageMaker's modeled errors; most specific class first.
# Why these choices: an unknown endpoint is a ValidationError in SageMaker (not 404); a model timeout is a ModelError
# (424 is never retried by SDKs, a 504 would make botocore re-run a long model call three times); overload is
# ServiceUnavailable 503 (SDKs back off and retry it); a model that is not ready yet is ModelNotReadyException 429.
ERROR_TABLE: tuple[tuple[type[errors.ApiError], ErrorShape], ...] = (
    (sigv4.SignatureRejected, ErrorShape(403, "InvalidSignatureException")),  # code: the subclass' aws_code
    (errors.Unauthorized, ErrorShape(403, "UnrecognizedClientException")),
    (errors.NotFound, ErrorShape(400, "ValidationError")),
    (errors.ModeNotServed, ErrorShape(400, "ValidationError")),
    (errors.InvalidRequest, ErrorShape(400, "ValidationError")),
    (errors.PayloadTooLarge, ErrorShape(413, "ValidationError")),
    (errors.RequestTimeout, ErrorShape(408, "RequestTimeout")),  # a body that trickled past its deadline
    (errors.ModelError, ErrorShape(424, "ModelError")),
    (errors.Timeout, ErrorShape(424, "ModelError")),
    (errors.Overloaded, ErrorShape(503, "ServiceUnavailable")),
    (errors.ModelNotReady, ErrorShape(429, "ModelNotReadyException")),
    (errors.Unavailable, ErrorShape(503, "ServiceUnavailable")),
    (errors.ApiError, ErrorShape(500, "InternalFailure")),
)


def error_shape(error: errors.ApiError) -> ErrorShape:
    for cls, shape in ERROR_TABLE:
        if isinstance(error, cls):
            if isinstance(error, sigv4.SignatureRejected):
                return ErrorShape(shape.status, error.aws_code)
            return shape
    raise AssertionError("ApiError is the last row of ERROR_TABLE")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    body: bytes
    headers: dict[str, str]


def render_error(error: errors.ApiError, *, request_id: str) -> ErrorReply:
    """The error as botocore parses it: `X-Amzn-ErrorType`, a non-empty JSON body with `message`, the right status.

    ModelError adds OriginalStatusCode (the model's status) and OriginalMessage (its message or traceback).
    """
    shape = error_shape(error)
    body: dict[str, Any] = {"message": error.message, "Message": error.message, "__type": shape.code}
    if shape.code == "ModelError":
        status_code = error.details.get("status_code")
        if isinstance(status_code, int):
            body["OriginalStatusCode"] = status_code
        original = error.details.get("traceback") or error.message
        body["OriginalMessage"] = str(original)
    headers = {
        **error.headers,
        H_ERROR_TYPE: shape.code,
        H_REQUEST_ID: request_id,
        "Content-Type": JSON_TYPE,
    }
    return ErrorReply(shape.status, json.dumps(body).encode("utf-8"), headers)


def unknown_endpoint(name: str) -> errors.NotFound:
    """SageMaker's wording for a name that is not served here (rendered as ValidationError 400)."""
    return errors.NotFound(f"Endpoint {name} not found.")
