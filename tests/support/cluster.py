"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
built from the official Go modules pinned in tests/cluster/ and started as subprocesses.

Why: the operator's users run it on real clusters; an emulator cannot show what the real admission chain, RBAC
authorizer, CEL validation, defaulting or garbage collector do. Nothing is downloaded but Go modules (the Go module
proxy); the binaries are built once per version into a cache outside the repository and reused.

- `binaries()` builds (first use, under a file lock so concurrent sessions build once) and returns the paths (the
  control plane, and the kubelet and kube-proxy of tests/support/node.py).
- `ControlPlane(workdir).start()` makes a CA and certificates (openssl), starts the four processes on free ports,
  writes an admin kubeconfig, waits for readiness with a deadline; `.stop()` ends every process group it started.
- `python -m tests.support.cluster [KUBECONFIG]`: the control plane alone, one ready line, stops on Ctrl-C or SIGTERM.

Pods never run on the control plane alone; tests/support/node.py adds a real node (kubelet, kube-proxy, CNI, DNS).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import REPO, free_port

KUBERNETES_VERSION = "v1.34.10"
ETCD_VERSION = "v3.6.10"
MODULES = REPO / "tests" / "cluster"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
#: How long a start may take on a busy 2-core machine (upstream's own CI needs 30-35 s on contended runners).
START_TIMEOUT = float(os.environ.get("BUNDLESERVE_CLUSTER_START_TIMEOUT", "180"))
#: Audit policy: every request at Metadata level (who, verb, resource, code), so tests count the operator's writes and
#: its 403s by user, independently of the other components' traffic.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:kube-scheduler", "system:kube-controller-manager"]},
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system", "system:nodes"]},
        {"level": "None", "users": ["system:kube-proxy", "bundleserve:coredns"]},
        {"level": "None", "verbs": ["watch"]},
        {"level": "Metadata"},
    ],
}


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/bundleserve` (default ~/.cache/bundleserve): outside the repository, kept across clones."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bundleserve"


def _ldflags_kubernetes() -> str:
    """The keys upstream's hack/lib/version.sh stamps, so /version reports the pinned release."""
    major, minor, _ = KUBERNETES_VERSION.lstrip("v").split(".")
    values = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",  # reproducible: the cache key is the version, not the build time
    }
    flags = [
        f"-X {package}.{key}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in values.items()
    ]
    return " ".join(["-s", "-w", *flags])


def _go_env() -> dict[str, str]:
    return {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}


def _build(module: Path, target: Path, packages: list[str], ldflags: str, log: Path) -> None:
    """`go build` into a temporary directory, renamed into place only when complete (no half-built cache)."""
    go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if Path(p).is_file()), None)
    if go is None:
        raise RuntimeError("the test control plane is built from Go modules: install Go >= 1.25 (it is not on PATH)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    argv = [go, "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(staging) + "/", *packages]
    with log.open("ab") as out:
        out.write(f"$ (cd {module.name}) {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(argv, cwd=module, env=_go_env(), stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"building {packages} failed (exit {done.returncode}); see {log}:\n{log.read_text()[-4000:]}"
        )
    staging.chmod(0o755)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    apiserver: Path
    controller_manager: Path
    scheduler: Path
    kubelet: Path
    kube_proxy: Path


def binaries() -> Binaries:
    """The binaries (control plane and node), building what is missing (minutes on the first run; a no-op afterwards)."""
    kube_dir = cache_root() / "k8s" / KUBERNETES_VERSION
    etcd_dir = cache_root() / "etcd" / ETCD_VERSION
    kube_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = cache_root() / "k8s" / ".build.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second session waits for the first build instead of doubling it
        if not all((kube_dir / name).is_file() for name in KUBE_COMMANDS):
            print(f"building Kubernetes {KUBERNETES_VERSION} (first use; cached in {kube_dir})", file=sys.stderr)
            packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBE_COMMANDS]
            _build(MODULES / "kubernetes", kube_dir, packages, _ldflags_kubernetes(), cache_root() / "k8s-build.log")
        if not (etcd_dir / "etcd").is_file():
            print(f"building etcd {ETCD_VERSION} (first use; cached in {etcd_dir})", file=sys.stderr)
            ldflags = "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=release"
            _build(MODULES / "etcd", etcd_dir, ["go.etcd.io/etcd/server/v3"], ldflags, cache_root() / "etcd-build.log")
            built = next(path for path in etcd_dir.iterdir() if path.name in {"server", "v3"})
            built.rename(etcd_dir / "etcd")  # `go build` names it after the package path (".../server/v3")
    return Binaries(
        etcd=etcd_dir / "etcd",
        apiserver=kube_dir / "kube-apiserver",
        controller_manager=kube_dir / "kube-controller-manager",
        scheduler=kube_dir / "kube-scheduler",
        kubelet=kube_dir / "kubelet",
        kube_proxy=kube_dir / "kube-proxy",
    )


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(pki: Path) -> None:
    """One CA; the API server's serving cert (127.0.0.1, localhost, kubernetes.default.svc); an admin client cert
    (group system:masters); the API server's client cert towards kubelets; the service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bundleserve-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=pki)  # fmt: skip
    sans = "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc"
    for name, subject, extensions in (
        ("apiserver", "/CN=kube-apiserver", [sans, "extendedKeyUsage=serverAuth"]),
        ("admin", "/O=system:masters/CN=bundleserve-admin", ["extendedKeyUsage=clientAuth"]),
        # The API server's identity towards kubelets (logs, exec, port-forward), for tests/support/node.py.
        ("kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", ["extendedKeyUsage=clientAuth"]),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=pki)  # fmt: skip
        (pki / f"{name}.ext").write_text("\n".join(extensions) + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _die_with_parent() -> None:
    """Linux: SIGTERM the component when the process that started it dies without stopping it (a killed pytest or
    `make cluster`), so no control plane outlives its session."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig_doc(
    server: str, ca: Path, *, cert: Path | None = None, key: Path | None = None, token: str = ""
) -> dict[str, Any]:
    user: dict[str, str] = (
        {"token": token}
        if token
        else {
            "client-certificate-data": _b64(cert),  # type: ignore[arg-type]
            "client-key-data": _b64(key),  # type: ignore[arg-type]
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "bundleserve-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "bundleserve-test", "context": {"cluster": "bundleserve-test", "user": "user"}}],
        "current-context": "bundleserve-test",
    }


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class ControlPlane:
    """One control plane in `workdir` (certs, etcd data, logs, kubeconfig, audit log). See the module docstring."""

    workdir: Path
    kubeconfig_path: Path | None = None
    processes: list[_Process] = field(default_factory=list)
    url: str = ""
    _resources: dict[tuple[str, str], tuple[str, str, bool]] = field(default_factory=dict)
    _ssl: ssl.SSLContext | None = None  # made once: loading the CA and the admin key per request costs ms each

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.kubeconfig_path or self.workdir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        log = self.workdir / f"{name}.log"
        out = log.open("ab")
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,
        )
        out.close()
        process = _Process(name, popen, log)
        self.processes.append(process)
        return process

    def _wait(self, what: str, ready: Any, deadline: float) -> None:
        while True:
            for process in self.processes:
                if process.popen.poll() is not None:
                    tail = process.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{tail}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the control plane did not get {what} within {START_TIMEOUT:.0f}s")
            time.sleep(0.2)

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            self._ssl = context
        return self._ssl

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        """An admin request (client certificate); JSON in and out. Raises urllib.error.HTTPError on >= 400."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=30) as response:
            text = response.read().decode()
        return json.loads(text) if text and text[0] in "[{" else text

    def start(self) -> ControlPlane:
        """Start everything and wait until it is ready; on failure everything started so far is stopped."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        found = binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + START_TIMEOUT
        make_certificates(self.pki)
        client, peer, secure = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            str(found.etcd), "--name=node0", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=node0=http://127.0.0.1:{peer}", "--unsafe-no-fsync=true",
            "--watch-progress-notify-interval=5s", "--log-level=warn",
        ])  # fmt: skip
        self._wait("etcd healthy", lambda: urllib.request.urlopen(etcd_url + "/health", timeout=2).status == 200,
                   deadline)  # fmt: skip
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.url = f"https://127.0.0.1:{secure}"
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(found.apiserver), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={secure}", f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            # Kubelets by their InternalIP only: a node's hostname would be looked up in the host's DNS.
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC", "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            # The defaults plus the plugin that checks blockOwnerDeletion against the owner's finalizers permission.
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
            "--audit-log-mode=blocking", "--v=1",
        ])  # fmt: skip
        self._write_kubeconfig()
        self._wait("kube-apiserver ready (/readyz)", lambda: self.request("GET", "/readyz") == "ok", deadline)
        admin = str(self.workdir / "admin.kubeconfig")
        self._spawn("kube-controller-manager", [
            str(found.controller_manager), f"--kubeconfig={admin}", "--leader-elect=false",
            "--bind-address=127.0.0.1", "--secure-port=0", "--controllers=*",
            "--use-service-account-credentials=true", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", "--kube-api-qps=100", "--kube-api-burst=200",
            "--concurrent-gc-syncs=5", "--v=1",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(found.scheduler), f"--kubeconfig={admin}", "--leader-elect=false", "--bind-address=127.0.0.1",
            "--secure-port=0", "--v=1",
        ])  # fmt: skip
        # The controller-manager works once the serviceaccount controller created `default` in `default`.
        self._wait("the default ServiceAccount (controller-manager running)",
                   lambda: self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default"), deadline)  # fmt: skip

    def _write_kubeconfig(self) -> None:
        doc = kubeconfig_doc(self.url, self.pki / "ca.crt", cert=self.pki / "admin.crt", key=self.pki / "admin.key")
        text = yaml.safe_dump(doc)
        targets = [self.workdir / "admin.kubeconfig"]
        if self.kubeconfig_path is not None:
            self.kubeconfig_path.parent.mkdir(parents=True, exist_ok=True)
            targets.append(self.kubeconfig_path)
        for target in targets:  # it holds the admin's private key: owner-only, as kubectl writes it
            target.touch(mode=0o600)
            target.chmod(0o600)
            target.write_text(text)

    def version(self) -> str:
        return str(self.request("GET", "/version")["gitVersion"])

    def stop(self) -> None:
        """SIGTERM each process group (newest first), SIGKILL what is left after a grace period."""
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(5)
        self.processes.clear()

    # -- helpers for tests ------------------------------------------------------------------------------------------

    def path(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of a kind (found by discovery, as kubectl does) in a namespace, optionally of one object."""
        key = (api_version, kind)
        if key not in self._resources:
            prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            try:
                served = self.request("GET", prefix)["resources"]
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise
                served = []  # the group/version is not served: KeyError below, as kubectl's "no matches for kind"
            for resource in served:
                if "/" not in resource["name"]:
                    self._resources[(api_version, resource["kind"])] = (
                        prefix,
                        resource["name"],
                        resource["namespaced"],
                    )
        prefix, plural, namespaced = self._resources[key]
        path = prefix + (f"/namespaces/{namespace}" if namespaced and namespace else "") + f"/{plural}"
        return path + (f"/{name}" if name else "")

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace what exists (the admin's `kubectl apply` for whole objects)."""
        meta = obj["metadata"]
        collection = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        try:
            created: dict[str, Any] = self.request("POST", collection, obj)
            return created
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise
        item = collection + f"/{meta['name']}"
        live = self.request("GET", item)
        body = {**obj, "metadata": {**meta, "resourceVersion": live["metadata"]["resourceVersion"]}}
        replaced: dict[str, Any] = self.request("PUT", item, body)
        return replaced

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", self.path(api_version, kind, namespace, name))
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        return found

    def items(
        self, api_version: str, kind: str, namespace: str | None = None, *, selector: str = ""
    ) -> list[dict[str, Any]]:
        query = f"?labelSelector={urllib.parse.quote(selector)}" if selector else ""
        found: list[dict[str, Any]] = self.request("GET", self.path(api_version, kind, namespace) + query)["items"]
        return found

    def create_namespace(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token of a ServiceAccount through the TokenRequest API, as a projected volume would get it."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds}}  # fmt: skip
        found = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        return str(found["status"]["token"])

    def api_client(self) -> Any:
        """The official `kubernetes` client (36.x) logged in as the admin, for tests whose calls read better typed
        (CustomObjectsApi, CoreV1Api, ...). The raw `request` above stays for exact paths, dry runs and error bodies."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audited request so far (see AUDIT_POLICY), oldest first."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")


@contextlib.contextmanager
def running(workdir: Path, kubeconfig: Path | None = None) -> Iterator[ControlPlane]:
    plane = ControlPlane(workdir, kubeconfig_path=kubeconfig).start()
    try:
        yield plane
    finally:
        plane.stop()


def main(argv: list[str]) -> int:
    """`make cluster`: run in the foreground until Ctrl-C or SIGTERM. `--build` only builds the binaries (what
    `make test` does first, so a first build on a fresh machine is not cut by pytest's per-test timeout)."""
    if argv == ["--build"]:
        built = binaries()
        where = f"{built.apiserver.parent}, {built.etcd.parent}"
        print(f"{_now()} control-plane binaries ready: Kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION} ({where})")
        return 0
    kubeconfig = Path(argv[0]) if argv else REPO / ".cluster" / "kubeconfig"
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bundleserve-cluster-") as workdir,
        running(Path(workdir), kubeconfig) as plane,
    ):
        print(
            f"{_now()} cluster ready: Kubernetes {plane.version()} at {plane.url} in {time.monotonic() - started:.0f}s;"
            f" KUBECONFIG={kubeconfig} (Ctrl-C stops it)",
            flush=True,
        )
        while not stop_requested:
            for process in plane.processes:
                if process.popen.poll() is not None:
                    print(f"{process.name} exited with {process.popen.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
