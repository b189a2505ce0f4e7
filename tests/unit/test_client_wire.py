"""The pure half of the SDK (bundleserve.client.wire, client.errors): error mapping, retry decisions, SSE, modes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from bundleserve.api import errors as server
from bundleserve.client import errors, wire
from bundleserve.client.models import EndpointInfo

SERVER_ERRORS = [
    (server.InvalidRequest("bad body"), errors.InvalidRequest),
    (server.ModeNotServed("no sync here"), errors.ModeNotServed),
    (server.Unauthorized("key please"), errors.Unauthorized),
    (server.NotFound("no such endpoint"), errors.NotFound),
    (server.PayloadTooLarge("too big"), errors.PayloadTooLarge),
    (server.ModelError("boom", traceback="Traceback: boom", status_code=500), errors.ModelError),
    (server.Overloaded("busy", retry_after_seconds=3), errors.Overloaded),
    (server.Unavailable("loading", headers={"Retry-After": "2"}), errors.Unavailable),
    (server.Timeout("too slow"), errors.Timeout),
]


@pytest.mark.parametrize(("raised", "expected"), SERVER_ERRORS, ids=lambda v: type(v).__name__)
def test_every_server_error_maps_to_its_documented_class(raised: server.ApiError, expected: type) -> None:
    """The server's own classes render the answer; the client maps it back (one definition of codes/statuses)."""
    body = json.dumps(raised.body()).encode()
    error = errors.error_from_answer(raised.status, raised.headers, body)
    assert type(error) is expected
    assert isinstance(error, errors.ServerError) and isinstance(error, errors.BundleserveError)
    assert (error.status_code, error.code, error.message) == (raised.status, raised.code, raised.message)


def test_details_of_model_errors_and_retry_after_are_exposed() -> None:
    model = errors.error_from_answer(
        424, {}, json.dumps(server.ModelError("boom", traceback="T", status_code=503).body()).encode()
    )
    assert isinstance(model, errors.ModelError)
    assert (model.traceback, model.model_status_code) == ("T", 503)
    assert model.response.status == "FAILURE" and model.response.traceback == "T"
    busy = errors.error_from_answer(429, {"Retry-After": "3"}, json.dumps(server.Overloaded("busy").body()).encode())
    assert isinstance(busy, errors.Overloaded) and busy.retry_after == 3.0
    assert isinstance(errors.error_from_answer(504, {}, b""), TimeoutError)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, b"404: Not Found", errors.NotFound),  # aiohttp's plain text: mapped by status
        (400, b'{"detail": "x"}', errors.InvalidRequest),
        (408, b"", errors.Timeout),  # Launch's gateway answers 408 for a timeout
        (502, b"bad gateway", errors.Unavailable),
        (500, b'{"error": {"code": "internal_error", "message": "oops"}}', errors.ServerError),
        (418, b"teapot", errors.ServerError),
        (400, b'{"error": {"code": "something_new", "message": "m"}}', errors.InvalidRequest),
    ],
)
def test_answers_without_our_code_map_by_status(status: int, body: bytes, expected: type) -> None:
    error = errors.error_from_answer(status, {}, body)
    assert type(error) is expected
    assert error.message  # never empty: the text, or "HTTP <status>"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert errors.parse_retry_after("7") == 7.0
    assert errors.parse_retry_after(None) is None
    assert errors.parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    parsed = errors.parse_retry_after(later)
    assert parsed is not None and 20 < parsed <= 30
    assert errors.parse_retry_after(format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)) == 0.0


POLICY = wire.RetryPolicy(max_attempts=3, backoff_seconds=0.1, max_delay_seconds=5)


def test_refusals_are_retried_honouring_retry_after() -> None:
    headers = httpx.Headers({"Retry-After": "2"})
    assert wire.delay_after_answer(POLICY, 1, 429, headers, idempotent=False) == 2.0
    assert wire.delay_after_answer(POLICY, 2, 503, headers, idempotent=False) == 2.0
    assert wire.delay_after_answer(POLICY, 3, 503, headers, idempotent=False) is None  # bounded
    backoff = wire.delay_after_answer(POLICY, 1, 429, httpx.Headers(), idempotent=False)
    assert backoff is not None and 0 <= backoff <= 0.1
    assert wire.delay_after_answer(POLICY, 1, 429, httpx.Headers({"Retry-After": "60"}), idempotent=False) is None


@pytest.mark.parametrize("status", [400, 401, 404, 413, 424, 500])
def test_other_errors_are_never_retried(status: int) -> None:
    unsafe = wire.RetryPolicy(retry_unsafe=True)
    assert wire.delay_after_answer(unsafe, 1, status, httpx.Headers(), idempotent=True) is None


