"""A slow job for the async path: works for `seconds` in `steps`, and reports its progress and timings in the result.

It is `async def`, so many jobs wait concurrently on one event loop without holding threads. The default duration
comes from SLOW_JOB_SECONDS (set in endpoint.yaml); a request may pass `seconds` (at most MAX_SECONDS).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

MAX_SECONDS = 3600.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def predict(seconds: float | None = None, steps: int = 5, label: str = "job") -> dict[str, Any]:
    duration = float(os.environ.get("SLOW_JOB_SECONDS", "5")) if seconds is None else float(seconds)
    if not 0 <= duration <= MAX_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_SECONDS:g}, got {duration:g}")
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps must be between 1 and 1000, got {steps}")
    started_at, start = _now(), time.monotonic()
    progress = []
    for step in range(1, steps + 1):
        await asyncio.sleep(duration / steps)
        progress.append(
            {
                "step": step,
                "percent": round(100 * step / steps, 1),
                "elapsed_seconds": round(time.monotonic() - start, 3),
            }
        )
    return {
        "label": label,
        "requested_seconds": duration,
        "elapsed_seconds": round(time.monotonic() - start, 3),
        "started_at": started_at,
        "finished_at": _now(),
        "progress": progress,
    }
