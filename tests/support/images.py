"""The project's two images, built on this machine from its own Dockerfiles without Docker, a registry or a pull.

Why: the images are what a cluster runs, so they are built and run here like everything else instead of being assumed.
The Dockerfiles stay the ones people with Docker and a registry use, unchanged; only their base differs: the
`python:3.11.13-slim-bookworm` that `PYTHON_IMAGE` names cannot be pulled here, so an equivalent is made from Debian's
packages through the machine's own apt sources (mmdebstrap: python3, python3-venv, python-is-python3, ca-certificates;
groupadd/useradd come with the minimal system) and passed as `--build-arg PYTHON_IMAGE=...` with `--pull=never`.
Python in that base is Debian's 3.11 (the official image has a newer 3.11 patch release under /usr/local); the lock is
for 3.11 either way. Its one addition is /etc/pip.conf pointing pip at the system CA store; while a RUN step runs, the
machine's own CA bundle is bind-mounted over that store (not part of any layer), so pip trusts what the machine trusts.

Contract (`make image`, `make test`, tests/integration/test_image_runtime.py and the real node share it):

- `project_images() -> ProjectImages`: the OCI archives (`oci-archive` tars of an OCI image layout with one manifest,
  whose `org.opencontainers.image.ref.name` is the full image name) of `ghcr.io/bundleserve/bundleserve:<version>`
  and `ghcr.io/bundleserve/examples:<version>`, the names the chart and examples/*/endpoint.yaml use. Builds what is
  missing, under a file lock so concurrent sessions build once; returns at once when the cache holds the build of the
  current inputs. Cache: `cache_root()/images/` (the same root as tests/support/cluster.py): `<key>/*.tar` (the key
  hashes the Dockerfiles, .dockerignore, everything the build context lets in, the locks, this module and the base's
  key), `storage/` and `run/` (buildah's own store, overlay driver: nothing under /var/lib/containers; after a build it
  keeps only that build's images and layers, the cache of the next one), `build.log`.
  The base is keyed by the host's apt sources, the forwarded apt settings and the package list. Removing the
  directory removes all of it (`make clean-images`).
- `import_into_containerd(archive, address, namespace="k8s.io") -> str`: `ctr --address ADDRESS -n NAMESPACE images
  import ARCHIVE` into a running containerd; returns the image name it now holds (nothing is pulled, so the name is
  just a name: pods use `imagePullPolicy: Never` or `IfNotPresent`).
- `python -m tests.support.images` (`make image`) builds and prints one `name archive` line per image.

Errors: `ImageError` is the one error of this module; `ImageBuildError` (a build step failed: the command and the tail
of build.log) and `ImageImportError` (ctr refused the archive: its output) derive from it. A missing tool is an
`ImageBuildError` naming the Debian package (`make image` installs them).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from bundleserve.controller.config import DEFAULT_IMAGE
from tests.support.cluster import cache_root
from tests.support.processes import REPO

log = logging.getLogger(__name__)

BUNDLESERVE_IMAGE = DEFAULT_IMAGE  # the operator's default router/runtime image
EXAMPLES_IMAGE: str = yaml.safe_load((REPO / "examples" / "iris" / "endpoint.yaml").read_text())["spec"]["bundle"][
    "image"
]
DOCKERFILE = REPO / "Dockerfile"
EXAMPLES_DOCKERFILE = REPO / "examples" / "Dockerfile"
#: What the local base installs on top of Debian's minimal system (which has passwd: groupadd, useradd).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
#: Left out of the base like the official slim images leave them out: documentation, manual pages, translations.
BASE_PATH_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
#: apt settings of the host that the base's package download must share (a snapshot archive's expired Release
#: files, a proxy); forwarded only when the host sets them, read with apt-config, never written anywhere.
FORWARDED_APT_SETTINGS = (
    "Acquire::Check-Valid-Until",
    "Acquire::Check-Date",
    "Acquire::http::Proxy",
    "Acquire::https::Proxy",
)
#: The locks the Dockerfiles install (the other locks do not change the images).
IMAGE_LOCKS = tuple(REPO / "requirements" / name for name in ("image.txt", "build.txt", "examples-image.txt"))
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONF = f"[global]\ncert = {SYSTEM_CA_BUNDLE}\n"
#: Debian packages of the tools, by command.
TOOLS = {"buildah": "buildah", "mmdebstrap": "mmdebstrap", "apt-config": "apt", "ctr": "containerd"}
STORAGE_DRIVER = "overlay"  # checked on this kind of VM as root on ext4; vfs would copy every layer in full


class ImageError(Exception):
    """Base of this module's errors."""


