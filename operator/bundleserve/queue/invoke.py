"""What the worker needs from the model: one call per task, answering the model's raw reply.

The worker does not know HTTP; the router injects an `Invoke` built on its model client. `http_invoke` is a small
stand-alone one (the model-container contract in docs/contracts.md) for the worker process used in tests and benches.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from bundleserve.queue.tasks import TaskRequest

PICKLE_CONTENT_TYPE = "application/vnd.bundleserve.pickle"


@dataclass(frozen=True)
class ModelReply:
    status_code: int
    body: bytes
    content_type: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


#: invoke(request, timeout_seconds) -> the model's reply. Raise on transport errors (they are retried).
Invoke = Callable[[TaskRequest, float], Awaitable[ModelReply]]


def http_invoke(session: aiohttp.ClientSession, model_url: str, predict_path: str = "/predict") -> Invoke:
    url = model_url.rstrip("/") + predict_path

    async def invoke(request: TaskRequest, timeout_seconds: float) -> ModelReply:
        headers = {"Content-Type": "application/json"}
        if request.return_pickled:
            headers["X-Bundleserve-Return"] = "pickle"
        body = json.dumps(request.args if request.args is not None else {}).encode()
        timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
            data = await response.read()
            return ModelReply(response.status, data, response.content_type)

    return invoke
