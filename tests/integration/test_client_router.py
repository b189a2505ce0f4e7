"""The SDK against a real router subprocess in front of the recording fake model, with a real valkey for async.

The fake model (test_router_fake_model) echoes its arguments and counts the streams its callers abandoned, so these
tests see from the model's side that a closed or dropped stream reaches it as a disconnect.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bundleserve.client import (
    AsyncClient,
    Client,
    EndpointRequest,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Timeout,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from tests.integration.test_client_harness import CallbackReceiver, static_app
from tests.integration.test_router_fake_model import start_model, start_router
from tests.support.processes import bundleserve, http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until, wait_until

NAME = "sdk"
KEY = "sdk-test-key"


def write_endpoint(directory: Path, *, name: str = NAME, **invocation: Any) -> Path:
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name},
        "spec": {
            "modes": ["sync", "streaming", "async"],
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "fake:predict"}},
            "invocation": {"concurrency": 2, "maxQueued": 0, "maxPayloadBytes": 4096, "timeoutSeconds": 20}
            | invocation,
            "async": {"maxAttempts": 1, "invocationTimeoutSeconds": 20},
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("client-router")
    model, model_url = start_model(directory)
    server = None
    try:
        keys = directory / "keys"
        keys.write_text(f"{KEY}\n")
        env = {
            "BUNDLESERVE_RESULTS_DIR": str(directory / "results"),
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
            "BUNDLESERVE_URL_ALLOW": "127.0.0.0/8",  # url inputs are fetched from a loopback file server
            # the test's callback receiver listens on plain http on loopback
            "BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS": "true",
            "BUNDLESERVE_API_KEYS_FILE": str(keys),
        }
        server, url = start_router(directory, write_endpoint(directory), model_url, env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=20, what="router ready")
        yield {"url": url, "model_url": model_url}
    finally:
        if server is not None:
            server.stop()
        model.stop()


@pytest.fixture
def client(router: dict[str, Any]) -> Iterator[Client]:
    with Client(router["url"], api_key=KEY) as client:
        yield client


def model_stats(router: dict[str, Any]) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{router['model_url']}/stats").json()
    return stats


def wait_cancelled(router: dict[str, Any], count: int) -> None:
    wait_until(
        lambda: model_stats(router)["streams_cancelled"] >= count and model_stats(router)["current"] == 0,
        timeout=10,
        what=f"the model to see {count} abandoned streams",
    )


# -- sync ---------------------------------------------------------------------------------------------------


def test_sync_predict_returns_launch_shaped_responses(client: Client) -> None:
    response = client.endpoint(NAME, mode="sync").predict(EndpointRequest(args={"x": [1, 2], "s": "é"}))
    assert response.status == "SUCCESS" and response.status_code == 200
    assert response.result_value() == {"x": [1, 2], "s": "é"}


def test_return_pickled_gives_a_result_url_the_client_unpickles(client: Client) -> None:
    response = client.endpoint(NAME, mode="sync").predict(EndpointRequest(args={"w": [0.5]}, return_pickled=True))
    assert response.result is None and response.result_url
    assert client.load_pickled_result(response, trusted_source=True) == {"w": [0.5]}


def test_a_url_input_reaches_the_model_as_bytes(client: Client) -> None:
    files = static_app({"/input.bin": (b"\x00\x01" * 100, "application/octet-stream")})
    try:
        response = client.endpoint(NAME, mode="sync").predict(EndpointRequest(url=f"{files.url}/input.bin"))
    finally:
        files.stop()
    assert response.result_value() == {"raw_bytes": 200, "content_type": "application/octet-stream"}


def test_timeout_seconds_reaches_the_router(client: Client) -> None:
    with pytest.raises(Timeout) as caught:
        client.endpoint(NAME, mode="sync").predict(EndpointRequest(args={"sleep": 5}), timeout_seconds=0.2)
    assert caught.value.status_code == 504 and isinstance(caught.value, TimeoutError)


def test_a_model_error_is_a_failure_response_with_its_traceback(client: Client) -> None:
    response = client.endpoint(NAME, mode="sync").predict(EndpointRequest(args={"fail": "bad input"}))
    assert response.status == "FAILURE" and response.status_code == 500
    assert response.traceback == "Traceback: bad input"


def test_error_answers_of_a_real_router(router: dict[str, Any], client: Client) -> None:
    sync = client.endpoint(NAME, mode="sync")
    with pytest.raises(InvalidRequest, match="args must be a JSON object"):
        sync.predict(EndpointRequest(args=[1, 2]))
    with pytest.raises(PayloadTooLarge):
        sync.predict(EndpointRequest(args={"blob": "x" * 5000}))
    with pytest.raises(NotFound):  # from the predict today; from the description once routers describe endpoints
        client.endpoint("other", mode="sync").predict(EndpointRequest(args={}))
    with Client(router["url"]) as anonymous, pytest.raises(Unauthorized):
        anonymous.endpoint(NAME, mode="sync").predict(EndpointRequest(args={}))
    with Client(router["url"], api_key="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.task("any").get()


def test_a_full_router_answers_429_which_is_overloaded(router: dict[str, Any], client: Client) -> None:
    sync = client.endpoint(NAME, mode="sync")
    busy = [threading.Thread(target=sync.predict, args=(EndpointRequest(args={"sleep": 6}),)) for _ in range(2)]
    for thread in busy:
        thread.start()
    try:
        wait_until(lambda: model_stats(router)["current"] == 2, timeout=10, what="both slots taken")
        with pytest.raises(Overloaded) as caught:
            sync.predict(EndpointRequest(args={}))
        assert caught.value.retry_after == 1.0
    finally:
        for thread in busy:
            thread.join(20)


def test_a_router_whose_model_is_not_ready_is_unavailable(tmp_path: Path) -> None:
    model, model_url = start_model(tmp_path, ready_file=tmp_path / "never")
    router = None
    try:
        router, url = start_router(tmp_path, write_endpoint(tmp_path, name="cold"), model_url)
        with Client(url) as cold, pytest.raises(Unavailable):
            cold.endpoint("cold", mode="sync").predict(EndpointRequest(args={}))
    finally:
        if router is not None:
            router.stop()
        model.stop()


# -- streaming ----------------------------------------------------------------------------------------------


def test_stream_iterates_chunks_in_order(client: Client) -> None:
    words = ["alpha", {"n": 1}, [2]]
    with client.endpoint(NAME, mode="streaming").predict(EndpointRequest(args={"words": words})) as stream:
        events = list(stream)
    assert [e.status for e in events] == ["SUCCESS"] * 3
    assert [e.result_value() for e in events] == words


def test_a_failure_mid_stream_is_the_last_item(client: Client) -> None:
    args = {"words": ["a", "b", "c"], "fail_after": 1}
    events = list(client.endpoint(NAME, mode="streaming").predict(EndpointRequest(args=args)))
    assert [e.status for e in events] == ["SUCCESS", "FAILURE"]
    assert events[1].traceback == "Traceback: boom"


def test_closing_a_stream_early_reaches_the_model(router: dict[str, Any], client: Client) -> None:
    before = model_stats(router)["streams_cancelled"]
    args = {"words": [str(i) for i in range(200)], "delay": 0.1}
    with client.endpoint(NAME, mode="streaming").predict(EndpointRequest(args=args)) as stream:
        assert next(stream).result_value() == "0"
    wait_cancelled(router, before + 1)


def test_dropping_a_stream_reaches_the_model(router: dict[str, Any], client: Client) -> None:
    before = model_stats(router)["streams_cancelled"]
    args = {"words": [str(i) for i in range(200)], "delay": 0.1}
    stream = client.endpoint(NAME, mode="streaming").predict(EndpointRequest(args=args))
    assert next(stream).result_value() == "0"
    del stream
    gc.collect()
    wait_cancelled(router, before + 1)


def test_no_description_route_on_a_router_the_asked_mode_is_used(client: Client) -> None:
    stream = client.endpoint(NAME, mode="streaming")
    assert [e.result_value() for e in stream.predict(EndpointRequest(args={"words": ["z"]}))] == ["z"]


# -- async --------------------------------------------------------------------------------------------------


def test_a_future_resolves_with_the_result(client: Client) -> None:
    future = client.endpoint(NAME, mode="async").predict(EndpointRequest(args={"job": 7}))
    response = future.get(timeout=30)
    assert response.status == "SUCCESS" and response.result_value() == {"job": 7}
    assert response.task_id == future.task_id
    assert client.get_task(str(future.task_id)).result_value() == {"job": 7}


def test_a_future_times_out_and_can_be_waited_on_again(client: Client) -> None:
    future = client.endpoint(NAME, mode="async").predict(EndpointRequest(args={"sleep": 1.5}))
    with pytest.raises(WaitTimeout) as caught:
        future.get(timeout=0.2)
    assert caught.value.task_id == future.task_id and caught.value.last_status in ("PENDING", "STARTED")
    assert future.get(timeout=30).result_value() == {"sleep": 1.5}


def test_a_failed_task_returns_failure_with_the_traceback(client: Client) -> None:
    response = client.endpoint(NAME, mode="async").predict(EndpointRequest(args={"fail": "nope"})).get(timeout=30)
    assert response.status == "FAILURE" and response.traceback and "nope" in response.traceback


def test_pickled_async_results_download(client: Client) -> None:
    future = client.endpoint(NAME, mode="async").predict(EndpointRequest(args={"p": 1}, return_pickled=True))
    response = future.get(timeout=30)
    assert response.result_url and client.load_pickled_result(response, trusted_source=True) == {"p": 1}


def test_predict_batch_submits_all_and_every_future_resolves(client: Client) -> None:
    futures = client.endpoint(NAME, mode="async").predict_batch([EndpointRequest(args={"i": i}) for i in range(8)])
    assert len({f.task_id for f in futures}) == 8
    assert [f.get(timeout=60).result_value() for f in futures] == [{"i": i} for i in range(8)]


def test_callbacks_configured_through_the_request_arrive_with_basic_auth(client: Client) -> None:
    receiver = CallbackReceiver().start()
    try:
        request = EndpointRequest(
            args={"cb": True},
            callback_url=receiver.url,
            callback_auth_kind="basic",
            callback_auth_username="hook",
            callback_auth_password="s3cret",
        )
        future = client.endpoint(NAME, mode="async").predict(request)
        assert future.get(timeout=30).succeeded
        wait_until(lambda: receiver.received, timeout=20, what="the callback")
    finally:
        receiver.stop()
    ((authorization, body),) = receiver.received
    assert authorization == "Basic " + base64.b64encode(b"hook:s3cret").decode()
    assert body["task_id"] == future.task_id and body["status"] == "SUCCESS" and body["result"] == {"cb": True}


# -- the asyncio client against the same router -------------------------------------------------------------


async def test_async_client_mirrors_the_sync_one(router: dict[str, Any]) -> None:
    async with AsyncClient(router["url"], api_key=KEY) as client:
        sync = await client.endpoint(NAME, mode="sync")
        assert (await sync.predict(EndpointRequest(args={"a": 1}))).result_value() == {"a": 1}
        failed = await sync.predict(EndpointRequest(args={"fail": "x"}))
        assert failed.status == "FAILURE" and failed.traceback == "Traceback: x"
        with pytest.raises(InvalidRequest):
            await sync.predict(EndpointRequest(args=[1]))
        with pytest.raises(Timeout):
            await sync.predict(EndpointRequest(args={"sleep": 5}), timeout_seconds=0.2)

        streaming = await client.endpoint(NAME, mode="streaming")
        async with await streaming.predict(EndpointRequest(args={"words": ["a", "b"]})) as stream:
            assert [e.result_value() async for e in stream] == ["a", "b"]

        queued = await client.endpoint(NAME, mode="async")
        future = await queued.predict(EndpointRequest(args={"sleep": 1.0}))
        with pytest.raises(WaitTimeout):
            await future.get(timeout=0.2)
        assert (await future).result_value() == {"sleep": 1.0}
        futures = await queued.predict_batch([EndpointRequest(args={"i": i}) for i in range(4)])
        assert [(await f.get(timeout=60)).result_value() for f in futures] == [{"i": i} for i in range(4)]
        pickled = await (await queued.predict(EndpointRequest(args={"q": 2}, return_pickled=True))).get(timeout=30)
        assert await client.load_pickled_result(pickled, trusted_source=True) == {"q": 2}


async def test_async_stream_closed_early_reaches_the_model(router: dict[str, Any]) -> None:
    before = model_stats(router)["streams_cancelled"]
    args = {"words": [str(i) for i in range(200)], "delay": 0.1}
    async with AsyncClient(router["url"], api_key=KEY) as client:
        stream = await (await client.endpoint(NAME, mode="streaming")).predict(EndpointRequest(args=args))
        async for event in stream:
            assert event.result_value() == "0"
            break
        await stream.aclose()

        async def cancelled() -> bool:
            async with httpx.AsyncClient() as http:
                stats = (await http.get(f"{router['model_url']}/stats")).json()
            return bool(stats["streams_cancelled"] >= before + 1 and stats["current"] == 0)

        await async_wait_until(cancelled, timeout=10, what="the model to see the abandoned stream")


# -- the CLI against a router (modes assumed from the flags; the key from the environment) --------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("BUNDLESERVE_GATEWAY", "BUNDLESERVE_API_KEY")}
    return subprocess.run(bundleserve(*args), capture_output=True, text=True, timeout=120, env=environment | env)


def test_cli_reads_the_api_key_from_the_environment(router: dict[str, Any]) -> None:
    target = {"BUNDLESERVE_GATEWAY": router["url"]}
    done = cli("invoke", NAME, "--args", '{"k": 1}', env=target | {"BUNDLESERVE_API_KEY": KEY})
    assert (done.returncode, json.loads(done.stdout)) == (0, {"k": 1}), done.stderr
    refused = cli("invoke", NAME, "--args", '{"k": 1}', env=target)
    assert refused.returncode == 1 and "unauthorized" in refused.stderr and refused.stdout == ""
    submitted = cli("invoke", NAME, "--async", "--args", '{"t": 1}', env=target | {"BUNDLESERVE_API_KEY": KEY})
    task_id = json.loads(submitted.stdout)["task_id"]
    shown = cli("tasks", "get", task_id, "--wait", env=target | {"BUNDLESERVE_API_KEY": KEY})
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"] == {"t": 1}
    failed = cli("invoke", NAME, "--args", '{"fail": "broken"}', env=target | {"BUNDLESERVE_API_KEY": KEY})
    assert failed.returncode == 1 and "Traceback: broken" in failed.stderr and "model status 500" in failed.stderr
