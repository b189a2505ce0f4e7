"""The Launch dialect with real clients: the unmodified PyPI `scale-launch` 0.3.3 client (in its own virtual
environment, driven through tests/launch_client/driver.py) and model-engine's `/v1` routes over aiohttp.

Behind them: real routers in front of the real bundle runtime (tests/integration/launch_bundle), API keys on, async
through a real valkey. Every test talks to a `LaunchTarget`, so the same tests run against the gateway or local mode
by overriding the `launch_target` fixture, e.g. in a module of their own:

    from tests.integration.test_launch_dialect import *  # noqa: F403 - the tests, re-collected here

    @pytest.fixture(scope="module")
    def launch_target(gateway_url) -> LaunchTarget:  # endpoints named SYNC and ASYNC, served as below
        return LaunchTarget(urls={SYNC: gateway_url, ASYNC: gateway_url}, api_key=API_KEY)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import pickle
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from bundleserve.api.credentials import KeysFile
from bundleserve.api.endpoint import Mode
from bundleserve.api.errors import ModeNotServed, NotFound
from bundleserve.api.invocation import Invocation, ModelReply, StreamChunk
from bundleserve.api.manifest import load_endpoints
from bundleserve.dialects.launch.routes import add_routes
from bundleserve.gateway.forwarding import RouterHop
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.gateway.upstream import UpstreamPool
from tests.integration.test_router_fake_model import start_router
from tests.support.processes import REPO, Server, bundleserve, free_port, http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

BUNDLE = Path(__file__).parent / "launch_bundle"
DRIVER = REPO / "tests" / "launch_client" / "driver.py"
LAUNCH_PYTHON = REPO / ".venv-launch" / "bin" / "python"
API_KEY = "launch-test-key"
SYNC = "launchsync"  # serves sync, streaming and async: the 0.3.x client sees a SyncEndpoint
ASYNC = "launchasync"  # serves async only: the client sees an AsyncEndpoint


@dataclass
class LaunchTarget:
    """Where the endpoints are served: `urls[name]` is the server root for that endpoint (one URL on a gateway)."""

    urls: dict[str, str]
    api_key: str
    sync_name: str = SYNC
    async_name: str = ASYNC
    servers: list[Any] = field(default_factory=list)

    def url(self, name: str) -> str:
        return self.urls[name]

    def legacy_base(self, name: str) -> str:
        return f"{self.urls[name]}/v1/hosted_inference"

    @property
    def headers(self) -> dict[str, str]:
        """HTTP Basic with the API key as username and an empty password, as Launch clients send it."""
        return {"Authorization": "Basic " + base64.b64encode(f"{self.api_key}:".encode()).decode()}


def _endpoint_file(directory: Path, name: str, modes: list[str]) -> Path:
    spec: dict[str, Any] = {
        "modes": modes,
        "localOnly": True,
        "bundle": {"python": {"entrypoint": "launch_model:predict", "path": str(BUNDLE)}},
        "invocation": {"timeoutSeconds": 30, "concurrency": 4},
    }
    if "async" in modes:
        spec["async"] = {"maxAttempts": 1, "invocationTimeoutSeconds": 30}
    document = {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": name}, "spec": spec}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def launch_python() -> Path:
    """The interpreter of the separate environment holding scale-launch 0.3.3 (`make .venv-launch/.installed`)."""
    if not LAUNCH_PYTHON.exists():
        subprocess.run(["make", "--no-print-directory", ".venv-launch/.installed"], cwd=REPO, check=True)
    return LAUNCH_PYTHON


@pytest.fixture(scope="module")
def launch_target(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[LaunchTarget]:
    with launch_routers(tmp_path_factory.mktemp("launch"), valkey_server) as target:
        yield target


@contextlib.contextmanager
def launch_routers(directory: Path, valkey_server: Valkey) -> Iterator[LaunchTarget]:
    """The bundle runtime and one router per endpoint (SYNC, ASYNC), API keys on; also the backend of the gateway's
    and local mode's runs of these tests."""
    keys = directory / "api-keys"
    # The key itself (clients call the routers directly too) and each endpoint's gateway key, as the operator writes
    # them for a gateway configured with that one cluster-wide key.
    gateway_keys = [KeysFile.parse(API_KEY).gateway_key("default", name) for name in (SYNC, ASYNC)]
    keys.write_text("".join(f"{key}\n" for key in [API_KEY, *gateway_keys]))
    port = free_port()
    runtime = Server(
        bundleserve(
            "bundle", "serve", "--entrypoint", "launch_model:predict", "--path", str(BUNDLE), "--port", str(port)
        ),
        log_path=directory / "runtime.log",
    )
    target = LaunchTarget(urls={}, api_key=API_KEY, servers=[runtime])
    try:
        env = {
            "BUNDLESERVE_RESULTS_DIR": str(directory / "results"),
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
            "BUNDLESERVE_API_KEYS_FILE": str(keys),
            "BUNDLESERVE_URL_ALLOW": "127.0.0.0/8",  # url inputs are fetched from a router's own /healthz
            # the test's callback receiver listens on plain http on loopback
            "BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS": "true",
        }
        for name, modes in ((SYNC, ["sync", "streaming", "async"]), (ASYNC, ["async"])):
            router, url = start_router(
                directory, _endpoint_file(directory, name, modes), f"http://127.0.0.1:{port}", env=env
            )
            target.servers.append(router)
            target.urls[name] = url
        wait_until(lambda: http_ok(f"{target.urls[SYNC]}/readyz"), timeout=30, what="router ready behind the runtime")
        yield target
    finally:
        for server in reversed(target.servers):
            server.stop()


