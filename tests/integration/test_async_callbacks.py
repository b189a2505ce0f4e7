"""Completion callbacks against a real HTTP(S) target: basic auth, mTLS, and a target that is down, slow or failing."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bundleserve.api.invocation import CallbackAuthRequest, TaskStatus
from bundleserve.outbound.destinations import AddressPolicy, parse_cidrs
from bundleserve.queue.broker import TaskQueue
from bundleserve.queue.callbacks import NO_HTTP_ANSWER, CallbackSender, RetryPolicy, auth_from_secret_dir
from bundleserve.queue.config import Durability, QueueConfig
from bundleserve.queue.invoke import ModelReply
from bundleserve.queue.results import FilesystemResultStore
from bundleserve.queue.tasks import CallbackTarget, TaskRecord, TaskRequest
from bundleserve.queue.worker import Worker
from tests.support.processes import free_port
from tests.support.valkey import Valkey
from tests.support.waiting import async_wait_until

_names = itertools.count()
FAST_RETRIES = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.05, timeout_seconds=0.5)

#: The receivers of these tests listen on loopback, which the destination guard refuses by default.
LOOPBACK = AddressPolicy(allow=parse_cidrs("127.0.0.0/8,::1", source="tests"))


@dataclass
class Target:
    """A callback receiver: answers the scripted statuses in turn (then 200), after `delay` seconds."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)
    peer_names: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization"))
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            self.peer_names.append(dict(item[0] for item in peer["subject"])["commonName"])
        self.received.append(await request.json())
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def serve_target() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def serve(target: Target, ssl_context: ssl.SSLContext | None = None) -> Target:
        app = web.Application()
        app.router.add_post("/hook", target.handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
        runners.append(runner)
        target.url = f"{'https' if ssl_context else 'http'}://{'localhost' if ssl_context else '127.0.0.1'}:{port}/hook"
        return target

    yield serve
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def redis(valkey_server: Valkey) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(valkey_server.url)
    yield client
    await client.aclose()


async def echo(request: TaskRequest, timeout: float) -> ModelReply:
    if request.args.get("fail"):
        return ModelReply(500, b'{"error": {"message": "boom", "traceback": "Traceback: boom"}}', "application/json")
    return ModelReply(200, json.dumps(request.args).encode(), "application/json")


@pytest.fixture
async def worker(redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[Worker, asyncio.Task[None], CallbackSender]] = []

    def start(*, ca_file: str | None = None, concurrency: int = 4, **config: Any) -> TaskQueue:
        queue = TaskQueue(
            redis,
            QueueConfig(
                endpoint=f"callbacks-{next(_names)}-{time.monotonic_ns()}",
                durability=Durability.MEMORY,
                max_attempts=1,
                concurrency=concurrency,
                **config,
            ),
        )
        # plain-http receivers with credentials: the explicit opt-in (https is required without it)
        sender = CallbackSender(
            destinations=LOOPBACK, policy=FAST_RETRIES, ca_file=ca_file, allow_insecure_credentials=True
        )
        instance = Worker(queue, echo, FilesystemResultStore(tmp_path / "results"), callbacks=sender)
        started.append((instance, asyncio.create_task(instance.run()), sender))
        return queue

    yield start
    for instance, task, sender in started:
        await instance.stop()
        await asyncio.wait_for(task, 15)
        await sender.close()
        await instance.queue.close()


async def callback_settled(queue: TaskQueue, task_id: str, timeout: float = 10) -> TaskRecord:
    async def settled() -> TaskRecord | None:
        record = await queue.get(task_id)
        return record if record and record.callback_status in ("delivered", "failed") else None

    return await async_wait_until(settled, timeout=timeout, what=f"the callback of {task_id}")


async def test_callback_with_basic_auth_is_delivered_and_recorded(redis, worker, serve_target):
    target = await serve_target(Target())
    queue = worker()
    auth = CallbackAuthRequest(kind="basic", username="hook", password="s3cret")
    task_id = await queue.submit(TaskRequest(args={"x": 1}), CallbackTarget(target.url, auth))
    record = await callback_settled(queue, task_id)
    assert (record.status, record.callback_status, record.callback_attempts) == (TaskStatus.SUCCESS, "delivered", 1)
    assert target.received == [{"task_id": task_id, "status": "SUCCESS", "result": {"x": 1}, "traceback": None}]
    assert target.authorization == ["Basic " + base64.b64encode(b"hook:s3cret").decode()]


async def test_a_failure_callback_carries_the_traceback(redis, worker, serve_target):
    target = await serve_target(Target())
    queue = worker()
    task_id = await queue.submit(TaskRequest(args={"fail": True}), CallbackTarget(target.url))
    record = await callback_settled(queue, task_id)
    assert record.callback_status == "delivered"
    assert target.received == [
        {"task_id": task_id, "status": "FAILURE", "result": None, "traceback": "Traceback: boom"}
    ]


async def test_a_500_is_retried_until_it_succeeds(redis, worker, serve_target):
    target = await serve_target(Target(statuses=[500, 503]))
    queue = worker()
    task_id = await queue.submit(TaskRequest(args={}), CallbackTarget(target.url))
    record = await callback_settled(queue, task_id)
    assert (record.callback_status, record.callback_attempts) == ("delivered", 3)
    assert len(target.received) == 3


async def test_a_target_that_keeps_failing_is_recorded_and_the_result_stays(redis, worker, serve_target):
    target = await serve_target(Target(statuses=[500] * 10))
    queue = worker()
    task_id = await queue.submit(TaskRequest(args={"keep": "me"}), CallbackTarget(target.url))
    record = await callback_settled(queue, task_id)
    assert (record.callback_status, record.callback_attempts, record.callback_error) == ("failed", 3, "HTTP 500")
    assert (record.status, record.result) == (TaskStatus.SUCCESS, {"keep": "me"})


async def test_a_target_that_is_down_is_recorded_as_failed(redis, worker):
    queue = worker()
    task_id = await queue.submit(TaskRequest(args={"v": 2}), CallbackTarget(f"http://127.0.0.1:{free_port()}/hook"))
    record = await callback_settled(queue, task_id)
    assert (record.callback_status, record.callback_attempts) == ("failed", 3)
    assert record.callback_error == NO_HTTP_ANSWER  # one text for closed, open-but-not-HTTP and dropped
    assert (record.status, record.result) == (TaskStatus.SUCCESS, {"v": 2})


async def test_a_slow_target_never_blocks_the_worker(redis, worker, serve_target):
    target = await serve_target(Target(delay=2.0))
    queue = worker(concurrency=1)
    begun = time.monotonic()
    ids = [await queue.submit(TaskRequest(args={"i": i}), CallbackTarget(target.url)) for i in range(5)]

    async def all_succeeded() -> bool:
        records = [await queue.get(task_id) for task_id in ids]
        return all(r is not None and r.status is TaskStatus.SUCCESS for r in records)

    await async_wait_until(all_succeeded, timeout=5, what="all tasks to succeed")
    assert time.monotonic() - begun < 1.5  # one slot, five 2 s callbacks: they did not hold the slot
    record = await callback_settled(queue, ids[0])
    assert (record.callback_status, record.callback_error) == ("failed", "timed out after 0.5 s")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA with a server certificate (localhost) and a client certificate (CN=bundleserve-client)."""
    root = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=test-ca", cwd=root)  # fmt: skip
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=bundleserve-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=root)  # fmt: skip
        (root / f"{name}.ext").write_text("subjectAltName=DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=root)  # fmt: skip
    return root


async def test_mtls_callback_presents_the_client_certificate(redis, worker, serve_target, pki: Path):
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    server_context.load_cert_chain(pki / "server.crt", pki / "server.key")
    server_context.verify_mode = ssl.CERT_REQUIRED
    target = await serve_target(Target(), server_context)
    queue = worker(ca_file=str(pki / "ca.crt"))
    auth = CallbackAuthRequest(kind="mtls", cert=(pki / "client.crt").read_text(), key=(pki / "client.key").read_text())
    task_id = await queue.submit(TaskRequest(args={"tls": True}), CallbackTarget(target.url, auth))
    record = await callback_settled(queue, task_id)
    assert record.callback_status == "delivered", record.callback_error
    assert target.peer_names == ["bundleserve-client"]

    no_cert = await queue.submit(TaskRequest(args={}), CallbackTarget(target.url))
    refused = await callback_settled(queue, no_cert)
    assert refused.callback_status == "failed"
    assert target.peer_names == ["bundleserve-client"]


def test_endpoint_default_credentials_come_from_the_mounted_secret(tmp_path: Path):
    (tmp_path / "username").write_text("svc\n")
    (tmp_path / "password").write_text("pw\n")
    auth = auth_from_secret_dir("basic", tmp_path)
    assert auth is not None and (auth.username, auth.password) == ("svc", "pw")
    assert "pw" not in repr(auth)
    assert auth_from_secret_dir("mtls", tmp_path) is None
