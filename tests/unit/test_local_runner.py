"""The pure parts of `bundleserve run`: the front port check and the ready message."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bundleserve.api.manifest import load_endpoints
from bundleserve.local.plan import plan_endpoints
from bundleserve.local.runner import PortInUse, bind_front, ready_message

REPO = Path(__file__).resolve().parents[2]


def test_bind_front_reports_a_port_in_use_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            bind_front("127.0.0.1", port)


def test_ready_message_has_an_example_per_client(tmp_path: Path) -> None:
    found = load_endpoints([REPO / "examples/echo/endpoint.yaml", REPO / "examples/slow-job/endpoint.yaml"])
    ports = iter(range(20000, 20010))
    plans = plan_endpoints(
        found, endpoints_dir=tmp_path, results_dir=tmp_path, redis_url=None, allocate_port=lambda: next(ports)
    )
    message = ready_message("http://127.0.0.1:8080", plans)
    first, *examples = message.splitlines()
    assert first == "bundleserve local mode ready on http://127.0.0.1:8080 (endpoints: echo, slow-job)"
    text = "\n".join(examples)
    assert "curl -s http://127.0.0.1:8080/v1/endpoints/echo/predict" in text
    assert "from bundleserve.client import Client" in text
    assert "boto3.client('sagemaker-runtime', endpoint_url='http://127.0.0.1:8080'" in text
    assert "LaunchClient(api_key='local', endpoint='http://127.0.0.1:8080/v1/hosted_inference')" in text
    assert ".get_model_endpoint('echo').predict(launch.EndpointRequest(args={}, return_pickled=False))" in text
    assert "loopback" in text
    assert "OpenAI" not in text  # neither endpoint declares spec.openai


def test_ready_message_has_the_openai_example_for_an_endpoint_that_declares_it(tmp_path: Path) -> None:
    found = load_endpoints([REPO / "examples/echo/endpoint.yaml", REPO / "examples/tiny-chat/endpoint.yaml"])
    ports = iter(range(20000, 20010))
    plans = plan_endpoints(
        found, endpoints_dir=tmp_path, results_dir=tmp_path, redis_url=None, allocate_port=lambda: next(ports)
    )
    text = ready_message("http://127.0.0.1:8080", plans)
    assert "openai.OpenAI(base_url='http://127.0.0.1:8080/openai/v1', api_key='local')" in text
    assert "create(model='tiny-chat'" in text
