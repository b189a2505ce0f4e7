"""Fuzz the fast edge's HTTP parsing over raw sockets: in-process (its buffers inspected after every example) and
against a `bundleserve router` subprocess (its RSS from /proc), both in front of the real bundle runtime.

Inputs: arbitrary bytes behind the hot route's request line, and well-formed predict requests (Content-Length or
chunked, pipelined in pairs) with bytes flipped, inserted, deleted or cut off. Never allowed: a 500, a connection
left open after the client's EOF (a hang), a buffer beyond the limit plus framing, the router dying or growing.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundleserve.router.fastpath import _MAX_HEAD
from tests.fuzz.conftest import LIMIT, NAME, InProcess, Target, exchange, rss_bytes, statuses
from tests.support.processes import http_ok

PREFIX = f"POST /v1/endpoints/{NAME}/predict HTTP/1.1\r\n".encode()
FUZZ = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def content_length(body: bytes) -> bytes:
    return PREFIX + b"Host: f\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    return PREFIX + b"Host: f\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(lambda a: json.dumps({"args": a}).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A well-formed request (or two pipelined), then a few byte-level mutations."""
    body = draw(bodies)
    framing = draw(st.sampled_from(["length", "chunked"]))
    message = content_length(body) if framing == "length" else chunked(body, draw(st.integers(1, 64)))
    if draw(st.booleans()):
        message += content_length(b'{"args": {"second": true}}')
    data = bytearray(message)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(len(PREFIX), max(len(PREFIX), len(data) - 1)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\r", b"\n", b"\x00", b" ", b":", b"ffffffff", b"-1"]))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


garbage = st.binary(max_size=600).map(lambda tail: PREFIX + tail)


def check(target: Target, data: bytes) -> list[int]:
    received = exchange(target.port, data)
    found = statuses(received)
    assert 500 not in found, (data[:300], received[:600])
    return found


@settings(max_examples=60, **FUZZ)
@given(st.one_of(requests(), garbage))
def test_in_process_no_500_no_hang_bounded_buffers(router_in_process: InProcess, data: bytes) -> None:
    check(router_in_process.target, data)
    for connection in list(router_in_process.edge.connections):
        assert len(connection.buffer) <= _MAX_HEAD + LIMIT + 65536
        assert connection.body_size <= LIMIT


@settings(max_examples=40, **FUZZ)
@given(st.one_of(requests(), garbage))
def test_subprocess_no_500_no_hang(router_process: Target, data: bytes) -> None:
    check(router_process, data)


def test_the_router_survived_the_fuzzing_without_growing(router_process: Target) -> None:
    """Runs after the subprocess fuzzing (file order): still serving, and RSS bounded by a generous margin."""
    assert router_process.server is not None
    pid = router_process.server.process.pid
    before = rss_bytes(pid)
    big = json.dumps({"args": {"pad": "x" * (LIMIT - 100)}}).encode()
    for _ in range(20):  # requests at the limit, valid and malformed, must not accumulate
        assert statuses(exchange(router_process.port, content_length(big))) == [200]
        assert statuses(exchange(router_process.port, chunked(big, 4096)[:-3] + b"zz\r\n")) == [400]
    assert http_ok(f"{router_process.url}/readyz")
    grown = rss_bytes(pid) - before
    assert grown < 32 * 1024 * 1024, f"the router grew by {grown} bytes over 40 requests at the limit"
