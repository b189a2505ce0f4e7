"""Deleting an Endpoint deletes its queue (stream, dead letters, task records), after in-flight tasks finish.

Bounded: the finalizer waits at most `cleanup_bound_seconds` for in-flight tasks, then purges anyway (and says so
in an Event), so deletion is never blocked forever. Stored result files on the results volume expire by their TTL.
The purge itself is `bundleserve.queue.purge` (only the queue package talks to Redis).
"""

from __future__ import annotations

from enum import StrEnum

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
