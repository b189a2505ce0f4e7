"""The echo bundle: returns its arguments; streaming yields the words of `text` one at a time."""

from collections.abc import Iterator
from typing import Any


def predict(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def stream(text: str = "", **_: Any) -> Iterator[str]:
    yield from text.split()
