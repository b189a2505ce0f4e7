"""The SDK and `bundleserve invoke` / `bundleserve tasks get` against `bundleserve run` on the examples, as a user."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundleserve.client import (
    AsyncClient,
    AsyncEndpoint,
    Client,
    EndpointRequest,
    ModeNotServed,
    NotFound,
    StreamingEndpoint,
    SyncEndpoint,
)
from tests.integration.test_client_harness import CallbackReceiver
from tests.support.local_mode import running_local_mode
from tests.support.processes import REPO, bundleserve, free_port
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_local_mode(tmp_path_factory.mktemp("client-local")) as (url, _server):
        yield url


# -- the SDK ------------------------------------------------------------------------------------------------


def test_endpoints_are_listed_with_their_modes(base: str) -> None:
    with Client(base) as client:
        listed = {info.name: info.modes for info in client.endpoints()}
    assert listed == {
        "echo": ("sync", "streaming", "async"),
        "token-streamer": ("sync", "streaming"),
        "slow-job": ("async",),
    }


def test_endpoint_picks_the_api_by_the_modes_served(base: str) -> None:
    with Client(base) as client:
        assert isinstance(client.endpoint("echo"), SyncEndpoint)
        assert isinstance(client.endpoint("echo", mode="streaming"), StreamingEndpoint)
        assert isinstance(client.endpoint("slow-job"), AsyncEndpoint)
        with pytest.raises(ModeNotServed, match="serves async, not sync"):
            client.endpoint("slow-job", mode="sync")
        with pytest.raises(NotFound):
            client.endpoint("missing")


def test_every_mode_through_local_mode(base: str) -> None:
    with Client(base) as client:
        echo = client.endpoint("echo")
        assert isinstance(echo, SyncEndpoint)
        assert echo.predict(EndpointRequest(args={"hello": "world"})).result_value() == {"hello": "world"}
        streamer = client.endpoint("token-streamer", mode="streaming")
        args = {"prompt": "hi", "max_tokens": 5, "delay_seconds": 0}
        tokens = [event.result_value() for event in streamer.predict(EndpointRequest(args=args))]
        whole = client.endpoint("token-streamer", mode="sync").predict(EndpointRequest(args=args)).result_value()
        assert "".join(tokens) == whole["text"] and len(tokens) == 5
        job = client.endpoint("slow-job")
        assert isinstance(job, AsyncEndpoint)
        response = job.predict(EndpointRequest(args={"seconds": 0.3, "steps": 3})).get(timeout=60)
        assert response.status == "SUCCESS" and response.result_value()["progress"][-1]["percent"] == 100


def test_a_callback_through_local_mode_arrives_with_basic_auth(base: str) -> None:
    receiver = CallbackReceiver().start()
    try:
        request = EndpointRequest(
            args={"seconds": 0.1, "steps": 1},
            callback_url=receiver.url,
            callback_auth_kind="basic",
            callback_auth_username="local",
            callback_auth_password="pw",
        )
        with Client(base) as client:
            future = client.endpoint("slow-job").predict(request)
            assert future.get(timeout=60).succeeded
        wait_until(lambda: receiver.received, timeout=30, what="the callback")
    finally:
        receiver.stop()
    ((authorization, body),) = receiver.received
    assert authorization == "Basic " + base64.b64encode(b"local:pw").decode()
    assert body["task_id"] == future.task_id and body["status"] == "SUCCESS"


async def test_the_asyncio_client_through_local_mode(base: str) -> None:
    async with AsyncClient(base) as client:
        assert sorted(info.name for info in await client.endpoints()) == ["echo", "slow-job", "token-streamer"]
        echo = await client.endpoint("echo")
        assert (await echo.predict(EndpointRequest(args={"n": 1}))).result_value() == {"n": 1}
        job = await client.endpoint("slow-job", mode="async")
        futures = await job.predict_batch([EndpointRequest(args={"seconds": 0.1, "label": str(i)}) for i in range(3)])
        labels = [(await future.get(timeout=60)).result_value()["label"] for future in futures]
    assert labels == ["0", "1", "2"]


# -- the CLI ------------------------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("BUNDLESERVE_GATEWAY", "BUNDLESERVE_API_KEY")}
    return subprocess.run(
        bundleserve(*args), capture_output=True, text=True, timeout=120, env={**environment, **(env or {})}, cwd=REPO
    )


def test_invoke_prints_the_result_as_json(base: str) -> None:
    done = cli("invoke", "echo", "--args", '{"a": [1, "x"]}', "--gateway", base)
    assert (done.returncode, json.loads(done.stdout), done.stderr) == (0, {"a": [1, "x"]}, "")


def test_the_gateway_defaults_to_the_environment(base: str) -> None:
    done = cli("invoke", "echo", "--args", '{"e": 1}', env={"BUNDLESERVE_GATEWAY": base})
    assert done.returncode == 0 and json.loads(done.stdout) == {"e": 1}


def test_invoke_stream_prints_one_line_per_chunk(base: str) -> None:
    done = cli("invoke", "echo", "--stream", "--args", '{"text": "one two three"}', "--gateway", base)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == ["one", "two", "three"]


def test_invoke_async_then_tasks_get(base: str) -> None:
    submitted = cli("invoke", "slow-job", "--async", "--args", '{"seconds": 0.2}', "--gateway", base)
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["task_id"]
    shown = cli("tasks", "get", task_id, "--wait", "--gateway", base)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["task_id"] == task_id and document["status"] == "SUCCESS"
    assert document["result"]["requested_seconds"] == 0.2
    assert json.loads(cli("tasks", "get", task_id, "--gateway", base).stdout)["status"] == "SUCCESS"


def test_invoke_async_wait_without_a_terminal_draws_no_progress(base: str) -> None:
    done = cli("invoke", "slow-job", "--async", "--wait", "--args", '{"seconds": 0.3}', "--gateway", base)
    assert done.returncode == 0 and done.stderr == ""
    assert "\x1b" not in done.stdout  # no terminal control sequences in piped output
    assert json.loads(done.stdout)["requested_seconds"] == 0.3


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("invoke", "missing", "--args", "{}"), 1, "unknown endpoint 'missing'"),
        (("invoke", "slow-job", "--args", "{}"), 1, "serves async, not sync"),
        (("invoke", "echo", "--args", "[1]"), 1, "args must be a JSON object"),
        (("invoke", "slow-job", "--async", "--wait", "--args", '{"seconds": -1}'), 1, "the model failed"),
        (("invoke", "echo", "--args", "{oops"), 2, "--args is not valid JSON"),
        (("invoke", "echo", "--wait", "--args", "{}"), 2, "--wait needs --async"),
        (("invoke", "echo", "--url", ""), 2, "url must be a non-empty string"),
        (("tasks", "get", "no-such-task"), 1, "no task 'no-such-task'"),
    ],
)
def test_failures_exit_non_zero_with_the_reason(base: str, args: tuple[str, ...], code: int, message: str) -> None:
    done = cli(*args, "--gateway", base)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr and done.stderr.startswith("bundleserve: ")


def test_an_unreachable_server_is_a_clear_failure() -> None:
    done = cli("invoke", "echo", "--args", "{}", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "ConnectError" in done.stderr


def test_a_failed_task_exits_1_and_tasks_get_shows_it(base: str) -> None:
    submitted = cli("invoke", "slow-job", "--async", "--args", '{"steps": 0}', "--gateway", base)
    task_id = json.loads(submitted.stdout)["task_id"]
    shown = cli("tasks", "get", task_id, "--wait", "--gateway", base)
    assert shown.returncode == 1 and json.loads(shown.stdout)["status"] == "FAILURE"
    assert "steps must be between 1 and 1000" in shown.stderr


def test_on_a_terminal_a_progress_indicator_runs_while_waiting(base: str, tmp_path: Path) -> None:
    """Through a pseudo-terminal: the spinner is drawn while the task runs, then the result is printed."""
    controller, terminal = pty.openpty()
    argv = bundleserve("invoke", "slow-job", "--async", "--wait", "--args", '{"seconds": 2}', "--gateway", base)
    environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=environment, cwd=REPO)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process exited
                break
            if not chunk:
                break
            output += chunk
    finally:
        process.wait(30)
        os.close(controller)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "waiting for task" in text
    final = text.replace("\r", "").strip().splitlines()[-1]  # after the spinner's erase sequences (same terminal)
    assert json.loads(final[final.index("{") :])["requested_seconds"] == 2
