"""A model whose cost is mostly per call, as a GPU forward pass's is: every call of the model pays a fixed overhead
(`SCORER_OVERHEAD_MS`, default 20) plus a small cost per item (`SCORER_PER_ITEM_MS`, default 0.5), and the one device
runs one call at a time (a lock). Scoring one text costs 20.5 ms; scoring 32 in one call costs 36 ms.

`predict` scores one text per call; `predict_batch` is the batch entrypoint (spec.invocation.batching): a list of calls'
arguments in, one result per call out, in order. A call whose `text` is not a string fails alone: its slot in the
answer is the exception, and the other calls of the batch succeed. Each result says how many calls shared its model call
(`batch_size`), so the effect of batching is visible from the outside.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

OVERHEAD_SECONDS = float(os.environ.get("SCORER_OVERHEAD_MS", "20")) / 1000
PER_ITEM_SECONDS = float(os.environ.get("SCORER_PER_ITEM_MS", "0.5")) / 1000
_device = threading.Lock()  # one accelerator: calls of the model do not overlap


def _forward(texts: list[str]) -> list[float]:
    """The model call: the fixed cost once, the per-item cost per text (time.sleep stands in for the device)."""
    with _device:
        time.sleep(OVERHEAD_SECONDS + PER_ITEM_SECONDS * len(texts))
    return [int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32 for text in texts]


def predict(text: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}")
    [score] = _forward([text])
    return {"score": score, "batch_size": 1}


def predict_batch(calls: list[dict[str, Any]]) -> list[Any]:
    valid = [i for i, call in enumerate(calls) if isinstance(call.get("text"), str)]
    scores = dict(zip(valid, _forward([calls[i]["text"] for i in valid]), strict=True))
    return [
        {"score": scores[i], "batch_size": len(calls)}
        if i in scores
        else TypeError(f"text must be a string, not {type(call.get('text')).__name__}")
        for i, call in enumerate(calls)
    ]
