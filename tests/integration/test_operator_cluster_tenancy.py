"""A namespace is a tenant (issue 17, finding 1), on the real control plane with a real Redis ACL (valkey-server).

The chart's operator (its ServiceAccount, the real authorizer) reconciles two teams' Endpoints. Checked:
- no shared Secret reaches an Endpoint namespace: the only Secret the operator writes there is the Endpoint's own
  credentials Secret, and no value of it is the master Redis password or a key of another namespace;
- the Redis credential in team A's Secret works for team A's queue and is refused (NOPERM) on team B's task records,
  stream and channel; deleting the Endpoint deletes its Redis user;
- the gateway, given the master keys file, opens team B's endpoint and tasks to team B's key and to neither team A's
  key nor team A's endpoint gateway key (which is what team A's pods can read).
Before the fix the operator copied the master Secret (`<endpoint>-<secret>`) into each namespace.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bundleserve.api.credentials import KeysFile
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.kube import build_entry
from bundleserve.gateway.registry import Registry
from bundleserve.queue import acl, keys
from tests.integration.cluster_harness import (
    GROUP_VERSION,
    SYSTEM,
    Release,
    RunningOperator,
    endpoint_doc,
    install_release,
    namespace,
    start_operator,
    stop_operator,
    wait_logged,
)
from tests.integration.test_client_harness import ThreadedApp
from tests.support.cluster import ControlPlane
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

MASTER_KEYS = "k-admin\nk-team-a team-a\nk-team-b team-b\n"
KEYS_SECRET = "tenancy-keys"


def _secret(name: str, **data: str) -> dict[str, Any]:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": SYSTEM}, "data": encoded}


def _data(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}


@pytest.fixture(scope="module")
def acl_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valkey]:
    """A valkey with a master password, as the chart's Redis runs (the default user is the master credential)."""
    server = Valkey(tmp_path_factory.mktemp("acl-valkey"))
    server.start()
    client = server.client()
    client.config_set("requirepass", "master-pw")
    client.close()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tenancy_operator(
    kube_cluster: ControlPlane, acl_valkey: Valkey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Release, RunningOperator, str]]:
    release = install_release(kube_cluster)
    master_url = f"redis://:master-pw@127.0.0.1:{acl_valkey.port}/0"
    kube_cluster.apply(_secret("queue", url=master_url, password="master-pw"))
    kube_cluster.apply(_secret(KEYS_SECRET, **{"api-keys": MASTER_KEYS}))
    env = {
        "BUNDLESERVE_KEDA": "off",
        "BUNDLESERVE_REDIS_SECRET": "queue",
        "BUNDLESERVE_REDIS_URL": master_url,
        "BUNDLESERVE_API_KEYS_SECRET": KEYS_SECRET,
    }
    running = start_operator(kube_cluster, release, tmp_path_factory.mktemp("tenancy-operator"), **env)
    yield release, running, master_url
    stop_operator(kube_cluster, release, running)


