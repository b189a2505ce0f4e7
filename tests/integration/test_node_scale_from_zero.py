"""Scale from zero for sync and streaming traffic (issue 20, item 3) on the real node, against the product the chart
installed (tests/support/node_product.py): examples/echo at `minReplicas: 0` serving sync and streaming.

- its first sync call at zero replicas is held by the gateway's activator, which wakes the operator's demand gate
  through Redis; the call is answered once a replica is ready (figure: the cold-start latency);
- it returns to zero replicas and no pod after `scaleToZeroAfterSeconds` without calls;
- a burst of 20 concurrent calls at zero (15 sync, 5 streaming) all succeed with their own arguments.

Figures (latencies, how long things took) are printed for docs/operations.md ("Scale from zero on the real node"),
never asserted; what is asserted is the outcome (each call answered 200 with what it sent; zero replicas and no pod
when idle). Run: `.venv/bin/pytest tests/integration/test_node_scale_from_zero.py -s -q`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import statistics
import time
from typing import Any

import httpx
import pytest

from tests.support.node_product import GROUP_VERSION, MODELS, SYSTEM, Product, endpoint_ready, example, wait_for

pytestmark = pytest.mark.timeout(1200)

ENDPOINT_LABEL = "bundleserve.dev/endpoint"
NAME = "echo-cold"
IDLE_SECONDS = 15
SCALING = {"minReplicas": 0, "maxReplicas": 2, "targetConcurrency": 8, "scaleToZeroAfterSeconds": IDLE_SECONDS}


def _replicas(product: Product) -> int:
    found = product.node.plane.get("apps/v1", "Deployment", MODELS, NAME) or {}
    return int(found.get("spec", {}).get("replicas", -1))


def _pods(product: Product) -> list[dict[str, Any]]:
    return product.node.plane.items("v1", "Pod", MODELS, selector=f"{ENDPOINT_LABEL}={NAME}")


def _at_zero(product: Product) -> bool:
    return _replicas(product) == 0 and not _pods(product)


def _since(product: Product, started: float) -> str:
    """Where a cold start went, for the figure (printed, never asserted): seconds from the call (wall clock) to the
    operator's scale-up (its log line's timestamp) and to the pod's Ready condition (1 s resolution)."""
    plane = product.node.plane
    try:
        selector = "app.kubernetes.io/component=operator"
        [operator] = plane.items("v1", "Pod", SYSTEM, selector=selector)
        log = plane.request("GET", f"/api/v1/namespaces/{SYSTEM}/pods/{operator['metadata']['name']}/log")
        woken = [
            json.loads(line[line.index("{") :])
            for line in str(log).splitlines()
            if f"scaled {MODELS}/{NAME} from 0" in line and "woken" in line and line.rstrip().endswith("}")
        ]
        scaled = datetime.datetime.fromisoformat(woken[-1]["timestamp"]).timestamp() - started
        [pod] = _pods(product)
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
        ready_at = datetime.datetime.fromisoformat(ready.replace("Z", "+00:00")).timestamp() - started
    except Exception as error:  # a figure only: its absence must not fail the scenario
        return f"(breakdown unavailable: {type(error).__name__})"
    return f"(operator scaled it up after {scaled:.2f} s, pod Ready after about {ready_at:.0f} s)"


def _words(stream_body: str) -> list[Any]:
    """The results of the SUCCESS events of a native stream."""
    events = [json.loads(line[len("data:") :]) for line in stream_body.splitlines() if line.startswith("data:")]
    return [event["result"] for event in events if event.get("status") == "SUCCESS"]


