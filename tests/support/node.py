"""A real Kubernetes node under the test control plane (tests/support/cluster.py): containerd with runc and the CRI
plugin, the standard CNI plugins (bridge + host-local), the kubelet and kube-proxy built from the same pinned
Kubernetes module, and CoreDNS (tests/cluster/coredns) as the cluster DNS. Pods run; Services work; DNS names resolve.

Layout (see docs/install.md, "Developing"):
- The whole node lives in namespaces of its own: `unshare` starts `tests/support/node_anchor.py` as PID 1 of a new
  PID, mount and network namespace; each component is entered there with `nsenter`. When the harness stops, or dies
  in any way, the anchor SIGKILLs everything in the PID namespace and removes the node's cgroups; the mount namespace
  (overlay rootfs, volumes, pod netns) and the network namespace (bridge, iptables rules, veth) vanish with it.
- Traffic rule, made structural: the node's network namespace has no default route. Its only links are loopback,
  the CNI bridge (the pod range) and one veth to the host (a /30). A packet from a pod to any address that is not a
  pod, a Service kube-proxy translates, the node or the host end of the veth gets "no route" inside the namespace;
  nothing a pod or a test does can send a packet off the machine. On the host, the pod range and the Service range
  are routed into that veth (so tests reach pods and ClusterIPs from the host), never to the default route.
- The API server (bound to 127.0.0.1 for the other suites) is reached from the node through `tcp_relay` on the host
  end of the veth; the `kubernetes` Service's EndpointSlice points there, so pods with in-cluster config reach it.
- Identities: the kubelet has a client cert in group system:nodes (the Node authorizer and NodeRestriction apply),
  kube-proxy is `system:kube-proxy` (bootstrap role system:node-proxier), CoreDNS a user bound to a read-only role.
- Images are never pulled: `import_image(archive)` loads an OCI archive with `ctr -n k8s.io images import`; the
  sandbox image is `tests/support/oci.py`'s pause, compiled here. Pods use `imagePullPolicy: Never`/`IfNotPresent`.

Errors: `NodeError` (a component exited, or readiness did not come within START_TIMEOUT; the message carries the
component's log tail).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support import oci
from tests.support.cluster import (
    MODULES,
    ControlPlane,
    _build,
    _die_with_parent,
    _openssl,
    binaries,
    cache_root,
    kubeconfig_doc,
)
from tests.support.processes import REPO

COREDNS_VERSION = "v1.14.7"
#: A loaded 2-core machine: the kubelet's first sync, CNI and the first sandbox take a while.
START_TIMEOUT = float(os.environ.get("BUNDLESERVE_NODE_START_TIMEOUT", "240"))
POD_RANGE = "10.244.0.0/16"
SERVICE_RANGE = "10.0.0.0/24"  # the control plane's --service-cluster-ip-range
CLUSTER_DOMAIN = "cluster.local"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins


class NodeError(RuntimeError):
    """The node could not start or a component died (the message has the log tail)."""


def coredns_binary() -> Path:
    """CoreDNS built from tests/cluster/coredns (pinned), cached like the Kubernetes binaries."""
    target = cache_root() / "coredns" / COREDNS_VERSION
    lock_path = cache_root() / "k8s" / ".build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "coredns").is_file():
            print(f"building CoreDNS {COREDNS_VERSION} (first use; cached in {target})", file=sys.stderr)
            ldflags = f"-s -w -X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}"
            _build(MODULES / "coredns", target, ["."], ldflags, cache_root() / "coredns-build.log")
    return target / "coredns"


@dataclass(frozen=True)
class Addressing:
    """The addresses of node number `slot` (several nodes, e.g. a cleanup test's, can coexist on one host)."""

    slot: int

    @property
    def host_link(self) -> str:
        return f"bsn{self.slot}h"

    @property
    def node_link(self) -> str:
        return f"bsn{self.slot}n"

    @property
    def host_ip(self) -> str:
        return f"10.250.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"10.250.{self.slot}.2"

    @property
    def pod_subnet(self) -> str:
        return f"10.244.{self.slot}.0/24"

    @property
    def node_name(self) -> str:
        return f"bundleserve-node-{self.slot}"

    @property
    def cgroup_name(self) -> str:
        return f"bundleserve-node-{self.slot}"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@dataclass
class _Component:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Node:
    """One node of `plane` in `workdir`. `start()` returns once the Node is Ready, kube-proxy has synced, CoreDNS
    answers and the images are imported; `stop()` (or the harness dying) removes every trace of it."""

    plane: ControlPlane
    workdir: Path
    images: list[Path] = field(default_factory=list)
    components: list[_Component] = field(default_factory=list)
    net: Addressing = field(default_factory=lambda: Addressing(0))
    started_in: float = 0.0
    anchor_pid: int = 0
    _anchor: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def name(self) -> str:
        return self.net.node_name

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> Node:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        started = time.monotonic()
        deadline = started + START_TIMEOUT
        found = binaries()
        coredns = coredns_binary()
        cache = cache_root() / "node-images"
        archives = [oci.pause_archive(cache), oci.busybox_archive(cache), *self.images]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_anchor()  # picks the slot, and so the node's name: before its identities
        self._make_identities()
        self._connect_network()
        self._write_configs()
        self._spawn_in_node("containerd", ["containerd", "--config", str(self.workdir / "containerd.toml")])
        self._wait("containerd", lambda: self.ctr("version").returncode == 0, deadline)
        for archive in archives:
            self.import_image(archive)
        self._spawn_host("api-relay", [
            sys.executable, "-m", "tests.support.tcp_relay", self.net.host_ip, str(self.relay_port),
            "127.0.0.1", str(self.plane.url.rsplit(":", 1)[1]),
        ])  # fmt: skip
        self._publish_api_endpoint()
        self._spawn_in_node("kubelet", [
            str(found.kubelet), f"--config={self.workdir / 'kubelet.yaml'}",
            f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}", f"--root-dir={self.workdir / 'kubelet'}",
            f"--hostname-override={self.name}", f"--node-ip={self.net.node_ip}", "--v=1",
        ])  # fmt: skip
        self._spawn_in_node("kube-proxy", [str(found.kube_proxy), f"--config={self.workdir / 'kube-proxy.yaml'}",
                                           f"--hostname-override={self.name}", "--v=1"])  # fmt: skip
        self._spawn_in_node("coredns", [str(coredns), "-conf", str(self.workdir / "Corefile")])
        self._wait("the Node Ready without taints", self._node_ready, deadline)
        self._wait("kube-proxy synced", lambda: _http_ok(f"http://{self.net.node_ip}:10256/healthz"), deadline)
        self._wait("CoreDNS ready", lambda: _http_ok(f"http://{self.net.node_ip}:8181/ready"), deadline)
        self.started_in = time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM the anchor (it SIGKILLs the node's processes and removes its cgroups), then the host-side parts."""
        if self._anchor is not None and self._anchor.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # the anchor itself: unshare ignores SIGTERM with --fork
                os.kill(self.anchor_pid or self._anchor.pid, signal.SIGTERM)
            try:
                self._anchor.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._anchor.pid, signal.SIGKILL)
                self._anchor.wait(10)
        if self._anchor is not None and self._anchor.stdout is not None:
            self._anchor.stdout.close()
        for component in reversed(self.components):
            if component.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(component.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.popen.wait(10)
        self.components.clear()
        _ip("link", "delete", self.net.host_link)  # gone with the namespace already; this is the fallback
        from tests.support.node_anchor import remove_cgroups

        remove_cgroups(self.net.cgroup_name)
        shutil.rmtree(self.workdir / "containerd", ignore_errors=True)  # unpacked layers: hundreds of MB

    # -- setup steps -------------------------------------------------------------------------------------------------

    def _make_identities(self) -> None:
        """Client certificates signed by the control plane's CA: the kubelet (system:nodes), kube-proxy, CoreDNS."""
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca = self.plane.pki
        for name, subject in (
            ("kubelet", f"/O=system:nodes/CN=system:node:{self.name}"),
            ("kube-proxy", "/CN=system:kube-proxy"),
            ("coredns", "/CN=bundleserve:coredns"),
        ):
            _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
                     "-out", f"{name}.csr", cwd=pki)  # fmt: skip
            (pki / f"{name}.ext").write_text("extendedKeyUsage=clientAuth\n")
            _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca / "ca.crt"), "-CAkey", str(ca / "ca.key"),
                     "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
                     cwd=pki)  # fmt: skip
        self.plane.apply({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "bundleserve:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        })  # fmt: skip
        self.plane.apply({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "bundleserve:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "bundleserve:coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bundleserve:coredns"}],
        })  # fmt: skip

    def _pick_slot(self) -> Addressing:
        """The first slot whose host link does not exist yet; creating the veth claims it (atomic in the kernel)."""
        for slot in range(64):
            net = Addressing(slot)
            peer = ["peer", "name", net.node_link, "netns", str(self.anchor_pid)]
            if _ip("link", "add", net.host_link, "type", "veth", *peer).returncode == 0:
                return net
        raise NodeError("no free node slot (64 node veths exist on this host?)")

    def _start_anchor(self) -> None:
        # The slot (and so the cgroup name) is chosen once the namespaces exist; the anchor reads it at exit.
        argv = ["unshare", "--pid", "--mount", "--net", "--fork", "--kill-child=SIGTERM", "--mount-proc",
                "--propagation", "private", sys.executable, "-m", "tests.support.node_anchor",
                str(self.workdir / "cgroup-name"), str(self.workdir / "cgroup-hold")]  # fmt: skip
        log = (self.workdir / "anchor.log").open("ab")
        self._anchor = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO,
            env={**os.environ, "PATH": PATH, "PYTHONPATH": str(REPO)},
            start_new_session=True,
            preexec_fn=_killed_with_parent,
        )
        log.close()
        line = self._anchor.stdout.readline().decode().strip() if self._anchor.stdout else ""
        if line != "ready":
            self._anchor.wait(10)
            raise NodeError(f"the node's namespaces did not start: {line!r}\n{self._tail('anchor')}")
        children = Path(f"/proc/{self._anchor.pid}/task/{self._anchor.pid}/children").read_text().split()
        self.anchor_pid = int(children[0])
        self.net = self._pick_slot()
        (self.workdir / "cgroup-name").write_text(self.net.cgroup_name)

    def _connect_network(self) -> None:
        net = self.net
        for args in (
            ["addr", "add", f"{net.host_ip}/30", "dev", net.host_link],
            ["link", "set", net.host_link, "up"],
        ):
            self._check(_ip(*args), "ip " + " ".join(args))
        for args in (
            ["addr", "add", f"{net.node_ip}/30", "dev", net.node_link],
            ["link", "set", net.node_link, "up"],
        ):
            self._check(self._in_node(["ip", *args]), "ip " + " ".join(args) + " (in the node)")
        # Host routes into the node only: the pod subnet, and the Service range (a metric per slot, so a second
        # node's route coexists; either leads into a namespace without a way out).
        self._check(_ip("route", "add", net.pod_subnet, "via", net.node_ip), "host route to the pods")
        self._check(
            _ip("route", "add", SERVICE_RANGE, "via", net.node_ip, "metric", str(100 + net.slot)),
            "host route to the Service range",
        )
        # The cgroup tree the kubelet nests its pods under (cgroupRoot must exist), cpuset filled from the root.
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if hierarchy.name == "unified" or not (hierarchy / "tasks").exists():
                continue
            top = hierarchy / net.cgroup_name
            top.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (top / knob).exists():
                    (top / knob).write_text((hierarchy / knob).read_text())

    def _write_configs(self) -> None:
        net, work, pki = self.net, self.workdir, self.workdir / "pki"
        self.relay_port = _free_port_on(net.host_ip)
        (work / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (work / "cni" / "net.d" / "10-bundleserve.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "bundleserve",
            "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": net.pod_subnet}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(work / "cni" / "ipam")},
            }],
        }, indent=1))  # fmt: skip
        containerd = work / "containerd"
        (work / "containerd.toml").write_text(f"""version = 2
root = "{containerd / "root"}"
state = "{containerd / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{containerd / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{oci.PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  # This machine's root lacks CAP_SYS_RESOURCE: no process may lower its oom_score_adj (runc failed the sandbox with
  # "nsexec: failed to update /proc/self/oom_score_adj: Permission denied"). Keep containers at containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{work / "cni" / "net.d"}"
    max_conf_num = 1
""")
        relay = f"https://{net.host_ip}:{self.relay_port}"
        for name in ("kubelet", "kube-proxy", "coredns"):
            doc = kubeconfig_doc(relay, self.plane.pki / "ca.crt", cert=pki / f"{name}.crt", key=pki / f"{name}.key")
            doc["clusters"][0]["cluster"]["tls-server-name"] = "kubernetes"  # the serving cert's SAN
            path = work / f"{name}.kubeconfig"
            path.touch(mode=0o600)
            path.write_text(yaml.safe_dump(doc))
        (work / "resolv.conf").write_text("")  # no host search domains or nameservers leak into pods
        (work / "kubelet.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "cgroupRoot": f"/{net.cgroup_name}",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": net.node_ip, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.plane.pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "clusterDomain": CLUSTER_DOMAIN, "clusterDNS": [net.node_ip], "resolvConf": str(work / "resolv.conf"),
            "podLogsDir": str(work / "pod-logs"),
            # Images cannot be pulled again: never garbage-collect them; evict only when the disk is really full.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "serializeImagePulls": False, "kubeAPIQPS": 50, "kubeAPIBurst": 100,
            "syncFrequency": "10s", "fileCheckFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s", "rotateCertificates": False,
            "oomScoreAdj": 0,  # no CAP_SYS_RESOURCE here (see restrict_oom_score_adj above)
        }))  # fmt: skip
        (work / "kube-proxy.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": POD_RANGE, "oomScoreAdj": 0,
            "clientConnection": {"kubeconfig": str(work / "kube-proxy.kubeconfig")},
            "healthzBindAddress": f"{net.node_ip}:10256", "metricsBindAddress": "127.0.0.1:10249",
            # Leave the host-wide conntrack table size alone (only the initial namespace may set it).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"minSyncPeriod": "0s", "syncPeriod": "30s"},
        }))  # fmt: skip
        (work / "Corefile").write_text(f""".:53 {{
    errors
    ready {net.node_ip}:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {work / "coredns.kubeconfig"}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
""")

    def _publish_api_endpoint(self) -> None:
        """The `kubernetes` Service's endpoint: the relay on the host end of the veth (the API server's own
        endpoint reconciler is off: it would publish 127.0.0.1, which no pod can reach)."""
        self.plane.apply({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": "bundleserve-test-node"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.net.host_ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": self.relay_port, "protocol": "TCP"}],
        })  # fmt: skip

    # -- processes ---------------------------------------------------------------------------------------------------

    def _in_node(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._nsenter(argv), capture_output=True, text=True, check=False, **kwargs)

    def _nsenter(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--target={self.anchor_pid}", "--pid", "--mount", "--net", "--", *argv]

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.workdir / f"{name}.log"
        out = log.open("ab")
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 cwd=REPO, env={**os.environ, "PATH": PATH}, preexec_fn=_die_with_parent)  # fmt: skip
        out.close()
        self.components.append(_Component(name, popen, log))

    def _spawn_in_node(self, name: str, argv: list[str]) -> None:
        self._spawn(name, self._nsenter(argv))

    def _spawn_host(self, name: str, argv: list[str]) -> None:
        self._spawn(name, argv)

    def _tail(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def _check(self, done: subprocess.CompletedProcess[str], what: str) -> None:
        if done.returncode != 0:
            raise NodeError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()}")

    def _wait(self, what: str, ready: Callable[[], Any], deadline: float) -> None:
        while True:
            for component in self.components:
                if component.popen.poll() is not None:
                    raise NodeError(f"{component.name} exited with {component.popen.returncode}:\n"
                                    f"{self._tail(component.name)}")  # fmt: skip
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise NodeError(f"the node did not get {what} within {START_TIMEOUT:.0f}s")
            time.sleep(0.25)

    def _node_ready(self) -> bool:
        node = self.plane.get("v1", "Node", None, self.name)
        if node is None:
            return False
        conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        return conditions.get("Ready") == "True" and not node["spec"].get("taints")

    # -- for tests ---------------------------------------------------------------------------------------------------

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`ctr` against this node's containerd (namespace k8s.io, the CRI plugin's)."""
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)

    def import_image(self, archive: Path) -> None:
        """Load an OCI (or docker) image archive into the node's containerd; pods use it without pulling."""
        done = self.ctr("images", "import", "--no-unpack=false", str(archive))
        if done.returncode != 0:
            done = self.ctr("images", "import", str(archive))
        self._check(done, f"ctr images import {archive}")

    def run_in_node(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command in the node's namespaces (network: the node's; e.g. `iptables-save`, `ip route`)."""
        return self._in_node(list(argv), timeout=timeout)

    def logs(self, name: str) -> str:
        return self._tail(name)


def _killed_with_parent() -> None:
    """PR_SET_PDEATHSIG with SIGKILL for `unshare`: with --fork it ignores SIGTERM (its child is meant to handle it),
    so only SIGKILL ends it when the harness dies; --kill-child then sends the anchor SIGTERM."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _free_port_on(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running(plane: ControlPlane, workdir: Path, images: list[Path] | None = None) -> Iterator[Node]:
    node = Node(plane, workdir, images=list(images or [])).start()
    try:
        yield node
    finally:
        node.stop()


