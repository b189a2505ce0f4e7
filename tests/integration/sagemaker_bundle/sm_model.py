"""The bundle behind the SageMaker dialect's tests: echo, raw bytes, failures, a held call and a breaking stream.

`hold` blocks the call until the file it names exists (the test creates it), after writing `<hold>.started`, so a
test can occupy the endpoint's only slot deterministically.
"""

from __future__ import annotations

import hashlib
import pathlib
import time
from collections.abc import Iterator
from typing import Any


def predict(body: bytes | None = None, /, **kwargs: Any) -> Any:
    if body is not None:
        return {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    if "fail" in kwargs:
        raise ValueError(kwargs["fail"])
    if "hold" in kwargs:
        release = pathlib.Path(kwargs["hold"])
        pathlib.Path(f"{release}.started").touch()
        deadline = time.monotonic() + 30
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # inside the model: the test itself waits on the marker file, not on time
        return {"held": True}
    return kwargs


def stream(text: str = "", fail_after: int | None = None, **_: Any) -> Iterator[Any]:
    for index, word in enumerate(text.split()):
        if fail_after is not None and index == fail_after:
            raise RuntimeError(f"broke after {index} words")
        yield word
    if not text:
        yield {"empty": True}


def slow_load() -> dict[str, bool]:
    """A `load` that finishes only once the file named by SM_TEST_RELEASE exists (the model is loading until then)."""
    import os

    release = pathlib.Path(os.environ["SM_TEST_RELEASE"])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"loaded": True}


def predict_loaded(model: dict[str, bool], **kwargs: Any) -> Any:
    return {**model, **kwargs}