def client(
    launch_python: Path, target: LaunchTarget, name: str, op: str, *, via: str | None = None, **command: Any
) -> dict[str, Any]:
    """One command of the unmodified client for endpoint `name` (through the server of endpoint `via`, by default
    its own) against `target`; see the driver's docstring."""
    base = target.legacy_base(via or name)
    document = {"op": op, "endpoint": base, "api_key": target.api_key, "name": name, **command}
    finished = subprocess.run(
        [str(launch_python), str(DRIVER)],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    answer: dict[str, Any] = json.loads(finished.stdout)
    return answer


# -- the unmodified scale-launch 0.3.3 client ----------------------------------------------------------------------


def test_get_model_endpoint_gives_the_endpoint_types(launch_python: Path, launch_target: LaunchTarget) -> None:
    sync = client(launch_python, launch_target, SYNC, "get_endpoint")
    assert sync == {"endpoint": "SyncEndpoint", "name": SYNC, "status": "READY", "endpoint_type": "sync"}
    asynchronous = client(launch_python, launch_target, ASYNC, "get_endpoint")
    assert asynchronous == {"endpoint": "AsyncEndpoint", "name": ASYNC, "status": "READY", "endpoint_type": "async"}


def test_an_unknown_endpoint_is_none(launch_python: Path, launch_target: LaunchTarget) -> None:
    # The client returns None for a 404 only (any other error is logged as unexpected and also returns None).
    assert client(launch_python, launch_target, "nosuchendpoint", "get_endpoint", via=SYNC) == {"endpoint": None}


def test_a_wrong_api_key_is_refused(launch_python: Path, launch_target: LaunchTarget) -> None:
    answer = client(launch_python, launch_target, SYNC, "predict", api_key="wrong", args={"a": 1})
    assert answer == {"endpoint": None}  # get_model_endpoint saw 401 (not 404)
    document = {"op": "async_request", "api_key": "wrong", "args": {"a": 1}}
    answer = client(launch_python, launch_target, SYNC, **document)
    assert (answer["error"], answer["status_code"]) == ("APIError", 401)


def test_sync_predict_return_pickled_false(launch_python: Path, launch_target: LaunchTarget) -> None:
    answer = client(launch_python, launch_target, SYNC, "predict", args={"a": [1, 2], "b": "é"}, return_pickled=False)
    assert answer["endpoint"] == "SyncEndpoint"
    assert answer["status"] == "SUCCESS"
    assert json.loads(answer["result"]) == {"a": [1, 2], "b": "é"}  # the JSON text of the return value
    assert (answer["result_url"], answer["traceback"]) == (None, None)


def test_sync_predict_return_pickled_by_default(launch_python: Path, launch_target: LaunchTarget) -> None:
    answer = client(launch_python, launch_target, SYNC, "predict", args={"n": 7})  # the client's default: pickled
    assert answer["status"] == "SUCCESS"
    assert answer["result"] is None
    assert answer["result_url"].startswith(("http://", "https://"))  # absolute: the user downloads it as it is
    assert answer["unpickled"] == {"n": 7}


def test_sync_failure_carries_the_traceback(launch_python: Path, launch_target: LaunchTarget) -> None:
    answer = client(launch_python, launch_target, SYNC, "predict", args={"fail": "poisoned"}, return_pickled=False)
    assert answer["status"] == "FAILURE"
    assert "RuntimeError: the model refused: poisoned" in answer["traceback"]
    assert answer["result"] is None


def test_sync_predict_with_a_url_input(launch_python: Path, launch_target: LaunchTarget) -> None:
    url = f"{launch_target.url(SYNC)}/healthz"
    answer = client(launch_python, launch_target, SYNC, "predict", url=url, return_pickled=False)
    assert answer["status"] == "SUCCESS"
    assert json.loads(answer["result"]) == {"size": len(b'{"status": "ok"}'), "head": '{"status": "ok"}'}


def test_async_predict_and_future_get(launch_python: Path, launch_target: LaunchTarget) -> None:
    answer = client(launch_python, launch_target, ASYNC, "predict", args={"x": 3}, return_pickled=False)
    assert answer["endpoint"] == "AsyncEndpoint"
    assert answer["status"] == "SUCCESS"
    assert json.loads(answer["result"]) == {"x": 3}


def test_async_predict_return_pickled(launch_python: Path, launch_target: LaunchTarget) -> None:
    answer = client(launch_python, launch_target, ASYNC, "predict", args={"x": [4, 5]})
    assert answer["status"] == "SUCCESS"
    assert answer["result_url"].startswith(("http://", "https://"))
    assert answer["unpickled"] == {"x": [4, 5]}


def test_async_failure_carries_the_traceback(launch_python: Path, launch_target: LaunchTarget) -> None:
    answer = client(launch_python, launch_target, ASYNC, "predict", args={"fail": "late"}, return_pickled=False)
    assert answer["status"] == "FAILURE"
    assert "RuntimeError: the model refused: late" in answer["traceback"]


def test_async_request_on_an_endpoint_described_as_sync(launch_python: Path, launch_target: LaunchTarget) -> None:
    answer = client(launch_python, launch_target, SYNC, "async_request", args={"k": "v"}, return_pickled=False)
    assert answer["status"] == "SUCCESS"
    assert json.loads(answer["result"]) == {"k": "v"}


def test_list_model_endpoints(launch_python: Path, launch_target: LaunchTarget) -> None:
    """`list_model_endpoints`: every endpoint the server answers for, typed as `get_model_endpoint` types it (a
    router lists its own endpoint, a gateway or local mode all of theirs)."""
    for name in (SYNC, ASYNC):  # through each endpoint's server (the async-only one too)
        answer = client(launch_python, launch_target, name, "list_endpoints")
        listed = {entry["name"]: entry for entry in answer["endpoints"]}
        assert listed[name] == client(launch_python, launch_target, name, "get_endpoint")
    assert listed[ASYNC]["endpoint"] == "AsyncEndpoint"
    if launch_target.url(SYNC) == launch_target.url(ASYNC):  # one front for both: both listed
        assert {SYNC, ASYNC} <= set(listed)


def test_list_model_endpoints_needs_the_api_key(launch_python: Path, launch_target: LaunchTarget) -> None:
    wrong = LaunchTarget(urls=launch_target.urls, api_key="not-a-key")
    answer = client(launch_python, wrong, SYNC, "list_endpoints")
    assert answer["error"] == "APIError"
    assert answer["status_code"] == 401


def test_get_async_response_polls_to_the_result(launch_python: Path, launch_target: LaunchTarget) -> None:
    """`get_async_response(task_id)` finds the task by its id alone; while it is queued or running the state is
    PENDING (never STARTED or another state the 0.3.3 client does not know), then SUCCESS with the result."""
    answer = client(
        launch_python, launch_target, ASYNC, "get_async_response", args={"sleep": 1, "x": 5}, return_pickled=False
    )
    assert set(answer["states"][:-1]) <= {"PENDING"}
    assert answer["states"][-1] == "SUCCESS"
    assert "PENDING" in answer["states"]  # the model sleeps a second: the first poll sees it unfinished
    assert json.loads(answer["response"]["result"]) == {"sleep": 1, "x": 5}


def test_get_async_response_reports_a_failure_and_a_pickled_result(
    launch_python: Path, launch_target: LaunchTarget
) -> None:
    failed = client(launch_python, launch_target, ASYNC, "get_async_response", args={"fail": "nope"})
    assert failed["response"]["state"] == "FAILURE"
    assert "RuntimeError: the model refused: nope" in failed["response"]["traceback"]
    pickled = client(launch_python, launch_target, ASYNC, "get_async_response", args={"y": 1})
    assert pickled["response"]["state"] == "SUCCESS"
    assert pickled["response"]["result_url"].startswith(("http://", "https://"))


async def test_legacy_task_result_of_an_unknown_task_is_404(
    launch_target: LaunchTarget, http: aiohttp.ClientSession
) -> None:
    url = f"{launch_target.legacy_base(ASYNC)}/task/result/no-such-task"
    async with http.get(url, headers=launch_target.headers) as response:
        assert response.status == 404
        assert "no-such-task" in (await response.json())["detail"]


# -- model-engine's /v1 routes --------------------------------------------------------------------------------------


async def test_v1_model_endpoints_by_name(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    url = launch_target.url(SYNC)
    async with http.get(f"{url}/v1/model-endpoints", params={"name": SYNC}, headers=launch_target.headers) as response:
        assert response.status == 200
        body = await response.json()
    [endpoint] = body["model_endpoints"]
    assert (endpoint["id"], endpoint["name"], endpoint["status"]) == (SYNC, SYNC, "READY")
    assert endpoint["endpoint_type"] == "streaming"  # streaming endpoints also take sync tasks
    assert endpoint["modes"] == ["sync", "streaming", "async"]
    async with http.get(
        f"{url}/v1/model-endpoints", params={"name": "other"}, headers=launch_target.headers
    ) as response:
        assert (response.status, await response.json()) == (200, {"model_endpoints": []})


async def test_v1_sync_task(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    url = f"{launch_target.url(SYNC)}/v1/sync-tasks"
    body = {"args": {"q": "hi"}}
    async with http.post(url, params={"model_endpoint_id": SYNC}, json=body, headers=launch_target.headers) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer == {
        "status": "SUCCESS",
        "result": {"result": json.dumps({"q": "hi"}, separators=(",", ":")), "result_url": None},
        "traceback": None,
        "status_code": 200,
    }


async def test_v1_sync_task_pickled(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    url = f"{launch_target.url(SYNC)}/v1/sync-tasks"
    body = {"args": {"q": 1}, "return_pickled": True}
    async with http.post(url, params={"model_endpoint_id": SYNC}, json=body, headers=launch_target.headers) as response:
        answer = await response.json()
    result_url = answer["result"]["result_url"]
    assert result_url.startswith("http://")
    async with http.get(result_url, headers=launch_target.headers) as response:
        assert response.status == 200
        assert pickle.loads(await response.read()) == {"q": 1}


async def test_v1_sync_model_failure_is_200_failure(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    url = f"{launch_target.url(SYNC)}/v1/sync-tasks"
    body = {"args": {"fail": "boom"}}
    async with http.post(url, params={"model_endpoint_id": SYNC}, json=body, headers=launch_target.headers) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["status"] == "FAILURE"
    assert answer["result"] is None
    assert "RuntimeError: the model refused: boom" in answer["traceback"]
    assert answer["status_code"] == 500


async def test_v1_async_task(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    base = launch_target.url(ASYNC)
    body = {"args": {"z": [1]}}
    async with http.post(
        f"{base}/v1/async-tasks", params={"model_endpoint_id": ASYNC}, json=body, headers=launch_target.headers
    ) as response:
        assert response.status == 200
        task_id = (await response.json())["task_id"]
    seen: list[dict[str, Any]] = []

    async def finished() -> bool:
        async with http.get(f"{base}/v1/async-tasks/{task_id}", headers=launch_target.headers) as response:
            assert response.status == 200
            seen.append(await response.json())
        assert seen[-1]["status"] in ("PENDING", "STARTED", "SUCCESS")
        return bool(seen[-1]["status"] == "SUCCESS")

    from tests.support.waiting import async_wait_until

    await async_wait_until(finished, timeout=30, what="async task finished")
    assert seen[-1] == {
        "task_id": task_id,
        "status": "SUCCESS",
        "result": {"result": json.dumps({"z": [1]}, separators=(",", ":")), "result_url": None},
        "traceback": None,
        "status_code": 200,
    }


async def test_v1_unknown_task_and_endpoint(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    base = launch_target.url(ASYNC)
    async with http.get(f"{base}/v1/async-tasks/00000000000000000000000000000000", headers=launch_target.headers) as r:
        assert r.status == 404
        assert "detail" in await r.json()
    async with http.post(
        f"{base}/v1/async-tasks", params={"model_endpoint_id": "nope"}, json={"args": {}}, headers=launch_target.headers
    ) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"


async def test_v1_wrong_mode_and_bad_body(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    base = launch_target.url(ASYNC)
    async with http.post(
        f"{base}/v1/sync-tasks", params={"model_endpoint_id": ASYNC}, json={"args": {}}, headers=launch_target.headers
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "mode_not_served"
    async with http.post(
        f"{base}/v1/async-tasks", params={"model_endpoint_id": ASYNC}, data=b"{nope", headers=launch_target.headers
    ) as r:
        assert r.status == 400
        assert "not valid JSON" in (await r.json())["detail"]
    async with http.post(f"{base}/v1/async-tasks", json={"args": {}}, headers=launch_target.headers) as r:
        assert r.status == 400
        assert "model_endpoint_id" in (await r.json())["detail"]
    async with http.post(
        f"{base}/v1/async-tasks", params={"model_endpoint_id": ASYNC}, json={"args": {}}
    ) as r:  # no API key
        assert r.status == 401


async def _events(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) async for line in response.content if line.startswith(b"data: ")]


async def test_v1_streaming_task(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    url = f"{launch_target.url(SYNC)}/v1/streaming-tasks"
    body = {"args": {"text": "one two three"}}
    async with http.post(url, params={"model_endpoint_id": SYNC}, json=body, headers=launch_target.headers) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = await _events(response)
    assert [event["status"] for event in events] == ["SUCCESS"] * 3
    assert [json.loads(event["result"]["result"]) for event in events] == ["one", "two", "three"]


async def test_v1_streaming_failure_mid_stream(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    url = f"{launch_target.url(SYNC)}/v1/streaming-tasks"
    body = {"args": {"text": "one two three", "fail_after": 2}}
    async with http.post(url, params={"model_endpoint_id": SYNC}, json=body, headers=launch_target.headers) as response:
        assert response.status == 200
        events = await _events(response)
    assert [event["status"] for event in events] == ["SUCCESS", "SUCCESS", "FAILURE"]
    assert "the stream broke after 2 words" in events[-1]["traceback"]


async def test_v1_streaming_failure_before_the_first_chunk(
    launch_target: LaunchTarget, http: aiohttp.ClientSession
) -> None:
    url = f"{launch_target.url(SYNC)}/v1/streaming-tasks"
    body = {"args": {"text": "one", "fail_after": 0}}
    async with http.post(url, params={"model_endpoint_id": SYNC}, json=body, headers=launch_target.headers) as response:
        assert response.status == 200
        events = await _events(response)
    assert [event["status"] for event in events] == ["FAILURE"]
    assert "the stream broke after 0 words" in events[0]["traceback"]


async def test_result_url_follows_the_forwarded_host(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    url = f"{launch_target.url(SYNC)}/v1/sync-tasks"
    headers = {**launch_target.headers, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "models.example.com"}
    body = {"args": {"q": 2}, "return_pickled": True}
    async with http.post(url, params={"model_endpoint_id": SYNC}, json=body, headers=headers) as response:
        answer = await response.json()
    assert answer["result"]["result_url"].startswith("https://models.example.com/v1/tasks/")


@pytest.mark.parametrize(("legacy", "status"), [(True, 408), (False, 408)])
async def test_a_timeout_has_the_dialects_status(
    launch_target: LaunchTarget, http: aiohttp.ClientSession, legacy: bool, status: int
) -> None:
    base = launch_target.url(SYNC)
    url = f"{base}/v1/hosted_inference/task_sync/{SYNC}" if legacy else f"{base}/v1/sync-tasks"
    params = {} if legacy else {"model_endpoint_id": SYNC}
    body = {"args": {"sleep": 3}, "timeout_seconds": 0.5, "return_pickled": False}
    async with http.post(url, params=params, json=body, headers=launch_target.headers) as response:
        assert response.status == status
        assert (await response.json())["error"]["code"] == "timeout"


async def test_legacy_refusals(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    base = launch_target.legacy_base(ASYNC)
    async with http.post(f"{base}/task_sync/{ASYNC}", json={"args": {}}, headers=launch_target.headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "mode_not_served"
    async with http.post(f"{base}/task_async/other", json={"args": {}}, headers=launch_target.headers) as response:
        assert response.status == 404
    async with http.get(
        f"{base}/endpoints/{ASYNC}/task_async/00000000000000000000000000000000", headers=launch_target.headers
    ) as response:
        assert response.status == 404
        assert "detail" in await response.json()


@pytest.fixture(scope="module")
def unready_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A router whose model never comes up (nothing listens on its model port)."""
    directory = tmp_path_factory.mktemp("launch-unready")
    endpoint = _endpoint_file(directory, "launchcold", ["sync"])
    env = {"BUNDLESERVE_RESULTS_DIR": str(directory / "results")}
    router, url = start_router(directory, endpoint, f"http://127.0.0.1:{free_port()}", env=env)
    try:
        yield url
    finally:
        router.stop()


async def test_an_endpoint_whose_model_is_not_ready(unready_router: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{unready_router}/v1/hosted_inference/endpoints/launchcold") as response:
        assert response.status == 200
        body = await response.json()
    assert (body["endpoint_type"], body["status"], body["modes"]) == ("sync", "UPDATE_PENDING", ["sync"])
    async with http.post(f"{unready_router}/v1/sync-tasks?model_endpoint_id=launchcold", json={"args": {}}) as r:
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "unavailable"


async def test_v1_async_task_with_a_callback(launch_target: LaunchTarget, http: aiohttp.ClientSession) -> None:
    received: list[tuple[str | None, Any]] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization"), await request.json()))
        arrived.set()
        return web.Response()

    app = web.Application()
    app.router.add_post("/done", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        body = {
            "args": {"c": 1},
            "callback_url": f"http://127.0.0.1:{port}/done",
            "callback_auth": {"kind": "basic", "username": "hook", "password": "s3cret"},
        }
        base = launch_target.url(ASYNC)
        async with http.post(
            f"{base}/v1/async-tasks", params={"model_endpoint_id": ASYNC}, json=body, headers=launch_target.headers
        ) as response:
            assert response.status == 200
            task_id = (await response.json())["task_id"]
        await asyncio.wait_for(arrived.wait(), timeout=30)
    finally:
        await runner.cleanup()
    [(authorization, document)] = received
    assert authorization == "Basic " + base64.b64encode(b"hook:s3cret").decode()
    assert document["task_id"] == task_id
    assert document["status"] == "SUCCESS"


# -- the front mount (what a gateway uses), in front of the real routers ----------------------------------------------


class _NamesGate:
    """Stand-in for a gateway's gate: knows the two endpoints' modes, checks nothing else (no key, no readiness).

    Limits: the real gateway also checks API keys, body limits per endpoint and readiness from its registry; this
    stand-in exists only to run the dialect's front mount (calls handed to real routers over the internal hop)."""

    modes = {SYNC: {Mode.SYNC, Mode.STREAMING, Mode.ASYNC}, ASYNC: {Mode.ASYNC}}

    def gate(self, name: str | None, authorization: str | None, mode: Mode) -> None:
        if name is not None and name not in self.modes:
            raise NotFound(f"no endpoint {name!r}")
        if name is not None and mode not in self.modes[name]:
            raise ModeNotServed(f"{name} does not serve {mode.value}")

    async def read_body(self, request: web.Request) -> bytes:
        return await request.read()


class _HopCalls(_NamesGate):
    """One endpoint's backend as the gateway builds it: this gate, then the parsed call over the internal hop
    (`RouterHop`, the gateway's own client) to the endpoint's real router, with the caller's credential."""

    def __init__(self, pool: UpstreamPool, entry: EndpointEntry) -> None:
        self.pool = pool
        self.entry = entry
        self.authorization: str | None = None

    def gate(  # type: ignore[override]
        self, name: str | None, authorization: str | None, mode: Mode, **_credential: object
    ) -> None:
        super().gate(name, authorization, mode)
        self.authorization = authorization

    def _hop(self) -> RouterHop:
        return RouterHop(self.pool, self.entry, self.authorization)

    async def predict(self, inv: Invocation) -> ModelReply:
        return await self._hop().predict(inv)

    def stream(self, inv: Invocation) -> AbstractAsyncContextManager[AsyncIterator[StreamChunk]]:
        return self._hop().stream(inv)


@pytest.fixture
async def forwarding_front(launch_target: LaunchTarget, tmp_path: Path) -> AsyncIterator[str]:
    session = UpstreamPool()

    def calls(name: str) -> _HopCalls:
        _NamesGate().gate(name, None, Mode.ASYNC)  # an unknown name: NotFound, before anything else
        [(_, endpoint)] = load_endpoints([_endpoint_file(tmp_path, name, ["sync", "streaming", "async"])])
        return _HopCalls(session, EndpointEntry(endpoint, launch_target.url(name)))

    app = web.Application()
    add_routes(app, _NamesGate(), calls, lambda _name: None)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        session.close()


async def test_forwarding_mount(
    forwarding_front: str, launch_target: LaunchTarget, http: aiohttp.ClientSession
) -> None:
    headers = launch_target.headers
    async with http.get(f"{forwarding_front}/v1/hosted_inference/endpoints/{ASYNC}", headers=headers) as response:
        assert (response.status, (await response.json())["endpoint_type"]) == (200, "async")
    body = {"args": {"f": 1}, "return_pickled": False}
    async with http.post(f"{forwarding_front}/v1/hosted_inference/task_sync/{SYNC}", json=body, headers=headers) as r:
        assert r.status == 200
        answer = await r.json()
    assert (answer["state"], json.loads(answer["result"])) == ("SUCCESS", {"f": 1})
    async with http.post(f"{forwarding_front}/v1/sync-tasks?model_endpoint_id=nope", json=body, headers=headers) as r:
        assert r.status == 404  # the forwarder's refusal, in the dialect's shape
        assert (await r.json())["error"]["code"] == "not_found"
    async with http.post(f"{forwarding_front}/v1/async-tasks?model_endpoint_id={ASYNC}", json=body) as r:
        assert r.status == 503  # this stand-in has no queues
