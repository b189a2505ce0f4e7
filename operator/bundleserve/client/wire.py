"""Everything the sync and asyncio clients share, without I/O: routes, retry decisions, SSE decoding, auth, modes.

The two transports (`client.sync` over `httpx.Client`, `client.aio` over `httpx.AsyncClient`) only send what these
functions build and feed back what they receive, so both behave the same by construction.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx

from bundleserve.api.variants import VARIANT_HEADER
from bundleserve.client.errors import (
    BundleserveError,
    ConnectionFailed,
    ModeNotServed,
    ModesUnknown,
    NotFound,
    ServerError,
    Timeout,
    error_from_answer,
    parse_retry_after,
)
from bundleserve.client.models import EndpointInfo, EndpointRequest, EndpointResponse, InvalidEndpointRequest

ModeName = Literal["sync", "streaming", "async"]
MODES: tuple[ModeName, ...] = ("sync", "streaming", "async")
#: The mode `client.endpoint(name)` picks when an endpoint serves several and none was asked for.
PREFERENCE: tuple[ModeName, ...] = ("sync", "streaming", "async")
_ROUTE = {"sync": "predict", "streaming": "stream", "async": "async"}

#: One long-poll's length (`GET /v1/tasks/{id}?wait=`): below the usual 60 s idle timeout of proxies and load
#: balancers, far below the server's 300 s ceiling. A task that finishes earlier answers at once.
LONG_POLL_SECONDS = 50.0
#: Extra read time on top of a long-poll's `wait` before the client gives up on the connection.
LONG_POLL_GRACE_SECONDS = 10.0
#: The connect timeout; reads are bounded by the server's own limits unless the caller sets `timeout`.
CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: Upper bound of a `load_pickled_result` download (memory stays bounded; raise it for bigger results).
MAX_PICKLE_BYTES = 1 << 30


def base_url(url: str) -> str:
    """The server's URL without a trailing slash; ValueError for anything but an http(s) URL with a host."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"the server URL must look like http://HOST:PORT, got {url!r}")
    return url.rstrip("/")


def endpoint_path(name: str, mode: ModeName) -> str:
    return f"/v1/endpoints/{quote(name, safe='')}/{_ROUTE[mode]}"


def describe_path(name: str) -> str:
    return f"/v1/endpoints/{quote(name, safe='')}"


LIST_PATH = "/v1/endpoints"


def task_path(task_id: str) -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}"


def request_headers(request: EndpointRequest) -> dict[str, str]:
    headers = {"X-Request-Id": str(request.request_id)}
    if request.variant is not None:
        headers[VARIANT_HEADER] = request.variant
    return headers


def invocation_body(request: EndpointRequest, mode: ModeName, timeout_seconds: float | None) -> dict[str, Any]:
    """The body for `mode`; callbacks exist only for async (a sync/streaming request with one is refused here)."""
    if mode != "async" and request.has_callback:
        raise InvalidEndpointRequest(f"callback_url applies to async endpoints only, not to a {mode} call")
    if timeout_seconds is not None and not timeout_seconds > 0:
        raise InvalidEndpointRequest(f"timeout_seconds must be a positive number, got {timeout_seconds!r}")
    return request.body(with_callback=mode == "async", timeout_seconds=timeout_seconds)


def timeout_config(timeout: float | None) -> httpx.Timeout:
    return httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS if timeout is None else timeout)


def long_poll_timeout(wait: float, timeout: float | None) -> httpx.Timeout:
    read = wait + (timeout if timeout is not None else LONG_POLL_GRACE_SECONDS)
    return httpx.Timeout(read, connect=CONNECT_TIMEOUT_SECONDS if timeout is None else timeout)


class ApiKeyAuth(httpx.Auth):
    """`Authorization: Bearer KEY`, sent only to the client's own origin.

    A `result_url` may point elsewhere (a presigned S3 URL): the key must never travel there.
    """

    def __init__(self, api_key: str, base_url: str) -> None:
        self._header = f"Bearer {api_key}"
        self._origin = httpx.URL(base_url)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        url = request.url
        if (url.scheme, url.host, url.port) == (self._origin.scheme, self._origin.host, self._origin.port):
            request.headers["Authorization"] = self._header
        yield request


