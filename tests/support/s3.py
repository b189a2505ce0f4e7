"""A real S3-compatible HTTP server on loopback (moto's server mode, as a subprocess) and the AWS env pointing at it."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import Server, free_port

#: moto accepts any credentials; these only make boto3 sign requests. The config files are emptied so a developer's
#: ~/.aws never leaks into a test.
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@dataclass(frozen=True)
class S3Server:
    url: str

    @property
    def env(self) -> dict[str, str]:
        return {**TEST_ENV, "AWS_ENDPOINT_URL": self.url}


@contextmanager
def s3_server(directory: Path) -> Iterator[S3Server]:
    port = free_port()
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    server = Server([executable, "-H", "127.0.0.1", "-p", str(port)], log_path=directory / f"moto-{port}.log")
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http(f"{url}/", timeout=30)
        yield S3Server(url)
    finally:
        server.stop()
