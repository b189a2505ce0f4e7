"""The internal hop's wire form (`edge.hop`): what the gateway writes, the router reads back as the same invocation,
and a stream's frames come back as the same chunks and the same error classes, whatever the packet boundaries."""

from __future__ import annotations

import json

import pytest

from bundleserve.api.errors import ApiError, InvalidRequest, ModelError, ModelNotReady, Timeout, Unavailable
from bundleserve.api.invocation import Invocation, StreamChunk
from bundleserve.edge import hop


def round_trip(inv: Invocation) -> Invocation:
    headers = hop.encode_headers(inv)
    return hop.decode(headers.get("Content-Type"), headers.get(hop.INVOCATION_HEADER), inv.body)


@pytest.mark.parametrize(
    "inv",
    [
        Invocation(body=b'{"a":1}'),
        Invocation(body=b"\x00\xffraw", content_type="application/octet-stream", raw=True),
        Invocation(
            body=b"a,b\n1,2",
            content_type="text/csv",
            raw=True,
            accept="text/csv",
            custom_attributes="trace=1; é",  # not ASCII: must survive the header as JSON escapes
            request_id="r-1\n",
            timeout_seconds=2.5,
            return_pickled=True,
            idempotency_key="sagemaker:abc",
        ),
        Invocation(url="https://example.com/x.json", url_body=True, content_type=""),
    ],
)
def test_an_invocation_crosses_the_hop_unchanged(inv: Invocation) -> None:
    assert round_trip(inv) == inv


def test_the_common_call_carries_no_fields_header() -> None:
    assert hop.encode_headers(Invocation(body=b'{"a":1}')) == {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        "[1]",
        '{"body":"x"}',  # not a field the header may carry
        '{"raw":"yes"}',
        '{"timeout_seconds":-1}',
        '{"timeout_seconds":true}',
        '{"url":"s3://bucket/key"}',  # an async-only input of SageMaker, never a sync call's
        '{"url":"file:///etc/passwd"}',
        '{"request_id":5}',
        '{"content_type":null}',
    ],
)
def test_a_header_the_gateway_never_writes_is_refused(header: str) -> None:
    with pytest.raises(InvalidRequest):
        hop.decode("application/json", header, b"{}")


def test_frames_come_back_whatever_the_packet_boundaries() -> None:
    chunks = [b'{"t":0}', b"", b"x" * 70_000]
    failure = Timeout("the model took too long", status_code=None)
    stream = b"".join(hop.data_frame(chunk) for chunk in chunks) + hop.failure_frame(failure)
    for size in (1, 3, 5, 4096, len(stream)):
        reader = hop.FrameReader()
        items: list[StreamChunk | ApiError] = []
        for start in range(0, len(stream), size):
            items += reader.feed(stream[start : start + size])
        assert not reader.pending
        assert [item.data for item in items[:-1] if isinstance(item, StreamChunk)] == chunks
        last = items[-1]
        assert type(last) is Timeout and last.body() == failure.body()


def test_a_model_failure_keeps_its_details() -> None:
    error = ModelError("boom", status_code=500, traceback="tb")
    [item] = hop.FrameReader().feed(hop.failure_frame(error))
    assert type(item) is ModelError and item.body() == error.body()
    assert json.loads(hop.failure_frame(error)[5:])["status"] == 424


def test_a_stream_not_in_the_framing_fails_as_a_model_error() -> None:
    with pytest.raises(ModelError):
        hop.FrameReader().feed(b'data: {"status":"SUCCESS"}\n\n')


def test_a_model_not_ready_stays_one_across_the_hop() -> None:
    """Found by the SageMaker SDK tests through the gateway: the native code of ModelNotReady is `unavailable`,
    which alone came back as Unavailable, and SageMaker clients got ServiceUnavailable, not ModelNotReadyException."""
    error = ModelNotReady("the model is not ready yet")
    body = json.dumps(error.body()).encode()
    again = hop.error_of(error.status, body, {**error.headers, **hop.error_headers(error)})
    assert type(again) is ModelNotReady and again.body() == error.body()
    [item] = hop.FrameReader().feed(hop.failure_frame(error))
    assert type(item) is ModelNotReady
    plain = Unavailable("draining")
    assert hop.error_headers(plain) == {}
    assert type(hop.error_of(plain.status, json.dumps(plain.body()).encode(), {})) is Unavailable
