"""A node leaves nothing behind, even when its harness is SIGKILLed: no process, container, mount, network namespace,
link, route, iptables rule or cgroup of it remains on the host.

The harness runs as `python -m tests.support.node` (what `make cluster` runs) in a process of its own, a pod runs
on it (so there is a shim, a container, an overlay mount, a pod netns, a veth and kube-proxy rules), then the harness
is SIGKILLed like a killed pytest: only PR_SET_PDEATHSIG and the node's anchor (tests/support/node_anchor.py) clean up.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.support import oci
from tests.support.processes import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(900)


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _pids_in_netns(inode: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "net") == inode:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _host(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _leftovers(workdir: str, slot: int, netns: str) -> list[str]:
    left = []
    if pids := _pids_mentioning(workdir):
        left.append(f"processes {pids}")
    if pids := _pids_in_netns(netns):
        left.append(f"processes in the node's netns {pids}")
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if workdir in line]
    if mounts:
        left.append(f"mounts {mounts}")
    if f"bsn{slot}h" in _host("ip", "-o", "link"):
        left.append("the host veth")
    if f"10.250.{slot}.2" in _host("ip", "-4", "route"):
        left.append("host routes into the node")
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/bundleserve-node-{slot}")]
    if cgroups:
        left.append(f"cgroups {cgroups}")
    if "KUBE-" in _host("iptables-save"):
        left.append("kube-proxy's rules in the host's iptables")
    return left


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    kubeconfig = tmp_path / "kubeconfig"
    with (tmp_path / "harness.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.node", str(kubeconfig)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def test_a_sigkilled_harness_leaves_nothing_of_the_node(harness: subprocess.Popen[str], tmp_path: Path) -> None:
    assert "KUBE-" not in _host("iptables-save")  # the baseline: the host has no kube-proxy rules
    assert harness.stdout is not None
    line = harness.stdout.readline()
    match = re.search(r"node bundleserve-node-(\d+) .* workdir=(\S+)", line)
    assert match, f"no ready line: {line!r}\n{(tmp_path / 'harness.log').read_text()[-3000:]}"
    slot, workdir = int(match[1]), match[2]
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(tmp_path / "kubeconfig")))
    wait_until(lambda: api.read_namespaced_service_account("default", "default"), timeout=60, what="default SA")
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
        "spec": {"containers": [{"name": "main", "image": oci.BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                 "command": ["/bin/sleep", "3600"]}], "terminationGracePeriodSeconds": 30},
    }  # fmt: skip
    api.create_namespaced_pod("default", pod)
    wait_until(lambda: api.read_namespaced_pod("sleeper", "default").status.phase == "Running", timeout=180,
               interval=0.5, what="the pod running")  # fmt: skip
    anchor = next(pid for pid in _pids_mentioning("tests.support.node_anchor") if pid in _pids_mentioning(workdir))
    netns = os.readlink(f"/proc/{anchor}/ns/net")
    assert len(_pids_in_netns(netns)) >= 5  # anchor, containerd, kubelet, kube-proxy, CoreDNS, shim, the pod
    assert _leftovers(workdir, slot, netns)  # the check sees a running node (it can fail)

    os.kill(harness.pid, signal.SIGKILL)
    harness.wait(30)
    try:
        wait_until(lambda: not _leftovers(workdir, slot, netns), timeout=120, interval=0.5,
                   what="every trace of the node gone")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the SIGKILLed harness could not remove its temporary directory
