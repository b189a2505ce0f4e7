"""The bundle behind the Launch dialect tests: returns its arguments; `fail` raises inside the model; `sleep` sleeps first; `stream` yields
the words of `text` and raises after `fail_after` of them."""

import time
from collections.abc import Iterator
from typing import Any


def predict(body: bytes | None = None, /, **kwargs: Any) -> Any:
    if body is not None:
        return {"size": len(body), "head": body[:16].decode("utf-8", errors="replace")}
    if "sleep" in kwargs:
        time.sleep(float(kwargs["sleep"]))
    if "fail" in kwargs:
        raise RuntimeError(f"the model refused: {kwargs['fail']}")
    return kwargs


def stream(text: str = "", fail_after: int | None = None, **_: Any) -> Iterator[str]:
    for index, word in enumerate(text.split()):
        if fail_after is not None and index == fail_after:
            raise RuntimeError(f"the stream broke after {fail_after} words")
        yield word
