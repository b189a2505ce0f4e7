"""The SageMaker Runtime dialect on the gateway, with real boto3: the gateway application (its own event loop in a
thread, so the synchronous boto3 client can call it; listening as `bundleserve gateway` does, its fast edge in front)
in front of a real router process, the real bundle runtime and a real valkey-server.

- a representative subset of the boto3 suite (tests/integration/test_sagemaker_boto3.py), re-collected here with
  `sagemaker_target` pointing at the gateway, signed and unsigned: sync, custom attributes, streams (and a failure
  mid-stream), async with its output and failure locations, unknown endpoints, the body limit, bad signatures;
- API keys on gateway and router: a verified signature is the authentication (an AWS SDK cannot send an API key),
  the gateway hands the request on with the key it holds; straight to a router with API keys too;
- async accepted by the gateway while the endpoint has no router, finished once one starts.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from bundleserve.api.credentials import KeysFile
from bundleserve.api.manifest import load_endpoints
from bundleserve.dialects.sagemaker import sigv4
from bundleserve.edge.connections import ConnectionLimits
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.fastpath import GatewayEdge
from bundleserve.gateway.registry import EndpointEntry, Registry
from bundleserve.gateway.server import Front
from tests.integration.test_router_fake_model import start_router
from tests.integration.test_sagemaker_boto3 import (  # noqa: F401 - the tests, re-collected against the gateway
    ACCESS_KEY,
    BUNDLE,
    NAME,
    REGION,
    SECRET_KEY,
    SageMakerTarget,
    _await_output,
    _client,
    input_server,
    runtime,
    sagemaker_env,
    signing,
    test_a_body_over_the_limit_is_refused,
    test_a_tampered_body_is_rejected,
    test_async_failure_is_written_to_the_failure_location,
    test_async_with_inline_body,
    test_bad_signatures_are_rejected,
    test_custom_attributes_round_trip,
    test_invoke_endpoint_with_json,
    test_mid_stream_failure_is_a_model_stream_error,
    test_model_failure_is_a_model_error_with_the_original_status,
    test_response_stream_yields_payload_parts,
    test_unknown_endpoint_is_a_validation_error,
    write_endpoint_file,
)
from tests.support.processes import Server, bundleserve, free_port, http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

API_KEY = "gateway-and-router-key"


class ThreadedApp:
    """An aiohttp application on its own event loop in a daemon thread, for synchronous clients (boto3, the Launch
    driver). Limits: one loop per app; `stop` waits up to 30 s for the cleanup."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="threaded-app", daemon=True)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        self.url = ""

    def start(self) -> str:
        self.thread.start()
        port = free_port()

        async def serve() -> None:
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", port).start()

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(timeout=30)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


