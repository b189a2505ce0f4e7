"""A stand-in for an LLM: streams a completion token by token with a delay, like a model decoding.

`stream()` (an async generator) yields one token (a string, with its leading space) at a time; `predict()` answers the
whole completion at once. The text is deterministic for a prompt, so clients and tests can check it. The default delay
per token comes from TOKEN_DELAY_SECONDS (set in endpoint.yaml); a request may pass `delay_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

_TEXT = (
    "the model streams tokens as it decodes them so a client can show text before the answer is complete "
    "each chunk travels as one server sent event and the connection stays open until the last token"
)
VOCABULARY = tuple(_TEXT.split())
MAX_TOKENS = 4096


def completion(prompt: str, max_tokens: int) -> list[str]:
    """The tokens answering `prompt`: a walk through the vocabulary seeded by the prompt's hash."""
    if not 1 <= max_tokens <= MAX_TOKENS:
        raise ValueError(f"max_tokens must be between 1 and {MAX_TOKENS}, got {max_tokens}")
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    tokens = []
    for index in range(max_tokens):
        word = VOCABULARY[(seed + index * 7) % len(VOCABULARY)]
        tokens.append(word.capitalize() if index == 0 else f" {word}")
    return tokens


def _delay(delay_seconds: float | None) -> float:
    delay = float(os.environ.get("TOKEN_DELAY_SECONDS", "0.05")) if delay_seconds is None else float(delay_seconds)
    if not 0 <= delay <= 10:
        raise ValueError(f"delay_seconds must be between 0 and 10, got {delay:g}")
    return delay


async def stream(prompt: str = "", max_tokens: int = 16, delay_seconds: float | None = None) -> AsyncIterator[str]:
    delay = _delay(delay_seconds)
    for token in completion(prompt, max_tokens):
        await asyncio.sleep(delay)
        yield token


async def predict(prompt: str = "", max_tokens: int = 16, delay_seconds: float | None = None) -> dict[str, Any]:
    tokens = [token async for token in stream(prompt, max_tokens, delay_seconds)]
    return {"text": "".join(tokens), "tokens": len(tokens)}
