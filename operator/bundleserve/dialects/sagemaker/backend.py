"""What the dialect needs from the core (TEMPORARY stand-ins mirroring the contract's `dialects/base.py`).

Re-pointed to `bundleserve.dialects.base` (InvocationBackend, TaskBackend, the public-URL helper) once the core lands.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from bundleserve.api.endpoint import Mode
from bundleserve.dialects.sagemaker.invocation import Invocation


@dataclass(frozen=True, slots=True)
class ModelReply:
    status: int
    body: bytes
    content_type: str
    custom_attributes: str | None = None


@dataclass(frozen=True, slots=True)
class StreamChunk:
    data: bytes


class InvocationBackend(Protocol):
    def gate(self, name: str | None, authorization: str | None, mode: Mode) -> None: ...

    async def read_body(self, request: web.Request) -> bytes: ...

    async def predict(self, inv: Invocation) -> ModelReply: ...

    def stream(self, inv: Invocation) -> AbstractAsyncContextManager[AsyncIterator[StreamChunk]]: ...


class TaskBackend(Protocol):
    async def submit(
        self,
        inv: Invocation,
        *,
        callback: Any,
        request_ttl_seconds: float | None,
        invocation_timeout_seconds: float | None,
    ) -> str: ...

    async def status(self, task_id: str, *, wait_seconds: float) -> Any: ...

    async def result(self, task_id: str) -> tuple[bytes, str]: ...


TaskResolver = Callable[[str], TaskBackend]


def absolute_url(request: web.Request, path: str) -> str:
    return public_base_url(request) + path


def public_base_url(request: web.Request) -> str:
    """Absolute base URL for links: BUNDLESERVE_PUBLIC_URL, else X-Forwarded-Proto/Host, else the request's own."""
    configured = os.environ.get("BUNDLESERVE_PUBLIC_URL")
    if configured:
        return configured.rstrip("/")
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return f"{proto}://{host}"
