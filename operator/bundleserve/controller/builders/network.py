"""The NetworkPolicy of an Endpoint's pods: only the router's port is reachable from outside the pod.

The model container listens on its own port inside the same pod (the router calls it on 127.0.0.1), so without a
policy anything in the cluster could call the model directly and skip the router's API keys, limits and admission.
Ingress is admitted on the router port from every source (clients, the gateway, Prometheus scraping the router's
/metrics); kubelet probes are not subject to NetworkPolicies. Egress stays open: routers reach Redis, object storage
and callback URLs, whose addresses no selector names portably (the router's destination guard covers callbacks).
It needs a CNI that enforces NetworkPolicies; on one that does not, the object is accepted and has no effect.
"""

from __future__ import annotations

from bundleserve.api.endpoint import Endpoint
from bundleserve.controller.builders.common import Manifest, metadata
from bundleserve.controller.builders.deployment import router_port
from bundleserve.controller.labels import selector_labels


def build_network_policy(endpoint: Endpoint) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(endpoint, endpoint.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(endpoint.name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": router_port(endpoint), "protocol": "TCP"}]}],
        },
    }
