"""Drive the unmodified PyPI `scale-launch` 0.3.x client: read one JSON command on stdin, print one JSON answer.

Runs under the separate `.venv-launch` interpreter (the client pins cloudpickle<3, bundleserve needs >=3), so it
imports nothing of bundleserve or of the tests. Commands (`op`):
- `get_endpoint` {name}: what `LaunchClient.get_model_endpoint` returns (class name, name, status, type);
- `predict` {name, args | url, return_pickled}: `get_model_endpoint(name).predict(EndpointRequest(...))`, and for
  an async endpoint `future.get()`; a `result_url` is downloaded the way a user does (requests + cloudpickle);
- `async_request` {name, ...}: the client's own `async_request` + `EndpointResponseFuture.get()` (for an endpoint the
  server describes as sync that also serves async).
- `list_endpoints`: `LaunchClient.list_model_endpoints()`, each entry as `get_endpoint` answers it;
- `get_async_response` {name, args, return_pickled}: `async_request`, then `get_async_response(task_id)` polled the
  way the client's own future polls (again on PENDING and STARTED, an error on any other unfinished state), with a
  deadline; answers the states seen and the final response.
Every command takes `endpoint` (the client's base URL) and `api_key`. Client errors are answered as
{"error": class name, "message", "status_code"}.
"""

import json
import sys
import time
import warnings

import cloudpickle
import requests
from launch import EndpointRequest, LaunchClient
from launch.errors import APIError
from launch.model_endpoint import EndpointResponseFuture


def _response(client, response):
    answer = {
        "status": response.status,
        "result": response.result,
        "result_url": response.result_url,
        "traceback": response.traceback,
    }
    if response.result_url:
        download = requests.get(response.result_url, auth=(client.connection.api_key, ""), timeout=60)
        download.raise_for_status()
        answer["unpickled"] = cloudpickle.loads(download.content)
    return answer


def _request(command):
    return EndpointRequest(
        url=command.get("url"), args=command.get("args"), return_pickled=command.get("return_pickled", True)
    )


def _describe(endpoint):
    model = endpoint.model_endpoint
    return {
        "endpoint": type(endpoint).__name__,
        "name": model.name,
        "status": model.status,
        "endpoint_type": model.endpoint_type,
    }


def _poll_async_response(client, task_id, deadline_seconds=60.0):
    deadline = time.monotonic() + deadline_seconds
    seen = []
    while True:
        response = client.get_async_response(task_id)
        state = response["state"]
        seen.append(state)
        if state in ("SUCCESS", "FAILURE"):
            return seen, response
        if state not in ("PENDING", "STARTED"):
            raise ValueError(f"Unrecognized state: {state}")
        if time.monotonic() > deadline:
            raise ValueError(f"still {state} after {deadline_seconds} s")
        time.sleep(0.2)


def run(command):
    client = LaunchClient(command["api_key"], endpoint=command["endpoint"])
    op = command["op"]
    if op == "get_endpoint":
        endpoint = client.get_model_endpoint(command["name"])
        if endpoint is None:
            return {"endpoint": None}
        return _describe(endpoint)
    if op == "list_endpoints":
        return {"endpoints": [_describe(endpoint) for endpoint in client.list_model_endpoints()]}
    if op == "get_async_response":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the client marks both calls deprecated
            task_id = client.async_request(
                command["name"], args=command.get("args"), return_pickled=command.get("return_pickled", True)
            )
            seen, response = _poll_async_response(client, task_id)
        return {"task_id": task_id, "states": seen, "response": response}
    if op == "predict":
        endpoint = client.get_model_endpoint(command["name"])
        if endpoint is None:
            return {"endpoint": None}
        outcome = endpoint.predict(_request(command))
        if isinstance(outcome, EndpointResponseFuture):
            return {"endpoint": type(endpoint).__name__, **_response(client, outcome.get())}
        return {"endpoint": type(endpoint).__name__, **_response(client, outcome)}
    if op == "async_request":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the client marks async_request deprecated
            task_id = client.async_request(
                command["name"],
                url=command.get("url"),
                args=command.get("args"),
                return_pickled=command.get("return_pickled", True),
            )
        future = EndpointResponseFuture(client=client, endpoint_name=command["name"], async_task_id=task_id)
        return {"task_id": task_id, **_response(client, future.get())}
    raise ValueError(f"unknown op {op!r}")


def main():
    command = json.load(sys.stdin)
    try:
        answer = run(command)
    except APIError as error:
        answer = {"error": "APIError", "message": str(error), "status_code": getattr(error, "status_code", None)}
    except ValueError as error:
        answer = {"error": "ValueError", "message": str(error), "status_code": None}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
