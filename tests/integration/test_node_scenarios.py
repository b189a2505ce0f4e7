"""Scenarios of issue 16 on the real node, against the product the chart installed (tests/support/node_product.py,
installed once per session): the unmodified boto3 and scale-launch clients through the gateway's Service, one of two
replicas deleted under load, a rolling update under load, 50 async tasks at minReplicas 0, and the operator pod
killed mid-reconcile.

Load is `SyncLoad`: a bounded loop of sync calls through the gateway's ClusterIP at concurrency 8 on the host, paced
(each worker at most `PER_WORKER_RATE` calls a second) so a disruption of a few tens of seconds costs a few hundred
requests, not thousands; the pacing is a rate limit, never a synchronisation. Figures (counts, p50/p99 latency, how
long things took) are printed for docs/operations.md, never asserted; what is asserted is the outcome (no failed
request, every task finished, no duplicate child).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest

from tests.support.node_product import (
    GROUP_VERSION,
    MODELS,
    RELEASE,
    SAGEMAKER_KEY,
    SAGEMAKER_REGION,
    SYSTEM,
    Product,
    deployment_ready,
    endpoint_ready,
    example,
    wait_for,
)
from tests.support.processes import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(1200)

ENDPOINT_LABEL = "bundleserve.dev/endpoint"
LAUNCH_PYTHON = REPO / ".venv-launch" / "bin" / "python"
LAUNCH_DRIVER = REPO / "tests" / "launch_client" / "driver.py"
CONCURRENCY = 8
PER_WORKER_RATE = 5.0  # calls a second per worker: 40/s in all
MAX_REQUESTS = 3000  # the loop's hard bound, whatever happens


@dataclass
class SyncLoad:
    """CONCURRENCY workers calling `predict` of one endpoint through the gateway until `stop()` (or MAX_REQUESTS).

    A call fails unless it answers 200 with the arguments it sent (echo); failures keep status and text."""

    product: Product
    endpoint: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def done(self) -> int:
        return len(self.latencies) + len(self.failures)

    def start(self) -> SyncLoad:
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            base_url=self.product.gateway, headers=self.product.headers, timeout=60, limits=limits
        ) as http:
            await asyncio.gather(*(self._worker(http, worker) for worker in range(CONCURRENCY)))

    async def _worker(self, http: httpx.AsyncClient, worker: int) -> None:
        sequence = 0
        while not self._stop.is_set() and self.done < MAX_REQUESTS:
            sequence += 1
            sent = {"worker": worker, "n": sequence}
            started = time.monotonic()
            try:
                answer = await http.post(f"/v1/endpoints/{self.endpoint}/predict", json={"args": sent})
                ok = answer.status_code == 200 and answer.json().get("result") == sent
                detail = f"{answer.status_code} {answer.text[:300]}"
            except httpx.HTTPError as error:
                ok, detail = False, f"{type(error).__name__}: {error}"
            elapsed = time.monotonic() - started
            (self.latencies.append(elapsed) if ok else self.failures.append(detail))
            await asyncio.sleep(max(0.0, 1 / PER_WORKER_RATE - elapsed))  # the rate limit

    def wait_for_more(self, count: int, timeout: float = 120) -> None:
        target = self.done + count
        wait_until(lambda: self.done >= target or self.failures, timeout=timeout, what=f"{count} more calls")

    def figure(self) -> str:
        ordered = sorted(self.latencies) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{self.done} requests, {len(self.failures)} failed, p50 {statistics.median(ordered) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
        )


@pytest.fixture(scope="module", autouse=True)
def delete_the_modules_endpoints(product: Product) -> Iterator[None]:
    """When the module ends, its Endpoints go: the session's node has 2 CPUs of requests, and the node modules after
    this one (test_operator_node.py, ...) need their share (their pods stayed Pending behind these)."""
    plane = product.node.plane
    before = {item["metadata"]["name"] for item in plane.items(GROUP_VERSION, "Endpoint", MODELS)}
    yield
    left = [item["metadata"]["name"] for item in plane.items(GROUP_VERSION, "Endpoint", MODELS)]
    for name in left:
        if name not in before:
            plane.request("DELETE", plane.path(GROUP_VERSION, "Endpoint", MODELS, name))
    wait_until(
        lambda: not [pod for pod in plane.items("v1", "Pod", MODELS)
                     if pod["metadata"].get("labels", {}).get(ENDPOINT_LABEL) not in before],
        timeout=180,
        interval=0.5,
        what="the module's Endpoints and pods deleted",
    )  # fmt: skip


def _pods(product: Product, endpoint: str) -> list[dict[str, Any]]:
    return product.node.plane.items("v1", "Pod", MODELS, selector=f"{ENDPOINT_LABEL}={endpoint}")


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _delete(product: Product, api_version: str, kind: str, namespace: str, name: str, grace: int | None) -> None:
    plane = product.node.plane
    query = f"?gracePeriodSeconds={grace}" if grace is not None else ""
    plane.request("DELETE", plane.path(api_version, kind, namespace, name) + query)


def _serving_pair(product: Product, name: str) -> None:
    """echo as `name`, sync only, two replicas, Ready, both pods Ready."""
    product.node.plane.apply(_named(name, scaling={"minReplicas": 2, "maxReplicas": 2}))
    wait_for(product.node, f"{name} Ready", lambda: endpoint_ready(product.node, MODELS, name), MODELS)
    wait_for(product.node, f"{name} 2 replicas", lambda: deployment_ready(product.node, MODELS, name), MODELS)


def _named(name: str, **spec: Any) -> dict[str, Any]:
    doc = example("echo", **spec)
    doc["metadata"]["name"] = name
    return doc


def test_unmodified_boto3_and_scale_launch_through_the_gateway_service(product: Product) -> None:
    product.node.plane.apply(example("echo"))
    wait_for(product.node, "echo Ready", lambda: endpoint_ready(product.node, MODELS, "echo"), MODELS)

    def runtime(secret: str) -> Any:
        return boto3.client(
            "sagemaker-runtime",
            endpoint_url=product.gateway,
            region_name=SAGEMAKER_REGION,
            aws_access_key_id=SAGEMAKER_KEY[0],
            aws_secret_access_key=secret,
            config=botocore.config.Config(retries={"max_attempts": 1}),
        )

    reply = runtime(SAGEMAKER_KEY[1]).invoke_endpoint(
        EndpointName="echo", Body=json.dumps({"text": "boto3 on the node"}), ContentType="application/json"
    )
    assert json.loads(reply["Body"].read()) == {"text": "boto3 on the node"}
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        runtime("not-the-secret").invoke_endpoint(EndpointName="echo", Body=b"{}", ContentType="application/json")
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException", refused.value.response

    if not LAUNCH_PYTHON.exists():
        subprocess.run(["make", "--no-print-directory", ".venv-launch/.installed"], cwd=REPO, check=True)

    def launch(op: str, **command: Any) -> dict[str, Any]:
        document = {"op": op, "endpoint": f"{product.gateway}/v1/hosted_inference", "api_key": product.api_key,
                    "name": "echo", **command}  # fmt: skip
        done = subprocess.run(
            [str(LAUNCH_PYTHON), str(LAUNCH_DRIVER)], input=json.dumps(document), capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    described = launch("get_endpoint")
    assert described["endpoint"] == "SyncEndpoint", described
    answer = launch("predict", args={"text": "launch on the node"}, return_pickled=False)
    assert answer["status"] == "SUCCESS", answer
    assert json.loads(answer["result"]) == {"text": "launch on the node"}
    queued = launch("async_request", args={"text": "launch async on the node"}, return_pickled=False)
    assert queued["status"] == "SUCCESS", queued
    assert json.loads(queued["result"]) == {"text": "launch async on the node"}


def test_deleting_one_of_two_replicas_under_load_fails_no_request(product: Product) -> None:
    name = "echo-pair"
    _serving_pair(product, name)
    victim = _pods(product, name)[0]["metadata"]["name"]
    load = SyncLoad(product, name).start()
    try:
        load.wait_for_more(40)
        deleted_at = time.monotonic()
        _delete(product, "v1", "Pod", MODELS, victim, grace=None)

        def replaced() -> bool:
            pods = _pods(product, name)
            names = {pod["metadata"]["name"] for pod in pods}
            return victim not in names and len(pods) == 2 and all(_pod_ready(pod) for pod in pods)

        wait_for(product.node, "the deleted pod replaced", replaced, MODELS)
        replaced_in = time.monotonic() - deleted_at
        load.wait_for_more(40)
    finally:
        load.stop()
    print(f"\ndelete 1 of 2 replicas under load: {load.figure()}; replacement Ready {replaced_in:.1f}s after delete")
    assert load.done < MAX_REQUESTS, "the load stopped at its bound before the disruption ended"
    assert load.failures == [], load.failures[:10]


def test_a_rolling_update_under_load_fails_no_request(product: Product) -> None:
    name = "echo-pair"
    _serving_pair(product, name)
    plane = product.node.plane
    before = {pod["metadata"]["name"] for pod in _pods(product, name)}
    load = SyncLoad(product, name).start()
    try:
        load.wait_for_more(40)
        started = time.monotonic()
        doc = _named(name, scaling={"minReplicas": 2, "maxReplicas": 2})
        doc["spec"]["bundle"]["env"] = [{"name": "ROLLED", "value": str(time.time())}]
        plane.apply(doc)

        def rolled() -> bool:
            pods = _pods(product, name)
            names = {pod["metadata"]["name"] for pod in pods}
            return not names & before and len(pods) == 2 and all(_pod_ready(pod) for pod in pods)

        wait_for(product.node, "the Deployment rolled", rolled, MODELS)
        rolled_in = time.monotonic() - started
        load.wait_for_more(40)
    finally:
        load.stop()
    print(f"\nrolling update under load: {load.figure()}; rollout done {rolled_in:.1f}s after the spec change")
    assert load.done < MAX_REQUESTS, "the load stopped at its bound before the rollout ended"
    assert load.failures == [], load.failures[:10]


def test_fifty_async_tasks_at_min_replicas_zero_scale_up_finish_and_return_to_zero(product: Product) -> None:
    name = "echo-burst"
    plane = product.node.plane
    scaling = {"minReplicas": 0, "maxReplicas": 2, "targetConcurrency": 10, "scaleDownDelaySeconds": 5}
    plane.apply(_named(name, modes=["async"], scaling=scaling))

    def replicas() -> int:
        found = plane.get("apps/v1", "Deployment", MODELS, name) or {}
        return int(found.get("spec", {}).get("replicas", -1))

    wait_for(product.node, f"{name} at 0 replicas", lambda: replicas() == 0, MODELS)
    seen: set[int] = set()
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=30) as http:
        started = time.monotonic()
        ids = []
        for n in range(50):
            accepted = http.post(f"/v1/endpoints/{name}/async", json={"args": {"n": n}})
            assert accepted.status_code == 202, accepted.text
            ids.append(accepted.json()["task_id"])
        results: dict[str, Any] = {}

        def all_finished() -> bool:
            seen.add(replicas())
            for task_id in ids:
                if task_id not in results:
                    task = http.get(f"/v1/tasks/{task_id}").json()
                    if task.get("status") in {"SUCCESS", "FAILURE"}:
                        results[task_id] = task
            return len(results) == len(ids)

        wait_for(product.node, "50 tasks finished", all_finished, MODELS, timeout=400)
        finished_in = time.monotonic() - started
    assert all(task["status"] == "SUCCESS" for task in results.values()), [
        task for task in results.values() if task["status"] != "SUCCESS"
    ][:3]
    assert sorted(task["result"]["n"] for task in results.values()) == list(range(50))
    assert max(seen) >= 1
    idle_at = time.monotonic()
    wait_for(
        product.node, "back to 0 replicas and no pod", lambda: replicas() == 0 and not _pods(product, name), MODELS
    )
    print(
        f"\n50 async tasks from 0 replicas: all finished {finished_in:.1f}s after the first submit, replicas seen "
        f"{sorted(seen)}; back to 0 replicas and no pod {time.monotonic() - idle_at:.1f}s after the last finished "
        f"(scaleDownDelaySeconds 5)"
    )


def test_a_model_loading_for_20_seconds_gets_no_call_before_it_is_ready(product: Product) -> None:
    """examples/slow-load: calls start as soon as the Endpoint is applied and go on (polled, with a deadline) until one
    is answered; the model notes when its load finished and when its first call arrived."""
    plane = product.node.plane
    plane.apply(example("slow-load"))
    applied = time.time()
    refused: dict[int, int] = {}
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=30) as http:

        def answered() -> dict[str, Any] | None:
            reply = http.post("/v1/endpoints/slow-load/predict", json={"args": {"early": True}})
            if reply.status_code == 200:
                result: dict[str, Any] = reply.json()["result"]
                return result
            refused[reply.status_code] = refused.get(reply.status_code, 0) + 1
            return None

        result = wait_for(product.node, "slow-load answered", answered, MODELS, timeout=300)
    [pod] = _pods(product, "slow-load")
    ready_at = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
    print(
        f"\nslow-load (load() 20 s): load took {result['loaded_at'] - result['load_started_at']:.1f}s, finished "
        f"{result['loaded_at'] - applied:.1f}s after apply; first call arrived "
        f"{result['first_call_at'] - result['loaded_at']:.2f}s after load finished; pod Ready at {ready_at}; "
        f"calls refused before: {refused}"
    )
    assert result["first_call_at"] >= result["loaded_at"], result
    assert set(refused) <= {404, 503}, refused  # unknown to the gateway yet, or no replica ready: never a failure


def test_the_operator_killed_mid_reconcile_leaves_no_duplicate_children(product: Product) -> None:
    name = "echo-orphan"
    plane = product.node.plane
    operator = f"{RELEASE}-bundleserve-operator"
    selector = urllib.parse.quote("app.kubernetes.io/component=operator")
    pods = plane.request("GET", f"/api/v1/namespaces/{SYSTEM}/pods?labelSelector={selector}")["items"]
    assert len(pods) == 1, [pod["metadata"]["name"] for pod in pods]
    killed = pods[0]["metadata"]["name"]
    plane.apply(_named(name, scaling={"minReplicas": 1, "maxReplicas": 1}))
    # Mid-reconcile: the first child exists, the Endpoint is not Ready yet.
    wait_until(
        lambda: (
            plane.items("v1", "ConfigMap", MODELS, selector=f"{ENDPOINT_LABEL}={name}")
            or plane.get("apps/v1", "Deployment", MODELS, name)
        ),
        timeout=120,
        interval=0.05,
        what="the operator's first child",
    )
    was_ready = endpoint_ready(product.node, MODELS, name)
    killed_at = time.monotonic()
    _delete(product, "v1", "Pod", SYSTEM, killed, grace=0)
    wait_for(product.node, "a new operator ready", lambda: deployment_ready(product.node, SYSTEM, operator)
             and killed not in {p["metadata"]["name"] for p in plane.items("v1", "Pod", SYSTEM)}, SYSTEM)  # fmt: skip
    wait_for(product.node, f"{name} Ready", lambda: endpoint_ready(product.node, MODELS, name), MODELS)
    ready_in = time.monotonic() - killed_at
    children: dict[str, list[str]] = {}
    for api_version, kind in (
        ("apps/v1", "Deployment"),
        ("apps/v1", "ReplicaSet"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("v1", "Pod"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    ):
        found = plane.items(api_version, kind, MODELS, selector=f"{ENDPOINT_LABEL}={name}")
        if found:
            children[kind] = sorted(item["metadata"]["name"] for item in found)
    print(f"\noperator killed mid-reconcile (Ready before the kill: {was_ready}): {name} Ready {ready_in:.1f}s after "
          f"the kill; children {children}")  # fmt: skip
    assert all(len(names) == 1 for names in children.values()), children
    assert {"Deployment", "ReplicaSet", "Service", "Pod"} <= set(children), children
    endpoint = plane.get(GROUP_VERSION, "Endpoint", MODELS, name) or {}
    with httpx.Client(base_url=product.gateway, headers=product.headers, timeout=30) as http:
        answer = http.post(f"/v1/endpoints/{name}/predict", json={"args": {"after": "the kill"}})
    assert answer.status_code == 200, (answer.text, endpoint.get("status"))
