"""The official AWS SDK clients for SageMaker Runtime, built for the tests from their public registries and cached.

- Java: the SDK for Java v1 (`aws-java-sdk-sagemakerruntime`) and v2 (`sagemakerruntime`), versions pinned in
  tests/sdk_clients/java/pom.xml. Maven resolves them (only the dependency plugin runs, pinned below) into
  `<cache>/maven`; the drivers are compiled with javac into a directory named by the hash of the pom and sources.
- Rust: `aws-sdk-sagemakerruntime` (tests/sdk_clients/rust, Cargo.lock), `cargo build --locked` with its target
  directory in `<cache>/rust-target` (cargo's own incremental cache decides what to rebuild).

`<cache>` is `$XDG_CACHE_HOME/bundleserve/sdk-clients` (default ~/.cache): kept between runs and clones. Builds run
under a file lock (a second session waits instead of building twice). `make sdk-clients` (part of `make test`)
runs `python -m tests.support.sdk_clients --build` before pytest; a test that finds nothing built builds it too.

Each driver runs one operation per process: `driver OP key=value...` and prints one JSON object
(tests/sdk_clients/README.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.cluster import cache_root

ROOT = Path(__file__).resolve().parents[2] / "tests" / "sdk_clients"
JAVA = ROOT / "java"
RUST = ROOT / "rust"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

#: The clients the tests drive, and the typed error each SDK raises for an AWS error code.
CLIENTS = ("java-v1", "java-v2", "rust")
TYPED_ERRORS: dict[str, dict[str, str]] = {
    "java-v1": {
        "ValidationError": "ValidationErrorException",
        "ModelError": "ModelErrorException",
        "ModelNotReadyException": "ModelNotReadyException",
        "ServiceUnavailable": "ServiceUnavailableException",
    },
    "java-v2": {
        "ValidationError": "ValidationErrorException",
        "ModelError": "ModelErrorException",
        "ModelNotReadyException": "ModelNotReadyException",
        "ServiceUnavailable": "ServiceUnavailableException",
        "ModelStreamError": "ModelStreamErrorException",
    },
    "rust": {
        "ValidationError": "ValidationError",
        "ModelError": "ModelError",
        "ModelNotReadyException": "ModelNotReadyException",
        "ServiceUnavailable": "ServiceUnavailable",
        "ModelStreamError": "ModelStreamError",
    },
}
#: Java v1 has no InvokeEndpointWithResponseStream.
STREAMING_CLIENTS = ("java-v2", "rust")


def cache() -> Path:
    return cache_root() / "sdk-clients"


@dataclass(frozen=True)
class Built:
    java_classpath: str  # the SDK jars and the compiled drivers
    rust_driver: Path

    def command(self, client: str, op: str, arguments: dict[str, str]) -> list[str]:
        args = [f"{key}={value}" for key, value in arguments.items()]
        if client == "rust":
            return [str(self.rust_driver), op, *args]
        main = {"java-v1": "bundleserve.DriverV1", "java-v2": "bundleserve.DriverV2"}[client]
        # a small fixed heap and no JIT tiers beyond C1: each call is a short-lived process
        return ["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", self.java_classpath, main, op, *args]


def _run(argv: list[str], log: Path, *, cwd: Path) -> None:
    with log.open("ab") as out:
        out.write(f"$ (cd {cwd}) {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed (exit {done.returncode}); see {log}:\n{log.read_text()[-4000:]}")


def _java_key() -> str:
    digest = hashlib.sha256()
    for path in sorted([JAVA / "pom.xml", *JAVA.glob("src/**/*.java")]):
        digest.update(path.relative_to(JAVA).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _build_java(log: Path) -> str:
    target = cache() / "java" / _java_key()
    classpath_file = target / "classpath.txt"
    if not classpath_file.is_file():
        for tool in ("mvn", "javac"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"the Java SDK drivers need {tool} (a JDK >= 17 and Maven) on PATH")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".java-", dir=target.parent))
        resolved = staging / "dependencies.txt"
        _run(
            [
                "mvn", "-B", "-q", f"-Dmaven.repo.local={cache() / 'maven'}",
                f"{DEPENDENCY_PLUGIN}:build-classpath", f"-Dmdep.outputFile={resolved}",
            ],
            log,
            cwd=JAVA,
        )  # fmt: skip
        jars = resolved.read_text().strip()
        sources = sorted(str(p) for p in JAVA.glob("src/**/*.java"))
        _run(["javac", "--release", "17", "-d", str(staging / "classes"), "-cp", jars, *sources], log, cwd=JAVA)
        (staging / "classpath.txt").write_text(f"{target / 'classes'}:{jars}")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return classpath_file.read_text().strip()


def _build_rust(log: Path) -> Path:
    if shutil.which("cargo") is None:
        raise RuntimeError("the Rust SDK driver needs cargo (a current stable Rust) on PATH")
    target_dir = cache() / "rust-target"
    _run(["cargo", "build", "--locked", "--quiet", "--target-dir", str(target_dir)], log, cwd=RUST)
    return target_dir / "debug" / "sagemaker-driver"


def build() -> Built:
    """Both builds, under one lock; seconds when nothing changed (the Java key matches, cargo finds it fresh)."""
    cache().mkdir(parents=True, exist_ok=True)
    log = cache() / "build.log"
    with (cache() / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        java = _build_java(log)
        rust = _build_rust(log)
        seconds = time.monotonic() - started
        if seconds > 5:
            print(f"built the SageMaker SDK drivers in {seconds:.0f} s (cached in {cache()})", file=sys.stderr)
    return Built(java_classpath=java, rust_driver=rust)


def call(built: Built, client: str, op: str, arguments: dict[str, str], *, timeout: float = 90) -> dict[str, Any]:
    """One SDK call in its own process; the driver's JSON answer."""
    finished = subprocess.run(
        built.command(client, op, arguments), capture_output=True, text=True, timeout=timeout, check=False
    )
    if finished.returncode != 0 or not finished.stdout.strip():
        raise AssertionError(f"{client} {op} exited {finished.returncode}: {finished.stderr[-4000:]}")
    answer: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return answer


if __name__ == "__main__":
    if sys.argv[1:] != ["--build"]:
        sys.exit("usage: python -m tests.support.sdk_clients --build")
    built = build()
    print(f"SageMaker SDK drivers ready: Java (v1, v2) in {cache() / 'java'}, Rust {built.rust_driver}")
