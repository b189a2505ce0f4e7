"""OpenAPI descriptions of the SageMaker Runtime routes (merged into the router's document by `dialects.openapi`).

Keys follow `dialects.openapi.route_key`: (METHOD, path with every parameter reduced to `{}`).
"""

from __future__ import annotations

from typing import Any

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["message", "__type"],
    "properties": {
        "message": {"type": "string"},
        "Message": {"type": "string"},
        "__type": {"type": "string", "description": "the same code as the X-Amzn-ErrorType header"},
        "OriginalStatusCode": {"type": "integer", "description": "ModelError only: the model's HTTP status"},
        "OriginalMessage": {"type": "string", "description": "ModelError only: the model's message or traceback"},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "A SageMaker Runtime error (code in X-Amzn-ErrorType)",
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
        for status in statuses
    }


_RAW_BODY = {"required": True, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
_INVOKE_ERRORS = _errors(400, 403, 413, 424, 429, 500, 503)

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/endpoints/{}/invocations"): {
        "summary": "SageMaker InvokeEndpoint: the raw body in, the model's output out",
        "operationId": "sagemakerInvokeEndpoint",
        "tags": ["SageMaker Runtime"],
        "requestBody": _RAW_BODY,
        "responses": {
            "200": {"description": "The model's output", "content": {"*/*": {"schema": {"type": "string"}}}},
            **_INVOKE_ERRORS,
        },
    },
    ("POST", "/endpoints/{}/invocations-response-stream"): {
        "summary": "SageMaker InvokeEndpointWithResponseStream: PayloadPart events",
        "operationId": "sagemakerInvokeEndpointWithResponseStream",
        "tags": ["SageMaker Runtime"],
        "requestBody": _RAW_BODY,
        "responses": {
            "200": {
                "description": "An AWS event stream of PayloadPart events; a mid-stream failure is a ModelStreamError frame",
                "content": {"application/vnd.amazon.eventstream": {"schema": {"type": "string", "format": "binary"}}},
            },
            **_INVOKE_ERRORS,
        },
    },
    ("POST", "/endpoints/{}/async-invocations"): {
        "summary": "SageMaker InvokeEndpointAsync: queue the inline body or X-Amzn-SageMaker-InputLocation",
        "operationId": "sagemakerInvokeEndpointAsync",
        "tags": ["SageMaker Runtime"],
        "requestBody": {"required": False, "content": _RAW_BODY["content"]},
        "responses": {
            "202": {
                "description": "Queued; X-Amzn-SageMaker-OutputLocation and -FailureLocation name where to poll",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"InferenceId": {"type": "string"}}}
                    }
                },
            },
            **_errors(400, 403, 413, 500, 503),
        },
    },
    ("GET", "/endpoints/{}/async-invocations/{}/output"): {
        "summary": "The output of an async invocation (404 until written)",
        "operationId": "sagemakerAsyncOutput",
        "tags": ["SageMaker Runtime"],
        "responses": {
            "200": {"description": "The result", "content": {"*/*": {"schema": {"type": "string"}}}},
            "404": {"description": "Not written (yet)"},
            **_errors(400, 403),
        },
    },
    ("GET", "/endpoints/{}/async-invocations/{}/failure"): {
        "summary": "The failure of an async invocation (404 unless it failed or expired)",
        "operationId": "sagemakerAsyncFailure",
        "tags": ["SageMaker Runtime"],
        "responses": {
            "200": {
                "description": "Why it failed",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string", "enum": ["FAILURE", "EXPIRED"]},
                                "message": {"type": "string"},
                                "status_code": {"type": ["integer", "null"]},
                                "traceback": {"type": ["string", "null"]},
                            },
                        }
                    }
                },
            },
            "404": {"description": "Not failed (or not finished)"},
            **_errors(400, 403),
        },
    },
}
