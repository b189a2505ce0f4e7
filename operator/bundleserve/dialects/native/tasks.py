"""The native async API's parsing and rendering (pure but for `submit_native`'s one call into the task service).

The router's async routes and the gateway's call the same functions, so both accept exactly the same submissions
and render the same status document.
"""

from __future__ import annotations

import json
from dataclasses import replace

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import Invocation, PredictRequest, encode_args, idempotency_key, loads_json
from bundleserve.dialects.base import TaskBackend
from bundleserve.dialects.native.calls import parse_request
from bundleserve.queue.service import MAX_WAIT_SECONDS
from bundleserve.queue.tasks import CallbackTarget, TaskRecord


def parse_submission(body: bytes, *, kwargs_only: bool) -> PredictRequest:
    """Validate the shape of a native async submission (predict body + callback fields); InvalidRequest with a
    readable reason. What the url input and the callback may point at is checked by `TaskService.submit`, for every
    dialect alike."""
    if not body:
        raise InvalidRequest("the request body is empty: send a JSON object with args or url")
    request = parse_request(body)
    if kwargs_only and request.url is None and not isinstance(request.args, dict):
        raise InvalidRequest("args must be a JSON object (the keyword arguments of the model's function)")
    if request.callback_auth is not None and request.callback_url is None:
        raise InvalidRequest("callback_auth needs callback_url")
    return request


def _plain_args(body: bytes) -> bool:
    """True for a body that is exactly `{"args": {...}}` (valid whatever the bundle kind)."""
    if not body.startswith(b'{"args"'):
        return False
    try:
        document = loads_json(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return type(document) is dict and len(document) == 1 and type(document.get("args")) is dict


def parse_wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise InvalidRequest(f"wait must be a number of seconds, got {raw!r}") from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise InvalidRequest(f"wait must be between 0 and {MAX_WAIT_SECONDS:g} seconds")
    return wait


def task_body(record: TaskRecord, public_url: str | None = None, *, variant: str | None = None) -> bytes:
    """The status document; an inline result is spliced in as stored (it is JSON already). With `public_url`, a
    stored result's `result_url` (a path of this API) is made absolute. `variant`: the declared production variant
    the task was given (its queue), named in the document."""
    terminal = record.status.terminal
    result = record.result_json.encode() if terminal and record.result_json else b"null"
    result_url = record.result_url if terminal else None
    if result_url is not None and result_url.startswith("/") and public_url is not None:
        result_url = public_url + result_url
    head: dict[str, str] = {"task_id": record.task_id, "status": record.status.value}
    if variant is not None:
        head["variant"] = variant
    tail = {
        "result_url": result_url,
        "traceback": record.traceback if terminal else None,
        "status_code": record.status_code if terminal else None,
    }
    return (
        json.dumps(head, separators=(",", ":"))[:-1].encode()
        + b',"result":'
        + result
        + b","
        + json.dumps(tail, separators=(",", ":"))[1:].encode()
    )


def accepted_body(task_id: str) -> bytes:
    """The 202 answer of a submission."""
    return b'{"task_id":"' + task_id.encode() + b'"}'


async def submit_native(tasks: TaskBackend, body: bytes, *, kwargs_only: bool, idempotency: str | None = None) -> str:
    """A native async submission body (already under the limit) into the task service: the router's and the
    gateway's one path from `{"args": ...}` / `{"url": ...}` plus callback fields to a queued task. `idempotency`:
    the request's Idempotency-Key header (a retry gets the first attempt's task id)."""
    key = idempotency_key("native", idempotency)
    if _plain_args(body):  # the common `{"args": {...}}`: stored as sent, no re-encoding
        args = body.rstrip()[body.index(b":") + 1 : -1]  # the text of the args object, as sent
        return await tasks.submit(
            Invocation(body=args, idempotency_key=key),
            callback=None,
            request_ttl_seconds=None,
            invocation_timeout_seconds=None,
        )
    submission = parse_submission(body, kwargs_only=kwargs_only)
    callback = CallbackTarget(submission.callback_url, submission.callback_auth) if submission.callback_url else None
    return await tasks.submit(
        replace(invocation_of_request(submission), idempotency_key=key),
        callback=callback,
        request_ttl_seconds=None,
        invocation_timeout_seconds=None,
    )


def invocation_of_request(submission: PredictRequest) -> Invocation:
    """A validated native submission as the core's invocation."""
    body = b"" if submission.url is not None else encode_args(submission.args)
    return Invocation(
        body=body,
        url=submission.url,
        return_pickled=submission.return_pickled,
        timeout_seconds=submission.timeout_seconds,
        request_id=submission.request_id,
    )
