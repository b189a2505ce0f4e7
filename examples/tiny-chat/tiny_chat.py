"""A toy chat model for the OpenAI-compatible API: deterministic, no weights, nothing downloaded.

It is a stand-in that keeps the contract of docs/bundles.md ("OpenAI-compatible models"), not a language model:
- chat (`messages=`): the answer is `You said: <the last user message>`;
- text completion (`prompt=`): the answer is the prompt's words in reverse order.
It "tokenizes" by whitespace: each word (with its leading space) is one token, yielded as soon as it is "decoded"
(TOKEN_DELAY_SECONDS apart, default 0). The last piece carries the finish reason (`length` when `max_tokens` cut the
answer short, else `stop`) and the usage (prompt tokens: the words of every message or of the prompt).

Sampling parameters are accepted as the contract passes them and, being a toy, change nothing except `seed`, which
rotates the answer's words (so a client can see that a parameter arrived). Stop sequences are the dialect's job.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any


def _words(text: str) -> list[str]:
    return text.split()


def answer(messages: list[dict[str, Any]] | None, prompt: str | None) -> tuple[list[str], int]:
    """(the answer's tokens, the prompt's token count) for a chat or a text completion."""
    if messages is not None:
        prompt_tokens = sum(len(_words(str(message.get("content", "")))) for message in messages)
        last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        words = ["You", "said:", *_words(str(last["content"] if last else ""))]
    elif prompt is not None:
        prompt_tokens = len(_words(prompt))
        words = list(reversed(_words(prompt)))
    else:
        raise ValueError("tiny-chat needs messages (chat) or prompt (text completion)")
    return [word if index == 0 else " " + word for index, word in enumerate(words)], prompt_tokens


async def generate(
    messages: list[dict[str, Any]] | None = None,
    prompt: str | None = None,
    max_tokens: int = 16,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: list[str] | None = None,
    seed: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield one piece per token; the last one with `finish_reason` and `usage`."""
    tokens, prompt_tokens = answer(messages, prompt)
    if seed is not None and tokens:
        shift = seed % len(tokens)
        words = [token.strip() for token in tokens[shift:] + tokens[:shift]]
        tokens = [word if index == 0 else " " + word for index, word in enumerate(words)]
    delay = float(os.environ.get("TOKEN_DELAY_SECONDS", "0"))
    sent = tokens[:max_tokens]
    finish = "length" if len(tokens) > max_tokens else "stop"
    if not sent:
        yield {"text": "", "finish_reason": finish, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0}}
        return
    for index, token in enumerate(sent):
        if delay:
            await asyncio.sleep(delay)
        if index < len(sent) - 1:
            yield {"text": token}
        else:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(sent)}
            yield {"text": token, "finish_reason": finish, "usage": usage}
