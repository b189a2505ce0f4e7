"""The runnable-image contract (docs/bundles.md): any HTTP server is a bundle once its Endpoint declares port and routes.

A SageMaker-style container (`GET /ping`, `POST /invocations`, raw bodies in and out) runs unchanged with
`routes: {predict: /invocations, ready: /ping}`. The server below is written here and run as a real subprocess; it is
called on the routes its manifest declares, with the content types a SageMaker client sends.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.manifest import parse_endpoint
from tests.support.processes import Server, free_port

SAGEMAKER_STYLE_SERVER = '''
"""A SageMaker-style model server: GET /ping and POST /invocations, raw bodies, the answer's type follows the input."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/ping":
            self._send(200, b"", "text/plain")
        else:
            self._send(404, b"not found", "text/plain")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/invocations":
            self._send(404, b"not found", "text/plain")
            return
        content_type = self.headers.get("Content-Type", "application/octet-stream")
        if content_type == "text/csv":
            rows = [[float(x) for x in line.split(",")] for line in body.decode().splitlines() if line]
            self._send(200, "\\n".join(repr(sum(row)) for row in rows).encode(), "text/csv")
        elif content_type == "application/json":
            self._send(200, json.dumps({"received": json.loads(body)}).encode(), "application/json")
        else:
            self._send(200, body[::-1], content_type)

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), Handler).serve_forever()
'''

MANIFEST = """
apiVersion: bundleserve.dev/v1alpha1
kind: Endpoint
metadata:
  name: sagemaker-style
spec:
  modes: [sync, async]
  bundle:
    image: registry.example.com/sagemaker-style:1.0
    port: 8080
    routes: {predict: /invocations, ready: /ping}
"""


@pytest.fixture(scope="module")
def endpoint() -> Endpoint:
    return parse_endpoint(yaml.safe_load(MANIFEST), source="sagemaker-style")


@pytest.fixture(scope="module")
def model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("sagemaker")
    (directory / "server.py").write_text(SAGEMAKER_STYLE_SERVER)
    port = free_port()  # 8080 in its container; any free port on this machine
    server = Server([sys.executable, str(directory / "server.py"), str(port)], log_path=directory / "server.log")
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/ping")
    yield url
    server.stop()


def test_the_manifest_declares_the_sagemaker_routes_and_port(endpoint: Endpoint) -> None:
    bundle = endpoint.spec.bundle
    assert not bundle.is_python and bundle.port == 8080
    routes = bundle.effective_routes
    assert (routes.predict, routes.ready, routes.stream) == ("/invocations", "/ping", None)


def test_ready_route(endpoint: Endpoint, model_url: str) -> None:
    assert httpx.get(f"{model_url}{endpoint.spec.bundle.effective_routes.ready}", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/csv", b"1,2,3\n4.5,0.5\n", b"6.0\n5.0"),
        ("application/x-image", bytes(range(256)), bytes(range(256))[::-1]),
        ("application/json", b'{"instances": [1, 2]}', json.dumps({"received": {"instances": [1, 2]}}).encode()),
    ],
)
def test_raw_bodies_and_content_types_pass_through_the_predict_route(
    endpoint: Endpoint, model_url: str, content_type: str, body: bytes, expected: bytes
) -> None:
    route = endpoint.spec.bundle.effective_routes.predict
    response = httpx.post(f"{model_url}{route}", content=body, headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code == 200
    assert (response.headers["content-type"], response.content) == (content_type, expected)


def test_the_server_script_is_what_the_docs_describe() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "bundles.md").read_text()
    assert "routes: {predict: /invocations, ready: /ping}" in docs and "port: 8080" in docs
