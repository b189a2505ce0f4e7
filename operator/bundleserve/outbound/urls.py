"""Which `url` inputs an endpoint accepts: the scheme allowlist, checked where a request is parsed (the sync path
before it fetches, every dialect's async submission before the task is stored), so a refusal is a 400 and never a
task that fails later. Where the URL may then connect is the destination guard's job (`outbound.connector`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from bundleserve.api.errors import InvalidRequest

#: The schemes the router knows how to fetch (`file` only when an operator allows it in BUNDLESERVE_URL_SCHEMES).
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