async def _call(http: httpx.AsyncClient, n: int) -> tuple[bool, str, float]:
    """Call n: sync for n % 4 != 3, streaming otherwise; ok when it answered 200 with what it sent."""
    started = time.monotonic()
    try:
        if n % 4 == 3:
            reply = await http.post(f"/v1/endpoints/{NAME}/stream", json={"args": {"text": f"burst {n}"}})
            ok = reply.status_code == 200 and _words(reply.text) == ["burst", str(n)]
        else:
            reply = await http.post(f"/v1/endpoints/{NAME}/predict", json={"args": {"n": n}})
            ok = reply.status_code == 200 and reply.json().get("result") == {"n": n}
        detail = f"{reply.status_code} {reply.text[:300]}"
    except httpx.HTTPError as error:
        ok, detail = False, f"{type(error).__name__}: {error}"
    return ok, detail, time.monotonic() - started


async def _burst(product: Product, count: int) -> list[tuple[bool, str, float]]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=product.gateway, headers=product.headers, timeout=180, limits=limits) as http:
        return await asyncio.gather(*(_call(http, n) for n in range(count)))


def test_a_sync_endpoint_at_zero_answers_its_first_call_returns_to_zero_and_takes_a_burst_of_20(
    product: Product,
) -> None:
    try:
        _scenario(product)
    finally:  # the session's product is shared with other modules
        plane = product.node.plane
        plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", MODELS, NAME))


def _scenario(product: Product) -> None:
    node = product.node
    doc = example("echo", modes=["sync", "streaming"], scaling=SCALING, invocation={"timeoutSeconds": 180})
    doc["metadata"]["name"] = NAME
    doc["spec"].pop("async", None)  # sync and streaming only
    node.plane.apply(doc)
    wait_for(node, f"{NAME} Ready at zero replicas", lambda: endpoint_ready(node, MODELS, NAME), MODELS)
    wait_for(node, f"{NAME} at 0 replicas and no pod", lambda: _at_zero(product), MODELS)
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=180) as http:
        wait_for(node, "the gateway knows the endpoint", lambda: http.get(f"/v1/endpoints/{NAME}").status_code == 200,
                 MODELS)  # fmt: skip

        # 1. The first sync call at zero replicas.
        started, wall = time.monotonic(), time.time()
        first = http.post(f"/v1/endpoints/{NAME}/predict", json={"args": {"first": True}})
        cold = time.monotonic() - started
        breakdown = _since(product, wall)
        assert first.status_code == 200, first.text
        assert first.json()["result"] == {"first": True}
        assert _replicas(product) >= 1
        warm_latencies = []
        for n in range(5):
            started = time.monotonic()
            warm = http.post(f"/v1/endpoints/{NAME}/predict", json={"args": {"warm": n}})
            warm_latencies.append(time.monotonic() - started)
            assert warm.status_code == 200 and warm.json()["result"] == {"warm": n}, warm.text

    # 2. Back to zero when idle.
    idle_at = time.monotonic()
    wait_for(node, f"{NAME} back to 0 replicas and no pod", lambda: _at_zero(product), MODELS, timeout=300)
    back_to_zero = time.monotonic() - idle_at

    # 3. A burst of 20 concurrent calls at zero (the registry must have seen the zero first: it holds only then).
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=30) as http:
        wait_for(node, "Ready at zero again", lambda: endpoint_ready(node, MODELS, NAME), MODELS)
    started = time.monotonic()
    results = asyncio.run(_burst(product, 20))
    burst_took = time.monotonic() - started
    failures = [detail for ok, detail, _ in results if not ok]
    latencies = sorted(elapsed for _, _, elapsed in results)
    print(
        f"\nscale from zero ({NAME}, examples/echo, cpu 200m): first sync call at 0 replicas answered in {cold:.1f} s "
        f"{breakdown}; "
        f"warm calls p50 {statistics.median(warm_latencies) * 1000:.0f} ms; back to 0 replicas and no pod "
        f"{back_to_zero:.1f} s after the last call (scaleToZeroAfterSeconds {IDLE_SECONDS}); burst of 20 at 0 "
        f"replicas (15 sync, 5 streaming): {20 - len(failures)} succeeded, all done in {burst_took:.1f} s, latency "
        f"min {latencies[0]:.1f} s, p50 {statistics.median(latencies):.1f} s, max {latencies[-1]:.1f} s"
    )
    assert failures == [], failures[:5]
