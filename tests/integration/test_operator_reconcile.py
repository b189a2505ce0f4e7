"""reconcile() itself (no kopf) against the real API server (`kube_cluster`, admin credentials through KUBECONFIG):
the paths the full-operator tests cannot reach easily (a spec that passed the CRD but not the typed model, a
same-named object owned by someone else). Moved from the API emulator; each test has a namespace of its own. No
node: the Deployments' pods stay Pending, which these tests do not need (their pods run in test_operator_node.py)."""

from __future__ import annotations

import base64
import copy
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from bundleserve.controller.builders import BuildContext
from bundleserve.controller.config import OperatorConfig
from bundleserve.controller.kube import Conflict, KubeClient, login
from bundleserve.controller.reconcile import reconcile
from bundleserve.controller.secrets import credentials_name
from bundleserve.queue.acl import QueueUsers
from tests.integration.cluster_harness import GROUP_VERSION, endpoint_doc, install_release
from tests.support.cluster import ControlPlane
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

_namespaces = itertools.count(1)


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
async def kube(kube_cluster: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeClient]:
    install_release(kube_cluster)  # the CRD as the chart renders it: the object every module applies
    monkeypatch.setenv("KUBECONFIG", os.fspath(kube_cluster.kubeconfig))
    client = KubeClient.from_connection(login(os.fspath(kube_cluster.kubeconfig)))
    yield client
    await client.close()


