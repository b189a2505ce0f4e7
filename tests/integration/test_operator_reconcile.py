"""reconcile() itself over real HTTP against the emulator (no kopf): the paths the full-operator tests cannot reach
easily (a spec that passed the CRD but not the typed model, a same-named object owned by someone else)."""

from __future__ import annotations

import copy
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from bundleserve.controller.builders import BuildContext
from bundleserve.controller.config import OperatorConfig
from bundleserve.controller.kube import KubeClient, login
from bundleserve.controller.reconcile import reconcile
from bundleserve.queue.acl import QueueUsers
from tests.integration.operator_harness import ENDPOINTS, NS, endpoint_doc, prepare
from tests.support.k8s.emulator import KubernetesEmulator
from tests.support.valkey import Valkey


@dataclass
class Ctx:
    """The build context and the master connection that creates each Endpoint's Redis user (a real valkey)."""

    context: BuildContext
    users: QueueUsers


@pytest.fixture
async def ctx(valkey_server: Valkey) -> AsyncIterator[Ctx]:
    config = OperatorConfig(redis_secret="bundleserve-redis", redis_url=valkey_server.url)
    users = QueueUsers(valkey_server.url)
    yield Ctx(BuildContext(config=config), users)
    await users.close()


@pytest.fixture
async def kube(k8s_api: KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeClient]:
    prepare(k8s_api)
    monkeypatch.setenv("KUBECONFIG", os.fspath(k8s_api.kubeconfig))
    client = KubeClient.from_connection(login())
    yield client
    await client.close()


