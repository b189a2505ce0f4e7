"""boto3 through the router's SageMaker dialect to a SageMaker-style runnable image: raw bodies and content types
pass through unchanged in both directions (the image is the one of test_bundle_image_contract, run as a subprocess)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import botocore
import pytest
from botocore.config import Config

from tests.integration.test_bundle_image_contract import MANIFEST, SAGEMAKER_STYLE_SERVER
from tests.integration.test_router_fake_model import start_router
from tests.support.processes import Server, free_port, http_ok
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("sagemaker-image")
    (directory / "server.py").write_text(SAGEMAKER_STYLE_SERVER)
    (directory / "endpoint.yaml").write_text(MANIFEST)
    port = free_port()
    image = Server([sys.executable, str(directory / "server.py"), str(port)], log_path=directory / "image.log")
    router = None
    try:
        image.wait_http(f"http://127.0.0.1:{port}/ping")
        env = {"BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED": "true"}
        router, url = start_router(directory, directory / "endpoint.yaml", f"http://127.0.0.1:{port}", env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=30, what="router ready behind the image")
        config = Config(signature_version=botocore.UNSIGNED, retries={"mode": "standard", "max_attempts": 1})
        with contextlib.closing(
            boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1", config=config)
        ) as client:
            yield client
    finally:
        if router is not None:
            router.stop()
        image.stop()


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/csv", b"1,2,3\n4.5,0.5\n", b"6.0\n5.0"),
        ("application/x-image", bytes(range(256)), bytes(range(256))[::-1]),
        ("application/json", b'{"instances": [1, 2]}', json.dumps({"received": {"instances": [1, 2]}}).encode()),
    ],
)
def test_raw_bodies_and_content_types_pass_through(
    runtime: Any, content_type: str, body: bytes, expected: bytes
) -> None:
    reply = runtime.invoke_endpoint(EndpointName="sagemaker-style", Body=body, ContentType=content_type)
    assert (reply["ContentType"], reply["Body"].read()) == (content_type, expected)
