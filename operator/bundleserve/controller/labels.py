"""Names and labels of an Endpoint's children: one place, so builders, the watch filters and the scaler agree.

Selectors use only labels that never change for the life of an Endpoint (a Deployment's selector is immutable);
no operator version goes into them.
"""

from __future__ import annotations

ENDPOINT_LABEL = "bundleserve.dev/endpoint"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "bundleserve-operator"
APP_NAME = "bundleserve-endpoint"
CONFIG_HASH_ANNOTATION = "bundleserve.dev/config-hash"
DESIRED_HASH_ANNOTATION = "bundleserve.dev/desired-hash"


def selector_labels(endpoint_name: str) -> dict[str, str]:
    """Labels that select an Endpoint's pods (Deployment selector, Service, PDB)."""
    return {"app.kubernetes.io/name": APP_NAME, ENDPOINT_LABEL: endpoint_name}


def common_labels(endpoint_name: str) -> dict[str, str]:
    """Labels every child carries."""
    return {
        **selector_labels(endpoint_name),
        "app.kubernetes.io/instance": endpoint_name,
        "app.kubernetes.io/component": "model-endpoint",
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def deployment_name(endpoint_name: str) -> str:
    return endpoint_name


def service_name(endpoint_name: str) -> str:
    """The Service shares the Endpoint's name so the URL is http://NAME.NAMESPACE.svc.cluster.local."""
    return endpoint_name


def config_map_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-endpoint"


def autoscaler_name(endpoint_name: str) -> str:
    return endpoint_name


def service_url(endpoint_name: str, namespace: str) -> str:
    return f"http://{service_name(endpoint_name)}.{namespace}.svc.cluster.local"