def main(argv: list[str]) -> int:
    """`make cluster`: the control plane and a node in the foreground until Ctrl-C or SIGTERM. Prints one
    ready line with the node's start-to-ready time."""
    from tests.support import cluster

    if argv == ["--build"]:
        started = time.monotonic()
        built, dns = binaries(), coredns_binary()
        images = [oci.pause_archive(cache_root() / "node-images"), oci.busybox_archive(cache_root() / "node-images")]
        print(f"{cluster._now()} cluster binaries ready in {time.monotonic() - started:.0f}s: Kubernetes "
              f"{cluster.KUBERNETES_VERSION} ({built.kubelet.parent}), etcd {cluster.ETCD_VERSION}, CoreDNS "
              f"{COREDNS_VERSION} ({dns.parent}), node images {[p.name for p in images]}")  # fmt: skip
        return 0
    kubeconfig = Path(argv[0]) if argv else REPO / ".cluster" / "kubeconfig"
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        if ready_line is None:  # still starting: interrupt the start (its cleanup stops what it started)
            raise KeyboardInterrupt
        stop_requested = True

    ready_line: str | None = None
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bundleserve-cluster-") as workdir,
        cluster.running(Path(workdir) / "control-plane", kubeconfig) as plane,
    ):
        plane_ready = time.monotonic() - started
        with running(plane, Path(workdir) / "node") as node:
            ready_line = (
                f"{cluster._now()} cluster ready: control plane in {plane_ready:.1f}s, node {node.name} "
                f"({node.net.node_ip}, pods {node.net.pod_subnet}) ready in {node.started_in:.1f}s; "
                f"KUBECONFIG={kubeconfig} workdir={workdir} (Ctrl-C stops it)"
            )
            print(ready_line, flush=True)
            while not stop_requested:
                for component in [*plane.processes, *node.components]:
                    if component.popen.poll() is not None:
                        print(f"{component.name} exited with {component.popen.returncode}; stopping", file=sys.stderr)
                        return 1
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
