"""router.dedup.RecentCalls: the retries of one keyed call share one model call (issue 17, finding 8)."""

from __future__ import annotations

import asyncio

import pytest

from bundleserve.api.errors import InvalidRequest, ModelError, Overloaded
from bundleserve.api.invocation import ModelReply
from bundleserve.router.dedup import RecentCalls, fingerprint_of

FP = fingerprint_of(b'{"a": 1}')


class Model:
    """Counts calls; each call waits for `release` (set by the test), then answers or raises `error`."""

    def __init__(self, body: bytes = b"{}", error: Exception | None = None) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.body = body
        self.error = error

    async def __call__(self) -> ModelReply:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return ModelReply(200, self.body, "application/json")


async def test_attempts_share_one_call_and_a_leaving_client_does_not_cancel_it() -> None:
    recent = RecentCalls(ttl_seconds=60, max_bytes=1 << 20)
    model = Model(b'{"ok": true}')
    first = asyncio.ensure_future(recent.run("k", FP, model))
    await asyncio.sleep(0)  # the first attempt started its call
    first.cancel()  # its client left (read timeout)
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.ensure_future(recent.run("k", FP, model))  # the retry waits for the same call
    await asyncio.sleep(0)
    model.release.set()
    assert (await second).body == b'{"ok": true}'
    assert (await recent.run("k", FP, model)).body == b'{"ok": true}'  # a later retry: the kept reply
    assert model.calls == 1


async def test_a_key_reused_for_another_request_is_refused() -> None:
    recent = RecentCalls(ttl_seconds=60, max_bytes=1 << 20)
    model = Model()
    model.release.set()
    await recent.run("k", FP, model)
    with pytest.raises(InvalidRequest, match="different request"):
        await recent.run("k", fingerprint_of(b'{"a": 2}'), model)


async def test_errors_before_the_model_are_not_kept_model_errors_are() -> None:
    recent = RecentCalls(ttl_seconds=60, max_bytes=1 << 20)
    overloaded = Model(error=Overloaded("full"))
    overloaded.release.set()
    for _ in range(2):
        with pytest.raises(Overloaded):
            await recent.run("busy", FP, overloaded)
    assert overloaded.calls == 2  # a retry after a 429 tries again
    failing = Model(error=ModelError("boom"))
    failing.release.set()
    for _ in range(2):
        with pytest.raises(ModelError):
            await recent.run("fails", FP, failing)
    assert failing.calls == 1  # the model ran: its failure is the answer


async def test_kept_replies_stay_within_the_byte_budget() -> None:
    recent = RecentCalls(ttl_seconds=60, max_bytes=100)
    for n in range(5):
        model = Model(b"x" * 40)
        model.release.set()
        await recent.run(f"k{n}", FP, model)
    assert len(recent) <= 2  # 2 x 40 bytes fit in 100, the oldest went first
    again = Model(b"x" * 40)
    again.release.set()
    await recent.run("k0", FP, again)
    assert again.calls == 1  # forgotten, so it ran again
