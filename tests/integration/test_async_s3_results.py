"""S3ResultStore against a real S3-compatible HTTP server (moto's server mode on loopback), alone and behind the
router's async path: presigned result URLs that plain HTTP clients download."""

from __future__ import annotations

import os
import pickle
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import boto3
import cloudpickle
import pytest
import yaml
from aiohttp import web

from bundleserve.api.manifest import load_endpoints
from bundleserve.dialects.sagemaker import sigv4
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import EndpointEntry, Registry
from bundleserve.queue.results import ResultStore, open_result_store
from bundleserve.queue.s3results import (
    EXPIRES_AT_METADATA,
    S3Location,
    S3ResultStore,
    StorageUnavailable,
    endpoint_from_env,
)
from tests.integration.test_async_http import status, submit, write_async_endpoint
from tests.integration.test_router_fake_model import start_model, start_router
from tests.support.processes import bundleserve, free_port, http_ok
from tests.support.s3 import S3Server, s3_server
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

BUCKET = "results"
PICKLE = "application/vnd.bundleserve.pickle"  # the wire value of docs/contracts.md, spelled out on purpose


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        client = boto3.client("s3", endpoint_url=server.url, **_credentials(server))
        client.create_bucket(Bucket=BUCKET)
        yield server


def _credentials(server: S3Server) -> dict[str, str]:
    env = server.env
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@pytest.fixture
def aws_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The standard AWS variables, as a router in a cluster would have them: the store builds its own client."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return s3


def store(prefix: str, **options: Any) -> S3ResultStore:
    # the endpoint as a process's settings read it from the environment `aws_env` set
    endpoint = endpoint_from_env(os.environ)
    made = open_result_store(Path("/nonexistent"), f"s3://{BUCKET}/{prefix}", s3_endpoint=endpoint, **options)
    assert isinstance(made, S3ResultStore)
    return made


