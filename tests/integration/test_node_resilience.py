"""Resilience scenarios of issue 16 on the real node, against the product the chart installed (tests/support/node_product.py,
once per session): a model container killed with SIGKILL under async load, and the router's memory cgroup under the
hardening review's large-body cases (tests/integration/test_router_memory.py runs the same cases on loopback).

How the node is reached: pods by their IPs from the host (routes of tests/support/node.py); a container's process
through the node's containerd (`Node.ctr` reports PIDs of the node's PID namespace, where `Node.run_in_node` runs
`kill`); its cgroup in the kubelet's tree under the node's cgroup root on this machine (cgroup v1 here; the v2 file
names are read too). Figures are printed for docs/operations.md ("Scenarios on the real node"), never asserted; the
outcomes are asserted.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis

from bundleserve.api.manifest import parse_endpoint
from bundleserve.controller.builders.deployment import router_memory_limit
from tests.integration.test_node_scenarios import CONCURRENCY, MAX_REQUESTS, SyncLoad
from tests.support.node import Node
from tests.support.node_product import (
    GROUP_VERSION,
    MODELS,
    Product,
    deployment_ready,
    endpoint_ready,
    example,
    wait_for,
)
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(1200)

ENDPOINT_LABEL = "bundleserve.dev/endpoint"
MIB = 1024 * 1024
CGROUPS = Path("/sys/fs/cgroup")


@pytest.fixture(autouse=True)
def delete_what_the_test_applied(product: Product) -> Iterator[None]:
    """The session's node is shared (2 CPUs of requests): whatever the test left, pass or fail, goes."""
    plane = product.node.plane
    before = {item["metadata"]["name"] for item in plane.items(GROUP_VERSION, "Endpoint", MODELS)}
    yield
    for item in plane.items(GROUP_VERSION, "Endpoint", MODELS):
        if item["metadata"]["name"] not in before:
            _delete_endpoint(product, item["metadata"]["name"])


def _small(doc: dict[str, Any], memory: str = "256Mi") -> dict[str, Any]:
    """A small CPU request for the model (the router asks 100m of its own): the node's 2 CPUs are shared."""
    doc["spec"]["resources"] = {"cpu": "50m", "memory": memory}
    return doc


# -- the node's view of a pod ---------------------------------------------------------------------------------------


def _only_pod(node: Node, endpoint: str) -> dict[str, Any]:
    pods = node.plane.items("v1", "Pod", MODELS, selector=f"{ENDPOINT_LABEL}={endpoint}")
    assert len(pods) == 1, [pod["metadata"]["name"] for pod in pods]
    return pods[0]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    status: dict[str, Any] = next(c for c in pod["status"]["containerStatuses"] if c["name"] == name)
    return status


def _container_id(pod: dict[str, Any], name: str) -> str:
    return str(_container(pod, name)["containerID"]).removeprefix("containerd://")


def _container_pid(node: Node, container_id: str) -> int:
    """The container's init process as the node's containerd sees it (a PID of the node's PID namespace)."""
    listed = node.ctr("tasks", "ls")
    for line in listed.stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"no task {container_id} in the node's containerd:\n{listed.stdout}{listed.stderr}")


def _memory_cgroup(node: Node, container_id: str) -> Path:
    """The container's memory cgroup: the kubelet (cgroupfs driver) nests it under the node's cgroup root and names
    the leaf after the container ID."""
    for tree in (CGROUPS / "memory" / node.net.cgroup_name, CGROUPS / node.net.cgroup_name):
        if tree.is_dir():
            found = next(tree.glob(f"**/{container_id}"), None)
            if found is not None:
                return found
    raise AssertionError(f"no memory cgroup of container {container_id} under {node.net.cgroup_name}")


