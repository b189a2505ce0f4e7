"""Deadlines of every HTTP connection aiohttp serves (router and gateway): no client holds one for free.

aiohttp's defaults leave a connection open for an hour (keep-alive 3,630 s) and put no deadline on a request's head
or body, so a client trickling a head (`GET /healthz` one byte a second) or a body holds a connection, and on a
router the drain, indefinitely (slowloris). The fast edge (`router.fastpath`) has its own deadlines; this module
gives every other connection the same two (docs/router.md, "Deadlines of every connection"):

- **idle / head** (`idle_seconds`, BUNDLESERVE_IDLE_TIMEOUT_SECONDS, default 75): aiohttp's keep-alive timer starts
  when a connection opens or its last answer went out and is not reset by arriving bytes, so a connection whose
  next request head is not complete by then is closed, however slowly bytes keep coming;
- **body** (`body_seconds`, BUNDLESERVE_BODY_TIMEOUT_SECONDS, default 60): a request body must be complete this long
  after its head. The `body_deadline` middleware arms one timer per request with a body; when it fires before the
  body's end, every read of the body raises `BodyDeadlinePassed` (408 `request_timeout` in the route's own error
  shape) and the connection is closed after the answer.

Errors: `BodyDeadlinePassed` (an `api.errors.RequestTimeout`, also a `TimeoutError` so that aiohttp's lingering
reader, which drops the rest of an unread body, ends quietly and closes the connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bundleserve.api.errors import RequestTimeout

IDLE_ENV = "BUNDLESERVE_IDLE_TIMEOUT_SECONDS"
BODY_ENV = "BUNDLESERVE_BODY_TIMEOUT_SECONDS"
#: How long the unread rest of a body is still read (and dropped) after an answer, so the client reads the answer.
LINGER_SECONDS = 5.0


class BodyDeadlinePassed(RequestTimeout, TimeoutError):
    """The request body was not complete within the body deadline."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The deadlines of one server's connections (both positive, in seconds)."""

    idle_seconds: float = 75.0
    body_seconds: float = 60.0

    def server_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `web.AppRunner` / `web.run_app` (passed on to aiohttp's request handler)."""
        return {"keepalive_timeout": self.idle_seconds, "lingering_time": LINGER_SECONDS}

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        return body_deadline(self.body_seconds)


def limits_from_env(env: Mapping[str, str]) -> ConnectionLimits:
    """The limits from BUNDLESERVE_IDLE_TIMEOUT_SECONDS and BUNDLESERVE_BODY_TIMEOUT_SECONDS; ValueError naming the
    variable for anything but a positive number."""
    defaults = ConnectionLimits()
    return ConnectionLimits(
        idle_seconds=_seconds(env, IDLE_ENV, defaults.idle_seconds),
        body_seconds=_seconds(env, BODY_ENV, defaults.body_seconds),
    )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def body_deadline(seconds: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware that cuts a body not complete within `seconds` of its head (one timer per request with a body;
    requests without one pay a dictionary lookup)."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        content = request.content
        if not request.body_exists or content.is_eof():
            return await handler(request)
        expired = False

        def expire() -> None:
            nonlocal expired
            if not content.is_eof():
                expired = True
                content.set_exception(
                    BodyDeadlinePassed(f"the request body was not complete within {seconds:g} s ({BODY_ENV})")
                )

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            response = await handler(request)
        finally:
            timer.cancel()
        if expired:
            response.force_close()  # the rest of the body cannot be trusted to arrive: close after the answer
        return response

    return middleware
