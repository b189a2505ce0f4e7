"""Run the containers of a pod template with runc, as the pod spec asks, from an image's OCI archive.

Why: the operator's pods run the project's image as a non-root user with a read-only root filesystem, every
capability dropped and no privilege escalation, writing only to the volumes it mounts. Whether the image works like
that is a property of the image, so it is checked by running the image so, with a real OCI runtime (runc), instead of
being assumed.

- `unpack(archive, dest)` extracts an OCI archive (tests/support/images.py) with umoci into a root filesystem and
  returns it with the image's config (entrypoint, cmd, env, working directory).
- `runtime_spec(...)` is the pure translation of one container of a pod template (command/args, env, securityContext,
  volumeMounts) plus the pod's securityContext into an OCI runtime spec, starting from `runc spec`'s defaults.
- `PodSandbox` holds the pod's network namespace (loopback only, like a pod's before its CNI runs; nothing else is
  reachable from it) and runs HTTP requests from inside it; `Runc` runs, lists and deletes containers in a state
  directory of its own.

Limits, compared with a kubelet and containerd: the network namespace is held by a sleeping `unshare` process instead
of a pause container; no seccomp profile is loaded (RuntimeDefault is the runtime's own profile, not part of the pod
spec); no cgroup limits; no /etc/hosts, /etc/resolv.conf or termination-log mounts; no probes (the caller polls);
env only from literal values (`valueFrom` raises: a test of this kind has no Secrets). emptyDirs are host directories
of mode 0777 bind-mounted into every container that mounts them, configMaps read-only directories of their keys.

Errors: `PodSpecError` for a pod template this module cannot translate; umoci's failure is an OSError with
its output, runc's a `subprocess.CalledProcessError`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.images import archive_image_name
from tests.support.waiting import wait_until


class PodSpecError(Exception):
    """The pod template uses something this runner does not translate."""


@dataclass(frozen=True)
class UnpackedImage:
    rootfs: Path
    config: dict[str, Any]  # the image config's `config` object: Entrypoint, Cmd, Env, WorkingDir, User


def unpack(archive: Path, dest: Path) -> UnpackedImage:
    """`umoci raw unpack` of the archive's one image into dest/rootfs; the layout is extracted next to it and removed."""
    name = archive_image_name(archive)
    layout = dest / "layout"
    layout.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="tar")
    rootfs = dest / "rootfs"
    done = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{name}", str(rootfs)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise OSError(f"umoci could not unpack {archive} (exit {done.returncode}): {done.stderr[-2000:]}")
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    for path in sorted(layout.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    layout.rmdir()
    return UnpackedImage(rootfs=rootfs, config=config.get("config", {}))


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, value = digest.split(":", 1)
    return (layout / "blobs" / algorithm / value).read_bytes()


def default_spec() -> dict[str, Any]:
    """`runc spec`'s own defaults (mounts, masked and read-only /proc paths, namespaces, device rules)."""
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["runc", "spec", "--bundle", work], check=True, capture_output=True)
        spec: dict[str, Any] = json.loads((Path(work) / "config.json").read_text())
        return spec


def argv_of(container: dict[str, Any], image: dict[str, Any]) -> list[str]:
    """Kubernetes' rule: `command` replaces the image's Entrypoint, `args` its Cmd (and a command drops the Cmd)."""
    command = container.get("command")
    args = container.get("args")
    if command is not None:
        return [*command, *(args or [])]
    return [*(image.get("Entrypoint") or []), *(args if args is not None else image.get("Cmd") or [])]


def env_of(container: dict[str, Any], image: dict[str, Any]) -> list[str]:
    merged = dict(item.split("=", 1) for item in image.get("Env") or [])
    for item in container.get("env", []):
        if "value" not in item:
            raise PodSpecError(f"env {item['name']} comes from {sorted(item)}; only literal values are translated")
        merged[item["name"]] = item["value"]
    return [f"{name}={value}" for name, value in merged.items()]


