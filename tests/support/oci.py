"""Small OCI image archives built here, for the test node's containerd: the sandbox (pause) image and a busybox tool
image. Nothing is pulled from a registry: the files come from this machine (a static C program compiled with gcc,
Debian's busybox-static), and `ctr -n k8s.io images import` loads the archive.

- `write_archive(path, name, files, entrypoint)` writes an OCI image layout (oci-layout, index.json, one layer, config,
  manifest; deterministic: fixed mtimes and owners) as a tar archive, with the image name in the index annotations
  containerd reads (`io.containerd.image.name`, and the tag in `org.opencontainers.image.ref.name`).
- `pause_archive(cache)` and `busybox_archive(cache)` build (once, cached by content) the two images the node uses.

Errors: `ImageBuildError` when gcc or busybox is missing or the compile fails (the message names the command).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

PAUSE_IMAGE = "bundleserve.test/pause:1"
BUSYBOX_IMAGE = "bundleserve.test/busybox:1"

#: The sandbox process: sleeps until SIGINT/SIGTERM, reaps zombies (it is PID 1 of the pod's PID namespace when the
#: pod shares it). Upstream's pause does the same in a few more lines.
PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop}, on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &on_stop, 0);
    sigaction(SIGTERM, &on_stop, 0);
    sigaction(SIGCHLD, &on_child, 0);
    for (;;) pause();
}
"""


class ImageBuildError(RuntimeError):
    """A local image could not be built (missing tool or failed compile)."""


@dataclass(frozen=True)
class LayerFile:
    path: str  # inside the image, without a leading slash
    data: bytes = b""
    mode: int = 0o755
    symlink: str = ""  # a symbolic link to this target instead of a regular file
    directory: bool = False


def _tar_layer(files: list[LayerFile]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in files:
            info = tarfile.TarInfo(item.path)
            info.mtime = 0
            info.mode = item.mode
            if item.directory:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif item.symlink:
                info.type = tarfile.SYMTYPE
                info.linkname = item.symlink
                tar.addfile(info)
            else:
                info.size = len(item.data)
                tar.addfile(info, io.BytesIO(item.data))
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_archive(path: Path, name: str, files: list[LayerFile], entrypoint: list[str]) -> Path:
    """One-layer OCI image archive at `path` named `name` (registry/repo:tag) for linux/amd64."""
    layer = _tar_layer(files)
    compressed = gzip.compress(layer, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": "tests/support/oci.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(compressed),
                "size": len(compressed),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _digest(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
        ],
    }
    entries = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for blob in (compressed, config_bytes, manifest_bytes):
        entries["blobs/sha256/" + _digest(blob).split(":", 1)[1]] = blob
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for member, data in entries.items():
            info = tarfile.TarInfo(member)
            info.mtime = 0
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    partial.rename(path)
    return path


def _cached(cache: Path, stem: str, key: bytes) -> Path:
    return cache / f"{stem}-{hashlib.sha256(key).hexdigest()[:16]}.tar"


def pause_archive(cache: Path) -> Path:
    """The sandbox image (`PAUSE_IMAGE`): PAUSE_C compiled statically with gcc."""
    target = _cached(cache, "pause", PAUSE_C.encode())
    if target.is_file():
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageBuildError("the node's sandbox image is compiled here: install gcc (and libc6-dev)")
    work = cache / "pause-build"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pause.c").write_text(PAUSE_C)
    argv = [gcc, "-static", "-O2", "-s", "-o", str(work / "pause"), str(work / "pause.c")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed: {done.stderr}")
    files = [LayerFile("pause", (work / "pause").read_bytes())]
    return write_archive(target, PAUSE_IMAGE, files, ["/pause"])


#: The busybox applets the node tests use inside pods.
BUSYBOX_APPLETS = (
    "sh", "sleep", "nslookup", "wget", "ssl_client", "cat", "echo", "httpd", "nc", "ls", "ip", "kill", "true", "mkdir",
    "grep", "timeout", "head",
)  # fmt: skip


def busybox_archive(cache: Path) -> Path:
    """A tool image (`BUSYBOX_IMAGE`) from Debian's busybox-static: DNS lookups, HTTP and a shell inside pods."""
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        raise ImageBuildError("the node's tool image is made from busybox-static: apt-get install busybox-static")
    data = busybox.read_bytes()
    target = _cached(cache, "busybox", data + ",".join(BUSYBOX_APPLETS).encode())
    if target.is_file():
        return target
    files = [LayerFile("bin", directory=True), LayerFile("bin/busybox", data)]
    files += [LayerFile(f"bin/{applet}", symlink="busybox", mode=0o777) for applet in BUSYBOX_APPLETS]
    files += [LayerFile("tmp", directory=True, mode=0o1777)]
    return write_archive(target, BUSYBOX_IMAGE, files, ["/bin/sh"])
