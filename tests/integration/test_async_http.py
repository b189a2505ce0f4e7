"""The async API over real HTTP: a router subprocess (with its worker loop) in front of the fake model, real valkey."""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import yaml

from bundleserve.queue import keys
from bundleserve.queue.results import FilesystemResultStore, sync_result_key
from tests.integration.test_router_fake_model import start_model, start_router
from tests.support.processes import http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until, wait_until

NAME = "asynchttp"
BASE = f"/v1/endpoints/{NAME}"


def write_async_endpoint(directory: Path, *, name: str = NAME, **async_settings: Any) -> Path:
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name},
        "spec": {
            "modes": ["sync", "async"],
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "fake:predict"}},
            "invocation": {"concurrency": 4, "maxPayloadBytes": 4096},
            "async": {"maxAttempts": 2, "invocationTimeoutSeconds": 5, **async_settings},
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("async-http")
    model, model_url = start_model(directory)
    server = None
    try:
        endpoint = write_async_endpoint(directory)
        env = {
            "BUNDLESERVE_RESULTS_DIR": str(directory / "results"),
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
            "BUNDLESERVE_URL_ALLOW": "127.0.0.0/8",  # the url-input tests fetch from this router, on loopback
        }
        server, url = start_router(directory, endpoint, model_url, env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        yield {"url": url, "router": server, "model_url": model_url, "results": directory / "results"}
    finally:
        if server is not None:
            server.stop()
        model.stop()


async def submit(http: aiohttp.ClientSession, url: str, body: Any, name: str = NAME) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"{url}/v1/endpoints/{name}/async", data=data) as response:
        return response.status, await response.json(content_type=None)


async def status(http: aiohttp.ClientSession, url: str, task_id: str, wait: float | str = 10) -> tuple[int, Any]:
    async with http.get(f"{url}/v1/tasks/{task_id}", params={"wait": str(wait)}) as response:
        return response.status, await response.json(content_type=None)


async def test_submit_then_long_poll_returns_the_result(router: dict[str, Any], http: aiohttp.ClientSession):
    code, accepted = await submit(http, router["url"], {"args": {"x": [1, 2], "name": "é"}})
    assert code == 202
    assert keys.is_task_id(accepted["task_id"])
    code, body = await status(http, router["url"], accepted["task_id"])
    assert code == 200
    assert body == {
        "task_id": accepted["task_id"],
        "status": "SUCCESS",
        "result": {"x": [1, 2], "name": "é"},
        "result_url": None,
        "traceback": None,
        "status_code": 200,
    }


async def open_gate(http: aiohttp.ClientSession, model_url: str, gate: str) -> None:
    async with http.post(f"{model_url}/gates/{gate}") as response:
        assert response.status == 200


async def waiting_at(http: aiohttp.ClientSession, model_url: str, gate: str) -> int:
    async with http.get(f"{model_url}/gates/{gate}") as response:
        return int((await response.json())["waiting"])


async def test_long_poll_is_woken_by_the_completion(router: dict[str, Any], http: aiohttp.ClientSession):
    """The task runs into a barrier; a long-poll of the longest wait is open before the barrier opens, and it answers
    SUCCESS long before its wait is over (the test's own deadline is a fraction of the 300 s wait)."""
    gate = uuid.uuid4().hex
    _, accepted = await submit(http, router["url"], {"args": {"hold": gate}})
    try:
        await async_wait_until(lambda: waiting_at(http, router["model_url"], gate), what="the task in the model")
        poll = asyncio.create_task(status(http, router["url"], accepted["task_id"], wait=300))
        code, body = await status(http, router["url"], accepted["task_id"], wait=0)
        assert (code, body["status"]) == (200, "STARTED")
        assert not poll.done()
    finally:
        await open_gate(http, router["model_url"], gate)
    code, body = await asyncio.wait_for(poll, timeout=60)
    assert (code, body["status"]) == (200, "SUCCESS")


async def test_status_without_wait_answers_at_once(router: dict[str, Any], http: aiohttp.ClientSession):
    gate = uuid.uuid4().hex
    _, accepted = await submit(http, router["url"], {"args": {"hold": gate}})
    try:
        code, body = await status(http, router["url"], accepted["task_id"], wait=0)
    finally:
        await open_gate(http, router["model_url"], gate)
    assert code == 200
    assert body["status"] in ("PENDING", "STARTED")
    assert (body["result"], body["traceback"]) == (None, None)


async def test_a_model_failure_ends_as_failure_with_the_traceback(router: dict[str, Any], http: aiohttp.ClientSession):
    _, accepted = await submit(http, router["url"], {"args": {"fail": "poisoned input"}})
    code, body = await status(http, router["url"], accepted["task_id"], wait=20)
    assert code == 200
    assert body["status"] == "FAILURE"
    assert body["traceback"] == "Traceback: poisoned input"
    assert body["status_code"] == 500


