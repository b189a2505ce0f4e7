"""The core's `Invocation` type as the dialect sees it (TEMPORARY stand-in until the core's type lands).

Mirrors the contract's `bundleserve.api.invocation.Invocation` field for field; re-pointed to the core's type on merge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Invocation:
    body: bytes
    content_type: str
    raw: bool
    url: str | None = None
    return_pickled: bool = False
    timeout_seconds: float | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    request_id: str | None = None