def _memory_use(cgroup: Path) -> dict[str, int]:
    """limit, peak (the high-water mark of the cgroup's charge, page cache included), limit_hits (how often the
    charge met the limit and the kernel had to reclaim) and oom_kills, from the v1 or the v2 files."""
    if (cgroup / "memory.limit_in_bytes").exists():
        oom = dict(line.split() for line in (cgroup / "memory.oom_control").read_text().splitlines())
        return {
            "limit": int((cgroup / "memory.limit_in_bytes").read_text()),
            "peak": int((cgroup / "memory.max_usage_in_bytes").read_text()),
            "limit_hits": int((cgroup / "memory.failcnt").read_text()),
            "oom_kills": int(oom.get("oom_kill", 0)),
        }
    events = dict(line.split() for line in (cgroup / "memory.events").read_text().splitlines())
    return {
        "limit": int((cgroup / "memory.max").read_text()),
        "peak": int((cgroup / "memory.peak").read_text()),
        "limit_hits": int(events["max"]),
        "oom_kills": int(events["oom_kill"]),
    }


def _reset_peak(cgroup: Path) -> None:
    """Start a new high-water mark (cgroup v1; v2's memory.peak is not reset here, so its figures are cumulative)."""
    if (cgroup / "memory.max_usage_in_bytes").exists():
        (cgroup / "memory.max_usage_in_bytes").write_text("0")


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


def _router_url(pod: dict[str, Any]) -> str:
    router = next(c for c in pod["spec"]["containers"] if c["name"] == "router")
    return f"http://{pod['status']['podIP']}:{router['ports'][0]['containerPort']}"


def _router_metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def _router_key(node: Node, endpoint: str) -> str:
    """A key the endpoint's own router accepts: the first line of its credentials Secret's keys file (its gateway key;
    the product's cluster-wide key opens routers only through the gateway)."""
    secret = node.plane.get("v1", "Secret", MODELS, f"{endpoint}-bundleserve-credentials") or {}
    keys = base64.b64decode(secret["data"]["api-keys"]).decode()
    return keys.split()[0]


def _apply_and_wait(product: Product, doc: dict[str, Any]) -> dict[str, Any]:
    node, name = product.node, doc["metadata"]["name"]
    node.plane.apply(doc)
    wait_for(node, f"{name} Ready", lambda: endpoint_ready(node, MODELS, name), MODELS)
    wait_for(node, f"{name} pod ready", lambda: deployment_ready(node, MODELS, name), MODELS)
    return _only_pod(node, name)


def _delete_endpoint(product: Product, name: str) -> None:
    """Delete it if it exists, and wait until it and its pods are gone (their CPU is free again)."""
    plane = product.node.plane
    if plane.get(GROUP_VERSION, "Endpoint", MODELS, name) is not None:
        plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", MODELS, name))
    wait_until(
        lambda: (
            plane.get(GROUP_VERSION, "Endpoint", MODELS, name) is None
            and not plane.items("v1", "Pod", MODELS, selector=f"{ENDPOINT_LABEL}={name}")
        ),
        timeout=180,
        interval=0.5,
        what=f"{name} and its pods deleted",
    )


# -- a crashed model container --------------------------------------------------------------------------------------


