"""Run the real operator (`bundleserve operator` as a subprocess, kopf inside) against an API server (the real control
plane: tests/integration/cluster_harness.py starts it with the chart's ServiceAccount), and read its metrics."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Protocol

from tests.support.processes import Server, bundleserve, free_port
from tests.support.waiting import wait_until

NS = "test"


class ApiServer(Protocol):
    """What the operator process needs of an API server: the environment that points kopf at it (KUBECONFIG)."""

    @property
    def env(self) -> dict[str, str]: ...


class Operator:
    """One `bundleserve operator --namespace test` process (standalone, or in a kopf peering); restartable.
    `all_namespaces=True` runs it cluster-wide instead (`--all-namespaces`, as the Helm chart does by default)."""

    def __init__(
        self,
        emulator: ApiServer,
        workdir: Path,
        env: dict[str, str] | None = None,
        peering: str | None = None,
        *,
        all_namespaces: bool = False,
    ) -> None:
        self.emulator = emulator
        self.workdir = workdir
        self.peering = peering
        self.scope = ["--all-namespaces"] if all_namespaces else ["--namespace", NS]
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**emulator.env, "BUNDLESERVE_IMAGE": "ghcr.io/bundleserve/bundleserve:test", **(env or {})}
        self.port = free_port()
        self.server: Server | None = None
        self.starts = 0

    def start(self) -> Operator:
        self.starts += 1
        peering = ["--peering", self.peering] if self.peering else ["--standalone"]
        argv = bundleserve("operator", *peering, *self.scope, "--health-port", str(self.port))
        self.server = Server(argv, log_path=self.workdir / f"operator-{self.starts}.log", env=self.env)
        self.server.wait_http(f"http://127.0.0.1:{self.port}/readyz", timeout=30)
        return self

    def stop(self) -> int:
        assert self.server is not None
        return self.server.stop(timeout=15)

    def kill(self) -> int:
        """SIGKILL, as a crash or an OOM kill: no graceful goodbye in the peering object."""
        assert self.server is not None
        self.server.kill()
        return self.server.stop()  # the process is gone: this only reaps it and closes its log

    def alive(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def log(self) -> str:
        return self.server.log() if self.server else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples matching the labels (0 when absent)."""
        total = 0.0
        for line in self.metrics().splitlines():
            match = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
            if not match or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match.group(3))
        return total

    def wait_idle(self, names: list[str], *, at_least: int = 1, timeout: float = 30) -> None:
        """Wait until every named Endpoint was reconciled `at_least` times and nothing is queued or running."""

        def idle() -> bool:
            counts = [
                self.metric("bundleserve_operator_reconcile_duration_seconds_count", endpoint=name) for name in names
            ]
            return (
                all(count >= at_least for count in counts)
                and self.metric("bundleserve_operator_reconciles_pending") == 0
            )

        wait_until(idle, timeout=timeout, what=f"the operator to reconcile {len(names)} endpoint(s) and go idle")