@dataclass
class Api:
    """The real API server as these tests use it, in a namespace of the test's own."""

    plane: ControlPlane
    ns: str

    def create(self, doc: dict[str, Any]) -> None:
        doc["metadata"]["namespace"] = self.ns
        self.plane.apply(doc)

    def endpoint(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.plane.get(GROUP_VERSION, "Endpoint", self.ns, name) or {}
        return found

    def get(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
        return self.plane.get(api_version, kind, self.ns, name)

    def patch(self, name: str, body: dict[str, Any]) -> None:
        path = self.plane.path(GROUP_VERSION, "Endpoint", self.ns, name)
        self.plane.request("PATCH", path, body, content_type="application/merge-patch+json")


@pytest.fixture
def api(kube_cluster: ControlPlane, kube: KubeClient) -> Api:
    ns = f"bs-reconcile-{next(_namespaces)}"
    kube_cluster.create_namespace(ns)
    return Api(kube_cluster, ns)


def doc(name: str, **spec: Any) -> dict[str, Any]:
    return endpoint_doc("placeholder", name, **spec)


async def test_a_second_pass_writes_nothing(api: Api, kube: KubeClient, ctx: Ctx) -> None:
    api.create(doc("echo", scaling={"minReplicas": 1, "maxReplicas": 3}))
    first = await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert sorted(kind for verb, kind, _ in first.writes if verb == "create") == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    # The Deployment controller answers the new Deployment (its status, the ReplicaSet): the next pass may record that
    # in the Endpoint's status, never write a child; the pass after that writes nothing at all.
    wait_until(
        lambda: (api.get("apps/v1", "Deployment", "echo") or {}).get("status", {}).get("replicas") == 1,
        timeout=60,
        what="the Deployment controller's status",
    )
    second = await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert [write for write in second.writes if write[1] != "Endpoint/status"] == []
    third = await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert third.writes == [] and third.patch is None
    assert kube.writes[("create", "Deployment")] == 1


async def test_a_spec_past_the_crd_but_not_the_model_is_degraded_and_children_stay(
    api: Api, kube: KubeClient, ctx: Ctx
) -> None:
    api.create(doc("echo"))
    await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    ready_before = {c["type"]: c for c in api.endpoint("echo")["status"]["conditions"]}["Ready"]
    body: dict[str, Any] = copy.deepcopy(api.endpoint("echo"))
    body["spec"]["scaling"] = {"minReplicas": 5, "maxReplicas": 2}  # as if the CRD's rule were missing
    result = await reconcile(body, kube, ctx.context, ensure_user=ctx.users.ensure)
    assert result.problem is not None and result.problem.reason == "InvalidSpec"
    assert "minReplicas" in result.problem.message
    conditions = {c["type"]: c for c in api.endpoint("echo")["status"]["conditions"]}
    assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == ("True", "InvalidSpec")
    # Ready keeps the last valid spec's answer (its pods are Pending here, so False as before; with ready pods it stays
    # True: tests/unit/test_controller_status.py, test_a_spec_problem_leaves_the_last_valid_specs_ready_pods_ready).
    assert conditions["Ready"]["status"] == ready_before["status"]
    assert api.get("apps/v1", "Deployment", "echo") is not None
    assert [w for w in result.writes if w[0] != "patch"] == []


async def test_an_object_we_do_not_own_is_never_taken_over(api: Api, kube: KubeClient, ctx: Ctx) -> None:
    api.create(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"}, "spec": {"ports": [{"port": 443}]}}
    )
    api.create(doc("echo"))
    result = await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert result.problem is not None and result.problem.reason == "ChildConflict"
    assert api.get("v1", "Service", "echo")["spec"]["ports"][0]["port"] == 443
    degraded = {c["type"]: c for c in api.endpoint("echo")["status"]["conditions"]}["Degraded"]
    assert degraded["reason"] == "ChildConflict" and "Service echo" in degraded["message"]


async def test_children_a_spec_no_longer_wants_are_deleted(api: Api, kube: KubeClient, ctx: Ctx) -> None:
    api.create(doc("echo", modes=["sync", "async"], scaling={"minReplicas": 1, "maxReplicas": 3}))
    await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert api.get("autoscaling/v2", "HorizontalPodAutoscaler", "echo") is not None
    api.patch("echo", {"spec": {"modes": ["async"], "scaling": {"minReplicas": 1, "maxReplicas": 1}}})
    result = await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    deleted = sorted(kind for verb, kind, _ in result.writes if verb == "delete")
    assert deleted == ["HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert api.get("apps/v1", "Deployment", "echo")["spec"]["replicas"] == 1
    assert "url" not in api.endpoint("echo")["status"]


async def test_switching_from_scale_to_zero_to_an_hpa_starts_pods(api: Api, kube: KubeClient, ctx: Ctx) -> None:
    api.create(doc("echo", modes=["async"], scaling={"minReplicas": 0, "maxReplicas": 3}))
    await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert api.get("apps/v1", "Deployment", "echo")["spec"]["replicas"] == 0
    api.patch("echo", {"spec": {"modes": ["sync", "async"], "scaling": {"minReplicas": 2}}})
    result = await reconcile(api.endpoint("echo"), kube, ctx.context, ensure_user=ctx.users.ensure)
    assert ("patch", "Deployment", "echo") in result.writes
    assert api.get("apps/v1", "Deployment", "echo")["spec"]["replicas"] == 2
    assert api.get("autoscaling/v2", "HorizontalPodAutoscaler", "echo") is not None


async def test_a_sync_endpoint_at_min_zero_stays_at_zero_and_needs_the_queue_redis(
    api: Api, kube: KubeClient, ctx: Ctx
) -> None:
    """The demand gate owns 0 <-> first replicas: reconcile must not lift a scale-from-zero endpoint off 0 as it does
    for an HPA-only one, and without the Redis where gateways report demand the spec is Degraded."""
    scaling = {"minReplicas": 0, "maxReplicas": 3, "scaleToZeroAfterSeconds": 60}
    api.create(doc("cold", modes=["sync", "streaming"], scaling=scaling))
    for _ in range(2):  # a second pass (the Deployment now exists at 0) leaves it there too
        result = await reconcile(api.endpoint("cold"), kube, ctx.context, ensure_user=ctx.users.ensure)
        assert api.get("apps/v1", "Deployment", "cold")["spec"]["replicas"] == 0
    assert ("patch", "Deployment", "cold") not in result.writes
    assert api.get("autoscaling/v2", "HorizontalPodAutoscaler", "cold") is not None  # for 1..3 above zero
    ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
    assert "the gateway holds the next call" in ready["message"]

    no_redis = BuildContext(config=OperatorConfig(redis_secret="bundleserve-redis"))
    api.create(doc("cold-alone", modes=["sync"], scaling={"minReplicas": 0}))
    result = await reconcile(api.endpoint("cold-alone"), kube, no_redis, ensure_user=ctx.users.ensure)
    assert result.problem is not None and result.problem.reason == "ScaleFromZeroNotConfigured"
    assert api.get("apps/v1", "Deployment", "cold-alone") is None


async def test_a_credentials_secret_deleted_during_a_reconcile_is_not_restored_with_its_old_password(
    api: Api, kube: KubeClient, ctx: Ctx
) -> None:
    """Found by test_operator_cluster_keda's rotation under load: deleting the Endpoint's credentials Secret rotates
    its password, but a reconcile that had read the Secret before the deletion wrote it back with the old password.
    Here the deletion lands exactly in that window: after the Secret was read (and the Redis user reset to its
    password), before the children are applied."""
    api.create(doc("jobs", modes=["async"]))
    await reconcile(api.endpoint("jobs"), kube, ctx.context, ensure_user=ctx.users.ensure)
    name = credentials_name("jobs")
    old = _password(api.get("v1", "Secret", name))

    async def ensure_then_rotate(queue: str, password: str) -> None:
        await ctx.users.ensure(queue, password)
        api.plane.request("DELETE", api.plane.path("v1", "Secret", api.ns, name))  # the rotation, mid-reconcile

    with pytest.raises(Conflict):  # the reconcile is retried (kopf's TemporaryError, the operator's queue)
        await reconcile(api.endpoint("jobs"), kube, ctx.context, ensure_user=ensure_then_rotate)
    assert api.get("v1", "Secret", name) is None  # not brought back with the password it was deleted to retire
    await reconcile(api.endpoint("jobs"), kube, ctx.context, ensure_user=ctx.users.ensure)  # the retry
    assert _password(api.get("v1", "Secret", name)) not in (None, old)


def _password(secret: dict[str, Any] | None) -> str | None:
    if secret is None:
        return None
    return base64.b64decode(secret["data"]["password"]).decode()