class ImageBuildError(ImageError):
    """A step of the base or image build failed (or its tool is missing)."""


class ImageImportError(ImageError):
    """containerd did not import an archive."""


@dataclass(frozen=True)
class ProjectImages:
    """The two OCI archives; `archives()` maps each image name to its archive."""

    bundleserve: Path
    examples: Path

    def archives(self) -> dict[str, Path]:
        return {BUNDLESERVE_IMAGE: self.bundleserve, EXAMPLES_IMAGE: self.examples}


def images_dir() -> Path:
    return cache_root() / "images"


def _digest(parts: list[tuple[str, bytes]]) -> str:
    sha = hashlib.sha256()
    for name, content in parts:
        sha.update(f"{name}\0{len(content)}\0".encode())
        sha.update(content)
    return sha.hexdigest()[:16]


def host_apt_sources() -> list[Path]:
    """The host's enabled apt source files (one-line `.list` and deb822 `.sources`), passed to mmdebstrap as they are."""
    found = [Path("/etc/apt/sources.list")]
    directory = Path("/etc/apt/sources.list.d")
    if directory.is_dir():
        found += sorted(p for p in directory.iterdir() if p.suffix in {".list", ".sources"})
    return [p for p in found if p.is_file() and any(_is_entry(line) for line in p.read_text().splitlines())]


def _is_entry(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")


def forwarded_apt_options() -> list[str]:
    """`Name "value";` for each FORWARDED_APT_SETTINGS the host's apt configuration sets."""
    dump = _run(["apt-config", "dump"], what="reading the host's apt configuration").stdout
    wanted = {name.lower(): name for name in FORWARDED_APT_SETTINGS}
    options = []
    for line in dump.splitlines():
        name, _, value = line.partition(" ")
        if name.lower() in wanted and value.endswith(";"):
            options.append(f"{wanted[name.lower()]} {value}")
    return sorted(options)


def base_suite() -> str:
    """The Debian release the Dockerfile's default base is built on (`python:...-slim-bookworm` -> bookworm)."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.split("=", 1)[1].split("@")[0].rsplit("-", 1)[1]
    raise ImageBuildError("the Dockerfile has no `ARG PYTHON_IMAGE=` default to take the Debian release from")


def base_key(sources: list[Path], apt_options: list[str]) -> str:
    parts = [(str(p), p.read_bytes()) for p in sources]
    parts += [("apt", "\n".join(apt_options).encode()), ("suite", base_suite().encode())]
    parts += [("packages", " ".join(BASE_PACKAGES).encode()), ("excludes", " ".join(BASE_PATH_EXCLUDES).encode())]
    parts += [("pip.conf", PIP_CONF.encode())]
    return _digest(parts)


def context_files() -> list[Path]:
    """Every file the builds read: both Dockerfiles, .dockerignore and what it lets into the context (a superset)."""
    fixed = [DOCKERFILE, EXAMPLES_DOCKERFILE, REPO / ".dockerignore", REPO / "pyproject.toml", REPO / "README.md"]
    sources = [
        p
        for p in (REPO / "operator").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts)
    ]
    return sorted({*fixed, *sources, *IMAGE_LOCKS, *(REPO / "examples").glob("*/*.py")})


def images_key(base: str) -> str:
    parts = [(str(p.relative_to(REPO)), p.read_bytes()) for p in context_files()]
    parts += [("module", Path(__file__).read_bytes()), ("base", base.encode())]
    parts += [("names", f"{BUNDLESERVE_IMAGE} {EXAMPLES_IMAGE}".encode())]
    return _digest(parts)


def _run(
    argv: list[str], *, what: str, stdin: str | None = None, log_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a build step; its output goes to build.log (when given) and a failure raises ImageBuildError."""
    tool = argv[0]
    if shutil.which(tool) is None:
        package = TOOLS.get(tool, tool)
        raise ImageBuildError(f"{what}: `{tool}` is not installed (Debian package {package}; `make image` installs it)")
    if log_path is None:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ImageBuildError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr[-4000:]}")
        return done
    with log_path.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, input=stdin, stdout=out, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise ImageBuildError(f"{what} failed (exit {done.returncode}); see {log_path}:\n{tail}")
    return done


