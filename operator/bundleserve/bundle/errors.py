"""Errors the bundle runtime answers with, in the body shape the router expects (docs/contracts.md).

Every body is `{"error": {"code", "message", "type", "traceback"}}`: `type` and `traceback` are set when the error
comes from an exception raised by the model (or its load function) and are null otherwise, so readers never guess.
"""

from __future__ import annotations

import traceback as tb
from pathlib import Path
from types import TracebackType
from typing import Any

from bundleserve.api.errors import ApiError

_RUNTIME_DIR = str(Path(__file__).resolve().parent)


class BundleError(ApiError):
    """Base of the runtime's errors; always carries `type` and `traceback` (possibly null)."""

    def __init__(self, message: str, *, type: str | None = None, traceback: str | None = None, **details: Any) -> None:
        super().__init__(message, type=type, traceback=traceback, **details)
        self.type_name = type
        self.traceback = traceback


class ModelRaised(BundleError):
    """The model's code raised: 500, so the router reports a model error."""

    status = 500
    code = "model_error"


class BatchResultInvalid(BundleError):
    """The batch entrypoint's answer is not a list with one result per call: every call of that batch fails with it."""

    status = 500
    code = "model_error"


class InvalidArguments(BundleError):
    """The request's arguments do not fit the callable's signature (checked before calling it)."""

    status = 400
    code = "invalid_arguments"


class NotSerializable(BundleError):
    """The model returned something that cannot be sent back as JSON (and no pickled result was asked for)."""

    status = 500
    code = "not_serializable"


class NotReady(BundleError):
    status = 503
    code = "not_ready"


class LoadFailed(BundleError):
    """load() raised; the runtime stays up and not ready so the reason is visible on the ready route."""

    status = 503
    code = "load_failed"


class StreamNotDefined(BundleError):
    status = 404
    code = "not_found"


def user_traceback(error: BaseException) -> str:
    """The traceback of `error` without the runtime's own leading frames: the user sees their code first."""
    frames: TracebackType | None = error.__traceback__
    while (
        frames is not None
        and frames.tb_next is not None
        and frames.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR)
    ):
        frames = frames.tb_next
    return "".join(tb.format_exception(type(error), error, frames))


def describe(error: BaseException) -> str:
    """A one-line description: `Type: message` (the message's first line only)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def model_raised(error: BaseException) -> ModelRaised:
    """The exception's own message (or its type name when empty); the type and traceback travel beside it."""
    message = str(error) or type(error).__name__
    return ModelRaised(message, type=type(error).__name__, traceback=user_traceback(error))


def load_failed(error: BaseException, *, where: str) -> LoadFailed:
    return LoadFailed(f"{where} raised {describe(error)}", type=type(error).__name__, traceback=user_traceback(error))
