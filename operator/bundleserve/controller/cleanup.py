"""Deleting an Endpoint deletes its queue (stream, dead letters, task records), after in-flight tasks finish.

Bounded: the finalizer waits at most `cleanup_bound_seconds` for in-flight tasks, then purges anyway (and says so
in an Event), so deletion is never blocked forever. Stored result files on the results volume expire by their TTL.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from bundleserve.api.endpoint import Endpoint, Mode

MAX_WAIT_SECONDS = 300


class CleanupStep(StrEnum):
    SKIP = "skip"  # nothing to clean (no async mode, retainOnDelete, or no queue configured)
    WAIT = "wait"  # tasks still in flight and the bound not reached
    PURGE = "purge"
    PURGE_AFTER_TIMEOUT = "purge-after-timeout"


def wait_bound_seconds(endpoint: Endpoint, cap: float = MAX_WAIT_SECONDS) -> float:
    """Long enough for a running task to finish, never longer than `cap`."""
    return min(endpoint.spec.async_settings.invocation_timeout_seconds + 30, cap)


def next_step(
    endpoint: Endpoint, *, queue_configured: bool, in_flight: int, waited_seconds: float, cap: float = MAX_WAIT_SECONDS
) -> CleanupStep:
    if not endpoint.spec.serves(Mode.ASYNC) or endpoint.spec.async_settings.retain_on_delete or not queue_configured:
        return CleanupStep.SKIP
    if in_flight == 0:
        return CleanupStep.PURGE
    if waited_seconds < wait_bound_seconds(endpoint, cap):
        return CleanupStep.WAIT
    return CleanupStep.PURGE_AFTER_TIMEOUT


async def purge_queue(redis: Any, queue_id: str, *, batch: int = 500) -> int:
    """Delete the stream, dead-letter stream and callback outbox of the queue `queue_id` (`keys.queue_id(namespace,
    name)`) and the records of the tasks they reference; returns the number of keys removed."""
    from bundleserve.queue import keys

    streams = [keys.stream(queue_id), keys.dead_letter(queue_id)]
    removed = 0
    for stream in streams:
        start = "-"
        while True:
            entries = await redis.xrange(stream, min=start, max="+", count=batch)
            task_keys = []
            for entry_id, fields in entries:
                task_id = fields.get(b"t") or fields.get("t")
                if task_id:
                    task_keys.append(keys.task(task_id.decode() if isinstance(task_id, bytes) else task_id))
                start = f"({entry_id.decode() if isinstance(entry_id, bytes) else entry_id}"
            if task_keys:
                removed += int(await redis.unlink(*task_keys))
            if len(entries) < batch:
                break
    removed += int(await redis.unlink(*streams, keys.callback_outbox(queue_id)))
    return removed
