"""Optional API-key authentication: `Authorization: Bearer KEY`, or HTTP Basic with the key as username and an empty
password (the Launch client's style). Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every
key without stopping early, so the time taken says nothing about which key or how much of it matched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def presented_key(authorization: str | None) -> bytes | None:
    """The key carried by an Authorization header, or None when it carries none in a form we accept."""
    if not authorization or not authorization.isascii():
        # A key is ASCII; anything else (bytes that are not UTF-8 arrive as lone surrogates) carries no key we
        # issued: refused like a wrong key (401), never an encoding error.
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == "bearer" and credentials:
        return credentials.encode()
    if scheme == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return None
        username, separator, password = decoded.partition(b":")
        if separator and username and not password:
            return username
    return None


class ApiKeys:
    """The set of accepted keys (held as digests only)."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)
        if not self._digests:
            raise ValueError("at least one API key is required")

    def allows(self, authorization: str | None) -> bool:
        key = presented_key(authorization)
        if key is None:
            return False
        candidate = _digest(key)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def require_key(keys: ApiKeys | None, authorization: str | None) -> None:
    """The one API-key gate of every edge (router, gateway): Unauthorized unless keys are off or one matches."""
    from bundleserve.api.errors import Unauthorized

    if keys is not None and not keys.allows(authorization):
        raise Unauthorized(
            "a valid API key is required (Authorization: Bearer KEY)",
            headers={"WWW-Authenticate": 'Bearer, Basic realm="bundleserve"'},
        )
