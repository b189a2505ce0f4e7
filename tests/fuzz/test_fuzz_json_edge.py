"""Fuzz the router's JSON edge with schemathesis, from the router's own /openapi.json (a real router subprocess in
front of the real bundle runtime): generated and schema-violating bodies, parameters and headers.

Checked for every response: never a 500 (a bug of ours), errors in the documented shape (`{"error": {"code",
"message"}}`; the SageMaker routes' `{"message"}` with `X-Amzn-ErrorType`; the OpenAI routes' `{"error": {"message",
"type", "param", "code"}}`), and the status is one the document declares for that operation. `/wait-for-drain` is left out (it
blocks until the router drains, by design). Bounded: a fixed number of derandomized examples per operation.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fuzz.conftest import NAME, Target

#: Operations fuzzed, and the examples for each: all the router documents but `/wait-for-drain`.
EXAMPLES = 10


def operations(router: Target) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{router.url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    return [operation for operation in found if operation.path != "/wait-for-drain"]


def check(case: schemathesis.Case) -> None:
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = NAME  # our own endpoint: the interesting code, not the 404
    response = case.call(timeout=30)
    status = response.status_code
    assert status != 500, (case.as_curl_command(), response.text[:500])
    declared = set(case.operation.definition.raw.get("responses", {}))
    assert str(status) in declared or "default" in declared, (status, sorted(declared), case.as_curl_command())
    content_type = response.headers.get("content-type") or response.headers.get("Content-Type") or [""]
    if status >= 400 and content_type[0].startswith("application/json"):
        document = json.loads(response.content)
        if case.operation.path.startswith("/endpoints/"):  # the SageMaker Runtime dialect: botocore's error shape
            assert isinstance(document["message"], str), document
            assert response.headers.get("x-amzn-errortype") or response.headers.get("X-Amzn-ErrorType"), document
        elif case.operation.path.startswith("/openai/"):  # the OpenAI dialect: OpenAI's error shape
            error = document["error"]
            assert set(error) == {"message", "type", "param", "code"}, document
            assert isinstance(error["message"], str) and isinstance(error["type"], str)
        else:  # the native shape (the Launch routes carry it next to FastAPI's `detail`)
            error = document["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)


@pytest.mark.timeout(300)  # ~10 operations x EXAMPLES HTTP calls; seconds when the machine is idle
def test_the_json_edge_answers_every_input_honestly(router_process: Target) -> None:
    found = operations(router_process)
    assert {operation.label for operation in found} >= {"POST /v1/endpoints/{name}/predict", "GET /healthz"}
    for operation in found:
        fuzz = settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy())(check))
        fuzz()
