"""The bundle runtime survives model code that exits, and imports the bundle from the current directory by default.

Issue 9, item 15: `sys.exit()` inside a model call (predict, a stream, load) must fail that call as a model error,
not stop the runtime; `bundleserve bundle serve --entrypoint mod:fn` run from the bundle's directory finds `mod`
without `--path`, like uvicorn and gunicorn.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bundleserve.edge.sse import EventParser
from tests.support.processes import Server, free_port
from tests.support.waiting import wait_until

CONSOLE_SCRIPT = Path(sys.executable).with_name("bundleserve")
MODULE = "exiting_bundle"
SOURCE = '''
"""Model code that calls sys.exit() on request."""
import os
import sys


def load():
    if os.environ.get("LOAD_EXITS"):
        sys.exit("load gave up")
    return "model"


def predict(action):
    if action == "exit":
        sys.exit(3)
    return {"ok": action}


async def async_predict(action):
    if action == "exit":
        raise SystemExit("async exit")
    return {"ok": action}


def stream(count, exit_at):
    for i in range(count):
        if i == exit_at:
            sys.exit(4)
        yield {"i": i}
'''


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("exiting-bundle")
    (directory / f"{MODULE}.py").write_text(SOURCE)
    return directory


def start(directory: Path, *options: str, env: dict[str, str] | None = None, wait: bool = True) -> tuple[Server, str]:
    """The runtime started IN the bundle's directory and without --path (the default under test), through the
    console script as in the image: `python -m` would put the current directory on sys.path by itself."""
    port = free_port()
    argv = [str(CONSOLE_SCRIPT), "bundle", "serve", "--port", str(port), *options]
    server = Server(argv, log_path=directory / f"runtime-{port}.log", env=env, cwd=directory)
    url = f"http://127.0.0.1:{port}"
    if wait:
        server.wait_http(f"{url}/readyz")
    return server, url


@pytest.fixture(scope="module")
def runtime(bundle_dir: Path) -> Iterator[str]:
    server, url = start(bundle_dir, "--entrypoint", f"{MODULE}:predict", "--stream", f"{MODULE}:stream")
    yield url
    assert server.process.poll() is None, server.log()  # still running after every exit the model asked for
    assert server.stop() == 0, server.log()


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_the_bundle_is_imported_from_the_current_directory_without_path(runtime: str) -> None:
    response = httpx.post(f"{runtime}/predict", json={"action": "hello"}, timeout=30)
    assert (response.status_code, response.json()) == (200, {"ok": "hello"})


def test_sys_exit_in_predict_is_a_model_error_and_the_runtime_keeps_serving(runtime: str) -> None:
    for _ in range(2):
        refused = httpx.post(f"{runtime}/predict", json={"action": "exit"}, timeout=30)
        assert refused.status_code == 500
        error = error_of(refused)
        assert (error["code"], error["type"]) == ("model_error", "SystemExit")
        assert "sys.exit(3)" in error["traceback"]
    response = httpx.post(f"{runtime}/predict", json={"action": "after"}, timeout=30)
    assert (response.status_code, response.json()) == (200, {"ok": "after"})


def test_sys_exit_mid_stream_ends_the_stream_with_an_error_event(runtime: str) -> None:
    with httpx.stream("POST", f"{runtime}/stream", json={"count": 3, "exit_at": 1}, timeout=30) as response:
        assert response.status_code == 200
        parser = EventParser()
        events = [event for chunk in response.iter_bytes() for event in parser.feed(chunk)]
    assert [event.event for event in events] == ["message", "error"]
    assert b"SystemExit" in events[1].data
    response = httpx.post(f"{runtime}/predict", json={"action": "after-stream"}, timeout=30)
    assert response.status_code == 200


def test_system_exit_in_an_async_model_is_a_model_error(bundle_dir: Path) -> None:
    server, url = start(bundle_dir, "--entrypoint", f"{MODULE}:async_predict")
    try:
        refused = httpx.post(f"{url}/predict", json={"action": "exit"}, timeout=30)
        assert (refused.status_code, error_of(refused)["type"]) == (500, "SystemExit")
        assert httpx.post(f"{url}/predict", json={"action": "x"}, timeout=30).status_code == 200
    finally:
        assert server.stop() == 0, server.log()


def test_sys_exit_in_load_is_a_load_failure_not_an_exit(bundle_dir: Path) -> None:
    server, url = start(
        bundle_dir, "--entrypoint", f"{MODULE}:predict", "--load", f"{MODULE}:load", env={"LOAD_EXITS": "1"}, wait=False
    )
    try:

        def load_failed() -> dict[str, Any] | None:
            response = httpx.get(f"{url}/readyz", timeout=5)
            return error_of(response) if response.status_code == 503 and "load" in response.text else None

        error = wait_until(load_failed, timeout=30, what="the ready route to report the failed load")
        assert error["code"] == "load_failed" and "load gave up" in error["message"]
        assert server.process.poll() is None
    finally:
        assert server.stop() == 0, server.log()