def _buildah(*args: str) -> list[str]:
    root = images_dir()
    return [
        "buildah",
        "--root",
        str(root / "storage"),
        "--runroot",
        str(root / "run"),
        "--storage-driver",
        STORAGE_DRIVER,
        *args,
    ]


def _has_image(name: str) -> bool:
    done = subprocess.run(_buildah("inspect", "--type", "image", name), capture_output=True, check=False)
    return done.returncode == 0


def build_base(key: str, sources: list[Path], apt_options: list[str], build_log: Path) -> str:
    """The local stand-in for the official Python base, as `localhost/bundleserve-base:<key>` in buildah's store."""
    name = f"localhost/bundleserve-base:{key}"
    if _has_image(name):
        return name
    log.info("building the base image %s with mmdebstrap (first use; minutes)", name)
    with tempfile.TemporaryDirectory(dir=images_dir(), prefix=".base-") as work:
        rootfs = Path(work) / "rootfs.tar"
        pip_conf = Path(work) / "pip.conf"
        pip_conf.write_text(PIP_CONF)
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            *[f"--aptopt={option}" for option in apt_options],
            *[f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_PATH_EXCLUDES],
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",  # the licences stay
            # The image keeps no apt source (it would name the machine's package host) and no apt lists.
            '--customize-hook=rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*',
            f"--customize-hook=copy-in {pip_conf} /etc",
            "--format=tar",
            base_suite(),
            str(rootfs),
            *[str(p) for p in sources],
        ]
        _run(argv, what="mmdebstrap (the base's root filesystem)", log_path=build_log)
        container = _run(_buildah("from", "--quiet", "scratch"), what="buildah from scratch").stdout.strip()
        try:
            _run(_buildah("add", "--quiet", container, str(rootfs), "/"), what="buildah add", log_path=build_log)
            config = [
                "--env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env=LANG=C.UTF-8",
                '--cmd=["python3"]',
                "--label=org.opencontainers.image.description=local stand-in for the official Python base "
                "(Debian's python3 through this machine's apt sources; tests/support/images.py)",
            ]
            _run(_buildah("config", *config, container), what="buildah config", log_path=build_log)
            _run(_buildah("commit", "--quiet", container, name), what="buildah commit", log_path=build_log)
        finally:
            subprocess.run(_buildah("rm", container), capture_output=True, check=False)
    return name


def _build_image(dockerfile: Path, name: str, build_args: dict[str, str], build_log: Path) -> None:
    mounts = [f"--volume={SYSTEM_CA_BUNDLE}:{SYSTEM_CA_BUNDLE}:ro"] if SYSTEM_CA_BUNDLE.is_file() else []
    argv = _buildah(
        "build",
        "--isolation=chroot",  # no runtime, network or cgroup set-up for RUN steps; they see the host's network
        "--pull=never",
        "--layers",  # a change of the sources alone reuses the dependency layers
        *mounts,
        *[f"--build-arg={key}={value}" for key, value in build_args.items()],
        f"--file={dockerfile}",
        f"--tag={name}",
        str(REPO),
    )
    _run(argv, what=f"building {name} from {dockerfile.relative_to(REPO)}", log_path=build_log)


def _push(name: str, target: Path, build_log: Path) -> None:
    staging = target.with_name(f".{target.name}.partial")
    staging.unlink(missing_ok=True)
    argv = _buildah("push", "--quiet", name, f"oci-archive:{staging}:{name}")
    _run(argv, what=f"writing {name} to an OCI archive", log_path=build_log)
    staging.rename(target)


def stale_images(build_output: str, listing: str, keep_names: set[str]) -> list[str]:
    """The IDs in `listing` (`buildah images --all --no-trunc --format '{{.ID}} {{.Name}}:{{.Tag}}'`, whose columns
    buildah pads with spaces) that the build whose output is `build_output` neither made nor reused (its `--> ID`
    and `--> Using cache ID` lines) and that carry none of `keep_names`."""
    kept = set(re.findall(r"^--> (?:Using cache )?([0-9a-f]{11,64})$", build_output, re.MULTILINE))
    stale = []
    for line in listing.splitlines():
        image_id, _, name = line.strip().partition(" ")
        image_id = image_id.removeprefix("sha256:")
        if image_id and name.strip() not in keep_names and not any(image_id.startswith(p) for p in kept):
            stale.append(image_id)
    return stale