def test_what_may_have_reached_the_model_is_retried_only_when_asked() -> None:
    request = httpx.Request("POST", "http://h/")
    for status in (502, 504):
        assert wire.delay_after_answer(POLICY, 1, status, httpx.Headers(), idempotent=False) is None
        assert wire.delay_after_answer(POLICY, 1, status, httpx.Headers(), idempotent=True) is not None
        unsafe = wire.RetryPolicy(retry_unsafe=True)
        assert wire.delay_after_answer(unsafe, 1, status, httpx.Headers(), idempotent=False) is not None
    lost = httpx.ReadError("reset", request=request)
    assert wire.delay_after_transport_error(POLICY, 1, lost, idempotent=False) is None
    assert wire.delay_after_transport_error(POLICY, 1, lost, idempotent=True) is not None
    never_sent = httpx.ConnectError("refused", request=request)
    assert wire.delay_after_transport_error(POLICY, 1, never_sent, idempotent=False) is not None
    assert wire.delay_after_transport_error(wire.NO_RETRIES, 1, never_sent, idempotent=False) is None


def test_a_policy_counts_the_first_try() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        wire.RetryPolicy(max_attempts=0)


def test_sse_decoder_joins_data_lines_and_skips_comments() -> None:
    decoder = wire.SseDecoder()
    stream = b': keep-alive\n\ndata: {"status": "SUCCESS",\r\ndata: "result": "a"}\n\nevent: x\n'
    events = [e for byte in range(len(stream)) for e in decoder.feed(stream[byte : byte + 1])]  # any chunking
    assert [e.result_value() for e in events] == ["a"]
    assert decoder.feed(b'data: {"status": "SUCCESS", "result": 1}\n\ndata:{"status":"FAILURE","traceback":"T"}') == [
        wire.EndpointResponse.from_native({"status": "SUCCESS", "result": 1})
    ]
    last = decoder.end()
    assert last is not None and last.status == "FAILURE" and last.traceback == "T"
    assert decoder.end() is None


ECHO = EndpointInfo("echo", ("sync", "streaming", "async"), True)


def test_mode_choice() -> None:
    assert wire.choose_mode("echo", ECHO, None) == "sync"
    assert wire.choose_mode("echo", ECHO, "async") == "async"
    assert wire.choose_mode("s", EndpointInfo("s", ("async", "streaming")), None) == "streaming"
    with pytest.raises(errors.ModeNotServed, match="serves async, streaming, not sync"):
        wire.choose_mode("s", EndpointInfo("s", ("async", "streaming")), "sync")
    assert wire.choose_mode("r", None, "streaming") == "streaming"  # no description: the asked mode is assumed
    with pytest.raises(errors.ModesUnknown, match="pass mode="):
        wire.choose_mode("r", None, None)
    with pytest.raises(ValueError, match="mode must be one of"):
        wire.choose_mode("echo", ECHO, "batch")  # type: ignore[arg-type]


def test_listing_lookup() -> None:
    assert wire.from_listing("echo", [ECHO]) == ECHO
    assert wire.from_listing("echo", None) is None
    with pytest.raises(errors.NotFound):
        wire.from_listing("other", [ECHO])


def test_no_fixed_polling_interval_only_a_guard_against_servers_that_do_not_hold() -> None:
    assert wire.early_answer_pause(0.0, 50.0, 49.0) == 0.0  # held: poll again at once
    assert wire.early_answer_pause(0.0, 0.0, 0.0) == 0.0
    pauses = [0.0]
    for _ in range(8):
        pauses.append(wire.early_answer_pause(pauses[-1], 50.0, 0.001))
    assert pauses[1] == 0.05 and pauses[-1] == 1.0 and pauses == sorted(pauses)


def test_result_urls_resolve_against_the_server() -> None:
    assert wire.resolve_result_url("http://h:1/base", "/v1/tasks/t/result") == "http://h:1/v1/tasks/t/result"
    assert wire.resolve_result_url("http://h:1", "https://s3.example/b/k?sig=1") == "https://s3.example/b/k?sig=1"


def test_the_api_key_goes_only_to_the_clients_own_origin() -> None:
    auth = wire.ApiKeyAuth("k1", "http://127.0.0.1:8080")
    own = next(auth.auth_flow(httpx.Request("GET", "http://127.0.0.1:8080/v1/tasks/t")))
    assert own.headers["Authorization"] == "Bearer k1"
    for url in ("http://127.0.0.1:9000/x", "https://127.0.0.1:8080/x", "http://s3.example/b/k"):
        assert "Authorization" not in next(auth.auth_flow(httpx.Request("GET", url))).headers


def test_an_endless_event_is_refused_instead_of_filling_memory() -> None:
    decoder = wire.SseDecoder(max_bytes=100)
    decoder.feed(b"data: " + b"x" * 60 + b"\n")
    with pytest.raises(errors.BundleserveError, match="larger than 100 bytes"):
        decoder.feed(b"data: " + b"x" * 60)  # not even a whole line yet
    with pytest.raises(errors.BundleserveError, match="larger than 100 bytes"):
        wire.SseDecoder(max_bytes=100).feed(b"x" * 101)


@pytest.mark.parametrize("url", ["notaurl", "ftp://h/x", "http://", "127.0.0.1:8080"])
def test_server_urls_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="must look like http://HOST:PORT"):
        wire.base_url(url)
    assert wire.base_url("https://gw.example/") == "https://gw.example"