def runtime_spec(
    base: dict[str, Any],
    *,
    container: dict[str, Any],
    pod_security: dict[str, Any],
    image: UnpackedImage,
    volume_paths: dict[str, Path],
    netns: Path,
    hostname: str,
) -> dict[str, Any]:
    """The OCI runtime spec of one container of a pod, as the pod template's fields ask."""
    security = {**pod_security, **container.get("securityContext", {})}
    if "runAsUser" not in security:
        raise PodSpecError("the pod template sets no runAsUser")
    spec = copy.deepcopy(base)
    capabilities = security.get("capabilities", {})
    if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
        raise PodSpecError(f"only `drop: [ALL]` is translated, the template has {capabilities}")
    spec["process"] = {
        "terminal": False,
        "user": {"uid": security["runAsUser"], "gid": security.get("runAsGroup", security["runAsUser"])},
        "args": argv_of(container, image.config),
        "env": env_of(container, image.config),
        "cwd": container.get("workingDir") or image.config.get("WorkingDir") or "/",
        "capabilities": {name: [] for name in ("bounding", "effective", "permitted", "inheritable", "ambient")},
        "noNewPrivileges": security.get("allowPrivilegeEscalation") is False,
    }
    spec["root"] = {"path": str(image.rootfs), "readonly": bool(security.get("readOnlyRootFilesystem"))}
    spec["hostname"] = hostname
    for mount in container.get("volumeMounts", []):
        options = ["rbind", "nosuid", "nodev", "ro" if mount.get("readOnly") else "rw"]
        source = volume_paths[mount["name"]]
        spec["mounts"].append(
            {"destination": mount["mountPath"], "type": "bind", "source": str(source), "options": options}
        )
    spec["linux"]["namespaces"] = [
        {"type": "network", "path": str(netns)} if ns["type"] == "network" else ns for ns in spec["linux"]["namespaces"]
    ]
    return spec


def volume_paths(volumes: list[dict[str, Any]], config_maps: dict[str, dict[str, str]], work: Path) -> dict[str, Path]:
    """A host directory per pod volume: emptyDirs empty and writable by anyone, configMaps holding their keys."""
    found: dict[str, Path] = {}
    for volume in volumes:
        path = work / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "emptyDir" in volume:
            path.chmod(0o777)
        elif "configMap" in volume:
            for key, text in config_maps[volume["configMap"]["name"]].items():
                (path / key).write_text(text)
                (path / key).chmod(0o444)
        else:
            raise PodSpecError(f"volume {volume['name']} is neither an emptyDir nor a configMap: {sorted(volume)}")
        found[volume["name"]] = path
    return found


class Runc:
    """runc with a state directory of its own, so `list` shows exactly the containers this caller made."""

    def __init__(self, state: Path):
        self.state = state

    def _argv(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.state), *args]

    def write_bundle(self, bundle: Path, spec: dict[str, Any]) -> None:
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))

    def run(self, name: str, bundle: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run in the foreground until the process exits; the container is deleted afterwards in any case."""
        try:
            return subprocess.run(
                self._argv("run", "--bundle", str(bundle), name),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            self.delete(name)

    def start(self, name: str, bundle: Path, log: Path) -> int:
        """Run detached; the container's stdout and stderr go to `log`. Returns the container's init pid."""
        with log.open("wb") as out:
            subprocess.run(
                self._argv("run", "--detach", "--pid-file", str(bundle / "pid"), "--bundle", str(bundle), name),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=60,
            )
        return int((bundle / "pid").read_text())

    def delete(self, name: str) -> None:
        subprocess.run(self._argv("delete", "--force", name), capture_output=True, check=False, timeout=60)

    def list(self) -> list[str]:
        done = subprocess.run(self._argv("list", "--format", "json"), capture_output=True, text=True, check=True)
        return [item["id"] for item in json.loads(done.stdout or "null") or []]


class PodSandbox:
    """The pod's network namespace: loopback only, held by a sleeping process (a pause container's job)."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"], stdin=subprocess.DEVNULL)
        own = os.readlink("/proc/self/ns/net")
        wait_until(lambda: os.readlink(self.netns) != own, timeout=10, what="the pod's network namespace")
        subprocess.run(["nsenter", f"--net={self.netns}", "ip", "link", "set", "lo", "up"], check=True)

    @property
    def netns(self) -> Path:
        return Path(f"/proc/{self.holder.pid}/ns/net")

    def http(self, method: str, url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
        """One HTTP request from inside the namespace (a Python child joined to it): (status, body)."""
        done = subprocess.run(
            ["nsenter", f"--net={self.netns}", sys.executable, "-c", _CLIENT, method, url],
            input=body or b"",
            capture_output=True,
            timeout=timeout + 10,
            check=True,
        )
        status, _, payload = done.stdout.partition(b"\n")
        return int(status), payload

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(timeout=10)


_CLIENT = """
import sys, urllib.error, urllib.request
method, url = sys.argv[1], sys.argv[2]
data = sys.stdin.buffer.read() or None
request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
sys.stdout.buffer.write(str(status).encode() + b"\\n" + body)
"""


def process_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict: what the kernel says the container's process runs with."""
    fields = (line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields}


def root_mount_options(pid: int) -> list[str]:
    """The mount options of the process's root filesystem, from its mountinfo."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise PodSpecError(f"process {pid} has no root mount in its mountinfo")
