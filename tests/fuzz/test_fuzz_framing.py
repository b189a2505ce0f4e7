"""Fuzz the fast edge's chunked framing (router.framing) in-process against httptools, the parser it feeds.

Properties: for any well-formed chunked body, split anywhere, the scanner stops exactly at its end (the bytes of a
pipelined request behind it are never consumed) and httptools agrees the message ended there; for arbitrary bytes
it either refuses (FramingError / BodyTooLarge) or consumes no more than it was given, and never holds more than one
line pending. Bounded: a fixed number of examples, derandomized (the same examples on every run).
"""

from __future__ import annotations

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundleserve.router.framing import MAX_LINE, BodyTooLarge, ChunkedScanner, FramingError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
HEAD = b"POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"POST /next HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
LIMIT = 4096

chunks = st.lists(st.binary(min_size=1, max_size=300), max_size=8)
extensions = st.sampled_from([b"", b";a=1", b';name="quoted"', b";x"])
trailers = st.lists(st.sampled_from([b"X-Checksum: abc", b"X-T: 1"]), max_size=2)


def encode(parts: list[bytes], extension: bytes, trailer: list[bytes], upper: bool) -> bytes:
    size = (lambda n: b"%X" % n) if upper else (lambda n: b"%x" % n)
    body = b"".join(size(len(part)) + extension + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"0\r\n" + b"".join(line + b"\r\n" for line in trailer) + b"\r\n"


class Recorder:
    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = 0

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete += 1


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@FUZZ
@given(chunks, extensions, trailers, st.booleans(), st.lists(st.integers(min_value=0, max_value=3000), max_size=12))
def test_a_well_formed_body_ends_exactly_where_httptools_ends_it(
    parts: list[bytes], extension: bytes, trailer: list[bytes], upper: bool, cuts: list[int]
) -> None:
    message = encode(parts, extension, trailer, upper)
    recorder = Recorder()
    parser = httptools.HttpRequestParser(recorder)
    parser.feed_data(HEAD)
    scanner = ChunkedScanner(limit=10**9)
    buffer = bytearray()
    for piece in split(message + NEXT, cuts):
        buffer += piece
        taken = scanner.scan(buffer)
        parser.feed_data(bytes(buffer[:taken]))
        del buffer[:taken]
        assert len(buffer) <= MAX_LINE + len(piece) + len(NEXT)
        if scanner.done:
            break
    assert scanner.done and recorder.complete == 1
    assert bytes(recorder.body) == b"".join(parts)
    assert bytes(buffer) == (message + NEXT)[len(message) :][: len(buffer)]  # what is left is the next request


@FUZZ
@given(chunks)
def test_the_limit_is_enforced_from_the_announced_sizes(parts: list[bytes]) -> None:
    limit = sum(len(part) for part in parts) - 1
    scanner = ChunkedScanner(limit=max(limit, 0))
    message = encode(parts, b"", [], False)
    if not parts:
        assert scanner.scan(message) == len(message) and scanner.done
        return
    try:
        scanner.scan(message)
    except BodyTooLarge:
        return
    raise AssertionError("a body one byte over the limit was accepted")


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_arbitrary_bytes_are_refused_or_consumed_within_bounds(data: bytes, cuts: list[int]) -> None:
    scanner = ChunkedScanner(limit=LIMIT)
    recorder = Recorder()
    parser = httptools.HttpRequestParser(recorder)
    parser.feed_data(HEAD)
    buffer = bytearray()
    try:
        for piece in split(data, cuts):
            buffer += piece
            taken = scanner.scan(buffer)
            assert 0 <= taken <= len(buffer)
            if taken:
                parser.feed_data(bytes(buffer[:taken]))
            del buffer[:taken]
            assert len(buffer) <= MAX_LINE + 2 or scanner.done
            assert len(recorder.body) <= LIMIT
            if scanner.done:
                assert recorder.complete == 1  # both agree where the message ended
                break
    except (FramingError, BodyTooLarge, httptools.HttpParserError):
        pass  # refused: the fast edge answers 400/413 and closes


@FUZZ
@given(st.text(alphabet="0123456789abcdefABCDEF; \t=xg-+", min_size=1, max_size=24))
def test_size_lines_are_read_as_httptools_reads_them(line: str) -> None:
    """Where the scanner accepts a size line, httptools reads the same size (or refuses the line itself)."""
    data = line.encode() + b"\r\n"
    scanner = ChunkedScanner(limit=10**30)
    try:
        scanner.scan(data)
    except FramingError:
        return
    recorder = Recorder()
    parser = httptools.HttpRequestParser(recorder)
    parser.feed_data(HEAD)
    try:
        parser.feed_data(data + b"y" * min(scanner.declared, 64))
    except httptools.HttpParserError:
        return
    assert len(recorder.body) == min(scanner.declared, 64)
