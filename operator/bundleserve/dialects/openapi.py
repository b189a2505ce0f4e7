"""The OpenAPI document of a router or the gateway, generated from the routes the application really registered.

The native API's operations are described here, every other dialect's in its own `openapi` module, merged below; the
router and the gateway both build their document with `build_document` (the gateway adds its own few routes). Each
known operation is described here; `build_document` emits exactly the operations present in the app's router
table (a sync-only endpoint does not advertise async routes), and the tests check that every registered route is
described, so the document cannot drift from the server.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from bundleserve.dialects.launch import openapi as launch
from bundleserve.dialects.openai import openapi as openai_openapi
from bundleserve.dialects.sagemaker import openapi as sagemaker_openapi

_PARAM = re.compile(r"\{[^}]+\}")

_ERROR = {"$ref": "#/components/responses/Error"}
_JSON_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ERROR for status in statuses}


_INVOKE_ERRORS = _errors(400, 401, 404, 408, 413, 424, 429, 503, 504)  # 408: a body that trickles in too slowly

#: (method, path with parameters reduced to `{}`) -> operation
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/endpoints/{}/predict"): {
        "summary": "Invoke the model synchronously",
        "operationId": "predict",
        "requestBody": _JSON_BODY,
        "responses": {
            "200": {
                "description": "The model's result",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvocationResponse"}}},
            },
            **_INVOKE_ERRORS,
        },
    },
    ("POST", "/v1/endpoints/{}/stream"): {
        "summary": "Invoke the model and stream its chunks as server-sent events",
        "operationId": "stream",
        "requestBody": _JSON_BODY,
        "responses": {
            "200": {
                "description": 'One `data: {"status": "SUCCESS", "result": <chunk>}` event per chunk; a failure after '
                'the first chunk is one final event with "status": "FAILURE"',
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_INVOKE_ERRORS,
        },
    },
    ("POST", "/v1/endpoints/{}/async"): {
        "summary": "Queue an asynchronous invocation",
        "operationId": "submitAsync",
        "requestBody": _JSON_BODY,
        "responses": {
            "202": {
                "description": "Accepted",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AsyncSubmitResponse"}}},
            },
            **_errors(400, 401, 404, 413, 429, 503),  # 429: the backlog cap (BUNDLESERVE_QUEUE_MAX_BACKLOG)
        },
    },
    ("GET", "/v1/tasks/{}"): {
        "summary": "Status and result of a task (long-poll with ?wait=SECONDS)",
        "operationId": "getTask",
        "parameters": [{"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0}}],
        "responses": {
            "200": {
                "description": "The task",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskResponse"}}},
            },
            **_errors(400, 401, 404, 503),  # 400: a wait outside 0-300 s
        },
    },
    ("GET", "/v1/tasks/{}/result"): {
        "summary": "A stored (pickled or large) result",
        "operationId": "getTaskResult",
        "responses": {
            "200": {"description": "The stored bytes", "content": {"application/octet-stream": {}}},
            **_errors(400, 401, 404),  # 400: a malformed result id
        },
    },
    ("GET", "/healthz"): {
        "summary": "Liveness: the router process is serving",
        "operationId": "healthz",
        "responses": {"200": {"description": "alive"}},
    },
    ("GET", "/readyz"): {
        "summary": "Readiness: the model answered its ready route and the router is not draining",
        "operationId": "readyz",
        "responses": {"200": {"description": "ready"}, "503": _ERROR},
    },
    ("GET", "/wait-for-drain"): {
        "summary": "For the model container's preStop hook: returns once the router has drained after SIGTERM",
        "operationId": "waitForDrain",
        "responses": {"200": {"description": "drained (or the grace period passed)"}},
    },
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics",
        "operationId": "metrics",
        "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {}}}},
    },
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "operationId": "openapi",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
    },
    **launch.OPERATIONS,
}

OPERATIONS.update(sagemaker_openapi.OPERATIONS)  # the SageMaker Runtime routes (dialects.sagemaker.routes)
OPERATIONS.update(openai_openapi.OPERATIONS)  # the OpenAI routes (dialects.openai.routes)

_SCHEMAS: dict[str, Any] = {
    "PredictRequest": {
        "type": "object",
        "description": "Exactly one of args or url.",
        "properties": {
            "args": {"description": "keyword arguments of the model (any JSON for runnable images)"},
            "url": {"type": "string", "description": "fetched by the router and sent to the model as raw bytes"},
            "return_pickled": {"type": "boolean", "default": False},
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
            "callback_url": {"type": "string"},
            "callback_auth": {"type": "object"},
        },
        "additionalProperties": False,
    },
    "InvocationResponse": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["PENDING", "STARTED", "SUCCESS", "FAILURE", "EXPIRED"]},
            "result": {},
            "result_url": {"type": ["string", "null"]},
            "traceback": {"type": ["string", "null"]},
            "status_code": {"type": ["integer", "null"]},
        },
        "required": ["status"],
    },
    "TaskResponse": {
        "allOf": [
            {"$ref": "#/components/schemas/InvocationResponse"},
            {"type": "object", "properties": {"task_id": {"type": "string"}}, "required": ["task_id"]},
        ]
    },
    "AsyncSubmitResponse": {"type": "object", "properties": {"task_id": {"type": "string"}}, "required": ["task_id"]},
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "status_code": {"type": ["integer", "null"]},
                    "traceback": {"type": ["string", "null"]},
                },
                "required": ["code", "message"],
            }
        },
        "required": ["error"],
    },
    **launch.SCHEMAS,
    **openai_openapi.SCHEMAS,
}


def route_key(method: str, path: str) -> tuple[str, str]:
    return method, _PARAM.sub("{}", path)


#: The internal hop's routes (`edge.hop`: the gateway's hand-over to a router) are not part of the public API.
INTERNAL_PREFIX = "/internal/"

_OWN_ENDPOINT = re.compile(r"^/v1/endpoints/[^/{]+/")


def registered_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every public route of the app, without the HEAD twins aiohttp adds for GET.

    The router registers its own endpoint's exact paths (faster to resolve) next to the `{name}` templates; both
    are the same operation, reported once as the template.
    """
    found: list[tuple[str, str]] = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method in ("HEAD", "*") or str(path).startswith(INTERNAL_PREFIX):
            continue
        entry = (route.method, _OWN_ENDPOINT.sub("/v1/endpoints/{name}/", str(path)))
        if entry not in found:
            found.append(entry)
    return found


def build_document(app: web.Application, *, title: str, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path in registered_routes(app):
        operation = OPERATIONS.get(route_key(method, path))
        if operation is None:
            continue
        entry = dict(operation)
        names = [name.split(":")[0] for name in re.findall(r"\{([^}]+)\}", path)]
        if names:
            params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
            entry["parameters"] = params + list(operation.get("parameters", []))
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": {
                "Error": {
                    "description": "The error shape of the native API",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }
