"""PID 1 of the test node's namespaces: `unshare --pid --mount --net --fork --kill-child=SIGTERM --mount-proc` runs
`python -m tests.support.node_anchor NAME_FILE HOLD_DIR`, and every node process (containerd, its shims and
containers, kubelet, kube-proxy, CoreDNS) is entered into these namespaces with `nsenter`.

Why a process of its own: whatever happens to the harness (a clean stop, a failed test, a SIGKILLed pytest), this
process gets SIGTERM (`--kill-child`, and unshare dies with its parent), SIGKILLs everything in its PID namespace
(containerd's shims reparent to it, not to the harness), reaps them, removes the node's cgroup directories (named in NAME_FILE, written by the harness once it picked the node's slot),
and exits.
Its mount namespace (overlay rootfs mounts, volume tmpfs, pod netns bind mounts) and network namespace (the bridge,
every iptables rule, the veth to the host) disappear with the last process. Nothing of the node outlives it.

Set up before it reports ready (a line "ready" on stdout):
- sysfs remounted for the new network namespace (CNI's bridge plugin and cAdvisor read /sys/class/net), with the
  host's cgroup hierarchies moved back under /sys/fs/cgroup;
- private tmpfs over /run, /var/lib and /var/log (CNI's result cache, the kubelet's /var/log/containers links,
  runc and shim state): written in the namespace only;
- loopback up, IPv4 forwarding on, bridged traffic through iptables (kube-proxy's rules apply to pod-to-pod traffic).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True)


def remove_cgroups(name: str) -> list[str]:
    """rmdir the cgroup tree `name` in every v1 hierarchy, deepest first; return what could not be removed."""
    left = []
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / name
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        try:
            top.rmdir()
        except OSError as error:
            left.append(f"{top}: {error}")
    return left


def _setup(hold: Path) -> None:
    hold.mkdir(parents=True, exist_ok=True)
    _run("mount", "--rbind", str(CGROUP_ROOT), str(hold))
    _run("mount", "-t", "sysfs", "sysfs", "/sys")
    _run("mount", "--move", str(hold), str(CGROUP_ROOT))
    for path in ("/run", "/var/lib", "/var/log"):
        _run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", path)
    _run("ip", "link", "set", "lo", "up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1\n")


class _Stop(Exception):
    """Raised by the SIGTERM handler: os.wait() would otherwise be retried after the handler (PEP 475)."""


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: list[str]) -> int:
    name_file, hold = argv
    if os.getpid() != 1:  # kill(-1) below must only ever reach this PID namespace
        print("node_anchor must run as PID 1 of a new PID namespace (unshare --pid --fork)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes signal.pause() when an orphan exits
    try:
        _setup(Path(hold))
        print("ready", flush=True)
        while True:
            try:
                os.wait()  # orphans (shims, containers) reparent here: reap them
            except ChildProcessError:
                signal.pause()
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)  # from PID 1: every other process of this PID namespace
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    path = Path(name_file)
    cgroup_name = path.read_text().strip() if path.exists() else ""
    deadline = time.monotonic() + 10
    left: list[str] = []
    while cgroup_name and (left := remove_cgroups(cgroup_name)) and time.monotonic() < deadline:
        time.sleep(0.1)  # the last exiting tasks leave their cgroups asynchronously
    if left:
        print("cgroups left: " + "; ".join(left), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
