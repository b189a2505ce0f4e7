"""Fetch a `url` input: only allowlisted schemes, never more than the payload limit, within the request's deadline.

The bytes go to the model raw (`X-Bundleserve-Input: raw`) with the content type the source declared.
`file` URLs are read from the router's file system only when an operator adds `file` to BUNDLESERVE_URL_SCHEMES.

Destination guard (see bundleserve.outbound): every address the fetch connects to is checked by the resolver that
produced it, so the connection goes to exactly the address that was checked (no second lookup to rebind; the Host
header and TLS SNI still carry the URL's host name). Redirects are followed by hand, at most MAX_REDIRECTS, and each
hop's scheme and address are checked again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
from yarl import URL

from bundleserve.api.errors import InvalidRequest, PayloadTooLarge
from bundleserve.outbound.connector import BlockedDestination, check_literal_host, guarded_connector, refused
from bundleserve.outbound.destinations import AddressPolicy
from bundleserve.outbound.urls import check_url

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Every failure below HTTP (refused, reset, not HTTP at all, DNS) reads the same (docs/security.md).
NO_HTTP_ANSWER = "fetching url failed: no HTTP answer from the destination"


class UrlFetcher:
    """One shared HTTP session for url inputs (separate from the model client: different hosts, TLS, redirects).

    `policy` defaults to the secure default (AddressPolicy()): the router passes the one its settings built.
    """

    def __init__(self, policy: AddressPolicy | None = None) -> None:
        self.policy = AddressPolicy() if policy is None else policy
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, url: str, *, schemes: frozenset[str], max_bytes: int) -> tuple[bytes, bytes]:
        """(body, content type) of `url`; 413 when it is larger than `max_bytes`, 400 when it cannot be fetched."""
        scheme = check_url(url, schemes)
        if scheme == "file":
            return await asyncio.to_thread(_read_file, url, max_bytes)
        if self._session is None:
            connector = guarded_connector(self.policy)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        target = URL(url)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                check_literal_host(target.raw_host or "", self.policy)
                async with self._session.get(target, allow_redirects=False) as response:
                    if response.status not in _REDIRECTS:
                        return await _read_body(response, max_bytes)
                    location = response.headers.get("Location")
                    if not location:
                        raise InvalidRequest(f"fetching url failed: HTTP {response.status} without a Location")
                    target = target.join(URL(location))
                if check_url(str(target), schemes) not in {"http", "https"}:
                    raise InvalidRequest("url redirect to a non-HTTP scheme is refused")
            raise InvalidRequest(f"fetching url failed: more than {MAX_REDIRECTS} redirects")
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, BlockedDestination):
                raise refused(error.os_error.reason) from None
            raise InvalidRequest(NO_HTTP_ANSWER) from None
        except aiohttp.ClientError:
            # One text for a closed port, an open port that is not HTTP and a dropped connection: the error must
            # not turn url inputs into a port scanner of what the guard lets through.
            raise InvalidRequest(NO_HTTP_ANSWER) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_body(response: aiohttp.ClientResponse, max_bytes: int) -> tuple[bytes, bytes]:
    """The body within `max_bytes` (413 as soon as it is known to be larger) and its declared content type."""
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