async def test_a_second_pass_writes_nothing(k8s_api: KubernetesEmulator, kube: KubeClient, ctx: Ctx) -> None:
    k8s_api.create(endpoint_doc("echo", scaling={"minReplicas": 1, "maxReplicas": 3}))
    first = await reconcile(k8s_api.get(ENDPOINTS, "echo", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert sorted(kind for verb, kind, _ in first.writes if verb == "create") == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    second = await reconcile(k8s_api.get(ENDPOINTS, "echo", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert second.writes == [] and second.patch is None
    assert kube.writes[("create", "Deployment")] == 1


async def test_a_spec_past_the_crd_but_not_the_model_is_degraded_and_children_stay(
    k8s_api: KubernetesEmulator, kube: KubeClient, ctx: Ctx
) -> None:
    k8s_api.create(endpoint_doc("echo"))
    await reconcile(k8s_api.get(ENDPOINTS, "echo", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
    k8s_api.roll_out(NS, "echo")
    body: dict[str, Any] = copy.deepcopy(k8s_api.get(ENDPOINTS, "echo", NS))
    body["spec"]["scaling"] = {"minReplicas": 5, "maxReplicas": 2}  # as if the CRD's rule were missing
    result = await reconcile(body, kube, ctx.context, ensure_user=ctx.users.ensure)
    assert result.problem is not None and result.problem.reason == "InvalidSpec"
    assert "minReplicas" in result.problem.message
    conditions = {c["type"]: c for c in k8s_api.get(ENDPOINTS, "echo", NS)["status"]["conditions"]}
    assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == ("True", "InvalidSpec")
    assert conditions["Ready"]["status"] == "True"  # the last valid spec still serves
    assert k8s_api.get("deployments.apps", "echo", NS) is not None
    assert [w for w in result.writes if w[0] != "patch"] == []


async def test_an_object_we_do_not_own_is_never_taken_over(
    k8s_api: KubernetesEmulator, kube: KubeClient, ctx: Ctx
) -> None:
    k8s_api.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo", "namespace": NS},
            "spec": {"ports": [{"port": 443}]},
        }
    )
    k8s_api.create(endpoint_doc("echo"))
    result = await reconcile(k8s_api.get(ENDPOINTS, "echo", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert result.problem is not None and result.problem.reason == "ChildConflict"
    assert k8s_api.get("services", "echo", NS)["spec"]["ports"][0]["port"] == 443
    degraded = {c["type"]: c for c in k8s_api.get(ENDPOINTS, "echo", NS)["status"]["conditions"]}["Degraded"]
    assert degraded["reason"] == "ChildConflict" and "Service echo" in degraded["message"]


async def test_children_a_spec_no_longer_wants_are_deleted(
    k8s_api: KubernetesEmulator, kube: KubeClient, ctx: Ctx
) -> None:
    k8s_api.create(endpoint_doc("echo", modes=["sync", "async"], scaling={"minReplicas": 1, "maxReplicas": 3}))
    await reconcile(k8s_api.get(ENDPOINTS, "echo", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert k8s_api.get("horizontalpodautoscalers.autoscaling", "echo", NS) is not None
    k8s_api.patch(
        ENDPOINTS, "echo", {"spec": {"modes": ["async"], "scaling": {"minReplicas": 1, "maxReplicas": 1}}}, NS
    )
    result = await reconcile(k8s_api.get(ENDPOINTS, "echo", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
    deleted = sorted(kind for verb, kind, _ in result.writes if verb == "delete")
    assert deleted == ["HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert k8s_api.get("deployments.apps", "echo", NS)["spec"]["replicas"] == 1
    assert "url" not in k8s_api.get(ENDPOINTS, "echo", NS)["status"]


async def test_switching_from_scale_to_zero_to_an_hpa_starts_pods(
    k8s_api: KubernetesEmulator, kube: KubeClient, ctx: Ctx
) -> None:
    k8s_api.create(endpoint_doc("echo", modes=["async"], scaling={"minReplicas": 0, "maxReplicas": 3}))
    await reconcile(k8s_api.get(ENDPOINTS, "echo", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert k8s_api.get("deployments.apps", "echo", NS)["spec"]["replicas"] == 0
    k8s_api.patch(ENDPOINTS, "echo", {"spec": {"modes": ["sync", "async"], "scaling": {"minReplicas": 2}}}, NS)
    result = await reconcile(k8s_api.get(ENDPOINTS, "echo", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert ("patch", "Deployment", "echo") in result.writes
    assert k8s_api.get("deployments.apps", "echo", NS)["spec"]["replicas"] == 2
    assert k8s_api.get("horizontalpodautoscalers.autoscaling", "echo", NS) is not None


async def test_a_sync_endpoint_at_min_zero_stays_at_zero_and_needs_the_queue_redis(
    k8s_api: KubernetesEmulator, kube: KubeClient, ctx: Ctx
) -> None:
    """The demand gate owns 0 <-> first replicas: reconcile must not lift a scale-from-zero endpoint off 0 as it does
    for an HPA-only one, and without the Redis where gateways report demand the spec is Degraded."""
    scaling = {"minReplicas": 0, "maxReplicas": 3, "scaleToZeroAfterSeconds": 60}
    k8s_api.create(endpoint_doc("cold", modes=["sync", "streaming"], scaling=scaling))
    for _ in range(2):  # a second pass (the Deployment now exists at 0) leaves it there too
        result = await reconcile(k8s_api.get(ENDPOINTS, "cold", NS), kube, ctx.context, ensure_user=ctx.users.ensure)
        assert k8s_api.get("deployments.apps", "cold", NS)["spec"]["replicas"] == 0
    assert ("patch", "Deployment", "cold") not in result.writes
    assert k8s_api.get("horizontalpodautoscalers.autoscaling", "cold", NS) is not None  # for 1..3 above zero
    ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
    assert "the gateway holds the next call" in ready["message"]

    no_redis = BuildContext(config=OperatorConfig(redis_secret="bundleserve-redis"))
    k8s_api.create(endpoint_doc("cold-alone", modes=["sync"], scaling={"minReplicas": 0}))
    result = await reconcile(k8s_api.get(ENDPOINTS, "cold-alone", NS), kube, no_redis, ensure_user=ctx.users.ensure)
    assert result.problem is not None and result.problem.reason == "ScaleFromZeroNotConfigured"
    assert k8s_api.get("deployments.apps", "cold-alone", NS) is None
