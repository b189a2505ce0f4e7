"""The gateway's activator without Redis: which calls are held, the count bound (429), the deadline bound (504), the
release when the registry reports a ready replica, and which demand reports fall due. The Redis side (reports, wake
messages, the operator's reaction) is tested with real processes in tests/integration/test_scale_from_zero.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.errors import NotFound, Overloaded, Timeout
from bundleserve.gateway.activator import (
    MAX_HELD_ENV,
    Activator,
    HoldSettings,
    check_room,
    hold_seconds,
    settings_from_env,
)
from bundleserve.gateway.registry import EndpointEntry, Registry
from bundleserve.queue import keys
from tests.support.waiting import async_wait_until


def entry(*, min_replicas: int = 0, ready_replicas: int | None = 0, modes: list[str] | None = None) -> EndpointEntry:
    spec: dict[str, Any] = {
        "modes": modes or ["sync", "streaming"],
        "bundle": {"image": "example.com/m:1", "python": {"entrypoint": "m:predict"}},
        "invocation": {"timeoutSeconds": 30},
        "scaling": {"minReplicas": min_replicas, "maxReplicas": 3},
    }
    if min_replicas == 0 and set(spec["modes"]) & {"sync", "streaming"}:
        spec["scaling"]["scaleToZeroAfterSeconds"] = 45
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": "cold", "namespace": "team"},
        "spec": spec,
    }
    endpoint = Endpoint.model_validate(document)
    return EndpointEntry(endpoint=endpoint, router_url="http://r", ready=True, ready_replicas=ready_replicas)


def activator(found: EndpointEntry, **settings: Any) -> tuple[Activator, Registry]:
    registry = Registry([found])
    return Activator(registry, HoldSettings(poll_seconds=0.01, **settings), redis=None), registry


def test_the_hold_lasts_the_calls_own_deadline() -> None:
    cold = entry()
    assert hold_seconds(cold, None) == 30  # the endpoint's invocation.timeoutSeconds
    assert hold_seconds(cold, 5) == 5  # a call's own shorter timeout_seconds
    assert hold_seconds(cold, 600) == 30  # a longer one is clamped, as the router does


def test_a_full_hold_is_429_overloaded_with_retry_after() -> None:
    check_room(entry(), 99, HoldSettings(max_held=100))
    with pytest.raises(Overloaded) as raised:
        check_room(entry(), 100, HoldSettings(max_held=100))
    assert raised.value.status == 429
    assert "holds 100 calls" in str(raised.value)


@pytest.mark.parametrize("raw", ["0", "-1", "many", "100001"])
def test_a_bad_hold_limit_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=MAX_HELD_ENV):
        settings_from_env({MAX_HELD_ENV: raw})
    assert settings_from_env({MAX_HELD_ENV: "7"}).max_held == 7
    assert settings_from_env({}).max_held == HoldSettings().max_held


async def test_a_call_at_zero_waits_until_the_registry_reports_a_ready_replica() -> None:
    cold = entry()
    gate, registry = activator(cold)

    async def call() -> EndpointEntry:
        async with gate.admitted(cold) as admitted:
            return admitted

    task = asyncio.create_task(call())
    await async_wait_until(lambda: _true(gate.loads[("team", "cold")].held == 1), what="the call held")
    assert not task.done()
    warm = replace(cold, ready_replicas=1)
    registry.put(warm)
    admitted = await asyncio.wait_for(task, timeout=10)
    assert admitted is cold  # where the call goes is the caller's choice (a variant's routers); only readiness waited
    load = gate.loads[("team", "cold")]
    assert (load.held, load.in_flight) == (0, 0)


async def test_a_call_held_past_its_deadline_is_504_timeout() -> None:
    cold = entry()
    gate, _ = activator(cold)
    with pytest.raises(Timeout) as raised:
        async with gate.admitted(cold, request_timeout=0.05):
            pytest.fail("a call at zero replicas must not be forwarded")
    assert raised.value.status == 504
    assert "no replica of endpoint cold was ready" in str(raised.value)
    assert gate.loads[("team", "cold")].held == 0


async def test_beyond_the_hold_limit_a_call_is_refused_at_once() -> None:
    cold = entry()
    gate, registry = activator(cold, max_held=2)

    async def call() -> None:
        async with gate.admitted(cold):
            pass

    held = [asyncio.create_task(call()) for _ in range(2)]
    await async_wait_until(lambda: _true(gate.loads[("team", "cold")].held == 2), what="two calls held")
    with pytest.raises(Overloaded):
        async with gate.admitted(cold):
            pytest.fail("the third call must not wait")
    registry.put(replace(cold, ready_replicas=1))
    await asyncio.wait_for(asyncio.gather(*held), timeout=10)


async def test_a_call_whose_endpoint_is_deleted_while_it_waits_is_404() -> None:
    cold = entry()
    gate, registry = activator(cold)

    async def call() -> None:
        async with gate.admitted(cold):
            pytest.fail("a deleted endpoint has no replica")

    task = asyncio.create_task(call())
    await async_wait_until(lambda: _true(gate.loads[("team", "cold")].held == 1), what="the call held")
    registry.remove("team", "cold")
    with pytest.raises(NotFound):
        await asyncio.wait_for(task, timeout=10)


@pytest.mark.parametrize(
    "found",
    [
        entry(min_replicas=1, ready_replicas=0),  # not scaling from zero: the router's 503 as before
        entry(ready_replicas=None),  # replicas not counted (local mode): the router answers for itself
        entry(modes=["async"], ready_replicas=0),  # async-only: the queue holds its tasks
    ],
    ids=["min-one", "uncounted", "async-only"],
)
async def test_other_calls_pass_at_once_without_bookkeeping(found: EndpointEntry) -> None:
    gate, _ = activator(found)
    async with gate.admitted(found, request_timeout=0.01) as admitted:
        assert admitted is found
    if found.endpoint.spec.scales_from_zero:
        assert gate.loads[("team", "cold")].held == 0
    else:
        assert gate.loads == {}


async def test_a_disabled_activator_holds_nothing() -> None:
    cold = entry()
    gate = Activator(Registry([cold]), HoldSettings(enabled=False), redis=None)
    async with gate.admitted(cold, request_timeout=0.01) as admitted:
        assert admitted is cold
    assert gate.loads == {}


async def test_demand_is_reported_while_calls_are_in_flight_and_once_after_the_last() -> None:
    warm = entry(ready_replicas=1)
    gate, _ = activator(warm)
    assert gate.due_reports() == []
    async with gate.admitted(warm):
        [report] = gate.due_reports()
        assert (report.queue, report.held, report.ttl_seconds) == ("team/cold", 0, 45)
        assert len(gate.due_reports()) == 1  # still in flight: refreshed every tick
    assert len(gate.due_reports()) == 1  # the call ended since: once more, so the key lives 45 s from now
    assert gate.due_reports() == []  # idle: nothing, and the endpoint is forgotten
    assert gate.loads == {}


def test_wake_channels_name_their_queue_and_nothing_else() -> None:
    assert keys.queue_of_wake_channel(keys.wake_channel("team/cold")) == "team/cold"
    assert keys.queue_of_wake_channel(keys.done_channel("team/cold")) is None
    assert keys.queue_of_wake_channel("bundleserve:{a/b/c}:wake") is None
    assert keys.queue_of_wake_channel("other:{team/cold}:wake") is None


async def _true(value: bool) -> bool:
    return value


async def test_the_openai_hop_waits_in_the_activator_before_it_sends_anything() -> None:
    """RouterHop (the OpenAI dialect's parsed calls) passes the activator with the call's own timeout: a call held past
    it is the 504, and nothing was sent (the pool is closed and its router address unreachable: any request would
    fail differently)."""
    from bundleserve.api.invocation import Invocation
    from bundleserve.gateway.forwarding import RouterHop
    from bundleserve.gateway.upstream import UpstreamPool

    cold = entry()
    gate, _ = activator(cold)
    pool = UpstreamPool()
    pool.close()
    hop = RouterHop(pool, cold, None, lambda e, t: gate.admitted(e, request_timeout=t))
    call = Invocation(body=b'{"prompt": "hi"}', timeout_seconds=0.05)
    with pytest.raises(Timeout):
        await hop.predict(call)
    with pytest.raises(Timeout):
        async with hop.stream(call):
            pytest.fail("a stream at zero replicas must not start")


async def test_the_gateways_openai_models_hand_calls_to_a_hop_that_passes_the_activator() -> None:
    """The OpenAI dialect's calls at the gateway wait in the same activator as the proxied ones."""
    import aiohttp

    from bundleserve.api.invocation import Invocation
    from bundleserve.gateway.app import Gateway, GatewayConfig
    from bundleserve.gateway.openai_models import GatewayModels

    document = entry().endpoint.model_dump(by_alias=True, exclude_none=True, mode="json")
    document["spec"]["openai"] = {}
    cold = EndpointEntry(
        endpoint=Endpoint.model_validate(document), router_url="http://r", ready=True, ready_replicas=0
    )
    gateway = Gateway(Registry([cold]), GatewayConfig(hold=HoldSettings(poll_seconds=0.01)))
    gateway.session = aiohttp.ClientSession()
    await gateway.session.close()  # nothing may be sent: the call must wait (and time out) first
    target = GatewayModels(gateway).target("cold", None, 10)
    with pytest.raises(Timeout):
        await target.core.predict(Invocation(body=b"{}", timeout_seconds=0.05))
    assert gateway.activator.loads[("team", "cold")].held == 0


async def test_the_dialects_endpoint_calls_pass_the_activator() -> None:
    """SageMaker's and Launch's sync and streaming calls at the gateway (`Gateway.calls`) wait in the activator too."""
    import aiohttp

    from bundleserve.api.endpoint import Mode
    from bundleserve.api.invocation import Invocation
    from bundleserve.gateway.app import Gateway, GatewayConfig

    cold = entry()
    gateway = Gateway(Registry([cold]), GatewayConfig(hold=HoldSettings(poll_seconds=0.01)))
    gateway.session = aiohttp.ClientSession()
    await gateway.session.close()  # nothing may be sent: the call must wait (and time out) first
    calls = gateway.calls("cold")
    calls.gate(None, None, Mode.SYNC)
    with pytest.raises(Timeout):
        await calls.predict(Invocation(body=b"{}", timeout_seconds=0.05))
    with pytest.raises(Timeout):
        async with calls.stream(Invocation(body=b"{}", timeout_seconds=0.05)):
            pytest.fail("a stream at zero replicas must not start")
    assert gateway.activator.loads[("team", "cold")].held == 0
