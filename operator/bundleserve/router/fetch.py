"""Fetch a `url` input: only allowlisted schemes, never more than the payload limit, within the request's deadline.

The bytes go to the model raw (`X-Bundleserve-Input: raw`) with the content type the source declared.
`file` URLs are read from the router's file system only when an operator adds `file` to BUNDLESERVE_URL_SCHEMES.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from bundleserve.api.errors import InvalidRequest, PayloadTooLarge

FETCHABLE = frozenset({"http", "https", "file"})


def check_url(url: str, schemes: frozenset[str]) -> str:
    """The URL's scheme if it is allowed (and one we can fetch); InvalidRequest otherwise."""
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise InvalidRequest("url must be an absolute URL (scheme://...)")
    if scheme not in schemes:
        allowed = ", ".join(sorted(schemes)) or "none"
        raise InvalidRequest(f"url scheme {scheme!r} is not allowed (allowed: {allowed})")
    if scheme not in FETCHABLE:
        raise InvalidRequest(f"url scheme {scheme!r} is allowed but not supported by this router")
    return scheme


class UrlFetcher:
    """One shared HTTP session for url inputs (separate from the model client: different hosts, TLS, redirects)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, url: str, *, schemes: frozenset[str], max_bytes: int) -> tuple[bytes, bytes]:
        """(body, content type) of `url`; 413 when it is larger than `max_bytes`, 400 when it cannot be fetched."""
        scheme = check_url(url, schemes)
        if scheme == "file":
            return await asyncio.to_thread(_read_file, url, max_bytes)
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=True)
        try:
            async with self._session.get(url, allow_redirects=True, max_redirects=5) as response:
                if response.status >= 400:
                    raise InvalidRequest(f"fetching url failed: HTTP {response.status}")
                if response.content_length is not None and response.content_length > max_bytes:
                    raise PayloadTooLarge(f"url content is larger than the limit of {max_bytes} bytes")
                parts: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"url content is larger than the limit of {max_bytes} bytes")
                    parts.append(chunk)
                content_type = response.headers.get("Content-Type", "application/octet-stream")
                return b"".join(parts), content_type.encode("latin-1")
        except aiohttp.ClientError as error:
            raise InvalidRequest(f"fetching url failed: {type(error).__name__}: {error}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _read_file(url: str, max_bytes: int) -> tuple[bytes, bytes]:
    path = Path(unquote(urlsplit(url).path))
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise InvalidRequest(f"fetching url failed: {error.strerror}") from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"url content is larger than the limit of {max_bytes} bytes")
    return data, b"application/octet-stream"
