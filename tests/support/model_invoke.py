"""A stand-alone `Invoke` over aiohttp for worker processes run by tests (the router injects its own model client)."""

from __future__ import annotations

import json

import aiohttp

from bundleserve.api.invocation import RETURN_HEADER
from bundleserve.queue.invoke import Invoke, ModelReply
from bundleserve.queue.tasks import TaskRequest


def http_invoke(session: aiohttp.ClientSession, model_url: str, predict_path: str = "/predict") -> Invoke:
    url = model_url.rstrip("/") + predict_path

    async def invoke(request: TaskRequest, timeout_seconds: float) -> ModelReply:
        headers = {"Content-Type": "application/json"}
        if request.return_pickled:
            headers[RETURN_HEADER] = "pickle"
        body = json.dumps(request.args if request.args is not None else {}).encode()
        timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
            data = await response.read()
            return ModelReply(response.status, data, response.content_type)

    return invoke
