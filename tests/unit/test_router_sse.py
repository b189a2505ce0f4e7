"""SSE framing: events survive any chunking of the model's stream; client events splice the chunk JSON."""

from __future__ import annotations

import json

import pytest

from bundleserve.bundle.serialization import encode_json, sse_event
from bundleserve.edge.sse import Event, EventParser, as_json, failure_event, success_event

STREAM = b'data: "a"\n\ndata: {"n": 1}\n\n: comment\n\nevent: error\ndata: {"error": {"message": "x"}}\n\n'
EXPECTED = [Event(b'"a"'), Event(b'{"n": 1}'), Event(b'{"error": {"message": "x"}}', "error")]


def test_events_are_parsed_whatever_the_chunk_boundaries() -> None:
    for size in (1, 2, 3, 7, len(STREAM)):
        parser = EventParser()
        events = []
        for start in range(0, len(STREAM), size):
            events.extend(parser.feed(STREAM[start : start + size]))
        assert events == EXPECTED, size


def test_crlf_line_endings_and_multi_line_data() -> None:
    parser = EventParser()
    assert parser.feed(b"data: [1,\r\ndata: 2]\r\n\r\n") == [Event(b"[1,\n2]")]


def test_an_incomplete_event_waits_for_its_end() -> None:
    parser = EventParser()
    assert parser.feed(b'data: "half') == []
    assert parser.feed(b'"\n\n') == [Event(b'"half"')]


def test_success_event_wraps_the_chunk() -> None:
    frame = success_event(b'{"token": "hi"}')
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert json.loads(frame[6:]) == {"status": "SUCCESS", "result": {"token": "hi"}}


def test_failure_event_carries_traceback_and_message() -> None:
    body = json.loads(failure_event("boom", traceback="Traceback...", status_code=None)[6:])
    assert body["status"] == "FAILURE" and body["traceback"] == "Traceback..." and body["error"]["message"] == "boom"


def test_non_json_chunks_become_json_strings() -> None:
    assert as_json(b"[1, 2]") == b"[1, 2]"
    assert json.loads(as_json(b"plain words")) == "plain words"


def test_the_parser_reads_the_bundle_runtimes_stream_split_anywhere() -> None:
    """The runtime frames events with `sse_event`; CRLF line ends and splits inside a UTF-8 character or between
    CR and LF must not change the events."""
    stream = sse_event(encode_json("hé")) + b": comment\n\n" + sse_event(b'{"x":1}', event="error")
    stream += b"data: line one\r\ndata: line two\r\n\r\n"
    for size in (1, 2, 3, 7, len(stream)):
        parser = EventParser()
        events = []
        for start in range(0, len(stream), size):
            events += parser.feed(stream[start : start + size])
        assert events == [
            Event(encode_json("hé")),
            Event(b'{"x":1}', event="error"),
            Event(b"line one\nline two"),
        ]


def test_a_lone_cr_ends_a_line_and_two_end_an_event() -> None:
    parser = EventParser()
    assert parser.feed(b"data: one\rdata: two\r\rdata: three\r\r") == [Event(b"one\ntwo"), Event(b"three")]


def test_an_event_ended_by_lone_crs_is_not_held_back_until_the_next_chunk() -> None:
    """The model sends `data: x CR CR` and then thinks: the event must reach the client now, not with the next one."""
    parser = EventParser()
    assert parser.feed(b"data: now\r\r") == [Event(b"now")]
    assert parser.feed(b"\ndata: later\r\n\r\n") == [Event(b"later")]  # that LF completed the CRLF: no extra line


def test_a_cr_and_its_lf_split_across_chunks_are_one_line_end() -> None:
    parser = EventParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [Event(b"a\nb")]


@pytest.mark.parametrize(
    ("line", "data"),
    [
        (b"data: value", b"value"),  # the one space after the colon is dropped ...
        (b"data:  two spaces", b" two spaces"),  # ... only one
        (b"data:no space", b"no space"),
        (b"data:\tA tab", b"\tA tab"),  # a tab is not that space
        (b"data: ", b""),
        (b"data", b""),  # a field name alone: an empty value
        (b"data: a: b", b"a: b"),  # only the first colon separates
    ],
)
def test_one_leading_space_is_dropped_from_a_field_value(line: bytes, data: bytes) -> None:
    assert EventParser().feed(line + b"\n\n") == [Event(data)]


def test_the_event_field_follows_the_same_space_rule() -> None:
    assert EventParser().feed(b"event:  error\ndata: x\n\n") == [Event(b"x", " error")]
    assert EventParser().feed(b"event:error\ndata: x\n\n") == [Event(b"x", "error")]
