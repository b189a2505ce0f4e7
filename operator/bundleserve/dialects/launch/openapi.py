"""OpenAPI operations of the Launch routes, for the document of whichever server mounts them (router, gateway).

Keys are (method, path with parameters reduced to `{}`), as `bundleserve.dialects.openapi` keys its own operations;
schemas come from the dialect's pydantic models, so the document and the wire cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bundleserve.dialects.launch.models import (
    LegacyAsyncSubmitResponse,
    LegacyEndpoint,
    LegacyEndpointList,
    LegacyTaskRequest,
    LegacyTaskResponse,
    V1AsyncSubmitResponse,
    V1AsyncTaskResponse,
    V1EndpointList,
    V1TaskRequest,
    V1TaskResponse,
)
from bundleserve.dialects.launch.routes import LEGACY_BASE

_REF = "#/components/schemas/{model}"
_MODELS: tuple[type[BaseModel], ...] = (
    LegacyAsyncSubmitResponse,
    LegacyEndpoint,
    LegacyEndpointList,
    LegacyTaskRequest,
    LegacyTaskResponse,
    V1AsyncSubmitResponse,
    V1AsyncTaskResponse,
    V1EndpointList,
    V1TaskRequest,
    V1TaskResponse,
)


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["LaunchError"] = {
        "type": "object",
        "description": "FastAPI's detail (as model-engine answers) plus bundleserve's documented error",
        "properties": {"detail": {"type": "string"}, "error": {"$ref": "#/components/schemas/Error"}},
        "required": ["detail", "error"],
    }
    return schemas


#: Component schemas the operations refer to (merged into the document's `components.schemas`).
SCHEMAS: dict[str, Any] = _schemas()


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    error = {
        "description": "Refused (see docs/dialects.md, Launch errors)",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="LaunchError")}}},
    }
    return {str(status): error for status in statuses}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}}


_ENDPOINT_ID = [{"name": "model_endpoint_id", "in": "query", "required": True, "schema": {"type": "string"}}]
_SYNC_ERRORS = _errors(400, 401, 404, 413, 429, 503)

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", f"{LEGACY_BASE}/endpoints"): {
        "summary": "Launch (scale-launch 0.3.x): every endpoint this server answers for (list_model_endpoints)",
        "operationId": "launchLegacyListEndpoints",
        "responses": {"200": _json(LegacyEndpointList, "The endpoints"), **_errors(401)},
    },
    ("GET", f"{LEGACY_BASE}/endpoints/{{}}"): {
        "summary": "Launch (scale-launch 0.3.x): describe an endpoint",
        "operationId": "launchLegacyGetEndpoint",
        "responses": {"200": _json(LegacyEndpoint, "The endpoint"), **_errors(401, 404)},
    },
    ("POST", f"{LEGACY_BASE}/task_sync/{{}}"): {
        "summary": "Launch (scale-launch 0.3.x): sync task; a model failure is 200 with state FAILURE",
        "operationId": "launchLegacyTaskSync",
        "requestBody": _body(LegacyTaskRequest),
        "responses": {"200": _json(LegacyTaskResponse, "The task's outcome"), **_SYNC_ERRORS, **_errors(504)},
    },
    ("POST", f"{LEGACY_BASE}/task_async/{{}}"): {
        "summary": "Launch (scale-launch 0.3.x): queue an async task",
        "operationId": "launchLegacyTaskAsync",
        "requestBody": _body(LegacyTaskRequest),
        "responses": {"200": _json(LegacyAsyncSubmitResponse, "Queued"), **_errors(400, 401, 404, 413, 429, 503)},
    },
    ("GET", f"{LEGACY_BASE}/endpoints/{{}}/task_async/{{}}"): {
        "summary": "Launch (scale-launch 0.3.x): an async task's state (holds up to 5 s for it to finish)",
        "operationId": "launchLegacyTaskStatus",
        "responses": {"200": _json(LegacyTaskResponse, "The task"), **_errors(400, 401, 404, 503)},
    },
    ("GET", f"{LEGACY_BASE}/task/result/{{}}"): {
        "summary": "Launch (scale-launch 0.3.x): an async task's state by its id alone (get_async_response)",
        "operationId": "launchLegacyTaskResult",
        "responses": {"200": _json(LegacyTaskResponse, "The task"), **_errors(400, 401, 404, 503)},
    },
    ("GET", "/v1/model-endpoints"): {
        "summary": "Launch (model-engine v1): endpoints by name (an empty list for an unknown name)",
        "operationId": "launchListModelEndpoints",
        "parameters": [{"name": "name", "in": "query", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json(V1EndpointList, "The endpoint, if it exists"), **_errors(400, 401)},
    },
    ("POST", "/v1/sync-tasks"): {
        "summary": "Launch (model-engine v1): sync task; a model failure is 200 with status FAILURE",
        "operationId": "launchSyncTask",
        "parameters": _ENDPOINT_ID,
        "requestBody": _body(V1TaskRequest),
        "responses": {"200": _json(V1TaskResponse, "The task's outcome"), **_SYNC_ERRORS, **_errors(408)},
    },
    ("POST", "/v1/async-tasks"): {
        "summary": "Launch (model-engine v1): queue an async task",
        "operationId": "launchAsyncTask",
        "parameters": _ENDPOINT_ID,
        "requestBody": _body(V1TaskRequest),
        "responses": {"200": _json(V1AsyncSubmitResponse, "Queued"), **_errors(400, 401, 404, 413, 429, 503)},
    },
    ("GET", "/v1/async-tasks/{}"): {
        "summary": "Launch (model-engine v1): an async task's status",
        "operationId": "launchGetAsyncTask",
        "responses": {"200": _json(V1AsyncTaskResponse, "The task"), **_errors(400, 401, 404, 503)},
    },
    ("POST", "/v1/streaming-tasks"): {
        "summary": "Launch (model-engine v1): stream a task's chunks as server-sent events",
        "operationId": "launchStreamingTask",
        "parameters": _ENDPOINT_ID,
        "requestBody": _body(V1TaskRequest),
        "responses": {
            "200": {
                "description": "One `data:` event per chunk, each shaped as a sync task's body; a failure is a final "
                "FAILURE event",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_SYNC_ERRORS,
            **_errors(408),
        },
    },
}
