"""A test bundle for the OpenAI dialect's failure and contract cases, chosen by the last message's content (or the
prompt): the text `fail before` raises before the first piece, `fail after` after two, `bad piece` yields a number,
`plain` yields plain strings without usage, `slow` yields a word every 50 ms up to 200 words (for a client that goes
away), `huge` yields 1 MiB pieces forever (the dialect's reply limit must end it); anything else: the words of the
text, as objects, the last with `finish_reason` and `usage`. `max_tokens` limits the words (finish_reason length).
Every call appends one line to the file named by OPENAI_LAB_LOG (when set): `start`, then `end` or `closed` (the
generator was closed early: a stop sequence or a client that went away)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any


def _log(line: str) -> None:
    path = os.environ.get("OPENAI_LAB_LOG")
    if path:
        with open(path, "a") as log:
            log.write(line + "\n")


async def generate(
    messages: list[dict[str, Any]] | None = None,
    prompt: str | None = None,
    max_tokens: int = 16,
    temperature: float | None = None,
    stop: list[str] | None = None,
) -> AsyncIterator[Any]:
    text = prompt if messages is None else str(messages[-1]["content"])
    assert text is not None
    _log("start")
    try:
        if text == "fail before":
            raise RuntimeError("the lab failed before its first token")
        if text == "fail after":
            yield "one"
            yield " two"
            raise RuntimeError("the lab failed mid-stream")
        if text == "bad piece":
            yield 42
            return
        if text == "plain":
            for word in ("plain", " words", " only"):
                yield word
            return
        if text == "slow":
            for index in range(200):
                await asyncio.sleep(0.05)
                yield f" w{index}"
            return
        if text == "huge":
            while True:
                yield "x" * (1024 * 1024)
        words = text.split()
        sent = words[:max_tokens]
        for index, word in enumerate(sent):
            piece: dict[str, Any] = {"text": word if index == 0 else " " + word}
            if index == len(sent) - 1:
                piece["finish_reason"] = "length" if len(words) > max_tokens else "stop"
                piece["usage"] = {"prompt_tokens": len(words), "completion_tokens": len(sent)}
            yield piece
        _log("end")
    except GeneratorExit:
        _log("closed")
        raise
