"""Prometheus metrics of one router, in its own registry (several apps in one process never collide).

Label children are bound once and cached, so recording costs a dict lookup and an add on the hot path;
the in-model and queued gauges read the admission controller only when scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Latency buckets from 0.5 ms (a trivial model) to 10 min (the longest sync timeout).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
SIZE_BUCKETS = tuple(float(4**n) for n in range(4, 16))  # 256 B .. 1 GiB


class RouterMetrics:
    """Request counts by mode and outcome; latency (total, queue wait, model); in-flight, queued; payload sizes."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("endpoint", "mode")
        self.requests = Counter(
            "bundleserve_router_requests_total",
            "Requests handled by the router, by invocation mode and outcome.",
            ("endpoint", "mode", "outcome"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "bundleserve_router_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "bundleserve_router_queue_wait_seconds",
            "Time a request waited for a model slot (admission control).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_duration = Histogram(
            "bundleserve_router_model_duration_seconds",
            "Time the model took to answer (to the end of the stream for streaming).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_bytes = Histogram(
            "bundleserve_router_request_bytes",
            "Size of request bodies sent to the model.",
            labels,
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.response_bytes = Histogram(
            "bundleserve_router_response_bytes",
            "Size of model answers (sum of chunks for streaming).",
            labels,
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.in_model = Gauge(
            "bundleserve_router_in_flight_requests",
            "Requests currently in the model.",
            ("endpoint",),
            registry=self.registry,
        )
        self.queued = Gauge(
            "bundleserve_router_queued_requests",
            "Requests waiting for a model slot.",
            ("endpoint",),
            registry=self.registry,
        )
        self._outcomes: dict[tuple[str, str], Counter] = {}

    def track(self, in_model: Callable[[], float], queued: Callable[[], float]) -> None:
        self.in_model.labels(self.endpoint).set_function(in_model)
        self.queued.labels(self.endpoint).set_function(queued)

    def outcome(self, mode: str, outcome: str) -> None:
        child = self._outcomes.get((mode, outcome))
        if child is None:
            child = self._outcomes[(mode, outcome)] = self.requests.labels(self.endpoint, mode, outcome)
        child.inc()

    def for_mode(self, mode: str) -> ModeMetrics:
        return ModeMetrics(self, mode)


class ModeMetrics:
    """The histogram children of one mode, bound once."""

    __slots__ = ("duration", "metrics", "mode", "model_duration", "queue_wait", "request_bytes", "response_bytes")

    def __init__(self, metrics: RouterMetrics, mode: str) -> None:
        values = (metrics.endpoint, mode)
        self.metrics = metrics
        self.mode = mode
        self.duration = metrics.duration.labels(*values)
        self.queue_wait = metrics.queue_wait.labels(*values)
        self.model_duration = metrics.model_duration.labels(*values)
        self.request_bytes = metrics.request_bytes.labels(*values)
        self.response_bytes = metrics.response_bytes.labels(*values)

    def outcome(self, outcome: str) -> None:
        self.metrics.outcome(self.mode, outcome)
