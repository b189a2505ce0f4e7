"""The gateway's registry and the pure parts of its Endpoint watch: name resolution, the documented errors, the
listing shape the SDK relies on, and how API objects and watch events become entries."""

from __future__ import annotations

from typing import Any

import pytest

from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.api.errors import ModeNotServed, NotFound
from bundleserve.gateway.kube import KubeAccess, KubeConfigError, apply_event, build_entry, collection_path
from bundleserve.gateway.proxy import downstream_headers
from bundleserve.gateway.registry import EndpointEntry, Registry


def obj(
    name: str, modes: list[str], namespace: str = "default", created: str | None = None, **status: Any
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "7"},
        "spec": {"modes": modes, "bundle": {"image": "example.com/m:1", "python": {"entrypoint": "m:predict"}}},
    }
    if created:
        document["metadata"]["creationTimestamp"] = created
    if status:
        document["status"] = status
    return document


def entry(name: str, modes: list[str], namespace: str = "default", created: str | None = None) -> EndpointEntry:
    return EndpointEntry(endpoint=Endpoint.model_validate(obj(name, modes, namespace, created)), router_url="http://r")


def test_resolve_answers_the_documented_errors() -> None:
    registry = Registry([entry("echo", ["sync"])])
    assert registry.resolve("echo", Mode.SYNC).name == "echo"
    with pytest.raises(NotFound):
        registry.resolve("nope")
    with pytest.raises(ModeNotServed) as refused:
        registry.resolve("echo", Mode.ASYNC)
    assert refused.value.status == 400
    assert "serves: sync" in refused.value.message


def test_a_same_named_endpoint_in_another_namespace_never_takes_the_name_from_the_older_one() -> None:
    """Issue 17 (7): a same-named Endpoint created in another namespace made the gateway answer 400 "ambiguous" for
    the original. The older Endpoint keeps the name, whichever order the registry learns them in."""
    original = entry("echo", ["sync"], "a-team", "2026-01-01T00:00:00Z")
    newcomer = entry("echo", ["sync"], "0-intruder", "2026-02-01T00:00:00Z")
    for order in ([original, newcomer], [newcomer, original]):
        assert Registry(order).resolve("echo").namespace == "a-team"
    registry = Registry([original, newcomer])
    registry.remove("a-team", "echo")
    assert registry.resolve("echo").namespace == "0-intruder"  # the name is free again


def test_describe_is_the_shape_the_sdk_reads() -> None:
    assert entry("echo", ["sync", "streaming"]).describe() == {
        "name": "echo",
        "modes": ["sync", "streaming"],
        "ready": False,
    }


def test_replace_all_drops_endpoints_that_vanished() -> None:
    registry = Registry([entry("old", ["sync"])])
    registry.replace_all([entry("new", ["sync"])])
    assert [e.name for e in registry.entries()] == ["new"]


def test_build_entry_reads_readiness_from_status_and_never_its_url() -> None:
    """Issue 17 (7): the gateway sent API keys to whatever `status.url` said; it now always calls the Service the
    operator creates for the Endpoint."""
    ready = {"type": "Ready", "status": "True", "reason": "ReplicasAvailable"}
    built = build_entry(obj("echo", ["sync"], "ml", conditions=[ready], url="http://collector.attacker.example/"))
    assert built is not None
    assert built.ready
    assert built.router_url == "http://echo.ml.svc.cluster.local"
    pending = build_entry(obj("echo", ["sync"], "ml", conditions=[{**ready, "status": "False"}]))
    assert pending is not None
    assert not pending.ready
    assert pending.router_url == "http://echo.ml.svc.cluster.local"


def test_build_entry_ignores_an_object_that_does_not_parse() -> None:
    assert (
        build_entry({"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "x"}}) is None
    )


def test_watch_events_update_the_registry() -> None:
    registry = Registry()
    assert apply_event(registry, {"type": "ADDED", "object": obj("echo", ["sync"])}) == "7"
    assert registry.find("echo") is not None
    apply_event(registry, {"type": "DELETED", "object": obj("echo", ["sync"])})
    assert registry.find("echo") is None
    assert apply_event(registry, {"type": "ERROR", "object": {"code": 410}}) is None


def test_collection_paths_name_the_resource_fully() -> None:
    assert collection_path(None) == "/apis/bundleserve.dev/v1alpha1/endpoints"
    assert collection_path("ml") == "/apis/bundleserve.dev/v1alpha1/namespaces/ml/endpoints"


def test_in_cluster_access_needs_the_service_host(tmp_path: Any) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        KubeAccess.in_cluster(env={}, sa_dir=tmp_path)
    access = KubeAccess.in_cluster(env={"KUBERNETES_SERVICE_HOST": "fd00::1"}, sa_dir=tmp_path)
    assert access.server == "https://[fd00::1]:443"
    (tmp_path / "token").write_text("one\n")
    assert access.headers()["Authorization"] == "Bearer one"
    (tmp_path / "token").write_text("two\n")  # rotated: read again on the next connect
    assert access.headers()["Authorization"] == "Bearer two"


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    kept = downstream_headers({"Transfer-Encoding": "chunked", "Connection": "close", "Content-Type": "text/plain"})
    assert kept == {"Content-Type": "text/plain"}
