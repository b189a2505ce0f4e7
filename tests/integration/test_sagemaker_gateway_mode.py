"""The SageMaker async adapter as the gateway mounts it: no invocation core, a name -> TaskService resolver, real
valkey, real boto3. Submissions are queued even though no router or model exists (zero replicas)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import botocore
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import ClientError

from bundleserve.api.errors import NotFound
from bundleserve.api.invocation import TaskStatus
from bundleserve.dialects.sagemaker import routes, sigv4
from bundleserve.local.redis import free_port
from bundleserve.queue.broker import TaskQueue
from bundleserve.queue.config import Durability, QueueConfig
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.results import open_result_store
from bundleserve.queue.service import TaskService
from tests.support.valkey import Valkey

NAME = "sm-gateway"


ACCESS_KEY, SECRET_KEY = "AKIDGATEWAY", "gateway/secret"


@pytest.fixture
def signing() -> sigv4.SigV4Config:
    return sigv4.SigV4Config(allow_unsigned=True)


@pytest.fixture
async def gateway(
    valkey_server: Valkey, tmp_path: Path, signing: sigv4.SigV4Config
) -> AsyncIterator[tuple[str, TaskService]]:
    client = aioredis.Redis.from_url(valkey_server.url)
    config = QueueConfig(endpoint=NAME, namespace="sagemaker-gateway-test", durability=Durability.MEMORY)
    service = TaskService(TaskQueue(client, config), open_result_store(tmp_path / "results"), CompletionWaiter(client))

    def resolve(name: str) -> TaskService:
        if name != NAME:
            raise NotFound(f"no endpoint {name!r}")
        return service

    settings = routes.SageMakerSettings(signing=signing, python_bundle=lambda _name: True)
    app = web.Application()
    app.add_routes(routes.routes(routes.SageMakerApi(settings, tasks=resolve)))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        await runner.cleanup()
        await service.waiter.close()
        await service.queue.close()
        await client.aclose()


def _client(url: str, *, signed: bool = False) -> Any:
    config = Config(retries={"mode": "standard", "max_attempts": 1})
    if not signed:
        config = config.merge(Config(signature_version=botocore.UNSIGNED))
        return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1", config=config)
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=config,
    )


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


async def test_async_is_queued_without_any_replica(gateway: tuple[str, TaskService]) -> None:
    url, service = gateway
    with contextlib.closing(_client(url)) as client:
        reply = await asyncio.to_thread(
            client.invoke_endpoint_async, EndpointName=NAME, Body=b'{"a": 1}', ContentType="application/json"
        )
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 202
    output = reply["OutputLocation"]
    assert output.startswith(f"{url}/endpoints/{NAME}/async-invocations/")
    task_id = output.split("/")[-2]
    assert reply["InferenceId"] == task_id
    record = await service.status(task_id, wait_seconds=0)
    assert record is not None and record.status is TaskStatus.PENDING
    assert await asyncio.to_thread(_get, output) == 404  # not written until a worker runs it
    assert await asyncio.to_thread(_get, reply["FailureLocation"]) == 404


async def test_unknown_endpoint_is_a_validation_error(gateway: tuple[str, TaskService]) -> None:
    url, _ = gateway
    with contextlib.closing(_client(url)) as client, pytest.raises(ClientError) as caught:
        await asyncio.to_thread(client.invoke_endpoint_async, EndpointName="elsewhere", Body=b"{}")
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert caught.value.response["Error"]["Message"] == "Endpoint elsewhere not found."
    body = json.dumps(caught.value.response["Error"])
    assert "elsewhere" in body


@pytest.mark.parametrize("signing", [sigv4.SigV4Config(keys={ACCESS_KEY: SECRET_KEY})])
async def test_unsigned_requests_are_refused_unless_allowed(gateway: tuple[str, TaskService]) -> None:
    url, _ = gateway
    with contextlib.closing(_client(url)) as client, pytest.raises(ClientError) as caught:
        await asyncio.to_thread(client.invoke_endpoint_async, EndpointName=NAME, Body=b'{"a": 1}')
    assert caught.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with contextlib.closing(_client(url, signed=True)) as client:
        reply = await asyncio.to_thread(client.invoke_endpoint_async, EndpointName=NAME, Body=b'{"a": 1}')
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert await asyncio.to_thread(_get, reply["OutputLocation"]) == 403  # an unsigned GET of the location too