def test_a_model_container_killed_with_sigkill_restarts_and_every_accepted_task_finishes_once(
    product: Product,
) -> None:
    """examples/slow-job (async, maxAttempts 2) at one replica: 12 tasks of 3 s are submitted through the gateway, the
    model process is SIGKILLed from the node while the model runs several of them, 12 more are submitted while it is
    down. Every task finishes SUCCESS with its own arguments, and the router brought exactly 24 tasks to a terminal
    state (one each: none lost, none finished twice); the model container restarted, the router did not."""
    node, name = product.node, "crashing-job"
    doc = _small(example("slow-job", scaling={"minReplicas": 1, "maxReplicas": 1}))
    doc["metadata"]["name"] = name
    pod = _apply_and_wait(product, doc)
    router = _router_url(pod)
    model_id = _container_id(pod, "model")
    tasks: dict[str, str] = {}
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=30) as http:

        def submit(label: str) -> None:
            body = {"args": {"seconds": 3, "steps": 3, "label": label}}
            accepted = http.post(f"/v1/endpoints/{name}/async", json=body)
            assert accepted.status_code == 202, accepted.text
            tasks[accepted.json()["task_id"]] = label

        for n in range(12):
            submit(f"before-{n}")
        in_model = wait_until(
            lambda: (count := _metric(_router_metrics(router), "bundleserve_router_in_flight_requests")) >= 4 and count,
            timeout=120,
            interval=0.1,
            what="the model running tasks",
        )
        pid = _container_pid(node, model_id)
        killed = node.run_in_node("kill", "-KILL", str(pid))
        assert killed.returncode == 0, killed.stderr
        killed_at = time.monotonic()
        for n in range(12):
            submit(f"during-{n}")
        results: dict[str, dict[str, Any]] = {}

        def all_finished() -> bool:
            for task_id in tasks.keys() - results.keys():
                task = http.get(f"/v1/tasks/{task_id}").json()
                if task.get("status") in {"SUCCESS", "FAILURE", "EXPIRED"}:
                    results[task_id] = task
            return len(results) == len(tasks)

        wait_for(node, "24 tasks finished", all_finished, MODELS, timeout=300)
        finished_in = time.monotonic() - killed_at
    failed = [task for task in results.values() if task["status"] != "SUCCESS"]
    assert not failed, [{k: v for k, v in task.items() if v is not None} for task in failed[:3]]
    assert {task_id: task["result"]["label"] for task_id, task in results.items()} == tasks
    terminal = _metric(_router_metrics(router), "bundleserve_async_tasks_total")
    assert terminal == len(tasks), f"the router finished {terminal} tasks for {len(tasks)} submitted"
    pod = _only_pod(node, name)
    model, router_status = _container(pod, "model"), _container(pod, "router")
    assert model["restartCount"] >= 1, model
    assert model["lastState"]["terminated"]["exitCode"] == 137, model  # 128 + SIGKILL
    assert router_status["restartCount"] == 0, router_status
    client = redis.Redis(port=product.redis.port)
    try:
        attempts = {
            task_id: int(client.hget(f"bundleserve:{{{MODELS}/{name}}}:task:{task_id}", "attempts") or 0)
            for task_id in tasks
        }
    finally:
        client.close()
    again = sorted(label for task_id, label in tasks.items() if attempts[task_id] > 1)
    print(
        f"\nmodel container SIGKILLed with {in_model:.0f} tasks in the model: all {len(tasks)} tasks SUCCESS "
        f"{finished_in:.1f}s after the kill, {terminal:.0f} terminal states at the router, model restarts "
        f"{model['restartCount']} (exit 137), router restarts 0; run again (attempt 2): {len(again)} {again}"
    )
    _delete_endpoint(product, name)


# -- the router's memory cgroup -------------------------------------------------------------------------------------


def _body(size: int, **args: Any) -> bytes:
    """A JSON body of `size` bytes: the args plus one padding string (`label`: slow_job's free-text argument)."""
    head = json.dumps({"args": {**args, "label": ""}}).encode()
    return head[:-3] + b"a" * (size - len(head)) + head[-3:]


async def _post(url: str, key: str, endpoint: str, body: bytes) -> int:
    data = io.BytesIO(body)  # streamed: raw bytes this large would block aiohttp's loop
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(f"{url}/v1/endpoints/{endpoint}/predict", data=data, headers=headers) as response,
    ):
        await response.read()
        return response.status


def _memory_endpoint(name: str, **invocation: Any) -> dict[str, Any]:
    """slow_job in sync mode (it holds a call for `seconds`, and its `label` carries the padding), one replica, the
    model's own limit large enough for a 150 MiB argument."""
    doc = example("slow-job", modes=["sync"], scaling={"minReplicas": 1, "maxReplicas": 1})
    doc["metadata"]["name"] = name
    _small(doc, memory="1536Mi")
    doc["spec"].pop("async", None)
    doc["spec"]["invocation"] = {"timeoutSeconds": 120, **invocation}
    return doc


def _note(figures: list[str], case: str, use: dict[str, int]) -> None:
    figures.append(_figure(case, use))
    print(f"\n{figures[-1]}")


