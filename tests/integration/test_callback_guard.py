"""Callbacks pass the url inputs' destination guard (issue 9, defect 7): real HTTP receivers on loopback, which the
guard refuses by default, so a callback can not reach the router's own network neighbourhood (metadata services,
loopback admin ports) unless an operator allows it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import CallbackAuthRequest, Invocation
from bundleserve.dialects.native.tasks import parse_submission
from bundleserve.outbound.destinations import AddressPolicy, parse_cidrs
from bundleserve.queue.broker import TaskQueue
from bundleserve.queue.callbacks import CallbackSender, RetryPolicy, check_callback_target
from bundleserve.queue.config import Durability, QueueConfig
from bundleserve.queue.notify import CompletionWaiter
from bundleserve.queue.results import open_result_store
from bundleserve.queue.service import TaskService
from bundleserve.queue.tasks import CallbackTarget
from tests.support.processes import free_port
from tests.support.valkey import Valkey

LOOPBACK = AddressPolicy(allow=parse_cidrs("127.0.0.0/8,::1", source="tests"))
QUICK = RetryPolicy(max_attempts=1, timeout_seconds=5)
BODY = {"task_id": "t", "status": "SUCCESS", "result": 1}


class Receiver:
    """Counts POSTs; `redirect_to` answers 302 to that URL instead."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.received = 0
        self.redirect_to = redirect_to
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received += 1
        if self.redirect_to:
            return web.Response(status=302, headers={"Location": self.redirect_to})
        return web.Response(status=204)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Receiver], Awaitable[Receiver]]]:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        receiver.url = f"http://127.0.0.1:{port}/hook"
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_loopback_callback_is_refused_by_default(serve: Callable[[Receiver], Awaitable[Receiver]]):
    receiver = await serve(Receiver())
    sender = CallbackSender(policy=QUICK)
    try:
        literal = await sender.attempt(CallbackTarget(receiver.url), BODY)
        named = await sender.attempt(CallbackTarget(receiver.url.replace("127.0.0.1", "localhost")), BODY)
    finally:
        await sender.close()
    assert (literal.delivered, literal.retryable) == (False, False)
    assert literal.error == "callback destination refused: loopback address"
    assert (named.delivered, named.retryable) == (False, False)  # the name resolves to loopback: the resolver refuses
    assert named.error == "callback destination refused: loopback address"
    assert receiver.received == 0


async def test_an_allowed_callback_is_delivered_and_redirects_are_not_followed(
    serve: Callable[[Receiver], Awaitable[Receiver]],
):
    final = await serve(Receiver())
    hop = await serve(Receiver(redirect_to=final.url))
    sender = CallbackSender(policy=QUICK, destinations=LOOPBACK)
    try:
        direct = await sender.attempt(CallbackTarget(final.url), BODY)
        redirected = await sender.attempt(CallbackTarget(hop.url), BODY)
    finally:
        await sender.close()
    assert direct.delivered
    assert (redirected.delivered, redirected.retryable) == (False, False)
    assert redirected.error is not None and "redirects are not followed" in redirected.error
    assert (hop.received, final.received) == (1, 1)  # only the direct delivery reached the final receiver


async def test_credentials_go_only_over_https_unless_opted_in(serve: Callable[[Receiver], Awaitable[Receiver]]):
    receiver = await serve(Receiver())
    auth = CallbackAuthRequest(kind="basic", username="hook", password="s3cret")
    strict = CallbackSender(policy=QUICK, destinations=LOOPBACK, allow_insecure_credentials=False)
    opted_in = CallbackSender(policy=QUICK, destinations=LOOPBACK, allow_insecure_credentials=True)
    try:
        refused = await strict.attempt(CallbackTarget(receiver.url, auth), BODY)
        assert (refused.delivered, refused.retryable) == (False, False)
        assert refused.error is not None and "https" in refused.error
        assert receiver.received == 0
        assert (await opted_in.attempt(CallbackTarget(receiver.url, auth), BODY)).delivered
    finally:
        await strict.close()
        await opted_in.close()


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data", "http://127.0.0.1:6379/", "http://[::1]/hook", "http://2130706433/"],
)
async def test_a_submission_with_a_refused_callback_is_a_400_and_never_stored(
    url: str, valkey_server: Valkey, tmp_path
):
    """Whatever the dialect, `TaskService.submit` refuses the target before anything reaches the queue."""
    client = aioredis.Redis.from_url(valkey_server.url)
    config = QueueConfig(endpoint="guarded", namespace=f"guard-{uuid.uuid4().hex[:8]}", durability=Durability.MEMORY)
    service = TaskService(TaskQueue(client, config), open_result_store(tmp_path / "results"), CompletionWaiter(client))
    try:
        with pytest.raises(InvalidRequest, match="callback"):
            await service.submit(Invocation(body=b"{}"), callback=CallbackTarget(url))
        assert await client.exists(service.queue.stream) == 0
    finally:
        await service.waiter.close()
        await service.queue.close()
        await client.aclose()


def test_the_native_body_parser_leaves_destinations_to_the_task_service():
    body = b'{"args": {}, "callback_url": "http://127.0.0.1:6379/"}'
    assert parse_submission(body, kwargs_only=True).callback_url == "http://127.0.0.1:6379/"


def test_check_callback_target_requires_https_for_credentials():
    auth = CallbackAuthRequest(kind="basic", username="u", password="p")
    with pytest.raises(InvalidRequest, match="https"):
        check_callback_target("http://hooks.example.com/x", auth, AddressPolicy(), allow_insecure_credentials=False)
    check_callback_target("https://hooks.example.com/x", auth, AddressPolicy(), allow_insecure_credentials=False)
