"""Terminal task records finished by this process, kept briefly in memory.

A terminal record never changes again (the scripts guarantee it), so the status route may answer from here without
a Redis round trip when the client asks the replica that ran its task - the common case for a long-poll that the
completion woke. Bounded by bytes and by age (never longer than the record lives in Redis).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from bundleserve.queue.tasks import TaskRecord


def _size(record: TaskRecord) -> int:
    return 256 + len(record.result_json or "") + len(record.traceback or "") + len(record.result_url or "")


class RecentResults:
    def __init__(self, *, max_bytes: int = 32 * 1024 * 1024, max_age_seconds: float = 300.0) -> None:
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self._items: OrderedDict[str, tuple[float, TaskRecord]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, record: TaskRecord) -> None:
        if not record.status.terminal:
            return
        size = _size(record)
        if size > self.max_bytes // 16:
            return
        self._drop(record.task_id)
        self._items[record.task_id] = (time.monotonic() + self.max_age_seconds, record)
        self._bytes += size
        while self._bytes > self.max_bytes and self._items:
            self._drop(next(iter(self._items)))

    def get(self, task_id: str) -> TaskRecord | None:
        found = self._items.get(task_id)
        if found is None:
            return None
        expires_at, record = found
        if expires_at < time.monotonic():
            self._drop(task_id)
            return None
        return record

    def _drop(self, task_id: str) -> None:
        found = self._items.pop(task_id, None)
        if found is not None:
            self._bytes -= _size(found[1])