def download(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers["Content-Type"]


async def test_put_get_delete_round_trip(aws_env: S3Server):
    results = store("roundtrip")
    assert isinstance(results, ResultStore)
    await results.put("t1", b"\x00payload", "application/octet-stream", ttl_seconds=600)
    assert await results.get("t1") == (b"\x00payload", "application/octet-stream")
    raw = boto3.client("s3", endpoint_url=aws_env.url, **_credentials(aws_env))
    head = raw.head_object(Bucket=BUCKET, Key="roundtrip/t1")
    assert head["ContentType"] == "application/octet-stream"
    assert float(head["Metadata"][EXPIRES_AT_METADATA]) > 0
    await results.delete("t1")
    assert await results.get("t1") is None
    await results.delete("t1")  # deleting twice is fine
    assert await results.get("never-written") is None


async def test_the_presigned_url_downloads_with_plain_http(aws_env: S3Server):
    results = store("presign", default_ttl_seconds=3600)
    await results.put("t2", b'{"big": true}', "application/json")
    url = results.url_for("t2")
    assert url.startswith(f"{aws_env.url}/{BUCKET}/presign/t2?")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3600"]
    assert download(url) == (b'{"big": true}', "application/json")


async def test_presigned_urls_are_capped_at_seven_days(aws_env: S3Server):
    url = store("cap", default_ttl_seconds=30 * 86400).url_for("t3")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [str(7 * 86400)]


async def test_expired_objects_are_hidden_then_cleaned_up_and_others_are_kept(aws_env: S3Server):
    results = store("expiry")
    await results.put("old", b"x", "text/plain", ttl_seconds=-1)
    await results.put("fresh", b"y", "text/plain", ttl_seconds=600)
    raw = boto3.client("s3", endpoint_url=aws_env.url, **_credentials(aws_env))
    raw.put_object(Bucket=BUCKET, Key="expiry/foreign", Body=b"not ours")  # no expiry metadata: never deleted
    raw.put_object(Bucket=BUCKET, Key="elsewhere", Body=b"outside the prefix")
    assert await results.get("old") is None
    assert await results.cleanup_expired() == 1
    listed = {item["Key"] for item in raw.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {"expiry/fresh", "expiry/foreign", "elsewhere"} <= listed
    assert "expiry/old" not in listed
    assert await results.cleanup_expired() == 0


async def test_storage_failures_are_os_errors(aws_env: S3Server):
    missing = S3ResultStore(S3Location("no-such-bucket", "p/"), endpoint=endpoint_from_env(os.environ))
    with pytest.raises(StorageUnavailable) as caught:
        await missing.put("t4", b"x", "text/plain")
    assert isinstance(caught.value, OSError)
    with pytest.raises(StorageUnavailable):
        await missing.cleanup_expired()


@pytest.fixture
def s3_router(tmp_path: Path, valkey_server: Valkey, s3: S3Server) -> Iterator[tuple[str, S3Server]]:
    model, model_url = start_model(tmp_path)
    server = None
    try:
        endpoint = write_async_endpoint(tmp_path, name="asyncs3", resultTTLSeconds=900)
        env = {
            **s3.env,
            "BUNDLESERVE_RESULTS_URL": f"s3://{BUCKET}/router",
            "BUNDLESERVE_RESULTS_DIR": str(tmp_path / "unused"),
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
        }
        server, url = start_router(tmp_path, endpoint, model_url, env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        yield url, s3
    finally:
        if server is not None:
            server.stop()
        model.stop()


async def test_a_pickled_async_result_ends_with_a_presigned_url(s3_router: tuple[str, S3Server], tmp_path: Path):
    router, s3 = s3_router
    async with aiohttp.ClientSession() as http:
        code, accepted = await submit(http, router, {"args": {"v": [1, 2]}, "return_pickled": True}, name="asyncs3")
        assert code == 202, accepted
        _, body = await status(http, router, accepted["task_id"], wait=20)
        assert (body["status"], body["result"]) == ("SUCCESS", None), body
        url = body["result_url"]
        # under the endpoint namespace's own prefix (a local Endpoint file without one is in `default`)
        assert url.startswith(f"{s3.url}/{BUCKET}/router/default/{accepted['task_id']}?"), url
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["900"]
        data, content_type = download(url)
        assert content_type == PICKLE
        assert cloudpickle.loads(data) == pickle.loads(data) == {"v": [1, 2]}
        async with http.get(f"{router}/v1/tasks/{accepted['task_id']}/result") as response:
            assert response.status == 200
            assert pickle.loads(await response.read()) == {"v": [1, 2]}
        # the sync path's `return_pickled` shares the store
        async with http.post(
            f"{router}/v1/endpoints/asyncs3/predict", json={"args": {"s": 1}, "return_pickled": True}
        ) as answer:
            sync_body = await answer.json()
        assert answer.status == 200, sync_body
        assert sync_body["result_url"].startswith(f"{s3.url}/{BUCKET}/router/default/default.asyncs3."), sync_body
        assert pickle.loads(download(sync_body["result_url"])[0]) == {"s": 1}
    assert not (tmp_path / "unused").exists()  # nothing went to the filesystem store


async def test_each_namespace_writes_under_its_own_prefix_and_the_gateway_reads_there(
    tmp_path: Path, valkey_server: Valkey, aws_env: S3Server
):
    """Routers of team-a and team-b sharing one store URL write under `<prefix>/<namespace>/`; the gateway finds
    each task's stored result under its endpoint's namespace, and SageMaker's default output path is there too."""
    model, model_url = start_model(tmp_path)
    routers: list[Any] = []
    runner: web.AppRunner | None = None
    raw = boto3.client("s3", endpoint_url=aws_env.url, **_credentials(aws_env))
    try:
        entries = []
        for namespace in ("team-a", "team-b"):
            directory = tmp_path / namespace
            directory.mkdir()
            path = write_async_endpoint(directory, name=f"ns-{namespace}", resultTTLSeconds=900)
            document = yaml.safe_load(path.read_text())
            document["metadata"]["namespace"] = namespace
            path.write_text(yaml.safe_dump(document))
            env = {
                **aws_env.env,
                "BUNDLESERVE_RESULTS_URL": f"s3://{BUCKET}/tenants",
                "BUNDLESERVE_RESULTS_DIR": str(tmp_path / "unused"),
                "BUNDLESERVE_REDIS_URL": valkey_server.url,
                "BUNDLESERVE_QUEUE_DURABILITY": "memory",
            }
            server, url = start_router(directory, path, model_url, env=env)
            routers.append(server)
            wait_until(lambda url=url: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
            [(_, endpoint)] = load_endpoints([path])
            entries.append(EndpointEntry(endpoint=endpoint, router_url=url, ready=True))
        config = GatewayConfig(
            redis_url=valkey_server.url,
            results_dir=tmp_path / "unused",
            results_url=f"s3://{BUCKET}/tenants",
            results_s3_endpoint=aws_env.url,
            sagemaker_signing=sigv4.SigV4Config(allow_unsigned=True),
        )
        runner = web.AppRunner(build_gateway_app(Registry(entries), config))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        gateway = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for namespace in ("team-a", "team-b"):
                name = f"ns-{namespace}"
                code, accepted = await submit(http, gateway, {"args": {"ns": namespace}, "return_pickled": True}, name)
                assert code == 202, accepted
                task_id = accepted["task_id"]
                _, body = await status(http, gateway, task_id, wait=20)
                assert body["status"] == "SUCCESS", body
                head = raw.head_object(Bucket=BUCKET, Key=f"tenants/{namespace}/{task_id}")
                assert head["ContentType"] == PICKLE
                async with http.get(f"{gateway}/v1/tasks/{task_id}/result") as response:
                    assert response.status == 200
                    assert pickle.loads(await response.read()) == {"ns": namespace}
                async with http.post(
                    f"{gateway}/endpoints/{name}/async-invocations",
                    data=b'{"x": 1}',
                    headers={"Content-Type": "application/json"},
                ) as response:
                    assert response.status == 202, await response.text()
                    output = response.headers["X-Amzn-SageMaker-OutputLocation"]
                assert output.startswith(f"s3://{BUCKET}/tenants/{namespace}/sagemaker/{name}/"), output
        listed = {item["Key"] for item in raw.list_objects_v2(Bucket=BUCKET, Prefix="tenants/")["Contents"]}
        assert listed and all(key.split("/")[1] in ("team-a", "team-b") for key in listed), listed
    finally:
        if runner is not None:
            await runner.cleanup()
        for server in routers:
            server.stop()
        model.stop()


def test_the_router_refuses_to_start_with_a_bad_results_url(tmp_path: Path):
    endpoint = write_async_endpoint(tmp_path, name="asyncs3bad")
    argv = bundleserve("router", "--endpoint-file", str(endpoint), "--model-url", "http://127.0.0.1:1")
    env = {**os.environ, "BUNDLESERVE_RESULTS_URL": "s3:/bucket-without-slashes"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bundleserve router: BUNDLESERVE_RESULTS_URL must look like s3://bucket/prefix, got 's3:/bucket-without-slashes'"
    ]
