"""The real node (tests/support/node.py): pods run from images built here, get IPs on the node's bridge, Services
are translated by kube-proxy, `<svc>.<ns>.svc.cluster.local` resolves inside pods, pods reach the API server, and
no route leads off the machine (the traffic rule, checked on the routing tables without sending a packet).
"""

from __future__ import annotations

import ipaddress
import subprocess
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.support import oci
from tests.support.node import POD_RANGE, SERVICE_RANGE, Node
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(900)

#: A pod that serves a page with busybox httpd on 8080 and is Ready only once it answers (a real probe).
WEB_SCRIPT = (
    "mkdir -p /tmp/www && echo hello-from-$(hostname) > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
)


def _namespace(node: Node) -> str:
    name = f"node-{uuid.uuid4().hex[:8]}"
    node.plane.create_namespace(name)
    # Pods need the namespace's default ServiceAccount (the controller-manager creates it).
    wait_until(lambda: node.plane.get("v1", "ServiceAccount", name, "default"), timeout=60, what="default SA")
    return name


def _pod(name: str, script: str, *, labels: dict[str, str] | None = None, ready_port: int = 0) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": oci.BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "securityContext": {"runAsUser": 65534, "runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    if ready_port:
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": ready_port}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [container], "restartPolicy": "Never", "terminationGracePeriodSeconds": 1},
    }


def _create(node: Node, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    return node.plane.apply(obj)


def _pod_status(node: Node, namespace: str, name: str) -> dict[str, Any]:
    pod = node.plane.get("v1", "Pod", namespace, name)
    return (pod or {}).get("status", {})


def _wait_ready(node: Node, namespace: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status = _pod_status(node, namespace, name)
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status if conditions.get("Ready") == "True" else None

    return wait_until(ready, timeout=180, interval=0.5, what=f"pod {namespace}/{name} Ready")


def _wait_finished(node: Node, namespace: str, name: str) -> tuple[str, str]:
    phase = wait_until(
        lambda: (
            _pod_status(node, namespace, name).get("phase") in {"Succeeded", "Failed"}
            and _pod_status(node, namespace, name)["phase"]
        ),
        timeout=180,
        interval=0.5,
        what=f"pod {namespace}/{name} to finish",
    )
    try:
        log = node.plane.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log")  # through the kubelet
    except urllib.error.HTTPError as error:
        raise AssertionError(f"reading the log of {namespace}/{name}: {error.read().decode()}") from None
    return str(phase), str(log)


def test_pods_run_and_services_resolve_and_answer(kube_node: Node) -> None:
    ns = _namespace(kube_node)
    _create(kube_node, ns, _pod("web", WEB_SCRIPT, labels={"app": "web"}, ready_port=8080))
    _create(kube_node, ns, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    })  # fmt: skip
    status = _wait_ready(kube_node, ns, "web")
    pod_ip = ipaddress.ip_address(status["podIP"])
    assert pod_ip in ipaddress.ip_network(kube_node.net.pod_subnet)  # an address on the node's bridge
    cluster_ip = kube_node.plane.get("v1", "Service", ns, "web")["spec"]["clusterIP"]  # type: ignore[index]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(SERVICE_RANGE)

    # From the host (the test process): the pod IP directly, and the ClusterIP once kube-proxy programmed it.
    with urllib.request.urlopen(f"http://{pod_ip}:8080/", timeout=10) as response:
        assert response.read().decode().strip() == "hello-from-web"
    wait_until(
        lambda: urllib.request.urlopen(f"http://{cluster_ip}/", timeout=5).read().decode().strip() == "hello-from-web",
        timeout=120,
        interval=0.5,
        what="the ClusterIP through kube-proxy",
    )

    # From another pod: cluster DNS (CoreDNS) resolves the Service's name, and the Service answers by name.
    fqdn = f"web.{ns}.svc.cluster.local"
    script = f"nslookup {fqdn} && wget -q -O - http://{fqdn}/ && wget -q -O - http://web/"
    _create(kube_node, ns, _pod("client", script))
    phase, log = _wait_finished(kube_node, ns, "client")
    assert phase == "Succeeded", log
    assert cluster_ip in log
    assert log.count("hello-from-web") == 2


def test_pods_reach_the_api_server_through_the_kubernetes_service(kube_node: Node) -> None:
    """The `kubernetes` Service (10.0.0.1:443, by its DNS name) leads to the API server through the relay. busybox's
    TLS client cannot negotiate with Go's TLS 1.2+ defaults, so the pod speaks plain HTTP to the TLS port: only Go's
    TLS server answers that with its own 400 text. (The operator pod of test_node_product.py uses it with TLS.)"""
    ns = _namespace(kube_node)
    # stdin stays open a while: busybox nc stops reading the socket once its stdin ends.
    request = "printf 'GET /version HTTP/1.0\\r\\n\\r\\n'; sleep 5"
    script = f"({request}) | nc -w 10 kubernetes.default.svc.cluster.local 443"
    _create(kube_node, ns, _pod("api", script))
    phase, log = _wait_finished(kube_node, ns, "api")
    assert phase == "Succeeded", log
    assert "Client sent an HTTP request to an HTTPS server." in log, log


def test_no_route_leaves_the_machine_from_the_node(kube_node: Node) -> None:
    """Structural: inside the node's namespace there is no default route, so an address outside the pod range, the
    node's /30 and the (kube-proxy translated) Service range is unreachable. `ip route get` asks the kernel's routing
    table and sends nothing."""
    routes = kube_node.run_in_node("ip", "-4", "route", "show").stdout
    assert "default" not in routes, routes
    assert kube_node.net.pod_subnet in routes  # the bridge
    for outside in ("203.0.113.7", "192.0.2.1", "10.99.0.1", "172.16.0.1"):
        probe = kube_node.run_in_node("ip", "-4", "route", "get", outside)
        assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), (outside, probe)
    # An unallocated ClusterIP: kube-proxy translates none, and the namespace has no route for it either.
    unallocated = str(ipaddress.ip_network(SERVICE_RANGE)[250])
    probe = kube_node.run_in_node("ip", "-4", "route", "get", unallocated)
    assert probe.returncode != 0, probe
    # On the host, both ranges lead into the node's veth, never to the default route.
    for address in (unallocated, str(ipaddress.ip_network(kube_node.net.pod_subnet)[9])):
        host = subprocess.run(["ip", "-4", "route", "get", address], capture_output=True, text=True, check=True)
        assert f"dev {kube_node.net.host_link}" in host.stdout, host.stdout
    assert ipaddress.ip_network(kube_node.net.pod_subnet).subnet_of(ipaddress.ip_network(POD_RANGE))


def test_the_node_is_registered_with_its_identity(kube_node: Node) -> None:
    node = kube_node.plane.get("v1", "Node", None, kube_node.name)
    assert node is not None
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == kube_node.net.node_ip
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.34.10"
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    images = kube_node.ctr("images", "list", "-q").stdout.split()
    assert oci.PAUSE_IMAGE in images and oci.BUSYBOX_IMAGE in images, images  # imported, never pulled
