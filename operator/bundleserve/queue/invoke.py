"""What the worker needs from the model: one call per task, answering the model's reply or a typed failure.

The worker does not know HTTP; the router injects an `Invoke` built on its invocation core (docs/contracts.md).
`ModelReply` is the one reply type of `bundleserve.api.invocation`, re-exported here for the worker. A call that
failed crosses the seam as a `TaskFailure` (never as an error body to decode again), and the attempt's time limit is
the worker's one timer: the `Invoke` gets the limit to know it, the worker cancels the call when it passes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bundleserve.api.invocation import PICKLE_CONTENT_TYPE, ModelReply
from bundleserve.queue.tasks import TaskRequest

__all__ = ["PICKLE_CONTENT_TYPE", "Invoke", "ModelReply", "TaskFailure"]


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """One failed attempt as the task record keeps it: the status (the model's own for a model error) and the
    traceback (else the message). Whether another attempt may help follows from the status (the worker's table of
    permanent statuses); `timed_out` marks the attempt's time limit, never retried."""

    status_code: int
    traceback: str
    timed_out: bool = False


#: invoke(request, timeout_seconds) -> the model's reply (any status) or a TaskFailure. Raise on transport errors
#: (they are retried). The worker cancels the call at `timeout_seconds`; the Invoke arms no timer of its own.
Invoke = Callable[[TaskRequest, float], Awaitable[ModelReply | TaskFailure]]