class ThreadedGateway(ThreadedApp):
    """A gateway application listening as `bundleserve gateway` listens (`gateway.server.Front`: its fast edge on the
    socket, aiohttp behind it), on its own event loop in a daemon thread. `edge` is the fast edge once started."""

    def __init__(self, app: web.Application) -> None:
        super().__init__(app)
        self.front = Front(app, ConnectionLimits())

    @property
    def edge(self) -> GatewayEdge:
        if self.front.edge is None:
            raise RuntimeError("the gateway is not started")
        return self.front.edge

    def start(self) -> str:
        self.thread.start()
        port = free_port()
        asyncio.run_coroutine_threadsafe(self.front.start("127.0.0.1", port), self.loop).result(timeout=30)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def fast_connections(self) -> list[int]:
        """The client ports of the connections the fast edge holds now (a connection handed over to aiohttp leaves
        it, so a request it answered itself keeps its client's port here)."""

        async def ports() -> list[int]:
            return [
                int(connection.transport.get_extra_info("peername")[1])
                for connection in list(self.edge.connections)
                if connection.transport is not None
            ]

        return asyncio.run_coroutine_threadsafe(ports(), self.loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.front.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def entry_for(path: Path, router_url: str, *, ready: bool = True) -> EndpointEntry:
    [(_, endpoint)] = load_endpoints([path])
    return EndpointEntry(endpoint=endpoint, router_url=router_url, ready=ready)


def gateway_app(directory: Path, entries: list[EndpointEntry], redis_url: str, **config: Any) -> ThreadedGateway:
    """The gateway as `bundleserve gateway` builds it, with the SageMaker configuration of the boto3 suite."""
    keys = sigv4.config_from_env(sagemaker_env(directory))
    settings = GatewayConfig(redis_url=redis_url, results_dir=directory / "results", sagemaker_signing=keys, **config)
    return ThreadedGateway(build_gateway_app(Registry(entries), settings))


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[dict[str, Any]]:
    """The bundle runtime and two routers in front of it: one without API keys, one with."""
    directory = tmp_path_factory.mktemp("sagemaker-gateway")
    port = free_port()
    runtime_server = Server(
        bundleserve("bundle", "serve", "--entrypoint", "sm_model:predict", "--path", str(BUNDLE), "--port", str(port)),
        log_path=directory / "runtime.log",
    )
    routers: list[Any] = []
    keys = directory / "api-keys"
    # The key itself (clients call the router directly too) and the endpoint's gateway key, as the operator writes it
    # for a gateway configured with that one cluster-wide key.
    keys.write_text(f"{API_KEY}\n{KeysFile.parse(API_KEY).gateway_key('default', NAME)}\n")
    try:
        env = {
            "BUNDLESERVE_RESULTS_DIR": str(directory / "results"),
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
            **sagemaker_env(directory),
        }
        endpoint_file = write_endpoint_file(directory)
        urls = {}
        for kind, extra in (("open", {}), ("keyed", {"BUNDLESERVE_API_KEYS_FILE": str(keys)})):
            router, url = start_router(directory, endpoint_file, f"http://127.0.0.1:{port}", env={**env, **extra})
            routers.append(router)
            urls[kind] = url
        for url in urls.values():
            wait_until(lambda url=url: http_ok(f"{url}/readyz"), timeout=30, what="router ready behind the runtime")
        yield {
            "directory": directory,
            "endpoint_file": endpoint_file,
            "urls": urls,
            "redis": valkey_server.url,
            "env": env,
            "model_url": f"http://127.0.0.1:{port}",
        }
    finally:
        for router in routers:
            router.stop()
        runtime_server.stop()


@pytest.fixture(scope="module")
def sagemaker_target(backend: dict[str, Any]) -> Iterator[SageMakerTarget]:
    """The boto3 suite's target: the gateway (no API keys) in front of the router without keys."""
    directory: Path = backend["directory"]
    app = gateway_app(directory, [entry_for(backend["endpoint_file"], backend["urls"]["open"])], backend["redis"])
    url = app.start()
    try:
        yield SageMakerTarget(url, NAME, REGION, ACCESS_KEY, SECRET_KEY, directory)
    finally:
        app.stop()


@pytest.fixture(scope="module")
def keyed_gateway(backend: dict[str, Any]) -> Iterator[SageMakerTarget]:
    """A gateway with API keys in front of the router with the same keys (as the chart mounts one Secret in both)."""
    directory: Path = backend["directory"]
    entries = [entry_for(backend["endpoint_file"], backend["urls"]["keyed"])]
    app = gateway_app(directory, entries, backend["redis"], api_keys=frozenset({API_KEY}))
    url = app.start()
    try:
        yield SageMakerTarget(url, NAME, REGION, ACCESS_KEY, SECRET_KEY, directory)
    finally:
        app.stop()


def test_a_signed_request_passes_a_router_with_api_keys(backend: dict[str, Any]) -> None:
    """Regression: the core's gate asked for an API key after the signature was verified, so every SageMaker
    request to a router with API keys was refused (an AWS SDK cannot send one)."""
    target = SageMakerTarget(backend["urls"]["keyed"], NAME, REGION, ACCESS_KEY, SECRET_KEY, backend["directory"])
    answer = _client(target, "signed").invoke_endpoint(
        EndpointName=NAME, Body=json.dumps({"a": 1}), ContentType="application/json"
    )
    assert json.loads(answer["Body"].read()) == {"a": 1}
    with pytest.raises(ClientError) as refused:  # unsigned: no credential at all, still refused
        _client(target, "unsigned").invoke_endpoint(EndpointName=NAME, Body=b"{}", ContentType="application/json")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403  # SageMaker renders Unauthorized as 403


def test_a_signed_request_through_a_gateway_with_api_keys(keyed_gateway: SageMakerTarget) -> None:
    """Sync, stream and async through a gateway and router that both hold API keys: the signature is checked at
    the gateway, which hands the call on with its own key."""
    client = _client(keyed_gateway, "signed")
    answer = client.invoke_endpoint(EndpointName=NAME, Body=json.dumps({"b": 2}), ContentType="application/json")
    assert json.loads(answer["Body"].read()) == {"b": 2}
    stream = client.invoke_endpoint_with_response_stream(
        EndpointName=NAME, Body=json.dumps({"text": "one two"}), ContentType="application/json"
    )
    parts = [event["PayloadPart"]["Bytes"] for event in stream["Body"] if "PayloadPart" in event]
    assert parts == [b"one", b"two"]
    submitted = _submit_inline(client, {"c": 3})
    assert json.loads(_await_output(keyed_gateway, submitted["OutputLocation"], signed=True)) == {"c": 3}
    with pytest.raises(ClientError) as refused:
        _client(keyed_gateway, "unsigned").invoke_endpoint(EndpointName=NAME, Body=b"{}")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403  # SageMaker renders Unauthorized as 403


def test_async_is_accepted_with_no_router_and_finishes_once_one_starts(backend: dict[str, Any], tmp_path: Path) -> None:
    directory: Path = backend["directory"]
    router_port = free_port()
    entry = entry_for(backend["endpoint_file"], f"http://127.0.0.1:{router_port}", ready=False)
    app = gateway_app(directory, [entry], backend["redis"])
    url = app.start()
    target = SageMakerTarget(url, NAME, REGION, ACCESS_KEY, SECRET_KEY, directory)
    router = None
    try:
        client = _client(target, "signed")
        with pytest.raises(ClientError):  # no router: sync cannot be served
            client.invoke_endpoint(EndpointName=NAME, Body=b"{}", ContentType="application/json")
        submitted = _submit_inline(client, {"later": 1})
        assert submitted["ResponseMetadata"]["HTTPStatusCode"] == 202
        output = submitted["OutputLocation"]
        assert output.startswith(url + "/endpoints/")
        router = Server(
            bundleserve(
                "router", "--endpoint-file", str(backend["endpoint_file"]), "--model-url", backend["model_url"],
                "--port", str(router_port), "--host", "127.0.0.1",
            ),
            log_path=tmp_path / "late-router.log",
            env=backend["env"],
        )  # fmt: skip
        assert json.loads(_await_output(target, output, signed=True)) == {"later": 1}
    finally:
        if router is not None:
            router.stop()
        app.stop()


def _submit_inline(client: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = client.invoke_endpoint_async(
        EndpointName=NAME, Body=json.dumps(arguments).encode(), ContentType="application/json"
    )
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 202, reply
    return reply


def test_sagemaker_calls_are_served_by_the_gateways_fast_edge(backend: dict[str, Any]) -> None:
    """InvokeEndpoint and InvokeEndpointWithResponseStream from boto3 are answered by the gateway's fast edge itself
    (`GatewayEdge.dialects`): boto3's pooled connection is still the fast edge's after them, with the dialect's
    answers, and after an async invocation too (a seam operation as well, so a client mixing the two keeps its
    connection on the fast edge)."""
    directory: Path = backend["directory"]
    app = gateway_app(directory, [entry_for(backend["endpoint_file"], backend["urls"]["open"])], backend["redis"])
    url = app.start()
    try:
        client = _client(SageMakerTarget(url, NAME, REGION, ACCESS_KEY, SECRET_KEY, directory), "signed")
        answer = client.invoke_endpoint(EndpointName=NAME, Body=json.dumps({"f": 1}), ContentType="application/json")
        assert json.loads(answer["Body"].read()) == {"f": 1}
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        assert len(app.fast_connections()) == 1
        stream = client.invoke_endpoint_with_response_stream(
            EndpointName=NAME, Body=json.dumps({"text": "fast edge"}), ContentType="application/json"
        )
        parts = [event["PayloadPart"]["Bytes"] for event in stream["Body"] if "PayloadPart" in event]
        assert parts == [b"fast", b"edge"]
        assert len(app.fast_connections()) == 1
        with pytest.raises(ClientError) as refused:  # refused by the gate, in SageMaker's shape, on the fast edge
            client.invoke_endpoint(EndpointName="nope", Body=b"{}", ContentType="application/json")
        assert refused.value.response["Error"]["Code"] == "ValidationError"
        assert len(app.fast_connections()) == 1
        submitted = _submit_inline(client, {"g": 2})  # InvokeEndpointAsync
        assert submitted["OutputLocation"].startswith(url)
        assert len(app.fast_connections()) == 1
    finally:
        app.stop()
