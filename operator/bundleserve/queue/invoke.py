"""What the worker needs from the model: one call per task, answering the model's reply.

The worker does not know HTTP; the router injects an `Invoke` built on its invocation core (docs/contracts.md).
`ModelReply` is the one reply type of `bundleserve.api.invocation`, re-exported here for the worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bundleserve.api.invocation import PICKLE_CONTENT_TYPE, ModelReply
from bundleserve.queue.tasks import TaskRequest

__all__ = ["PICKLE_CONTENT_TYPE", "Invoke", "ModelReply"]

#: invoke(request, timeout_seconds) -> the model's reply. Raise on transport errors (they are retried).
Invoke = Callable[[TaskRequest, float], Awaitable[ModelReply]]
