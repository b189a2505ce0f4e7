"""The model side of the OpenAI dialect (pure, no I/O): what a bundle yields, stop sequences, finish reason, usage.

The contract (docs/bundles.md, "OpenAI-compatible models"): the streaming callable yields, per piece of text,
either a string or an object `{"text": str, "finish_reason": "stop" | "length", "usage": {"prompt_tokens": int,
"completion_tokens": int}}` (every member optional). A runnable image's stream events follow the same contract; an
event that is not JSON is a piece of text. Anything else is a model error naming what was yielded.

The dialect enforces the request's stop sequences itself (a model that ignores `stop` still answers as OpenAI
does): text up to the first stop sequence is sent, the sequence is not, and the model's stream is closed. While a
piece could be the start of a stop sequence, that much text is held back until the next piece decides it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bundleserve.api.errors import ModelError

FINISH_REASONS = frozenset({"stop", "length"})


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @staticmethod
    def of_choices(usages: list[Usage]) -> Usage:
        """A request's usage over its choices: the prompt counted once (each choice saw the same prompt), the
        completions added."""
        prompt = max((usage.prompt_tokens for usage in usages), default=0)
        return Usage(prompt, sum(usage.completion_tokens for usage in usages))

    def document(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class Piece:
    """One yielded item of the model, decoded."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None


def _broken(what: str) -> ModelError:
    return ModelError(
        f"the model yielded {what}: an OpenAI-compatible bundle yields strings or objects "
        '{"text", "finish_reason", "usage"} (docs/bundles.md)',
        status_code=None,
        traceback=None,
    )


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _broken(f"usage.{name} = {value!r}")
    return value


def decode_piece(data: bytes) -> Piece:
    """One model event: a JSON string, a JSON piece object, or (a runnable image's plain event) raw text."""
    try:
        item = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return Piece(data.decode("utf-8", errors="replace"))
    if isinstance(item, str):
        return Piece(item)
    if not isinstance(item, dict):
        raise _broken(f"a JSON {type(item).__name__}")
    text = item.get("text", "")
    if not isinstance(text, str):
        raise _broken(f"text of type {type(text).__name__}")
    finish = item.get("finish_reason")
    if finish is not None and finish not in FINISH_REASONS:
        raise _broken(f"finish_reason {finish!r} (stop or length)")
    usage = item.get("usage")
    if usage is None:
        return Piece(text, finish)
    if not isinstance(usage, dict):
        raise _broken("usage that is not an object")
    return Piece(text, finish, Usage(_count(usage, "prompt_tokens"), _count(usage, "completion_tokens")))


class Generation:
    """One choice being generated: feed it the model's pieces, send what it returns; `done` once a stop sequence was
    seen (the caller then closes the model's stream)."""

    __slots__ = ("_held", "_reported_finish", "done", "pieces", "size", "stop", "usage")

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self.stop = stop
        self._held = ""
        self._reported_finish: str | None = None
        self.done = False
        self.pieces = 0  # non-empty text pieces before the stop: the completion tokens when the model reports none
        self.size = 0  # bytes of text handed out (the caller's memory bound for a whole answer)
        self.usage: Usage | None = None

    def feed(self, piece: Piece) -> str:
        """The text to send now for `piece` (possibly empty: held back, or after the stop)."""
        if piece.usage is not None:
            self.usage = piece.usage
        if piece.finish_reason is not None:
            self._reported_finish = piece.finish_reason
        if self.done or not piece.text:
            return ""
        self.pieces += 1
        if not self.stop:
            self.size += len(piece.text)
            return piece.text
        text = self._held + piece.text
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.done = True
            self._held = ""
            return self._out(text[:cut])
        keep = max(_partial(text, s) for s in self.stop)
        self._held = text[len(text) - keep :] if keep else ""
        return self._out(text[: len(text) - keep])

    def _out(self, text: str) -> str:
        self.size += len(text)
        return text

    def finish(self) -> str:
        """The text still held back when the model ended (it was not a stop sequence after all)."""
        held, self._held = self._held, ""
        return self._out(held)

    @property
    def finish_reason(self) -> str:
        """`stop` when a stop sequence ended it, else what the model reported last, else `stop` (it ended)."""
        if self.done:
            return "stop"
        return self._reported_finish or "stop"

    def final_usage(self) -> Usage:
        """The model's reported usage; without one, the text pieces count as completion tokens (prompt: 0)."""
        if self.usage is not None:
            return self.usage
        return Usage(0, self.pieces)


def _partial(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `stop` (held back: it may complete)."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0
