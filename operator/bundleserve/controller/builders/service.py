"""The ClusterIP Service in front of the router (sync and streaming endpoints)."""

from __future__ import annotations

from bundleserve.api.endpoint import Endpoint
from bundleserve.controller.builders.common import Manifest, metadata
from bundleserve.controller.labels import selector_labels, service_name

SERVICE_PORT = 80


def build_service(endpoint: Endpoint, variant: str | None = None) -> Manifest:
    """The endpoint's Service (`variant` None: every variant's pods), or a declared variant's own Service, to which
    the gateway sends that variant's share."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(endpoint, service_name(endpoint.name, variant), variant=variant),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(endpoint.name, variant),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
