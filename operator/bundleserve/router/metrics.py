"""Prometheus metrics of one router, in its own registry (several apps in one process never collide).

The hot path records into plain Python counters and bucket arrays (the router is one event loop: no locks needed)
and a custom collector turns them into Prometheus families only when /metrics is scraped. prometheus_client's own
metric objects take a lock per observation, which cost measurable throughput at several observations per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Latency buckets from 0.5 ms (a trivial model) to 10 min (the longest sync timeout).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
SIZE_BUCKETS = tuple(float(4**n) for n in range(4, 16))  # 256 B .. 1 GiB


class FastHistogram:
    """Bucket counts and a sum; `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return buckets


_HISTOGRAMS = {
    # attribute: (metric name, help, buckets)
    "duration": (
        "bundleserve_router_request_duration_seconds",
        "Time from receiving a request to the end of its response.",
        LATENCY_BUCKETS,
    ),
    "queue_wait": (
        "bundleserve_router_queue_wait_seconds",
        "Time a request waited for a model slot (admission control).",
        LATENCY_BUCKETS,
    ),
    "model_duration": (
        "bundleserve_router_model_duration_seconds",
        "Time the model took to answer (to the end of the stream for streaming).",
        LATENCY_BUCKETS,
    ),
    "request_bytes": ("bundleserve_router_request_bytes", "Size of request bodies sent to the model.", SIZE_BUCKETS),
    "response_bytes": (
        "bundleserve_router_response_bytes",
        "Size of model answers (sum of chunks for streaming).",
        SIZE_BUCKETS,
    ),
}


class ModeMetrics:
    """The recorders of one invocation mode (sync, streaming, async)."""

    __slots__ = ("duration", "mode", "model_duration", "outcomes", "queue_wait", "request_bytes", "response_bytes")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.outcomes: dict[str, int] = {}
        self.duration = FastHistogram(LATENCY_BUCKETS)
        self.queue_wait = FastHistogram(LATENCY_BUCKETS)
        self.model_duration = FastHistogram(LATENCY_BUCKETS)
        self.request_bytes = FastHistogram(SIZE_BUCKETS)
        self.response_bytes = FastHistogram(SIZE_BUCKETS)

    def outcome(self, outcome: str) -> None:
        """Count a finished request: `success`, `cancelled`, or an error code (`overloaded`, `timeout`, ...)."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def record(
        self,
        outcome: str,
        duration: float,
        queue_wait: float = -1.0,
        model_duration: float = -1.0,
        request_bytes: int = -1,
        response_bytes: int = -1,
    ) -> None:
        """Everything about one finished request in one call (the hot path); negative values were not measured
        (the request ended before that step)."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.duration.observe(duration)
        if request_bytes >= 0:
            self.request_bytes.observe(request_bytes)
            self.queue_wait.observe(queue_wait)
        if model_duration > 0:
            self.model_duration.observe(model_duration)
        if response_bytes >= 0:
            self.response_bytes.observe(response_bytes)


class RouterMetrics(Collector):
    """Requests by mode and outcome; latency (total, queue wait, model); in-model, queued; payload sizes."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.registry = CollectorRegistry(auto_describe=True)
        self._modes: dict[str, ModeMetrics] = {}
        self._in_model: Callable[[], float] = lambda: 0.0
        self._queued: Callable[[], float] = lambda: 0.0
        self.registry.register(self)

    def track(self, in_model: Callable[[], float], queued: Callable[[], float]) -> None:
        self._in_model, self._queued = in_model, queued

    def for_mode(self, mode: str) -> ModeMetrics:
        found = self._modes.get(mode)
        if found is None:
            found = self._modes[mode] = ModeMetrics(mode)
        return found

    def outcome(self, mode: str, outcome: str) -> None:
        self.for_mode(mode).outcome(outcome)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "bundleserve_router_requests",
            "Requests handled by the router, by invocation mode and outcome.",
            labels=("endpoint", "mode", "outcome"),
        )
        families = {
            attribute: HistogramMetricFamily(name, text, labels=("endpoint", "mode"))
            for attribute, (name, text, _) in _HISTOGRAMS.items()
        }
        for mode, metrics in self._modes.items():
            for outcome, count in metrics.outcomes.items():
                requests.add_metric((self.endpoint, mode, outcome), count)
            for attribute, family in families.items():
                histogram: FastHistogram = getattr(metrics, attribute)
                family.add_metric((self.endpoint, mode), histogram.cumulative(), histogram.sum)
        yield requests
        yield from families.values()
        in_model = GaugeMetricFamily(
            "bundleserve_router_in_flight_requests", "Requests currently in the model.", labels=("endpoint",)
        )
        in_model.add_metric((self.endpoint,), self._in_model())
        yield in_model
        queued = GaugeMetricFamily(
            "bundleserve_router_queued_requests", "Requests waiting for a model slot.", labels=("endpoint",)
        )
        queued.add_metric((self.endpoint,), self._queued())
        yield queued