async def test_a_pickled_result_is_served_from_result_url(router: dict[str, Any], http: aiohttp.ClientSession):
    _, accepted = await submit(http, router["url"], {"args": {"v": 3}, "return_pickled": True})
    _, body = await status(http, router["url"], accepted["task_id"], wait=20)
    assert body["status"] == "SUCCESS"
    assert body["result"] is None
    assert body["result_url"] == f"{router['url']}/v1/tasks/{accepted['task_id']}/result"  # absolute, from Host
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
    async with http.get(f"{router['url']}/v1/tasks/{accepted['task_id']}", headers=forwarded) as response:
        behind_proxy = await response.json()
    assert behind_proxy["result_url"] == f"https://api.example.com/v1/tasks/{accepted['task_id']}/result"
    async with http.get(body["result_url"]) as response:
        assert response.status == 200
        assert response.content_type == "application/vnd.bundleserve.pickle"
        assert pickle.loads(await response.read()) == {"v": 3}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        ([1, 2], "JSON object"),
        ({}, "exactly one of args or url"),
        ({"args": {"a": 1}, "url": "http://x/y"}, "exactly one of args or url"),
        ({"args": [1, 2]}, "keyword arguments"),
        ({"args": {}, "unknown": 1}, "unknown"),
        ({"url": "ftp://host/file"}, "not allowed"),
        ({"args": {}, "callback_url": "file:///etc/passwd"}, "not allowed"),
        ({"args": {}, "callback_auth": {"kind": "basic", "username": "u", "password": "p"}}, "callback_url"),
        ({"args": {}, "callback_url": "http://h/cb", "callback_auth": {"kind": "mtls"}}, "cert and key"),
        ({"args": {}, "timeout_seconds": -1}, "timeout_seconds"),
    ],
)
async def test_a_malformed_submission_is_400(
    router: dict[str, Any], http: aiohttp.ClientSession, body: Any, message: str
):
    code, answer = await submit(http, router["url"], body)
    assert code == 400, answer
    assert answer["error"]["code"] == "invalid_request"
    assert message in answer["error"]["message"]


async def test_a_submission_over_the_payload_limit_is_413(router: dict[str, Any], http: aiohttp.ClientSession):
    code, answer = await submit(http, router["url"], {"args": {"blob": "x" * 10_000}})
    assert (code, answer["error"]["code"]) == (413, "payload_too_large")


async def test_unknown_endpoint_and_unknown_task_are_404(router: dict[str, Any], http: aiohttp.ClientSession):
    code, answer = await submit(http, router["url"], {"args": {}}, name="other")
    assert (code, answer["error"]["code"]) == (404, "not_found")
    for task_id in ("0" * 32, "not-a-task-id", "../../etc"):
        code, answer = await status(http, router["url"], task_id, wait=0)
        assert (code, answer["error"]["code"]) == (404, "not_found")
    async with http.get(f"{router['url']}/v1/tasks/{'0' * 32}/result") as response:
        assert response.status == 404


async def test_a_malformed_result_id_is_400(router: dict[str, Any], http: aiohttp.ClientSession):
    """The same answer as the sync-only router's result route (tests/integration/test_router_sync.py)."""
    async with http.get(f"{router['url']}/v1/tasks/bad..id/result") as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"


async def test_a_task_of_a_same_named_endpoint_in_another_namespace_is_404(
    router: dict[str, Any], http: aiohttp.ClientSession, valkey_server: Valkey
):
    """The router (namespace `default`) serves only its own tasks, even when another namespace's twin shares Redis."""
    client = redis.Redis(port=valkey_server.port)
    try:
        for namespace in ("team-b", "default"):
            task_id = keys.new_task_id()
            record = {"endpoint": NAME, "namespace": namespace, "status": "SUCCESS", "result": "7"}
            client.hset(keys.task(keys.queue_id(namespace, NAME), task_id), mapping=record)
            client.expire(keys.task(keys.queue_id(namespace, NAME), task_id), 60)
            code, answer = await status(http, router["url"], task_id, wait=0)
            if namespace == "default":
                assert (code, answer["result"]) == (200, 7)
            else:
                assert (code, answer["error"]["code"]) == (404, "not_found")
    finally:
        client.close()


async def test_a_stored_result_of_another_endpoints_task_is_404(
    router: dict[str, Any], http: aiohttp.ClientSession, valkey_server: Valkey
):
    """Issue 17 (7): `GET /v1/tasks/{id}/result` served any stored result by id, although the status route checks
    the task's endpoint. Results of a shared volume (or bucket) belong to whoever's task or sync call made them."""
    store = FilesystemResultStore(router["results"])
    client = redis.Redis(port=valkey_server.port)
    try:
        theirs = keys.new_task_id()  # a task of team-b's twin, its result in the same store
        queue_b = keys.queue_id("team-b", NAME)
        client.hset(keys.task(queue_b, theirs), mapping={"endpoint": NAME, "namespace": "team-b", "status": "SUCCESS"})
        client.expire(keys.task(queue_b, theirs), 60)
        await store.put(theirs, b"secret", "application/octet-stream")
        other_sync = sync_result_key("team-b", NAME)  # another endpoint's sync return_pickled result
        await store.put(other_sync, b"secret", "application/octet-stream")
        for key in (theirs, other_sync):
            async with http.get(f"{router['url']}/v1/tasks/{key}/result") as response:
                assert response.status == 404, key
        # This endpoint's own sync result is served.
        own = sync_result_key("default", NAME)
        await store.put(own, b"mine", "application/octet-stream")
        async with http.get(f"{router['url']}/v1/tasks/{own}/result") as response:
            assert (response.status, await response.read()) == (200, b"mine")
    finally:
        client.close()


