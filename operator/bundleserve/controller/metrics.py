"""Prometheus metrics of the operator (own registry: tests run several operators in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.reconcile_seconds = Histogram(
            "bundleserve_operator_reconcile_duration_seconds",
            "Time to reconcile one Endpoint (children and status).",
            ["namespace", "endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reconcile_errors = Counter(
            "bundleserve_operator_reconcile_errors_total",
            "Reconciles that failed (API errors) or ended Degraded by a spec problem, by reason.",
            ["namespace", "endpoint", "reason"],
            registry=self.registry,
        )
        self.api_writes = Counter(
            "bundleserve_operator_api_writes_total",
            "Writes to the Kubernetes API made by reconcile and the scaler, by verb and kind.",
            ["verb", "kind"],
            registry=self.registry,
        )
        self.endpoints = Gauge(
            "bundleserve_operator_endpoints",
            "Endpoints known to this operator, by readiness (true/false).",
            ["ready"],
            registry=self.registry,
        )
        self.scaler_replicas = Gauge(
            "bundleserve_operator_scaler_replicas",
            "Replicas last set by the operator's own queue-depth scaler.",
            ["namespace", "endpoint"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "bundleserve_operator_reconciles_pending",
            "Reconciles running or queued (coalesced child events); 0 when the operator is idle.",
            registry=self.registry,
        )
        self._readiness: dict[tuple[str, str], bool] = {}

    def set_ready(self, namespace: str, name: str, ready: bool | None) -> None:
        """Track readiness per endpoint (None forgets it) and refresh the by-readiness gauge."""
        if ready is None:
            self._readiness.pop((namespace, name), None)
        else:
            self._readiness[(namespace, name)] = ready
        ready_count = sum(self._readiness.values())
        self.endpoints.labels(ready="true").set(ready_count)
        self.endpoints.labels(ready="false").set(len(self._readiness) - ready_count)