def _figure(case: str, use: dict[str, int]) -> str:
    return (
        f"{case}: peak {use['peak'] / MIB:.0f} MiB of {use['limit'] / MIB:.0f} MiB, limit met {use['limit_hits']} "
        f"times, OOM kills {use['oom_kills']}"
    )


def _check_router_alive(node: Node, name: str, figures: list[str]) -> None:
    router = _container(_only_pod(node, name), "router")
    assert router["restartCount"] == 0 and "terminated" not in router.get("lastState", {}), (router, figures)


async def test_the_router_stays_inside_its_memory_cgroup_for_the_large_body_cases(product: Product) -> None:
    """The three cases of test_router_memory.py against a router in a pod whose memory limit is the Deployment
    builder's `router_memory_limit`, enforced by the kernel: the cgroup's limit equals it, no OOM kill, no restart,
    and the router still answers after each case."""
    node = product.node
    figures: list[str] = []

    # 1. one 150 MiB body (maxPayloadBytes 160 MiB, concurrency 1, no waiting line)
    doc = _memory_endpoint("big-body", maxPayloadBytes=160 * MIB, concurrency=1, maxQueued=0)
    pod = _apply_and_wait(product, doc)
    router, key = _router_url(pod), _router_key(node, "big-body")
    cgroup = _memory_cgroup(node, _container_id(pod, "router"))
    expected = router_memory_limit(parse_endpoint(doc))
    assert _memory_use(cgroup)["limit"] == -(-expected // MIB) * MIB  # the builder's limit, in whole MiB
    _reset_peak(cgroup)
    assert await _post(router, key, "big-body", _body(150 * MIB, seconds=0, steps=1)) == 200
    _note(figures, "one 150 MiB body", _memory_use(cgroup))
    assert await _post(router, key, "big-body", _body(1024, seconds=0, steps=1)) == 200
    _check_router_alive(node, "big-body", figures)
    assert _memory_use(cgroup)["oom_kills"] == 0, figures
    _delete_endpoint(product, "big-body")

    # 2. sixty 6 MiB bodies while the model holds 8 (the defaults: 6 MiB, concurrency 8, maxQueued 80)
    doc = _memory_endpoint("many-bodies")
    pod = _apply_and_wait(product, doc)
    router, key = _router_url(pod), _router_key(node, "many-bodies")
    cgroup = _memory_cgroup(node, _container_id(pod, "router"))
    expected = router_memory_limit(parse_endpoint(doc))
    assert _memory_use(cgroup)["limit"] == -(-expected // MIB) * MIB
    _reset_peak(cgroup)
    # The first 8 hold the model for 30 s; the other 52 (sent once those are in) wait in the router's line.
    held = [
        asyncio.ensure_future(_post(router, key, "many-bodies", _body(6 * MIB - 4096, seconds=30, steps=1)))
        for _ in range(8)
    ]

    async def in_model(count: float) -> bool:
        text = await asyncio.to_thread(_router_metrics, router)
        return _metric(text, "bundleserve_router_in_flight_requests") == count

    await async_wait_until(lambda: in_model(8), timeout=120, interval=0.2, what="8 calls in the model")
    calls = held + [
        asyncio.ensure_future(_post(router, key, "many-bodies", _body(6 * MIB - 4096, seconds=0, steps=1)))
        for _ in range(52)
    ]

    async def queued(count: float) -> bool:
        text = await asyncio.to_thread(_router_metrics, router)
        return _metric(text, "bundleserve_router_queued_requests") == count and (
            _metric(text, "bundleserve_router_in_flight_requests") == 8
        )

    await async_wait_until(lambda: queued(52), timeout=180, interval=0.2, what="8 calls in the model, 52 queued")
    assert await asyncio.gather(*calls) == [200] * 60
    _note(figures, "60 concurrent 6 MiB bodies, 8 in the model and 52 queued", _memory_use(cgroup))
    _check_router_alive(node, "many-bodies", figures)

    # 3. forty uploads of 6 MiB stalled before their last byte (same router)
    _reset_peak(cgroup)
    body = _body(6 * MIB - 4096, seconds=0, steps=1)
    host, port = router.removeprefix("http://").split(":")
    head = (
        f"POST /v1/endpoints/many-bodies/predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sockets: list[socket.socket] = []
    try:
        for _ in range(40):
            sock = socket.create_connection((host, int(port)), timeout=60)
            sock.sendall(head + body[:-1])  # everything but the last byte: the upload stalls
            sockets.append(sock)
        # Everything sent was taken by the router's side: our send queues are empty (the router read it, or its
        # kernel holds it; either is charged to the pod, the socket buffers to its cgroup).
        await async_wait_until(
            lambda: asyncio.to_thread(lambda: all(_unsent(sock) == 0 for sock in sockets)),
            timeout=120,
            interval=0.2,
            what="the stalled uploads delivered",
        )
        _note(figures, "40 uploads of 6 MiB stalled before their last byte", _memory_use(cgroup))
        assert await _post(router, key, "many-bodies", _body(1024, seconds=0, steps=1)) == 200  # still serving
    finally:
        for sock in sockets:
            sock.close()
    _check_router_alive(node, "many-bodies", figures)
    assert _memory_use(cgroup)["oom_kills"] == 0, figures
    _delete_endpoint(product, "many-bodies")
    print("\nthe router's memory cgroup on the node: " + "; ".join(figures))


def _unsent(sock: socket.socket) -> int:
    """Bytes still in this socket's send queue (SIOCOUTQ)."""
    import fcntl
    import struct
    import termios

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])


# -- a rolling update straight to the Endpoint's Service ------------------------------------------------------------


@dataclass
class ServiceLoad(SyncLoad):
    """SyncLoad sent to the Endpoint's own Service (kube-proxy picks a pod per connection) with the Endpoint's key,
    not through the gateway: no retry of the gateway's hides a call a stopping pod refused or dropped."""

    service: str = ""
    key: str = ""

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.service, headers=headers, timeout=60, limits=limits) as http:
            await asyncio.gather(*(self._worker(http, worker) for worker in range(CONCURRENCY)))