def _prune_storage(build_output: str, keep_names: set[str]) -> None:
    """Drop every image of buildah's store that this build neither made nor reused, so the store holds one build's
    layers (its cache for the next change) instead of growing by the examples image's size with every change."""
    listing = _run(_buildah("images", "--all", "--no-trunc", "--format", "{{.ID}} {{.Name}}:{{.Tag}}"), what="listing")
    stale = stale_images(build_output, listing.stdout, keep_names)
    if stale:
        done = subprocess.run(_buildah("rmi", *stale), capture_output=True, text=True, check=False)
        if done.returncode != 0:  # a smaller cache is an optimisation; a failure only leaves more on disk
            log.warning("could not remove %d old images from buildah's store: %s", len(stale), done.stderr[-500:])


def project_images() -> ProjectImages:
    """The two archives, building what is missing (minutes the first time; a hash of the inputs afterwards)."""
    root = images_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second session waits for the first build instead of doubling it
        sources = host_apt_sources()
        if not sources:
            raise ImageBuildError("the host has no apt sources (/etc/apt/sources.list, sources.list.d/) to build from")
        apt_options = forwarded_apt_options()
        base = base_key(sources, apt_options)
        target = root / images_key(base)
        found = ProjectImages(bundleserve=target / "bundleserve.tar", examples=target / "examples.tar")
        if found.bundleserve.is_file() and found.examples.is_file():
            return found
        build_log = root / "build.log"
        build_log.write_text("")
        base_name = build_base(base, sources, apt_options, build_log)
        log.info("building %s and %s with buildah (log: %s)", BUNDLESERVE_IMAGE, EXAMPLES_IMAGE, build_log)
        _build_image(DOCKERFILE, BUNDLESERVE_IMAGE, {"PYTHON_IMAGE": base_name}, build_log)
        _build_image(EXAMPLES_DOCKERFILE, EXAMPLES_IMAGE, {"BUNDLESERVE_IMAGE": BUNDLESERVE_IMAGE}, build_log)
        target.mkdir(exist_ok=True)
        _push(BUNDLESERVE_IMAGE, found.bundleserve, build_log)
        _push(EXAMPLES_IMAGE, found.examples, build_log)
        _prune_storage(build_log.read_text(errors="replace"), keep_names={base_name, BUNDLESERVE_IMAGE, EXAMPLES_IMAGE})
        for stale in root.iterdir():  # archives of older inputs
            if (
                stale.is_dir()
                and stale != target
                and len(stale.name) == len(target.name)
                and not stale.name.startswith(".")
            ):
                shutil.rmtree(stale)
        return found


def archive_image_name(archive: Path) -> str:
    """The image name an OCI archive carries (its index's `org.opencontainers.image.ref.name`)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            if member is None:
                raise KeyError("index.json")
            index = json.load(member)
    except (KeyError, tarfile.TarError, OSError, ValueError) as error:
        raise ImageImportError(f"{archive} has no index.json: not an OCI archive ({error})") from error
    names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index.get("manifests", [])]
    if len(names) != 1 or not names[0]:
        raise ImageImportError(f"{archive} should name exactly one image, it names {names}")
    return str(names[0])


def import_into_containerd(archive: Path, address: str, namespace: str = "k8s.io") -> str:
    """Import one archive into the containerd listening on `address`; return the image name it holds now."""
    name = archive_image_name(archive)
    if shutil.which("ctr") is None:
        raise ImageImportError("`ctr` is not installed (Debian package containerd)")
    ctr = ["ctr", "--address", address, "-n", namespace, "images"]
    done = subprocess.run([*ctr, "import", str(archive)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageImportError(
            f"ctr images import {archive} failed (exit {done.returncode}): {done.stdout}{done.stderr}"
        )
    listed = subprocess.run([*ctr, "ls", "--quiet"], capture_output=True, text=True, check=False)
    if name not in listed.stdout.split():
        raise ImageImportError(
            f"containerd imported {archive} but does not list {name}: {listed.stdout}{listed.stderr}"
        )
    return name


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        images = project_images()
    except ImageError as error:
        print(f"make image: {error}", file=sys.stderr)
        return 1
    for name, path in images.archives().items():
        print(f"{name} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
