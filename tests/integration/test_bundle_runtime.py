"""The bundle runtime as a real subprocess over HTTP: predict, stream, ready, load, errors, backpressure, shutdown."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pytest

from bundleserve.edge.sse import Event, EventParser
from tests.support.processes import Server, bundleserve, free_port
from tests.support.waiting import wait_until

MODULE = "bundle_under_test"
BUNDLE_SOURCE = '''
"""A bundle exercising the runtime; tests hand over control through files (never sleeps)."""
import asyncio
import hashlib
import os
import threading
import time
from pathlib import Path


def _wait_for(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def load():
    if os.environ.get("LOAD_LOG"):
        with open(os.environ["LOAD_LOG"], "a") as log:
            log.write("loaded\\n")
    if os.environ.get("LOAD_GATE"):
        _wait_for(os.environ["LOAD_GATE"], 60)
    if os.environ.get("LOAD_FAILS"):
        raise OSError("weights not found: /models/missing.bin")
    return {"scale": 10}


def sync_predict(model, action, payload=None):
    if isinstance(action, bytes):  # a raw body arrives in the first positional argument after `model`
        return {"raw_size": len(action), "sha256": hashlib.sha256(action).hexdigest()}
    if action == "scale":
        return {"value": model["scale"] * payload}
    if action == "thread":
        return {"thread": threading.current_thread().name}
    if action == "echo":
        return payload
    if action == "raise":
        raise ValueError(f"bad input: {payload}")
    if action == "type_error":
        return len(payload)
    if action == "set":
        return {1, 2, 3}
    if action == "nan":
        return float("nan")
    if action == "block":
        Path(payload["started"]).touch()
        _wait_for(payload["release"])
        return {"released": True}
    raise KeyError(action)


async def async_predict(action, payload=None):
    if action == "thread":
        return {"thread": threading.current_thread().name}
    if action == "echo":
        return payload
    if action == "raise":
        raise ValueError(f"bad input: {payload}")
    if action == "wait":
        Path(payload["started"]).touch()
        while not Path(payload["release"]).exists():
            await asyncio.sleep(0.01)
        return {"released": True}
    raise KeyError(action)


def sync_stream(model, count, size=0, fail_at=None, bad_at=None, counter=None, gate=None, closed=None):
    try:
        for i in range(count):
            if counter:
                Path(counter).write_text(str(i + 1))
            if i == fail_at:
                raise RuntimeError(f"failed at {i}")
            if i == bad_at:
                yield object()
                continue
            if gate and i == 1:
                _wait_for(gate)
            yield {"i": i, "pad": "x" * size}
    finally:
        if closed:
            Path(closed).touch()


async def async_stream(count, size=0, fail_at=None, counter=None, gate=None, closed=None):
    try:
        for i in range(count):
            if counter:
                Path(counter).write_text(str(i + 1))
            if i == fail_at:
                raise RuntimeError(f"failed at {i}")
            if gate and i == 1:
                while not Path(gate).exists():
                    await asyncio.sleep(0.01)
            yield {"i": i, "pad": "x" * size}
    finally:
        if closed:
            Path(closed).touch()
'''

SYNC = ("--entrypoint", f"{MODULE}:sync_predict", "--load", f"{MODULE}:load", "--stream", f"{MODULE}:sync_stream")
ASYNC = ("--entrypoint", f"{MODULE}:async_predict", "--stream", f"{MODULE}:async_stream")
MIB = 1024 * 1024


@dataclass
class Runtime:
    url: str
    server: Server

    def post(self, route: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{route}", json=body, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bundle")
    (directory / f"{MODULE}.py").write_text(BUNDLE_SOURCE)
    return directory


def start(
    bundle_dir: Path, log_dir: Path, *options: str, env: dict[str, str] | None = None, wait: bool = True
) -> Runtime:
    port = free_port()
    argv = bundleserve("bundle", "serve", "--port", str(port), "--path", str(bundle_dir), *options)
    server = Server(argv, log_path=log_dir / f"runtime-{port}.log", env=env)
    runtime = Runtime(f"http://127.0.0.1:{port}", server)
    if wait:
        server.wait_http(f"{runtime.url}/readyz")
    return runtime


@pytest.fixture(scope="module")
def sync_runtime(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = start(bundle_dir, tmp_path_factory.mktemp("logs"), *SYNC)
    yield runtime
    assert runtime.server.stop() == 0, runtime.server.log()


@pytest.fixture(scope="module")
def async_runtime(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = start(bundle_dir, tmp_path_factory.mktemp("logs"), *ASYNC)
    yield runtime
    assert runtime.server.stop() == 0, runtime.server.log()


@pytest.fixture(params=["sync", "async"])
def any_runtime(request: pytest.FixtureRequest) -> Runtime:
    runtime: Runtime = request.getfixturevalue(f"{request.param}_runtime")
    return runtime


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body["error"]  # type: ignore[no-any-return]


def read_events(response: httpx.Response) -> list[Event]:
    parser = EventParser()
    events = []
    for chunk in response.iter_bytes():
        events += parser.feed(chunk)
    return events


# --- ready, predict ---------------------------------------------------------------------------------------------------


def test_ready_route_and_the_ready_log_line(sync_runtime: Runtime) -> None:
    response = httpx.get(f"{sync_runtime.url}/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})
    assert f"bundle runtime ready on {sync_runtime.url}" in sync_runtime.server.log()


def test_predict_gets_keyword_arguments_and_the_loaded_model(sync_runtime: Runtime) -> None:
    response = sync_runtime.post("/predict", {"action": "scale", "payload": 4})
    assert (response.status_code, response.json()) == (200, {"value": 40})
    assert response.headers["content-type"].startswith("application/json")


def test_sync_callables_run_in_the_thread_pool_and_async_ones_on_the_loop(
    sync_runtime: Runtime, async_runtime: Runtime
) -> None:
    assert sync_runtime.post("/predict", {"action": "thread"}).json()["thread"].startswith("bundle-call")
    assert async_runtime.post("/predict", {"action": "thread"}).json()["thread"] == "MainThread"


@pytest.mark.parametrize(("kind", "action"), [("sync", "block"), ("async", "wait")])
def test_a_waiting_call_does_not_block_other_requests(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, action: str
) -> None:
    runtime: Runtime = request.getfixturevalue(f"{kind}_runtime")
    started, release = tmp_path / "started", tmp_path / "release"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            runtime.post, "/predict", {"action": action, "payload": {"started": str(started), "release": str(release)}}
        )
        wait_until(started.exists, timeout=20, what="the waiting call to start")
        assert httpx.get(f"{runtime.url}/readyz", timeout=5).status_code == 200
        assert runtime.post("/predict", {"action": "echo", "payload": "meanwhile"}).json() == "meanwhile"
        assert not waiting.done()
        release.touch()
        assert waiting.result(timeout=20).json() == {"released": True}


@pytest.mark.parametrize(
    ("method", "route", "status", "code"),
    [("GET", "/predict", 405, "method_not_allowed"), ("POST", "/nope", 404, "not_found")],
)
def test_unknown_routes_and_methods_answer_the_error_shape(
    sync_runtime: Runtime, method: str, route: str, status: int, code: str
) -> None:
    response = httpx.request(method, f"{sync_runtime.url}{route}", timeout=5)
    assert (response.status_code, error_of(response)["code"]) == (status, code)


# --- argument and error mapping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "named"),
    [
        ("/predict", {"payload": 1}, "missing required argument 'action'"),
        ("/predict", {"action": "echo", "bogus": 1, "other": 2}, "unexpected arguments 'bogus', 'other'"),
        ("/predict", {"action": "echo", "model": "spoofed"}, "'model' is reserved"),
        ("/stream", {"size": 1}, "missing required argument 'count'"),
    ],
)
def test_argument_mismatch_is_a_400_naming_the_argument(
    sync_runtime: Runtime, route: str, body: Any, named: str
) -> None:
    response = sync_runtime.post(route, body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_arguments" and named in error["message"]


def test_model_exceptions_are_500_with_type_message_and_traceback(any_runtime: Runtime) -> None:
    response = any_runtime.post("/predict", {"action": "raise", "payload": 7})
    assert response.status_code == 500
    error = error_of(response)
    assert (error["code"], error["type"], error["message"]) == ("model_error", "ValueError", "bad input: 7")
    assert f"{MODULE}.py" in error["traceback"] and 'raise ValueError(f"bad input: {payload}")' in error["traceback"]
    assert "bundleserve/bundle" not in error["traceback"]


def test_a_type_error_raised_inside_the_model_is_a_model_error(sync_runtime: Runtime) -> None:
    response = sync_runtime.post("/predict", {"action": "type_error", "payload": 5})
    assert response.status_code == 500
    assert (error_of(response)["code"], error_of(response)["type"]) == ("model_error", "TypeError")


@pytest.mark.parametrize(("action", "fragment"), [("set", "(set)"), ("nan", "(float)")])
def test_non_serialisable_results_are_a_clear_500(sync_runtime: Runtime, action: str, fragment: str) -> None:
    response = sync_runtime.post("/predict", {"action": action})
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "not_serializable" and fragment in error["message"]
    assert "return_pickled" in error["message"]


def test_a_pickled_result_carries_what_json_cannot(sync_runtime: Runtime) -> None:
    response = sync_runtime.post("/predict", {"action": "set"}, headers={"X-Bundleserve-Return": "pickle"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.bundleserve.pickle"
    assert cloudpickle.loads(response.content) == {1, 2, 3}


# --- raw and large inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"X-Bundleserve-Input": "raw", "Content-Type": "application/json"}, {"Content-Type": "text/csv"}],
    ids=["raw-header", "non-json-content-type"],
)
def test_raw_bodies_arrive_as_bytes(sync_runtime: Runtime, headers: dict[str, str]) -> None:
    body = b'{"looks": "like json"}\n5.1,3.5\n'
    response = httpx.post(f"{sync_runtime.url}/predict", content=body, headers=headers, timeout=30)
    assert response.json() == {"raw_size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_large_inputs_and_outputs(sync_runtime: Runtime) -> None:
    text = "abcdefghij" * (MIB // 2)  # 5 MiB
    response = sync_runtime.post("/predict", {"action": "echo", "payload": text})
    assert response.status_code == 200 and response.json() == text
    raw = bytes(range(256)) * (5 * MIB // 256)
    response = httpx.post(
        f"{sync_runtime.url}/predict", content=raw, headers={"X-Bundleserve-Input": "raw"}, timeout=30
    )
    assert response.json() == {"raw_size": 5 * MIB, "sha256": hashlib.sha256(raw).hexdigest()}


# --- streams --------------------------------------------------------------------------------------------------------


def test_stream_sends_one_event_per_chunk(any_runtime: Runtime) -> None:
    with httpx.stream("POST", f"{any_runtime.url}/stream", json={"count": 5}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = read_events(response)
    assert [(e.event, json.loads(e.data)) for e in events] == [("message", {"i": i, "pad": ""}) for i in range(5)]


def test_each_chunk_is_sent_as_soon_as_it_is_yielded(any_runtime: Runtime, tmp_path: Path) -> None:
    """The generator waits after its first chunk until the client has that chunk: buffering would deadlock."""
    gate = tmp_path / "gate"
    with httpx.stream(
        "POST", f"{any_runtime.url}/stream", json={"count": 3, "gate": str(gate)}, timeout=15
    ) as response:
        parser = EventParser()
        chunks = response.iter_bytes()
        first: list[Event] = []
        while not first:
            first = parser.feed(next(chunks))
        assert json.loads(first[0].data)["i"] == 0
        gate.touch()
        rest = [event for chunk in chunks for event in parser.feed(chunk)]
    assert [json.loads(e.data)["i"] for e in first + rest] == [0, 1, 2]


def test_an_exception_mid_stream_ends_it_with_an_error_event(any_runtime: Runtime) -> None:
    with httpx.stream("POST", f"{any_runtime.url}/stream", json={"count": 5, "fail_at": 2}, timeout=30) as response:
        assert response.status_code == 200
        events = read_events(response)
    assert [e.event for e in events] == ["message", "message", "error"]
    error = json.loads(events[-1].data)["error"]
    assert (error["code"], error["type"], error["message"]) == ("model_error", "RuntimeError", "failed at 2")
    assert "raise RuntimeError" in error["traceback"]


def test_a_non_serialisable_chunk_ends_the_stream_with_an_error_event(sync_runtime: Runtime) -> None:
    with httpx.stream("POST", f"{sync_runtime.url}/stream", json={"count": 5, "bad_at": 1}, timeout=30) as response:
        events = read_events(response)
    assert [e.event for e in events] == ["message", "error"]
    assert json.loads(events[-1].data)["error"]["code"] == "not_serializable"


def test_a_failure_before_the_first_chunk_is_a_plain_http_error(any_runtime: Runtime) -> None:
    response = any_runtime.post("/stream", {"count": 5, "fail_at": 0})
    assert response.status_code == 500
    assert error_of(response)["code"] == "model_error" and error_of(response)["message"] == "failed at 0"


def _read_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _settled(read: Callable[[], int], *, quiet: float = 0.5, timeout: float = 30) -> int:
    """Poll `read` until it stops changing for `quiet` seconds; return that value."""
    state = {"value": read(), "since": time.monotonic()}

    def stable() -> bool:
        value = read()
        if value != state["value"]:
            state.update(value=value, since=time.monotonic())
            return False
        return value > 0 and time.monotonic() - state["since"] >= quiet

    wait_until(stable, timeout=timeout, what="the generator to stop being pulled")
    return state["value"]


def test_a_slow_consumer_holds_the_generator_back(any_runtime: Runtime, tmp_path: Path) -> None:
    """Backpressure: while the client reads nothing, the runtime pulls only what the socket buffers can hold."""
    counter, count, size = tmp_path / "pulled", 1500, 32 * 1024  # 48 MiB in all
    body = {"count": count, "size": size, "counter": str(counter)}
    with httpx.stream("POST", f"{any_runtime.url}/stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        pulled_while_paused = _settled(lambda: _read_count(counter))
        events = read_events(response)
    print(f"pulled while the client read nothing: {pulled_while_paused} of {count} chunks of {size} bytes")
    # Socket buffers on loopback hold a few MiB (kernel autotuning tops out near 10 MiB); the stream is 48 MiB.
    assert pulled_while_paused * size < 16 * MIB, "the runtime buffered chunks the client had not read"
    assert [json.loads(e.data)["i"] for e in events] == list(range(count))
    assert _read_count(counter) == count


def test_a_client_that_goes_away_closes_the_generator(any_runtime: Runtime, tmp_path: Path) -> None:
    counter, closed, count = tmp_path / "pulled", tmp_path / "closed", 1_000_000
    body = {"count": count, "size": 1024, "counter": str(counter), "closed": str(closed)}
    with httpx.stream("POST", f"{any_runtime.url}/stream", json=body, timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    wait_until(closed.exists, timeout=20, what="the generator's finally block after the client left")
    assert _read_count(counter) < count
    assert any_runtime.post("/predict", {"action": "echo", "payload": "still serving"}).json() == "still serving"


# --- load, configuration, shutdown ----------------------------------------------------------------------------------


def test_load_runs_once_before_ready(bundle_dir: Path, tmp_path: Path) -> None:
    gate, load_log = tmp_path / "gate", tmp_path / "load.log"
    runtime = start(bundle_dir, tmp_path, *SYNC, env={"LOAD_GATE": str(gate), "LOAD_LOG": str(load_log)}, wait=False)
    try:
        wait_until(load_log.exists, timeout=20, what="load() to start")
        ready = httpx.get(f"{runtime.url}/readyz", timeout=5)
        assert (ready.status_code, error_of(ready)["code"]) == (503, "not_ready")
        early = runtime.post("/predict", {"action": "scale", "payload": 1})
        assert (early.status_code, error_of(early)["code"]) == (503, "not_ready")
        assert "ready on" not in runtime.server.log()
        gate.touch()
        runtime.server.wait_http(f"{runtime.url}/readyz")
        for payload in range(3):
            assert runtime.post("/predict", {"action": "scale", "payload": payload}).json() == {"value": 10 * payload}
        assert load_log.read_text() == "loaded\n"
    finally:
        assert runtime.server.stop() == 0


def test_a_failed_load_keeps_the_runtime_up_and_not_ready_with_the_error(bundle_dir: Path, tmp_path: Path) -> None:
    runtime = start(bundle_dir, tmp_path, *SYNC, env={"LOAD_FAILS": "1"}, wait=False)
    try:

        def failed() -> dict[str, Any] | None:
            response = httpx.get(f"{runtime.url}/readyz", timeout=5)
            return (
                error_of(response)
                if response.status_code == 503 and error_of(response)["code"] == "load_failed"
                else None
            )

        error = wait_until(failed, timeout=20, what="the ready route to report the load failure")
        assert error["message"] == f"{MODULE}:load raised OSError: weights not found: /models/missing.bin"
        assert error["type"] == "OSError" and "raise OSError" in error["traceback"]
        refused = runtime.post("/predict", {"action": "scale", "payload": 1})
        assert (refused.status_code, error_of(refused)["code"]) == (503, "load_failed")
        assert runtime.server.process.poll() is None
        assert "load failed" in runtime.server.log() and "raise OSError" in runtime.server.log()
    finally:
        assert runtime.server.stop() == 0


def test_exit_on_load_failure_exits_non_zero_with_the_reason(bundle_dir: Path, tmp_path: Path) -> None:
    runtime = start(bundle_dir, tmp_path, *SYNC, "--exit-on-load-failure", env={"LOAD_FAILS": "1"}, wait=False)
    code = runtime.server.process.wait(30)
    runtime.server.stop()
    assert code == 1
    assert (
        f"bundleserve bundle serve: load failed: {MODULE}:load raised OSError: weights not found: /models/missing.bin"
        == runtime.server.log().splitlines()[-1]
    )


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (("--entrypoint", "no_such_module:predict"), "cannot import module 'no_such_module'"),
        (("--entrypoint", f"{MODULE}:no_such_function"), f"module '{MODULE}' has no attribute 'no_such_function'"),
        (("--entrypoint", f"{MODULE}:sync_predict", "--load", f"{MODULE}:missing_load"), "no attribute 'missing_load'"),
        (("--entrypoint", "not a target"), "is not of the form module:callable"),
    ],
)
def test_bad_configuration_exits_2_with_a_one_line_reason(
    bundle_dir: Path, options: tuple[str, ...], reason: str
) -> None:
    argv = bundleserve("bundle", "serve", "--port", str(free_port()), "--path", str(bundle_dir), *options)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bundleserve bundle serve: ") and reason in lines[0], result.stderr


def test_a_port_in_use_exits_2_with_a_one_line_reason(bundle_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = bundleserve("bundle", "serve", "--port", str(port), "--path", str(bundle_dir), *ASYNC)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f"bundleserve bundle serve: cannot listen on 127.0.0.1:{port}: " in result.stderr.splitlines()[-1]


def test_bodies_over_the_configured_limit_are_413(bundle_dir: Path, tmp_path: Path) -> None:
    runtime = start(bundle_dir, tmp_path, *ASYNC, env={"BUNDLESERVE_MAX_BODY_BYTES": "1024"})
    try:
        assert runtime.post("/predict", {"action": "echo", "payload": "x" * 900}).status_code == 200
        refused = runtime.post("/predict", {"action": "echo", "payload": "x" * 2000})
        assert (refused.status_code, error_of(refused)["code"]) == (413, "payload_too_large")
        assert "1024 bytes" in error_of(refused)["message"]
    finally:
        assert runtime.server.stop() == 0


def test_sigterm_finishes_in_flight_requests_then_exits_0(bundle_dir: Path, tmp_path: Path) -> None:
    runtime = start(bundle_dir, tmp_path, *SYNC)
    started, release = tmp_path / "started", tmp_path / "release"
    try:
        with ThreadPoolExecutor(1) as pool:
            payload = {"started": str(started), "release": str(release)}
            in_flight = pool.submit(runtime.post, "/predict", {"action": "block", "payload": payload})
            wait_until(started.exists, timeout=20, what="the in-flight call to start")
            runtime.server.signal(signal.SIGTERM)
            wait_until(lambda: "stopping" in runtime.server.log(), timeout=20, what="the runtime to start draining")
            assert runtime.server.process.poll() is None
            release.touch()
            response = in_flight.result(timeout=30)
        assert (response.status_code, response.json()) == (200, {"released": True})
        assert runtime.server.process.wait(30) == 0
    finally:
        runtime.server.stop()


def test_the_runtime_serves_concurrent_requests(sync_runtime: Runtime) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda n: sync_runtime.post("/predict", {"action": "scale", "payload": n}).json(), range(32))
        )
    assert results == [{"value": 10 * n} for n in range(32)]
