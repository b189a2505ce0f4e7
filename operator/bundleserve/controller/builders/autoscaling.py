"""Autoscalers: an autoscaling/v2 HPA for request traffic, a KEDA ScaledObject for the async queue.

HPA metric (decided here, documented in docs/operator.md): CPU utilization by default, because metrics-server is
everywhere; with BUNDLESERVE_HPA_METRIC=inflight the Pods metric `bundleserve_router_in_flight_requests` at an
average of `targetConcurrency` (needs prometheus-adapter). The scale-down delay maps to the HPA's stabilization window.
"""

from __future__ import annotations

from typing import Any

from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.controller.builders.common import BuildContext, Manifest, metadata
from bundleserve.controller.config import HpaMetric
from bundleserve.controller.labels import autoscaler_name, deployment_name

INFLIGHT_METRIC = "bundleserve_router_in_flight_requests"
KEDA_API_VERSION = "keda.sh/v1alpha1"


def queue_names(endpoint: Endpoint, variant: str | None = None) -> tuple[str, str]:
    """(stream, consumer group) of the endpoint's async queue, as the queue component names them (namespace and
    name: same-named Endpoints of two namespaces may share one Redis)."""
    from bundleserve.queue import keys

    return keys.stream(keys.queue_id(endpoint.namespace, endpoint.name, variant)), keys.GROUP


def _target_ref(endpoint: Endpoint, variant: str | None) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(endpoint.name, variant)}


def _behavior(endpoint: Endpoint) -> dict[str, Any]:
    return {"scaleDown": {"stabilizationWindowSeconds": min(endpoint.spec.scaling.scale_down_delay_seconds, 3600)}}


def hpa_metrics(endpoint: Endpoint, context: BuildContext) -> list[dict[str, Any]]:
    if context.config.hpa_metric is HpaMetric.INFLIGHT:
        return [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": INFLIGHT_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(endpoint.spec.scaling.target_concurrency)},
                },
            }
        ]
    return [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": context.config.cpu_target_utilization},
            },
        }
    ]


def build_hpa(endpoint: Endpoint, context: BuildContext, variant: str | None = None) -> Manifest:
    scaling = endpoint.spec.scaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(endpoint, autoscaler_name(endpoint.name, variant), variant=variant),
        "spec": {
            "scaleTargetRef": _target_ref(endpoint, variant),
            "minReplicas": max(scaling.min_replicas, 1),
            "maxReplicas": scaling.effective_max_replicas,
            "metrics": hpa_metrics(endpoint, context),
            "behavior": _behavior(endpoint),
        },
    }


def build_scaled_object(endpoint: Endpoint, context: BuildContext, variant: str | None = None) -> Manifest:
    """Queue depth drives replicas (lag = entries not yet delivered to the group, so it works from zero); a mixed
    endpoint also scales on CPU. KEDA creates and owns the HPA itself."""
    scaling = endpoint.spec.scaling
    stream, group = queue_names(endpoint, variant)
    triggers: list[dict[str, Any]] = [
        {
            "type": "redis-streams",
            "metadata": {
                "addressFromEnv": "BUNDLESERVE_REDIS_ADDRESS",
                "usernameFromEnv": "BUNDLESERVE_REDIS_USERNAME",
                "passwordFromEnv": "BUNDLESERVE_REDIS_PASSWORD",
                "stream": stream,
                "consumerGroup": group,
                "lagCount": str(scaling.target_concurrency),
                "activationLagCount": "0",
            },
        }
    ]
    if endpoint.spec.serves(Mode.SYNC) or endpoint.spec.serves(Mode.STREAMING):
        triggers.append(
            {
                "type": "cpu",
                "metricType": "Utilization",
                "metadata": {"value": str(context.config.cpu_target_utilization)},
            }
        )
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": metadata(endpoint, autoscaler_name(endpoint.name, variant), variant=variant),
        "spec": {
            "scaleTargetRef": {"name": deployment_name(endpoint.name, variant)},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.effective_max_replicas,
            "pollingInterval": 10,
            "cooldownPeriod": scaling.scale_down_delay_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(endpoint)}},
            "triggers": triggers,
        },
    }