async def test_a_bad_wait_is_400(router: dict[str, Any], http: aiohttp.ClientSession):
    _, accepted = await submit(http, router["url"], {"args": {}})
    for wait in ("soon", "-1", "100000"):
        code, answer = await status(http, router["url"], accepted["task_id"], wait=wait)
        assert (code, answer["error"]["code"]) == (400, "invalid_request")


async def test_the_record_has_a_ttl_and_metrics_count_tasks(
    router: dict[str, Any], http: aiohttp.ClientSession, valkey_server: Valkey
):
    _, accepted = await submit(http, router["url"], {"args": {"m": 1}})
    await status(http, router["url"], accepted["task_id"], wait=20)
    client = redis.Redis(port=valkey_server.port)
    try:
        ttl = client.ttl(keys.task(keys.queue_id("default", NAME), accepted["task_id"]))
        assert 0 < ttl <= 86400  # resultTTLSeconds (default) once terminal
    finally:
        client.close()
    async with http.get(f"{router['url']}/metrics") as response:
        text = await response.text()
    assert f'bundleserve_async_tasks_total{{endpoint="{NAME}",status="SUCCESS"}}' in text
    assert f'bundleserve_async_submissions_total{{endpoint="{NAME}",outcome="accepted"}}' in text
    assert "bundleserve_async_queue_pending" in text


async def test_a_url_input_is_fetched_and_sent_raw(router: dict[str, Any], http: aiohttp.ClientSession):
    _, accepted = await submit(http, router["url"], {"url": f"{router['url']}/healthz"})
    code, body = await status(http, router["url"], accepted["task_id"], wait=20)
    assert (code, body["status"]) == (200, "SUCCESS"), body
    assert body["result"] == {"raw_bytes": len(b'{"status": "ok"}'), "content_type": "application/json"}


async def test_arguments_the_runtime_rejects_fail_at_once_naming_the_argument(
    router: dict[str, Any], http: aiohttp.ClientSession
):
    """The worker's call is the core's: invalid_arguments is the caller's mistake (400, never retried)."""
    _, accepted = await submit(http, router["url"], {"args": {"invalid": "colour"}})
    code, body = await status(http, router["url"], accepted["task_id"], wait=20)
    assert (code, body["status"], body["status_code"]) == (200, "FAILURE", 400), body
    assert "colour" in body["traceback"]


async def test_a_url_that_cannot_be_fetched_fails_without_retries(router: dict[str, Any], http: aiohttp.ClientSession):
    _, accepted = await submit(http, router["url"], {"url": f"{router['url']}/no-such-file"})
    code, body = await status(http, router["url"], accepted["task_id"], wait=20)
    assert (code, body["status"], body["status_code"]) == (200, "FAILURE", 400)
    assert "HTTP 404" in body["traceback"]


async def test_sigterm_lets_a_running_task_finish(tmp_path: Path, valkey_server: Valkey, http: aiohttp.ClientSession):
    model, model_url = start_model(tmp_path)
    try:
        endpoint = write_async_endpoint(tmp_path, name="asyncdrain")
        env = {
            "BUNDLESERVE_RESULTS_DIR": str(tmp_path / "results"),
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
        }
        server, url = start_router(tmp_path, endpoint, model_url, env=env)
        wait_until(lambda: http_ok(f"{url}/readyz"), timeout=10, what="router ready")
        gate = uuid.uuid4().hex
        code, accepted = await submit(http, url, {"args": {"hold": gate}}, name="asyncdrain")
        assert code == 202
        client = redis.Redis(port=valkey_server.port)
        try:
            await async_wait_until(lambda: waiting_at(http, model_url, gate), what="the task in the model")
            server.signal(signal.SIGTERM)

            async def draining() -> bool:
                async with http.get(f"{url}/readyz") as response:
                    return response.status == 503

            await async_wait_until(draining, what="the router to drain")
            assert server.process.poll() is None  # draining, and still there: the running task holds it
            await open_gate(http, model_url, gate)
            assert server.process.wait(20) == 0, server.log()
            assert (
                client.hget(keys.task(keys.queue_id("default", "asyncdrain"), accepted["task_id"]), "status")
                == b"SUCCESS"
            )
        finally:
            client.close()
            server.stop()
    finally:
        model.stop()