# -- retries ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of refusals: 429 and 503 answers (by contract the model never saw those requests) and
    connections that could not be made. `Retry-After` is honoured; a wait longer than `max_delay_seconds` is not
    waited for (the error is raised instead). `retry_unsafe=True` also retries what may have reached the model
    (a 504, a connection lost after the request was sent) for callers whose models are idempotent; reads
    (`GET`) are always safe.
    """

    max_attempts: int = 3
    backoff_seconds: float = 0.5
    max_delay_seconds: float = 30.0
    retry_unsafe: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts counts the first try: it must be at least 1")


NO_RETRIES = RetryPolicy(max_attempts=1)
_REFUSED = frozenset({429, 503})
_MAYBE_RAN = frozenset({502, 504})


def _backoff(policy: RetryPolicy, attempt: int) -> float:
    return random.uniform(0, policy.backoff_seconds * 2 ** (attempt - 1))


def delay_after_answer(
    policy: RetryPolicy, attempt: int, status: int, headers: httpx.Headers, *, idempotent: bool
) -> float | None:
    """Seconds to wait before attempt `attempt + 1` after an error answer, or None: do not retry."""
    if attempt >= policy.max_attempts:
        return None
    if status not in _REFUSED and not (status in _MAYBE_RAN and (idempotent or policy.retry_unsafe)):
        return None
    asked = parse_retry_after(headers.get("retry-after"))
    delay = asked if asked is not None else _backoff(policy, attempt)
    return delay if delay <= policy.max_delay_seconds else None


def delay_after_transport_error(
    policy: RetryPolicy, attempt: int, error: httpx.TransportError, *, idempotent: bool
) -> float | None:
    """After no answer at all: a connection never made is always safe; one lost after sending only if allowed."""
    if attempt >= policy.max_attempts:
        return None
    never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    if never_sent or idempotent or policy.retry_unsafe:
        return min(_backoff(policy, attempt), policy.max_delay_seconds)
    return None


# -- answers ---------------------------------------------------------------------------------------------------


def raise_for_answer(status: int, headers: httpx.Headers, body: bytes) -> None:
    if status >= 400:
        raise error_from_answer(status, dict(headers), body)


def predict_response(status: int, headers: httpx.Headers, body: bytes) -> EndpointResponse:
    """A sync predict answer. A model failure (424) is returned as Launch does: status FAILURE with the traceback
    (`raise_for_status()` turns it into `ModelError`); every other error answer raises."""
    if status == 424:
        error = error_from_answer(status, dict(headers), body)
        return EndpointResponse(
            status="FAILURE",
            traceback=error.details.get("traceback") or error.message,
            status_code=error.details.get("status_code") if isinstance(error.details.get("status_code"), int) else None,
        )
    raise_for_answer(status, headers, body)
    response = EndpointResponse.from_native(json.loads(body))
    answered = headers.get(VARIANT_HEADER)
    return response if answered is None else dataclasses.replace(response, variant=answered)


def submitted_task_id(status: int, headers: httpx.Headers, body: bytes) -> str:
    raise_for_answer(status, headers, body)
    task_id = json.loads(body).get("task_id")
    if not isinstance(task_id, str):
        raise ServerError("the server accepted the task but sent no task_id", status_code=status, code="bad_answer")
    return task_id


def task_response(status: int, headers: httpx.Headers, body: bytes) -> EndpointResponse:
    raise_for_answer(status, headers, body)
    return EndpointResponse.from_native(json.loads(body))


#: The largest server-sent event the client holds in memory (a chunk is one model output; routers cap requests,
#: not chunks, so the client bounds what it buffers itself).
MAX_EVENT_BYTES = 64 << 20


class SseDecoder:
    """Server-sent events from raw bytes: lines are split here (not by httpx, whose line iterator buffers a line
    without bound) and `data:` lines joined until a blank line ends the event; an event above `max_bytes` raises."""

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._max_bytes = max_bytes

    def feed(self, chunk: bytes) -> list[EndpointResponse]:
        """The events completed by `chunk` (usually zero or one)."""
        self._buffer += chunk
        events = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            event = self._line(line)
            if event is not None:
                events.append(event)
        if self._size + len(self._buffer) > self._max_bytes:
            raise BundleserveError(f"a streamed event is larger than {self._max_bytes} bytes")
        return events

    def _line(self, line: bytes) -> EndpointResponse | None:
        if not line:
            if not self._data:
                return None
            text, self._data, self._size = b"\n".join(self._data), [], 0
            return EndpointResponse.from_native(json.loads(text))
        key, _, value = line.partition(b":")
        if key == b"data":  # comments (`: keep-alive`), `event:` and `id:` lines carry nothing for us
            self._size += len(value)
            self._data.append(value.removeprefix(b" "))
        return None

    def end(self) -> EndpointResponse | None:
        """A last event the server did not terminate with a blank line."""
        events = self.feed(b"\n\n")
        return events[-1] if events else None


def early_answer_pause(previous: float, wait: float, took: float) -> float:
    """The pause before the next long-poll after a non-terminal answer.

    Zero when the server held the poll (the normal case: no fixed polling interval). When it answered a `wait`
    poll much sooner (a server without long-poll, or one that could not subscribe in time), back off from 50 ms
    up to 1 s so the client never spins.
    """
    if wait <= 0 or took >= wait / 2:
        return 0.0
    return min(1.0, max(0.05, previous * 2))


# -- endpoint modes --------------------------------------------------------------------------------------------


def listing(status: int, headers: httpx.Headers, body: bytes) -> list[EndpointInfo] | None:
    """`GET /v1/endpoints`: the endpoints, or None when this server has no listing route (404/405)."""
    if status in (404, 405):
        return None
    raise_for_answer(status, headers, body)
    return [EndpointInfo.from_document(item) for item in json.loads(body).get("endpoints", [])]


def description(status: int, headers: httpx.Headers, body: bytes) -> EndpointInfo | None:
    """`GET /v1/endpoints/{name}`: the endpoint, or None when unknown here or the route does not exist (404/405):
    the caller then consults the listing to tell the two apart."""
    if status in (404, 405):
        return None
    raise_for_answer(status, headers, body)
    return EndpointInfo.from_document(json.loads(body))


def from_listing(name: str, endpoints: Iterable[EndpointInfo] | None) -> EndpointInfo | None:
    """The endpoint from a listing; None when the server lists nothing (modes unknown); NotFound when absent."""
    if endpoints is None:
        return None
    for info in endpoints:
        if info.name == name:
            return info
    raise NotFound(f"unknown endpoint {name!r}", status_code=404, code=NotFound.api.code)


def choose_mode(name: str, info: EndpointInfo | None, asked: ModeName | None) -> ModeName:
    """The mode to use: the one asked for (it must be served when the modes are known), else the preferred one
    the endpoint serves. Without a description (a router of today) only an explicit mode can be used."""
    if asked is not None and asked not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {asked!r}")
    if info is None:
        if asked is None:
            raise ModesUnknown(
                f"the server does not describe endpoint {name!r} (no GET /v1/endpoints/{{name}}): "
                "pass mode='sync', 'streaming' or 'async'"
            )
        return asked
    if asked is not None:
        if asked not in info.modes:
            raise ModeNotServed(
                f"endpoint {name!r} serves {', '.join(info.modes) or 'no mode'}, not {asked}",
                status_code=400,
                code=ModeNotServed.api.code,
            )
        return asked
    for mode in PREFERENCE:
        if mode in info.modes:
            return mode
    raise ModeNotServed(f"endpoint {name!r} serves no known mode", status_code=400, code=ModeNotServed.api.code)


def resolve_result_url(base_url: str, result_url: str) -> str:
    """A `result_url` is relative to the server (`/v1/tasks/{id}/result`) or absolute (presigned object storage)."""
    return str(httpx.URL(base_url).join(result_url))


def pickle_url(response: EndpointResponse, trusted_source: bool) -> str:
    if trusted_source is not True:
        raise ValueError("unpickling runs arbitrary code: pass trusted_source=True only for results you trust")
    if not response.result_url:
        raise ValueError("this response has no result_url (send the request with return_pickled=True)")
    return response.result_url


def transport_error(error: httpx.TransportError, method: str, url: str) -> BundleserveError:
    if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout):
        return Timeout(f"{method} {url}: no answer within the client's timeout", status_code=0, code="client_timeout")
    return ConnectionFailed(f"{method} {url}: {type(error).__name__}: {error}")
