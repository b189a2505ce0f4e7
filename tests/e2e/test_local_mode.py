"""`bundleserve run` driven like a user: start it on the examples, call every mode, stop it with SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.local_mode import running_local_mode
from tests.support.processes import REPO, Server, bundleserve, free_port

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def local_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    with running_local_mode(tmp_path_factory.mktemp("local"), ready_timeout=60) as (base, server):
        assert "bundleserve local mode ready on" in server.log()
        yield base, server


def test_sync_predict_returns_the_model_result(local_mode: tuple[str, Server]) -> None:
    base, _ = local_mode
    response = httpx.post(f"{base}/v1/endpoints/echo/predict", json={"args": {"hello": "world", "n": 3}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "SUCCESS"
    assert body["result"] == {"hello": "world", "n": 3}


def test_streaming_yields_events_in_order(local_mode: tuple[str, Server]) -> None:
    base, _ = local_mode
    events = []
    with httpx.stream("POST", f"{base}/v1/endpoints/echo/stream", json={"args": {"text": "one two three"}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
    assert [e["status"] for e in events] == ["SUCCESS"] * 3
    assert [e["result"] for e in events] == ["one", "two", "three"]


def test_async_task_reaches_success_through_the_embedded_redis(local_mode: tuple[str, Server]) -> None:
    base, _ = local_mode
    submitted = httpx.post(f"{base}/v1/endpoints/echo/async", json={"args": {"job": 7}})
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    status = httpx.get(f"{base}/v1/tasks/{task_id}", params={"wait": 20}, timeout=30).json()
    assert status["status"] == "SUCCESS", status
    assert status["result"] == {"job": 7}


def test_tasks_are_answered_by_the_router_of_their_own_endpoint(local_mode: tuple[str, Server]) -> None:
    base, _ = local_mode
    submitted = httpx.post(f"{base}/v1/endpoints/slow-job/async", json={"args": {"seconds": 0.2, "steps": 2}})
    assert submitted.status_code == 202, submitted.text
    status = httpx.get(f"{base}/v1/tasks/{submitted.json()['task_id']}", params={"wait": 20}, timeout=30).json()
    assert status["status"] == "SUCCESS", status
    assert status["result"]["progress"][-1]["percent"] == 100


def test_unknown_task_is_a_404(local_mode: tuple[str, Server]) -> None:
    base, _ = local_mode
    response = httpx.get(f"{base}/v1/tasks/{'0' * 32}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_unknown_endpoint_is_a_404_in_the_documented_shape(local_mode: tuple[str, Server]) -> None:
    base, _ = local_mode
    response = httpx.post(f"{base}/v1/endpoints/nope/predict", json={"args": {}})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_endpoint_list_names_every_endpoint(local_mode: tuple[str, Server]) -> None:
    base, _ = local_mode
    names = {e["name"] for e in httpx.get(f"{base}/v1/endpoints").json()["endpoints"]}
    assert names == {"echo", "token-streamer", "slow-job"}


def test_endpoints_are_described_with_modes_and_readiness(local_mode: tuple[str, Server]) -> None:
    base, _ = local_mode
    described = httpx.get(f"{base}/v1/endpoints/slow-job").json()
    assert described == {"name": "slow-job", "modes": ["async"], "ready": True}
    refused = httpx.post(f"{base}/v1/endpoints/slow-job/predict", json={"args": {}})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "mode_not_served"


def test_the_ready_line_shows_examples_and_the_api_page(local_mode: tuple[str, Server]) -> None:
    base, server = local_mode
    log = server.log()
    assert f"boto3.client('sagemaker-runtime', endpoint_url='{base}'" in log
    assert f"LaunchClient(api_key='local', endpoint='{base}/v1/hosted_inference')" in log
    page = httpx.get(f"{base}/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text


def test_sigterm_stops_everything_with_status_zero(tmp_path: Path) -> None:
    port = free_port()
    argv = bundleserve(
        "run", str(EXAMPLES / "echo" / "endpoint.yaml"), "--port", str(port), "--data-dir", str(tmp_path / "data")
    )
    server = Server(argv, log_path=tmp_path / "run.log")
    try:
        server.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        server.signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.log()
        assert "stopping" in server.log()
    finally:
        server.stop()


def test_an_invalid_manifest_is_rejected_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: bad}\n"
        "spec:\n  modes: [sync]\n  bundle: {image: x, python: {entrypoint: m:f}}\n"
        "  scaling: {minReplicas: 3, maxReplicas: 2}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bundleserve.cli", "run", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "minReplicas must be less than or equal to spec.scaling.maxReplicas" in result.stderr
    assert str(bad) in result.stderr
