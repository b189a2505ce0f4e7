"""Retries of one sync call run the model once (docs/router.md, "Retries and idempotency keys").

Clients retry: botocore after a read timeout (3 attempts in standard mode, 5 in legacy), each attempt carrying the
same `amz-sdk-invocation-id`; any client that sends an `Idempotency-Key`. Without this module each attempt would run
the model again, and the client that gave up first would also have cancelled the first run.

`RecentCalls.run(key, fingerprint, call)`: the first call with a key starts `call()` as a task of its own, detached
from the request that started it, so a client that leaves (a read timeout closes its connection) does not cancel
it; every call with the same key, while it runs or for `ttl_seconds` after it ended, waits for that task and gets its
reply (or the same error). A key reused with a different request (another fingerprint) is refused. Errors from
before the model was reached (overloaded, not ready, draining, invalid) are not kept: a retry tries again.

Bounded: finished replies are kept at most `ttl_seconds` and at most `max_bytes` in total (the oldest go first);
a reply larger than that is handed to the waiters already there and not kept. State is per router process:
retries that reach another replica run again unless the gateway or the Service sends them to the same one
(docs/router.md says what holds where).

Errors: `InvalidRequest` (400) for a key reused with a different request; everything else is the call's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bundleserve.api.errors import InvalidRequest, ModelError, Timeout
from bundleserve.api.invocation import ModelReply

#: Errors after which the model may have run: kept like a reply, so a retry does not run it again.
_KEPT_ERRORS = (ModelError, Timeout)


@dataclass(slots=True)
class _Entry:
    fingerprint: bytes
    task: asyncio.Task[ModelReply]
    expires: float = 0.0  # set when the call ended
    size: int = 0


@dataclass
class RecentCalls:
    """The sync calls of one router by idempotency key: running ones shared, finished ones kept for a while."""

    ttl_seconds: float
    max_bytes: int
    max_kept: int = 10_000
    _running: dict[str, _Entry] = field(default_factory=dict)
    _kept: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)  # in the order they expire
    _kept_bytes: int = 0

    async def run(self, key: str, fingerprint: bytes, call: Callable[[], Awaitable[ModelReply]]) -> ModelReply:
        self._expire()
        entry = self._running.get(key) or self._kept.get(key)
        if entry is not None and entry.fingerprint != fingerprint:
            raise InvalidRequest(
                "this idempotency key was already used for a different request; use a new key for a new call"
            )
        if entry is None:
            entry = _Entry(fingerprint, asyncio.ensure_future(call()))
            self._running[key] = entry
            entry.task.add_done_callback(lambda task: self._finished(key, entry))
        # shield: a waiter that leaves (client gone) never cancels the call other attempts are waiting for
        return await asyncio.shield(entry.task)

    def _finished(self, key: str, entry: _Entry) -> None:
        self._running.pop(key, None)
        task = entry.task
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, _KEPT_ERRORS):
            return  # the model was not reached: a retry may run it
        entry.size = len(task.result().body) if error is None else 0
        if entry.size > self.max_bytes:
            return  # handed to the waiters already there, too large to keep
        entry.expires = time.monotonic() + self.ttl_seconds
        self._kept[key] = entry
        self._kept_bytes += entry.size
        self._expire()

    def _expire(self) -> None:
        """Drop kept replies past their time, then the oldest while over the byte or count budget."""
        now = time.monotonic()
        kept = self._kept
        while kept:
            key, entry = next(iter(kept.items()))
            if entry.expires > now and self._kept_bytes <= self.max_bytes and len(kept) <= self.max_kept:
                break
            del kept[key]
            self._kept_bytes -= entry.size

    def __len__(self) -> int:
        return len(self._running) + len(self._kept)


def fingerprint_of(*parts: bytes | str | None) -> bytes:
    """What must be equal for two calls to be one: the request's body and the options that change the answer."""
    digest = hashlib.sha256()
    for part in parts:
        data = b"\x00" if part is None else part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()
