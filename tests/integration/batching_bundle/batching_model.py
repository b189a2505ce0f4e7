"""The bundle of tests/integration/test_batching.py: a batch entrypoint whose results tell which batch they were in.

Each call is `{"x": int, "sleep": float, "short": bool}`. The batch sleeps for the longest `sleep` of its calls (to
hold a batch "running" while a client goes away), answers `{"y": 2x, "batch": N, "batch_size": n}` per call, a
`ValueError` object for a negative x (that call fails alone), and one result too few when any call asks `short`.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

_numbers = itertools.count(1)
_lock = threading.Lock()


def predict(x: int, sleep: float = 0.0, short: bool = False) -> dict[str, Any]:
    """The per-call contract: each call's arguments are checked against this signature before it joins a batch."""
    return {"y": x * 2, "batch": 0, "batch_size": 1}


def predict_batch(calls: list[dict[str, Any]]) -> list[Any]:
    with _lock:
        number = next(_numbers)
    time.sleep(max(float(call.get("sleep", 0)) for call in calls))
    results: list[Any] = [
        ValueError(f"negative: {call['x']}")
        if call["x"] < 0
        else {"y": call["x"] * 2, "batch": number, "batch_size": len(calls)}
        for call in calls
    ]
    if any(call.get("short") for call in calls):
        return results[:-1]
    return results


def describe(body: bytes | None = None, /, **kwargs: Any) -> dict[str, Any]:
    """Per-call contract of `describe_batch`: a raw body or keyword arguments."""
    return {"kind": "bytes" if body is not None else "dict"}


def describe_batch(calls: list[Any]) -> list[Any]:
    """What each call arrived as: a raw body as bytes, keyword arguments as a dict."""
    return [
        {"kind": "bytes", "size": len(call), "batch_size": len(calls)}
        if isinstance(call, bytes)
        else {"kind": "dict", "keys": sorted(call), "batch_size": len(calls)}
        for call in calls
    ]
