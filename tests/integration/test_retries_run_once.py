"""No client retry runs a model twice (issue 17, finding 8), with the real clients and their own retry logic.

- real boto3 (`read_timeout=2`, standard and legacy retry modes) against a model that takes 5 s: the call succeeds
  and the model ran once; directly on a router and through the gateway (the retries carry the same
  `amz-sdk-invocation-id`; each attempt is a new SigV4 signature, so the replay guard lets them in);
- the native `Idempotency-Key`, sync (a client that gave up and retried gets the first answer) and async (the same
  task id, on the router and on the gateway; a key reused with another body is a 400);
- scale-launch 0.3.3 against a legacy route whose call times out: it retries 503/504/520/524 and sends nothing that
  names a call, so the route answers 408 (not retried) and the model ran once.

The model is the scripted fake (`test_router_fake_model`), whose /stats counts the calls that reached it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from botocore.config import Config

from bundleserve.api.credentials import KeysFile
from bundleserve.dialects.sagemaker import sigv4
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import Registry
from tests.integration.test_gateway import entry_for
from tests.integration.test_launch_dialect import DRIVER
from tests.integration.test_router_fake_model import start_model, start_router, write_endpoint
from tests.support.processes import REPO, free_port, http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until, wait_until

ACCESS_KEY = "AKIDRETRYTEST"
SECRET_KEY = "retry/secret+key"
REGION = "us-east-1"
LAUNCH_PYTHON = REPO / ".venv-launch" / "bin" / "python"
LAUNCH_KEY = "launch-retry-key"
API_KEY = "retry-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("retries")
    model, model_url = start_model(directory)
    router = None
    try:
        endpoint = write_endpoint(
            directory, modes=("sync", "async"), invocation={"timeoutSeconds": 30, "concurrency": 4}
        )
        keys = directory / "api-keys"
        # The key itself and the endpoint's gateway key, as the operator writes them for a gateway configured with
        # that one cluster-wide key: the gateway calls the router with the gateway key (docs/security.md).
        named = entry_for(endpoint, "http://unused")
        keys.write_text(f"{API_KEY}\n{KeysFile.parse(API_KEY).gateway_key(named.namespace, named.name)}\n")
        env = {
            "BUNDLESERVE_API_KEYS_FILE": str(keys),
            "BUNDLESERVE_SAGEMAKER_ACCESS_KEY_ID": ACCESS_KEY,
            "BUNDLESERVE_SAGEMAKER_SECRET_ACCESS_KEY": SECRET_KEY,
            "BUNDLESERVE_SAGEMAKER_REGION": REGION,
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
        }
        router, url = start_router(directory, endpoint, model_url, env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
        yield {"router_url": url, "model_url": model_url, "endpoint": endpoint, "valkey": valkey_server}
    finally:
        if router is not None:
            router.stop()
        model.stop()


async def model_calls(backend: dict[str, Any]) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{backend['model_url']}/stats") as response:
        calls: int = (await response.json())["calls"]
        return calls


@pytest.fixture
async def gateway(backend: dict[str, Any]) -> AsyncIterator[str]:
    config = GatewayConfig(
        api_keys=frozenset({API_KEY}),
        redis_url=backend["valkey"].url,
        sagemaker_signing=sigv4.SigV4Config(region=REGION, keys={ACCESS_KEY: SECRET_KEY}),
    )
    app = build_gateway_app(Registry([entry_for(backend["endpoint"], backend["router_url"])]), config)
    runner = web.AppRunner(app, handler_cancellation=True, **config.connections.server_kwargs())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _invoke_with_boto3(url: str, mode: str, marker: str) -> dict[str, Any]:
    client = boto3.client(
        "sagemaker-runtime",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(read_timeout=2, connect_timeout=5, retries={"mode": mode}),
    )
    attempts: list[str] = []
    client.meta.events.register(
        "before-send.sagemaker-runtime.InvokeEndpoint",
        lambda request, **_: attempts.append(str(request.headers.get("amz-sdk-request"))),
    )
    reply = client.invoke_endpoint(
        EndpointName="fake", Body=json.dumps({"sleep": 5, "marker": marker}), ContentType="application/json"
    )
    answer: dict[str, Any] = json.loads(reply["Body"].read())
    return {"answer": answer, "attempts": attempts}


@pytest.mark.parametrize("mode", ["standard", "legacy"])
@pytest.mark.parametrize("via", ["router", "gateway"])
async def test_boto3_retries_of_a_slow_call_run_the_model_once(
    backend: dict[str, Any], gateway: str, via: str, mode: str
) -> None:
    url = backend["router_url"] if via == "router" else gateway
    before = await model_calls(backend)
    done = await asyncio.to_thread(_invoke_with_boto3, url, mode, f"{via}-{mode}")
    assert done["answer"] == {"sleep": 5, "marker": f"{via}-{mode}"}
    assert len(done["attempts"]) >= 2, done["attempts"]  # the client did retry (read timeout 2 s, model 5 s)
    assert await model_calls(backend) - before == 1


async def test_a_native_idempotency_key_makes_a_retried_sync_call_run_once(backend: dict[str, Any]) -> None:
    url = f"{backend['router_url']}/v1/endpoints/fake/predict"
    body = {"args": {"sleep": 2, "marker": "native-sync"}}
    headers = {"Idempotency-Key": "native-sync-1", **AUTH}
    before = await model_calls(backend)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(TimeoutError):  # the client gives up and leaves
            async with http.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=0.5)):
                pass
        async with http.post(url, json=body, headers=headers) as response:  # its retry gets the first answer
            assert response.status == 200
            assert (await response.json())["result"] == {"sleep": 2, "marker": "native-sync"}
        assert await model_calls(backend) - before == 1
        async with http.post(url, json={"args": {"other": 1}}, headers=headers) as response:
            assert response.status == 400
            assert "different request" in (await response.json())["error"]["message"]


@pytest.mark.parametrize("via", ["router", "gateway"])
async def test_a_native_idempotency_key_gives_a_retried_submission_its_task(
    backend: dict[str, Any], gateway: str, via: str
) -> None:
    base = backend["router_url"] if via == "router" else gateway
    url = f"{base}/v1/endpoints/fake/async"
    key = {"Idempotency-Key": f"native-async-{via}", **AUTH}
    body = {"args": {"marker": f"async-{via}"}}
    async with aiohttp.ClientSession() as http:
        answers = []
        for _ in range(3):
            async with http.post(url, json=body, headers=key) as response:
                assert response.status == 202
                answers.append((await response.json())["task_id"])
        assert len(set(answers)) == 1
        async with http.post(url, json={"args": {"marker": "another"}}, headers=key) as response:
            assert response.status == 400
        async with http.post(url, json=body, headers=AUTH) as response:  # no key: a new task
            assert (await response.json())["task_id"] != answers[0]

        async def finished() -> bool:
            async with http.get(f"{base}/v1/tasks/{answers[0]}", headers=AUTH) as response:
                return bool((await response.json())["status"] == "SUCCESS")

        await async_wait_until(finished, timeout=30, what="the task finished")


# -- scale-launch 0.3.3 --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launch_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A router whose time limit (1 s) is shorter than the call (3 s), with the API key the Launch client sends."""
    if not LAUNCH_PYTHON.exists():
        subprocess.run(["make", "--no-print-directory", ".venv-launch/.installed"], cwd=REPO, check=True)
    directory = tmp_path_factory.mktemp("launch-retries")
    keys = directory / "api-keys"
    keys.write_text(LAUNCH_KEY + "\n")
    model, model_url = start_model(directory)
    router = None
    try:
        endpoint = write_endpoint(directory, modes=("sync",), invocation={"timeoutSeconds": 1})
        router, url = start_router(directory, endpoint, model_url, env={"BUNDLESERVE_API_KEYS_FILE": str(keys)})
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
        yield {"url": url, "model_url": model_url}
    finally:
        if router is not None:
            router.stop()
        model.stop()


async def test_scale_launch_does_not_rerun_a_timed_out_legacy_call(launch_router: dict[str, Any]) -> None:
    command = {
        "op": "predict",
        "endpoint": f"{launch_router['url']}/v1/hosted_inference",
        "api_key": LAUNCH_KEY,
        "name": "fake",
        "args": {"sleep": 3},
        "return_pickled": False,
    }
    before = await model_calls(launch_router)
    finished = await asyncio.to_thread(
        subprocess.run,
        [str(LAUNCH_PYTHON), str(DRIVER)],
        input=json.dumps(command),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    answer = json.loads(finished.stdout)
    assert answer.get("status_code") == 408, answer  # the client's APIError: not one of the statuses it retries
    assert await model_calls(launch_router) - before == 1
