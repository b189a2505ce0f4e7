"""The Kubernetes API emulator behaves like the real API server where the operator and kopf rely on it.

Each test drives the emulator over real HTTP on loopback (httpx), the way kopf and the operator do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.k8s.emulator import KubernetesEmulator
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
ENDPOINT_CRD = REPO / "crds" / "endpoints.bundleserve.dev.yaml"

WIDGETS = "/apis/demo.example.com/v1/namespaces/default/widgets"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def widget_crd(*, status: bool = True) -> dict[str, Any]:
    spec_schema = {
        "type": "object",
        "required": ["size"],
        "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
            "name": {"type": "string", "pattern": "^[a-z]+$"},
            "min": {"type": "integer", "default": 1},
            "max": {"type": "integer", "default": 3},
            "ports": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}},
            },
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "immutable": {
                "type": "string",
                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable is immutable"}],
            },
        },
        "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}],
    }
    version: dict[str, Any] = {
        "name": "v1",
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": spec_schema,
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }
        },
    }
    if status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.demo.example.com"},
        "spec": {
            "group": "demo.example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [version],
        },
    }


def widget(name: str = "w1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "demo.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": 1, **spec},
    }


def deployment(name: str = "web", *, image: str = "nginx:1.27", labels: dict[str, str] | None = None) -> dict[str, Any]:
    selector = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": {"containers": [{"name": "main", "image": image}]}},
        },
    }


class Client:
    """A tiny synchronous Kubernetes REST client: (status code, JSON body)."""

    def __init__(self, api: KubernetesEmulator) -> None:
        self.http = httpx.Client(base_url=api.url, headers=api.headers, timeout=10)

    def call(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", **params: Any
    ) -> tuple[int, Any]:
        content = body if isinstance(body, str) else json.dumps(body) if body is not None else None
        response = self.http.request(
            method, path, content=content, params=params, headers={"Content-Type": content_type}
        )
        return response.status_code, response.json() if response.content else None

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        code, payload = self.call(method, path, body, **kwargs)
        assert 200 <= code < 300, (code, payload)
        return payload

    def watch(
        self, path: str, *, until: Callable[[list[dict[str, Any]]], bool] | None = None, **params: Any
    ) -> list[dict[str, Any]]:
        """Read a watch stream until `until(events)` holds or the server closes it (after timeoutSeconds)."""
        events: list[dict[str, Any]] = []
        with self.http.stream("GET", path, params={"watch": "true", "timeoutSeconds": 5, **params}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    events.append(json.loads(line))
                if until is not None and until(events):
                    break
        return events


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubernetesEmulator]:
    with KubernetesEmulator(tmp_path / "k8s", bookmark_interval=0.2) as emulator:
        yield emulator
    assert not emulator.problems()


@pytest.fixture
def client(api: KubernetesEmulator) -> Iterator[Client]:
    c = Client(api)
    yield c
    c.http.close()


@pytest.fixture
def widgets(api: KubernetesEmulator, client: Client) -> Client:
    client.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", widget_crd())
    return client


# --- discovery, auth -------------------------------------------------------------------------------------------


def test_discovery_lists_builtins_with_status_subresources_and_core_endpoints(client: Client) -> None:
    groups = {g["name"]: g for g in client.ok("GET", "/apis")["groups"]}
    for group in ("apps", "autoscaling", "policy", "coordination.k8s.io", "apiextensions.k8s.io", "kopf.dev"):
        assert group in groups
    assert groups["autoscaling"]["preferredVersion"]["version"] == "v2"
    assert client.ok("GET", "/api")["versions"] == ["v1"]
    core = {r["name"]: r for r in client.ok("GET", "/api/v1")["resources"]}
    for name in ("pods", "pods/status", "services", "secrets", "configmaps", "events", "namespaces", "endpoints"):
        assert name in core
    assert core["endpoints"]["kind"] == "Endpoints"
    assert core["namespaces"]["namespaced"] is False
    apps = {r["name"]: r for r in client.ok("GET", "/apis/apps/v1")["resources"]}
    assert apps["deployments/status"]["verbs"] == ["get", "patch", "update"]
    kopf = {r["name"] for r in client.ok("GET", "/apis/kopf.dev/v1")["resources"]}
    assert kopf == {"clusterkopfpeerings", "kopfpeerings"}


def test_a_crd_created_at_run_time_is_served_and_its_deletion_removes_it(client: Client) -> None:
    assert client.call("GET", "/apis/demo.example.com/v1")[0] == 404
    crd = client.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", widget_crd())
    assert crd["metadata"]["finalizers"] == ["customresourcecleanup.apiextensions.k8s.io"]
    resources = {r["name"]: r for r in client.ok("GET", "/apis/demo.example.com/v1")["resources"]}
    assert set(resources) == {"widgets", "widgets/status"}
    stored = client.ok("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.demo.example.com")
    assert {c["type"]: c["status"] for c in stored["status"]["conditions"]}["Established"] == "True"
    client.ok("POST", WIDGETS, widget())
    client.ok("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.demo.example.com")
    assert client.call("GET", "/apis/demo.example.com/v1")[0] == 404
    assert client.call("GET", f"{WIDGETS}/w1")[0] == 404


def test_requests_without_the_kubeconfig_token_are_unauthorized(api: KubernetesEmulator) -> None:
    response = httpx.get(f"{api.url}/api/v1/namespaces")
    assert response.status_code == 401
    assert response.json()["reason"] == "Unauthorized"
    assert httpx.get(f"{api.url}/healthz").text == "ok"
    config = yaml.safe_load(api.kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == api.url


# --- CRUD and metadata -----------------------------------------------------------------------------------------


def test_create_sets_server_metadata_and_rejects_duplicates_with_409(client: Client) -> None:
    created = client.ok("POST", DEPLOYMENTS, deployment())
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    again = client.ok("POST", DEPLOYMENTS, deployment("other"))
    assert int(again["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    code, status = client.call("POST", DEPLOYMENTS, deployment())
    assert code == 409
    assert status["reason"] == "AlreadyExists" and status["details"] == {
        "name": "web",
        "group": "apps",
        "kind": "deployments",
    }
    generated = client.ok(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-"}},
    )
    assert generated["metadata"]["name"].startswith("cfg-") and len(generated["metadata"]["name"]) == 9
    assert "generation" not in generated["metadata"]  # configmaps do not track generation


def test_not_found_has_the_real_status_shape(client: Client) -> None:
    code, status = client.call("GET", f"{DEPLOYMENTS}/missing")
    assert code == 404
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "missing" not found',
        "reason": "NotFound",
        "details": {"name": "missing", "group": "apps", "kind": "deployments"},
        "code": 404,
    }
    code, status = client.call(
        "POST",
        "/api/v1/namespaces/nowhere/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
    )
    assert (code, status["message"]) == (404, 'namespaces "nowhere" not found')


def test_invalid_names_and_mismatched_kinds_are_rejected(client: Client) -> None:
    code, status = client.call("POST", DEPLOYMENTS, deployment("Not_Valid"))
    assert code == 422 and status["details"]["causes"][0]["field"] == "metadata.name"
    code, status = client.call("POST", DEPLOYMENTS, {**deployment(), "kind": "StatefulSet"})
    assert code == 400
    numeric_env = deployment()
    numeric_env["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "PORT", "value": 8080}]
    code, status = client.call("POST", DEPLOYMENTS, numeric_env)
    assert code == 400 and "cannot unmarshal number" in status["message"]  # typed decoding, as on the real server
    client.ok("POST", DEPLOYMENTS, deployment())
    renamed = {"metadata": {"name": "other"}}
    assert client.call("PATCH", f"{DEPLOYMENTS}/web", renamed, content_type="application/merge-patch+json")[0] == 400
    bad = deployment("mismatch")
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    code, status = client.call("POST", DEPLOYMENTS, bad)
    assert code == 422 and "selector" in status["message"]


def test_list_filters_by_label_and_field_selectors_and_returns_the_list_version(client: Client) -> None:
    for name, labels in (
        ("a", {"tier": "web", "env": "prod"}),
        ("b", {"tier": "web"}),
        ("c", {"tier": "db", "env": "dev"}),
    ):
        client.ok("POST", DEPLOYMENTS, deployment(name, labels=labels))

    def names(**params: Any) -> list[str]:
        body = client.ok("GET", DEPLOYMENTS, **params)
        assert int(body["metadata"]["resourceVersion"]) >= 1000
        return [item["metadata"]["name"] for item in body["items"]]

    assert names(labelSelector="tier=web") == ["a", "b"]
    assert names(labelSelector="tier!=web") == ["c"]
    assert names(labelSelector="env in (prod,dev)") == ["a", "c"]
    assert names(labelSelector="env notin (prod)") == ["b", "c"]
    assert names(labelSelector="env") == ["a", "c"]
    assert names(labelSelector="!env") == ["b"]
    assert names(labelSelector="tier=web,env") == ["a"]
    assert names(fieldSelector="metadata.name=b") == ["b"]
    assert names(fieldSelector="metadata.name!=b") == ["a", "c"]
    assert client.call("GET", DEPLOYMENTS, fieldSelector="spec.replicas=2")[0] == 400
    listed = client.ok("GET", DEPLOYMENTS)
    assert listed["kind"] == "DeploymentList" and "kind" not in listed["items"][0]  # typed lists omit item kinds
    first = client.ok("GET", DEPLOYMENTS, limit=2)
    assert [i["metadata"]["name"] for i in first["items"]] == ["a", "b"] and first["metadata"][
        "remainingItemCount"
    ] == 1
    rest = client.ok("GET", DEPLOYMENTS, limit=2, **{"continue": first["metadata"]["continue"]})
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c"]
    assert [i["metadata"]["name"] for i in client.ok("GET", "/apis/apps/v1/deployments")["items"]] == ["a", "b", "c"]


def test_put_with_a_stale_resource_version_conflicts(client: Client) -> None:
    first = client.ok("POST", DEPLOYMENTS, deployment())
    first["spec"]["replicas"] = 3
    second = client.ok("PUT", f"{DEPLOYMENTS}/web", first)
    assert second["spec"]["replicas"] == 3
    first["spec"]["replicas"] = 4
    code, status = client.call("PUT", f"{DEPLOYMENTS}/web", first)
    assert code == 409 and status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]


def test_generation_bumps_only_on_spec_changes_and_noop_writes_keep_the_version(client: Client) -> None:
    created = client.ok("POST", DEPLOYMENTS, deployment())
    labelled = client.ok(
        "PATCH", f"{DEPLOYMENTS}/web", {"metadata": {"labels": {"x": "y"}}}, content_type="application/merge-patch+json"
    )
    assert labelled["metadata"]["generation"] == 1
    assert labelled["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    same = client.ok(
        "PATCH", f"{DEPLOYMENTS}/web", {"metadata": {"labels": {"x": "y"}}}, content_type="application/merge-patch+json"
    )
    assert same["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]
    scaled = client.ok(
        "PATCH", f"{DEPLOYMENTS}/web", {"spec": {"replicas": 5}}, content_type="application/merge-patch+json"
    )
    assert scaled["metadata"]["generation"] == 2


def test_status_subresource_splits_status_from_the_rest(widgets: Client) -> None:
    created = widgets.ok("POST", WIDGETS, {**widget(), "status": {"phase": "ignored"}})
    assert "status" not in created
    main = widgets.ok(
        "PATCH",
        f"{WIDGETS}/w1",
        {"spec": {"size": 2}, "status": {"phase": "nope"}},
        content_type="application/merge-patch+json",
    )
    assert "status" not in main and main["metadata"]["generation"] == 2
    status = widgets.ok(
        "PATCH",
        f"{WIDGETS}/w1/status",
        {"spec": {"size": 9}, "status": {"phase": "Ready"}},
        content_type="application/merge-patch+json",
    )
    assert status["status"] == {"phase": "Ready"} and status["spec"]["size"] == 2
    assert status["metadata"]["generation"] == 2  # status writes never bump generation
    assert (
        widgets.call(
            "PATCH", "/api/v1/namespaces/default/configmaps/x/status", {}, content_type="application/merge-patch+json"
        )[0]
        == 404
    )


def test_without_status_subresource_status_changes_bump_generation(client: Client) -> None:
    client.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", widget_crd(status=False))
    assert client.call("GET", f"{WIDGETS}/w1/status")[0] == 404
    client.ok("POST", WIDGETS, widget())
    patched = client.ok(
        "PATCH", f"{WIDGETS}/w1", {"status": {"phase": "x"}}, content_type="application/merge-patch+json"
    )
    assert patched["status"] == {"phase": "x"} and patched["metadata"]["generation"] == 2


def test_patch_flavours(client: Client, widgets: Client) -> None:
    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "router:1"})
    client.ok("POST", DEPLOYMENTS, dep)
    strategic = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "router:2"}]}}}}
    patched = client.ok("PATCH", f"{DEPLOYMENTS}/web", strategic, content_type="application/strategic-merge-patch+json")
    assert [(c["name"], c["image"]) for c in patched["spec"]["template"]["spec"]["containers"]] == [
        ("main", "nginx:1.27"),
        ("sidecar", "router:2"),
    ]
    merged = client.ok(
        "PATCH", f"{DEPLOYMENTS}/web", {"metadata": {"labels": {"a": "1"}}}, content_type="application/merge-patch+json"
    )
    removed = client.ok(
        "PATCH",
        f"{DEPLOYMENTS}/web",
        {"metadata": {"labels": {"a": None}}},
        content_type="application/merge-patch+json",
    )
    assert merged["metadata"]["labels"] == {"a": "1"} and removed["metadata"].get("labels", {}) == {}
    stale: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    code, _ = client.call("PATCH", f"{DEPLOYMENTS}/web", stale, content_type="application/json-patch+json")
    assert code == 422  # kopf relies on this to retry its finalizer patches
    fresh = [{**stale[0], "value": removed["metadata"]["resourceVersion"]}, stale[1]]
    assert client.ok("PATCH", f"{DEPLOYMENTS}/web", fresh, content_type="application/json-patch+json")["metadata"][
        "finalizers"
    ] == ["x"]
    widgets.ok("POST", WIDGETS, widget())
    code, status = widgets.call(
        "PATCH", f"{WIDGETS}/w1", {"spec": {"size": 2}}, content_type="application/strategic-merge-patch+json"
    )
    assert code == 415 and status["reason"] == "UnsupportedMediaType"
    applied = client.call(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/applied",
        yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": "v"}}),
        content_type="application/apply-patch+yaml",
        fieldManager="test",
    )
    assert applied[0] == 201 and applied[1]["data"] == {"k": "v"}


def test_finalizers_delay_deletion_until_removed(widgets: Client) -> None:
    widgets.ok("POST", WIDGETS, {**widget(), "metadata": {"name": "w1", "finalizers": ["example.com/cleanup"]}})
    deleting = widgets.ok("DELETE", f"{WIDGETS}/w1")
    assert deleting["metadata"]["deletionTimestamp"]
    assert (
        widgets.ok("GET", f"{WIDGETS}/w1")["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]
    )
    code, status = widgets.call(
        "PATCH",
        f"{WIDGETS}/w1",
        {"metadata": {"finalizers": ["example.com/cleanup", "new"]}},
        content_type="application/merge-patch+json",
    )
    assert code == 422 and "no new finalizers" in status["message"]
    widgets.ok(
        "PATCH", f"{WIDGETS}/w1", {"metadata": {"finalizers": None}}, content_type="application/merge-patch+json"
    )
    assert widgets.call("GET", f"{WIDGETS}/w1")[0] == 404


def _owned_config_map(name: str, owner: dict[str, Any]) -> dict[str, Any]:
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [ref]}}


def test_owner_reference_cascade_background_orphan_foreground(api: KubernetesEmulator, widgets: Client) -> None:
    configmaps = "/api/v1/namespaces/default/configmaps"
    owner = widgets.ok("POST", WIDGETS, widget("bg"))
    widgets.ok("POST", configmaps, _owned_config_map("bg-child", owner))
    widgets.ok("DELETE", f"{WIDGETS}/bg")
    assert widgets.call("GET", f"{configmaps}/bg-child")[0] == 404

    owner = widgets.ok("POST", WIDGETS, widget("orphaner"))
    widgets.ok("POST", configmaps, _owned_config_map("orphan-child", owner))
    widgets.ok("DELETE", f"{WIDGETS}/orphaner", propagationPolicy="Orphan")
    orphan = widgets.ok("GET", f"{configmaps}/orphan-child")
    assert "ownerReferences" not in orphan["metadata"]

    owner = widgets.ok("POST", WIDGETS, widget("fg"))
    child = _owned_config_map("fg-child", owner)
    child["metadata"]["finalizers"] = ["example.com/hold"]
    widgets.ok("POST", configmaps, child)
    widgets.ok("DELETE", f"{WIDGETS}/fg", propagationPolicy="Foreground")
    assert "foregroundDeletion" in widgets.ok("GET", f"{WIDGETS}/fg")["metadata"]["finalizers"]
    assert widgets.ok("GET", f"{configmaps}/fg-child")["metadata"]["deletionTimestamp"]
    api.patch("configmaps", "fg-child", {"metadata": {"finalizers": None}}, "default")
    assert widgets.call("GET", f"{WIDGETS}/fg")[0] == 404

    dangling = _owned_config_map(
        "dangling", {**owner, "metadata": {"name": "gone", "uid": "00000000-0000-0000-0000-000000000000"}}
    )
    widgets.ok("POST", configmaps, dangling)
    assert widgets.call("GET", f"{configmaps}/dangling")[0] == 404  # the garbage collector removes it


def test_namespace_deletion_removes_its_contents(api: KubernetesEmulator, client: Client) -> None:
    api.create_namespace("team")
    client.ok("POST", "/apis/apps/v1/namespaces/team/deployments", deployment())
    deleted = client.ok("DELETE", "/api/v1/namespaces/team")
    assert deleted["status"]["phase"] == "Terminating" or client.call("GET", "/api/v1/namespaces/team")[0] == 404
    assert client.call("GET", "/api/v1/namespaces/team")[0] == 404
    assert api.items("deployments.apps", "team") == []


# --- watch -----------------------------------------------------------------------------------------------------


def test_watch_resumes_from_a_version_and_reports_every_change(api: KubernetesEmulator, client: Client) -> None:
    start = client.ok("GET", DEPLOYMENTS)["metadata"]["resourceVersion"]
    client.ok("POST", DEPLOYMENTS, deployment())
    client.ok("PATCH", f"{DEPLOYMENTS}/web", {"spec": {"replicas": 1}}, content_type="application/merge-patch+json")
    client.ok("DELETE", f"{DEPLOYMENTS}/web")
    events = client.watch(DEPLOYMENTS, resourceVersion=start, until=lambda events: len(events) == 3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[0]["object"]["kind"] == "Deployment"
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(start)


def test_watch_without_version_starts_with_the_current_objects_and_streams_live(
    api: KubernetesEmulator, client: Client
) -> None:
    client.ok("POST", DEPLOYMENTS, deployment("old"))
    received: list[dict[str, Any]] = []

    def live_and_bookmark(events: list[dict[str, Any]]) -> bool:
        kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in events]
        return ("ADDED", "live") in kinds and any(e["type"] == "BOOKMARK" for e in events)

    def read() -> None:
        received.extend(client.watch(DEPLOYMENTS, allowWatchBookmarks="true", until=live_and_bookmark))

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: api.api.active_watches == 1, what="the watch to be connected")
    api.create({**deployment("live"), "metadata": {"name": "live", "namespace": "default"}})
    reader.join(10)
    types = [(e["type"], e["object"]["metadata"].get("name")) for e in received if e["type"] != "BOOKMARK"]
    assert types == [("ADDED", "old"), ("ADDED", "live")]
    assert any(e["type"] == "BOOKMARK" for e in received)


def test_watch_with_label_selector_sees_objects_leave_and_enter(client: Client) -> None:
    start = client.ok("GET", DEPLOYMENTS)["metadata"]["resourceVersion"]
    client.ok("POST", DEPLOYMENTS, deployment(labels={"team": "a"}))
    client.ok(
        "PATCH",
        f"{DEPLOYMENTS}/web",
        {"metadata": {"labels": {"team": "b"}}},
        content_type="application/merge-patch+json",
    )
    client.ok(
        "PATCH",
        f"{DEPLOYMENTS}/web",
        {"metadata": {"labels": {"team": "a"}}},
        content_type="application/merge-patch+json",
    )
    events = client.watch(
        DEPLOYMENTS, resourceVersion=start, labelSelector="team=a", timeoutSeconds=1
    )  # ends the stream
    assert [e["type"] for e in events] == ["ADDED", "DELETED", "ADDED"]


def test_watch_from_a_compacted_version_gets_410_gone(api: KubernetesEmulator, client: Client) -> None:
    start = client.ok("GET", DEPLOYMENTS)["metadata"]["resourceVersion"]
    client.ok("POST", DEPLOYMENTS, deployment())
    api.expire_watch_history()
    events = client.watch(DEPLOYMENTS, resourceVersion=start)  # the server ends the stream after the error
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


def test_send_initial_events_ends_with_the_initial_events_end_bookmark(client: Client) -> None:
    client.ok("POST", DEPLOYMENTS, deployment())
    events = client.watch(
        DEPLOYMENTS,
        sendInitialEvents="true",
        resourceVersionMatch="NotOlderThan",
        allowWatchBookmarks="true",
        until=lambda events: len(events) == 2,
    )
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


# --- schema validation of custom resources ---------------------------------------------------------------------


def test_crd_schema_defaults_prunes_and_warns(api: KubernetesEmulator, widgets: Client) -> None:
    response = widgets.http.post(
        WIDGETS, json={**widget(), "spec": {"size": 2, "unknown": 1, "free": {"any": {"thing": 1}}}}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["spec"] == {"size": 2, "color": "red", "min": 1, "max": 3, "free": {"any": {"thing": 1}}}
    assert response.headers.get_list("Warning") == ['299 - "unknown field \\"spec.unknown\\""']
    strict = widgets.http.post(
        WIDGETS, params={"fieldValidation": "Strict"}, json={**widget("w2"), "spec": {"size": 2, "unknown": 1}}
    )
    assert strict.status_code == 400 and "unknown field" in strict.json()["message"]


@pytest.mark.parametrize(
    ("spec", "field", "reason", "message"),
    [
        ({"size": "big"}, "spec.size", "FieldValueTypeInvalid", "must be of type integer"),
        ({"size": 11}, "spec.size", "FieldValueInvalid", "should be less than or equal to 10"),
        ({"size": 1, "color": "green"}, "spec.color", "FieldValueNotSupported", 'supported values: "red", "blue"'),
        ({"size": 1, "name": "UP"}, "spec.name", "FieldValueInvalid", "should match '^[a-z]+$'"),
        ({"size": 1, "min": 5}, "spec", "FieldValueInvalid", "min must not exceed max"),
        (
            {"size": 1, "ports": [{"name": "a"}, {"name": "a"}]},
            "spec.ports[1]",
            "FieldValueDuplicate",
            "Duplicate value",
        ),
        ({}, "spec.size", "FieldValueRequired", "Required value"),
    ],
)
def test_crd_schema_violations_are_422_with_causes(
    widgets: Client, spec: dict[str, Any], field: str, reason: str, message: str
) -> None:
    code, status = widgets.call("POST", WIDGETS, {**widget(), "spec": spec})
    assert code == 422, status
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "Widget"
    causes = status["details"]["causes"]
    assert any(c["field"] == field and c["reason"] == reason and message in c["message"] for c in causes), causes
    assert status["message"].startswith('Widget.demo.example.com "w1" is invalid: ')


def test_cel_transition_rules_and_ratcheting(widgets: Client) -> None:
    created = widgets.ok("POST", WIDGETS, {**widget(), "spec": {"size": 1, "immutable": "a"}})
    code, status = widgets.call(
        "PATCH", f"{WIDGETS}/w1", {"spec": {"immutable": "b"}}, content_type="application/merge-patch+json"
    )
    assert code == 422 and "immutable is immutable" in status["details"]["causes"][0]["message"]
    assert created["spec"]["immutable"] == "a"


def test_the_project_endpoint_crd_accepts_the_example_and_rejects_a_rule_violation(
    api: KubernetesEmulator, client: Client
) -> None:
    api.install_crd(ENDPOINT_CRD)
    example = yaml.safe_load((REPO / "examples" / "echo" / "endpoint.yaml").read_text())
    path = "/apis/bundleserve.dev/v1alpha1/namespaces/default/endpoints"
    created = client.ok("POST", path, example)
    assert created["spec"]["localOnly"] is False  # a schema default
    assert created["spec"]["bundle"]["port"] == 5005
    bad = json.loads(json.dumps(example))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["scaling"].update({"minReplicas": 5, "maxReplicas": 2})
    code, status = client.call("POST", path, bad)
    assert code == 422
    assert any("minReplicas must be less than or equal" in c["message"] for c in status["details"]["causes"])
    dotted = {**example, "metadata": {"name": "a.b"}}  # a valid object name, but not for this CRD's metadata schema
    code, status = client.call("POST", path, dotted)
    assert code == 422 and status["details"]["causes"][0]["field"] == "metadata.name"
    # the core Endpoints resource with the same plural is a different resource
    assert client.ok("GET", "/api/v1/namespaces/default/endpoints")["items"] == []


# --- built-in defaulting ---------------------------------------------------------------------------------------


def test_builtin_defaults_are_filled_like_the_real_server(client: Client) -> None:
    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080}}
    created = client.ok("POST", DEPLOYMENTS, dep)
    spec = created["spec"]
    assert created["status"] == {}  # what a Deployment shows before its controller ran
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert spec["revisionHistoryLimit"] == 10 and spec["progressDeadlineSeconds"] == 600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Always" and pod["terminationGracePeriodSeconds"] == 30
    container = pod["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent" and container["terminationMessagePolicy"] == "File"
    assert (
        container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
        and container["readinessProbe"]["periodSeconds"] == 10
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    }
    svc = client.ok("POST", "/api/v1/namespaces/default/services", service)["spec"]
    assert (
        svc["type"] == "ClusterIP"
        and svc["clusterIP"].startswith("10.96.")
        and svc["ports"][0] == {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}
    )
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"key": "value"}}
    stored = client.ok("POST", "/api/v1/namespaces/default/secrets", secret)
    assert stored["data"] == {"key": "dmFsdWU="} and "stringData" not in stored and stored["type"] == "Opaque"


# --- simulation knobs and write counters -----------------------------------------------------------------------


def test_roll_out_creates_replicaset_and_pods_and_reports_ready(api: KubernetesEmulator, client: Client) -> None:
    client.ok("POST", DEPLOYMENTS, deployment())
    api.reset_counts()
    pods = api.roll_out("default", "web")
    assert api.write_count() == 0  # simulated controllers are not API clients
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
    status = api.get("deployments.apps", "web", "default")["status"]  # type: ignore[index]
    assert (status["readyReplicas"], status["availableReplicas"], status["observedGeneration"]) == (2, 2, 1)
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Available": "True", "Progressing": "True"}
    [rs] = api.items("replicasets.apps", "default")
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    revision = api.get("deployments.apps", "web", "default")["metadata"]["annotations"]  # type: ignore[index]
    assert revision == {"deployment.kubernetes.io/revision": "1"}  # written by the Deployment controller
    image = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "nginx:1.28"}]}}}}
    client.ok("PATCH", f"{DEPLOYMENTS}/web", image, content_type="application/strategic-merge-patch+json")
    api.roll_out("default", "web")
    replicasets = {r["metadata"]["name"]: r for r in api.items("replicasets.apps", "default")}
    assert sorted(r["spec"]["replicas"] for r in replicasets.values()) == [0, 2]  # the old one scaled down
    assert len(api.items("pods", "default")) == 2
    revision = api.get("deployments.apps", "web", "default")["metadata"]["annotations"]  # type: ignore[index]
    assert revision == {"deployment.kubernetes.io/revision": "2"}
    client.ok("DELETE", f"{DEPLOYMENTS}/web")
    assert api.items("pods", "default") == [] and api.items("replicasets.apps", "default") == []


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "CrashLoopBackOff", "Unschedulable"])
def test_roll_out_can_leave_pods_stuck_with_a_reason(api: KubernetesEmulator, client: Client, reason: str) -> None:
    client.ok("POST", DEPLOYMENTS, deployment())
    pods = api.roll_out("default", "web", ready=1, waiting_reason=reason)
    stuck = pods[1]["status"]
    if reason == "Unschedulable":
        assert stuck["conditions"][0]["reason"] == "Unschedulable" and stuck["phase"] == "Pending"
    else:
        assert stuck["containerStatuses"][0]["state"]["waiting"]["reason"] == reason
    status = api.get("deployments.apps", "web", "default")["status"]  # type: ignore[index]
    assert status["readyReplicas"] == 1 and status["unavailableReplicas"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Available"] == "False"


def test_auto_roll_out_and_write_counters(api: KubernetesEmulator, client: Client) -> None:
    api.auto_roll_out()
    client.ok("POST", DEPLOYMENTS, deployment())
    wait_until(
        lambda: (api.get("deployments.apps", "web", "default") or {}).get("status", {}).get("readyReplicas") == 2,
        what="auto roll-out",
    )
    client.ok("PATCH", f"{DEPLOYMENTS}/web", {"spec": {"replicas": 3}}, content_type="application/merge-patch+json")
    wait_until(lambda: len(api.items("pods", "default")) == 3, what="scale-up")
    client.ok("GET", DEPLOYMENTS)
    assert api.writes() == {("create", "deployments.apps"): 1, ("patch", "deployments.apps"): 1}
    api.reset_counts()
    assert api.write_count() == 0
    client.ok(
        "POST",
        "/api/v1/namespaces/default/events",
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "e"},
            "involvedObject": {"kind": "Deployment", "name": "web"},
        },
    )
    assert api.write_count() == 1 and api.write_count(exclude=("events",)) == 0


def test_concurrent_writers_get_distinct_versions_and_watchers_see_each_change_once(api: KubernetesEmulator) -> None:
    start = api.store.resource_version
    configmaps = "/api/v1/namespaces/default/configmaps"

    def writer(prefix: str) -> None:
        with httpx.Client(base_url=api.url, headers=api.headers, timeout=10) as http:
            for index in range(20):
                body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{prefix}-{index}"}}
                assert http.post(configmaps, json=body).status_code == 201

    threads = [threading.Thread(target=writer, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for n in range(10):  # knob writes from the test thread interleave with HTTP writes
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"knob-{n}", "namespace": "default"}})
    for thread in threads:
        thread.join(30)
    client = Client(api)
    events = client.watch(configmaps, resourceVersion=str(start), until=lambda events: len(events) == 90)
    client.http.close()
    names = [e["object"]["metadata"]["name"] for e in events]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert len(names) == len(set(names)) == 90
    assert versions == sorted(set(versions))


def test_an_emulator_bug_is_a_500_and_is_reported_to_the_fixture(
    api: KubernetesEmulator, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("emulator bug")

    monkeypatch.setattr(api.store, "get", broken)
    code, status = client.call("GET", f"{DEPLOYMENTS}/web")
    assert (code, status["reason"]) == (500, "InternalError")
    assert [str(p) for p in api.problems()] == ["emulator bug"]
    api.api.internal_errors.clear()  # handled: the fixture would fail the test otherwise


def test_cel_sees_values_typed_by_the_schema_and_message_expressions() -> None:
    from tests.support.k8s.schema import validate

    rule = {"rule": "self.ratio < 1.5", "messageExpression": "'ratio ' + string(self.ratio) + ' is too high'"}
    node = {"type": "object", "properties": {"ratio": {"type": "number"}}, "x-kubernetes-validations": [rule]}
    assert validate({"ratio": 1}, node, "spec") == []  # an integer in a number field is a double for CEL
    [cause] = validate({"ratio": 2}, node, "spec")
    assert (cause.field, cause.message) == ("spec", 'Invalid value: "object": ratio 2.0 is too high')


def test_injected_failures_answer_the_next_matching_requests(api: KubernetesEmulator, client: Client) -> None:
    client.ok("POST", DEPLOYMENTS, deployment())
    api.fail_requests(409, verb="patch", resource="deployments.apps", times=2)
    api.fail_requests(503, verb="list", resource="services")
    merge = "application/merge-patch+json"
    patch = {"spec": {"replicas": 3}}
    codes = [client.call("PATCH", f"{DEPLOYMENTS}/web", patch, content_type=merge)[0] for _ in range(3)]
    assert codes == [409, 409, 200]
    code, status = client.call("GET", "/api/v1/namespaces/default/services")
    assert (code, status["reason"]) == (503, "ServiceUnavailable")
    assert client.call("GET", "/api/v1/namespaces/default/services")[0] == 200
    assert api.writes() == {("create", "deployments.apps"): 1, ("patch", "deployments.apps"): 3}
    assert api.writes(succeeded_only=True) == {("create", "deployments.apps"): 1, ("patch", "deployments.apps"): 1}


def test_reapplying_an_unchanged_crd_writes_nothing_and_a_changed_schema_takes_effect(api: KubernetesEmulator) -> None:
    api.install_crd(widget_crd())
    version = api.store.resource_version
    api.install_crd(widget_crd())
    assert api.store.resource_version == version
    relaxed = widget_crd()
    relaxed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"][
        "maximum"
    ] = 100
    api.install_crd(relaxed)
    assert api.create({**widget(size=50), "metadata": {"name": "big", "namespace": "default"}})["spec"]["size"] == 50


@pytest.mark.parametrize("manifest", sorted((REPO / "examples").glob("*/endpoint.yaml")), ids=lambda p: p.parent.name)
def test_every_example_endpoint_passes_the_crd_schema_and_cel_rules(api: KubernetesEmulator, manifest: Path) -> None:
    api.install_crd(ENDPOINT_CRD)
    for doc in yaml.safe_load_all(manifest.read_text()):
        created = api.create({**doc, "metadata": {**doc["metadata"], "namespace": "default"}})
        assert created["metadata"]["generation"] == 1 and created["spec"]["modes"] == doc["spec"]["modes"]
