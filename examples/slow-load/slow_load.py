"""A model that is slow to load, as one reading a large checkpoint is: `load()` takes LOAD_SECONDS (20 in the
manifest's `bundle.env`), and `predict()` answers when loading finished and when this replica's first call arrived.

It shows readiness at work: a replica is routable only once its model answered the ready route, so `first_call_at`
is never before `loaded_at`, however early clients start calling (tests/integration/test_node_scenarios.py checks
this on a real node). Times are seconds since the epoch (the pod's clock).
"""

from __future__ import annotations

import os
import time
from typing import Any


def load() -> dict[str, float]:
    started = time.time()
    time.sleep(float(os.environ.get("LOAD_SECONDS", "20")))  # stands for reading the weights
    return {"load_started_at": started, "loaded_at": time.time()}


def predict(model: dict[str, float], **kwargs: Any) -> dict[str, Any]:
    first = model.setdefault("first_call_at", time.time())  # atomic: the first call's time stays
    return {**model, "first_call_at": first, "args": kwargs}
