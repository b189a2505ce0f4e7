"""The PodDisruptionBudget: voluntary evictions (node drains) take one pod at a time."""

from __future__ import annotations

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.variants import child_name
from bundleserve.controller.builders.common import Manifest, metadata
from bundleserve.controller.labels import selector_labels


def wants_pdb(endpoint: Endpoint) -> bool:
    return endpoint.spec.scaling.effective_max_replicas > 1


def build_pdb(endpoint: Endpoint, variant: str | None = None) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(endpoint, child_name(endpoint.name, variant), variant=variant),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(endpoint.name, variant)},
            # Pods that never became ready (crash loop, bad image) must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