def _call(url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}"})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_a_namespace_credential_reaches_its_own_endpoints_and_nothing_of_another(
    kube_cluster: ControlPlane, acl_valkey: Valkey, tenancy_operator: tuple[Release, RunningOperator, str]
) -> None:
    _, running, master_url = tenancy_operator
    team_a, team_b = namespace(kube_cluster, "team-a"), namespace(kube_cluster, "team-b")
    spec = {"modes": ["async"], "scaling": {"minReplicas": 1, "maxReplicas": 1}}
    kube_cluster.apply(endpoint_doc(team_a, "echo", **spec))
    kube_cluster.apply(endpoint_doc(team_b, "jobs", **spec))

    def secret_of(ns: str, name: str) -> dict[str, Any] | None:
        return kube_cluster.get("v1", "Secret", ns, f"{name}-bundleserve-credentials")

    secret_a = wait_logged(running.process, lambda: secret_of(team_a, "echo"), "team A's credentials")
    secret_b = wait_logged(running.process, lambda: secret_of(team_b, "jobs"), "team B's credentials")
    deployment = wait_logged(running.process, lambda: kube_cluster.get("apps/v1", "Deployment", team_a, "echo"),
                             "team A's Deployment")  # fmt: skip
    creds_a, creds_b = _data(secret_a), _data(secret_b)

    # 1. Nothing shared in the teams' namespaces: only the Endpoint's own Secret, holding no master value.
    for ns in (team_a, team_b):
        listed = kube_cluster.request("GET", f"/api/v1/namespaces/{ns}/secrets")["items"]
        assert [item["metadata"]["name"] for item in listed] == [
            "echo-bundleserve-credentials" if ns == team_a else "jobs-bundleserve-credentials"
        ]
    for creds in (creds_a, creds_b):
        values = "\n".join(creds.values())
        assert "master-pw" not in values and "k-admin" not in values
    assert "k-team-b" not in creds_a["api-keys"] and "k-team-a" in creds_a["api-keys"]
    assert creds_a["username"] == acl.username(keys.queue_id(team_a, "echo"))
    refs = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert refs == {"echo-bundleserve-credentials"}

    # 2. Team A's Redis credential: its own queue yes, team B's keys and channel no.
    queue_a, queue_b = keys.queue_id(team_a, "echo"), keys.queue_id(team_b, "jobs")
    master = redis.Redis.from_url(master_url)
    client_a = redis.Redis.from_url(creds_a["url"])
    try:
        task_b = keys.new_task_id()
        master.hset(keys.task(queue_b, task_b), mapping={"status": "PENDING", "endpoint": "jobs"})
        client_a.hset(keys.task(queue_a, "probe"), "status", "PENDING")  # own prefix: allowed
        for attempt in (
            lambda: client_a.hgetall(keys.task(queue_b, task_b)),
            lambda: client_a.xadd(keys.stream(queue_b), {"t": task_b}),
            lambda: client_a.publish(keys.done_channel(queue_b), task_b),
            lambda: client_a.execute_command("SCAN", 0),
            lambda: client_a.execute_command("CONFIG", "GET", "requirepass"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()

        # 3. The gateway with the master keys file: team A's keys never open team B's endpoint or tasks.
        entries = [build_entry(kube_cluster.get(GROUP_VERSION, "Endpoint", ns, name) or {})
                   for ns, name in ((team_a, "echo"), (team_b, "jobs"))]  # fmt: skip
        registry = Registry([entry for entry in entries if entry is not None])
        config = GatewayConfig(redis_url=master_url, keys_file=KeysFile.parse(MASTER_KEYS))
        gateway = ThreadedApp(build_gateway_app(registry, config)).start()
        try:
            submit = f"{gateway.url}/v1/endpoints/jobs/async"
            code, accepted = _call(submit, "k-team-b", {"args": {"x": 1}})
            assert code == 202, accepted
            task = accepted["task_id"]
            gateway_key_a = creds_a["api-keys"].splitlines()[0]  # what team A's pods can read
            for key in ("k-team-a", gateway_key_a):
                assert _call(submit, key, {"args": {}})[0] in (401, 404)
                assert _call(f"{gateway.url}/v1/tasks/{task}", key)[0] in (401, 404)
                assert _call(f"{gateway.url}/v1/tasks/{task}/result", key)[0] in (401, 404)
            assert _call(f"{gateway.url}/v1/tasks/{task}", "k-team-b") == (200, _call(
                f"{gateway.url}/v1/tasks/{task}", "k-admin")[1])  # fmt: skip
            assert _call(f"{gateway.url}/v1/tasks/{task}", "k-team-b")[1]["status"] == "PENDING"
        finally:
            gateway.stop()
    finally:
        client_a.close()

    # 4. Deleting team A's Endpoint deletes its Redis user.
    kube_cluster.request("DELETE", kube_cluster.path(GROUP_VERSION, "Endpoint", team_a, "echo"))
    wait_logged(running.process, lambda: master.execute_command("ACL", "GETUSER", creds_a["username"]) is None,
                "team A's Redis user deleted")  # fmt: skip
    assert "master-pw" not in running.process.log() and creds_b["password"] not in running.process.log()
    wait_until(lambda: kube_cluster.get(GROUP_VERSION, "Endpoint", team_a, "echo") is None, timeout=30,
               what="team A's Endpoint gone")  # fmt: skip
    master.close()
