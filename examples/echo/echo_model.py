"""The echo bundle: returns its arguments; streaming yields the words of `text` one at a time.

A raw body (a `url` input, or a non-JSON request) arrives as bytes in the first positional argument; echo answers
its size and SHA-256 instead of the bytes themselves (a result must be JSON).
"""

import hashlib
from collections.abc import Iterator
from typing import Any


def predict(body: bytes | None = None, /, **kwargs: Any) -> dict[str, Any]:
    if body is not None:
        return {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return kwargs


def stream(text: str = "", **_: Any) -> Iterator[str]:
    yield from text.split()