def test_a_rolling_update_under_load_straight_to_the_service_fails_no_request(product: Product) -> None:
    """The router's shutdown delay at work: during a rollout a stopping pod keeps answering, unready, while the
    EndpointSlices and kube-proxy catch up, and its answers close their connections. Before it, a call that reached
    a pod after its SIGTERM got 503 and only the gateway's retry hid it."""
    node, plane, name = product.node, product.node.plane, "echo-direct"
    doc = _small(example("echo", scaling={"minReplicas": 2, "maxReplicas": 2}))
    doc["metadata"]["name"] = name
    plane.apply(doc)
    wait_for(node, f"{name} Ready", lambda: endpoint_ready(node, MODELS, name), MODELS)
    wait_for(node, f"{name} 2 replicas", lambda: deployment_ready(node, MODELS, name), MODELS)
    service = plane.get("v1", "Service", MODELS, name) or {}
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    pods = plane.items("v1", "Pod", MODELS, selector=f"{ENDPOINT_LABEL}={name}")
    before = {pod["metadata"]["name"] for pod in pods}
    load = ServiceLoad(product, name, service=url, key=_router_key(node, name)).start()
    try:
        load.wait_for_more(40)
        started = time.monotonic()
        doc["spec"]["bundle"]["env"] = [{"name": "ROLLED", "value": str(time.time())}]
        plane.apply(doc)

        def rolled() -> bool:
            found = plane.items("v1", "Pod", MODELS, selector=f"{ENDPOINT_LABEL}={name}")
            names = {pod["metadata"]["name"] for pod in found}
            ready = all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
                for pod in found
            )
            return not names & before and len(found) == 2 and ready

        wait_for(node, "the Deployment rolled and the old pods gone", rolled, MODELS)
        rolled_in = time.monotonic() - started
        load.wait_for_more(40)
    finally:
        load.stop()
    print(
        f"\nrolling update under load, straight to the Service: {load.figure()}; done {rolled_in:.1f}s after the change"
    )
    assert load.done < MAX_REQUESTS, "the load stopped at its bound before the rollout ended"
    assert load.failures == [], load.failures[:10]
    _delete_endpoint(product, name)
