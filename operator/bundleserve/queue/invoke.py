"""What the worker needs from the model: one call per task, answering the model's raw reply.

The worker does not know HTTP; the router injects an `Invoke` built on its model client (docs/contracts.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bundleserve.api.invocation import PICKLE_CONTENT_TYPE
from bundleserve.queue.tasks import TaskRequest

__all__ = ["PICKLE_CONTENT_TYPE", "Invoke", "ModelReply"]


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
