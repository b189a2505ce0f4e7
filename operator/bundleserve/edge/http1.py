"""HTTP/1.1 answers written by hand, for the fast edges (the router's `router.fastpath`, the gateway's
`gateway.fastpath`): a status line and headers in one buffer, the Date header formatted once a second.
"""

from __future__ import annotations

import email.utils
import http
import time

from bundleserve.edge.errors import Answer
from bundleserve.edge.exchange import Reply

REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 413: b"Payload Too Large"}
REASONS |= {408: b"Request Timeout"}
REASONS |= {424: b"Failed Dependency", 429: b"Too Many Requests", 503: b"Service Unavailable"}
REASONS |= {500: b"Internal Server Error", 504: b"Gateway Timeout"}
REASONS |= {status.value: status.phrase.encode() for status in http.HTTPStatus if status.value not in REASONS}


class Date:
    """The Date header, formatted once per second."""

    second = -1
    value = b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = b"Date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.value


def render(answer: Answer, *, keep_alive: bool, length: int | None = None) -> bytes:
    """Status line, headers and body in one buffer (one `write`); `length`: the Content-Length of a body written
    separately (`answer.body` is then empty)."""
    parts = [
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        % (
            answer.status,
            REASONS.get(answer.status, b"Error"),
            answer.content_type.encode(),
            len(answer.body) if length is None else length,
        ),
        Date.header(),
    ]
    for name, value in answer.headers.items():
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(answer.body)
    return b"".join(parts)


def reply_head(reply: Reply, *, keep_alive: bool, length: int | None, extra: bytes = b"") -> bytes:
    """The status line and headers of a dialect's `edge.exchange.Reply` (its own headers, Content-Type among them):
    with `length` its Content-Length, else chunked. `extra`: header lines of the edge's own, each ending in CRLF."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (reply.status, REASONS.get(reply.status, b"Unknown")), Date.header(), extra]
    for name, value in reply.headers.items():
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
