"""OpenAPI operations of the OpenAI routes, for the document of whichever server mounts them (router, gateway).

Keys are (method, path with parameters reduced to `{}`), as `bundleserve.dialects.openapi` keys its own operations.
Request schemas come from the dialect's pydantic models; the answers are OpenAI's objects, described here by their
members (docs/dialects.md, "OpenAI").
"""

from __future__ import annotations

from typing import Any

from bundleserve.dialects.openai.models import ChatBody, CompletionBody
from bundleserve.dialects.openai.routes import BASE

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _object(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties, "required": list(properties)}


_USAGE = _object(
    {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
    "Token counts, as the model reported them",
)


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for name, body in (("OpenAIChatRequest", ChatBody), ("OpenAICompletionRequest", CompletionBody)):
        schema = body.model_json_schema(ref_template=_REF.replace("{name}", "{model}"))
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    schemas["OpenAIError"] = {
        "type": "object",
        "description": "OpenAI's error shape",
        "properties": {
            "error": _object(
                {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                "What went wrong; `param` names the offending parameter",
            )
        },
        "required": ["error"],
    }
    schemas["OpenAIUsage"] = _USAGE
    common = {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": _ref("OpenAIUsage"),
    }
    schemas["OpenAIChatCompletion"] = _object(common, "A chat.completion object")
    schemas["OpenAITextCompletion"] = _object(common, "A text_completion object")
    model = {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    }
    schemas["OpenAIModel"] = _object(model, "An Endpoint that declares spec.openai")
    schemas["OpenAIModelList"] = _object(
        {"object": {"type": "string"}, "data": {"type": "array", "items": _ref("OpenAIModel")}}, "The models"
    )
    return schemas


#: Component schemas the operations refer to (merged into the document's `components.schemas`).
SCHEMAS: dict[str, Any] = _schemas()


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    error = _json("OpenAIError", "Refused (see docs/dialects.md, OpenAI errors)")
    return {str(status): error for status in statuses}


def _completion(request: str, answer: str, summary: str, operation_id: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": operation_id,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
        "responses": {
            "200": {
                "description": f"The whole answer, or with `stream: true` its chunks as `data:` events ended by "
                f"`data: [DONE]` ({answer})",
                "content": {
                    "application/json": {"schema": _ref(answer)},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **_errors(400, 401, 404, 408, 413, 429, 500, 503, 504),
        },
    }


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", f"{BASE}/chat/completions"): _completion(
        "OpenAIChatRequest", "OpenAIChatCompletion", "OpenAI: a chat completion", "openaiChatCompletion"
    ),
    ("POST", f"{BASE}/completions"): _completion(
        "OpenAICompletionRequest", "OpenAITextCompletion", "OpenAI: a text completion", "openaiCompletion"
    ),
    ("GET", f"{BASE}/models"): {
        "summary": "OpenAI: the models (endpoints that declare spec.openai)",
        "operationId": "openaiListModels",
        "responses": {"200": _json("OpenAIModelList", "The models"), **_errors(401)},
    },
    ("GET", f"{BASE}/models/{{}}"): {
        "summary": "OpenAI: one model",
        "operationId": "openaiRetrieveModel",
        "responses": {"200": _json("OpenAIModel", "The model"), **_errors(401, 404)},
    },
}
