"""Names and labels of an Endpoint's children: one place, so builders, the watch filters and the scaler agree.

Selectors use only labels that never change for the life of an Endpoint (a Deployment's selector is immutable);
no operator version goes into them.
"""

from __future__ import annotations

from bundleserve.api.variants import child_name

ENDPOINT_LABEL = "bundleserve.dev/endpoint"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "bundleserve-operator"
APP_NAME = "bundleserve-endpoint"
CONFIG_HASH_ANNOTATION = "bundleserve.dev/config-hash"
DESIRED_HASH_ANNOTATION = "bundleserve.dev/desired-hash"
#: On the children of a declared variant (spec.variants): which variant they run. Absent on the children of an
#: Endpoint without variants, whose names and labels stay the endpoint's own.
VARIANT_LABEL = "bundleserve.dev/variant"


def selector_labels(endpoint_name: str, variant: str | None = None) -> dict[str, str]:
    """Labels that select an Endpoint's pods (Deployment selector, Service, PDB); with `variant`, that variant's only.
    The endpoint's own selector (no variant) selects the pods of every variant."""
    labels = {"app.kubernetes.io/name": APP_NAME, ENDPOINT_LABEL: endpoint_name}
    if variant is not None:
        labels[VARIANT_LABEL] = variant
    return labels


def common_labels(endpoint_name: str, variant: str | None = None) -> dict[str, str]:
    """Labels every child carries."""
    return {
        **selector_labels(endpoint_name, variant),
        "app.kubernetes.io/instance": endpoint_name,
        "app.kubernetes.io/component": "model-endpoint",
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def deployment_name(endpoint_name: str, variant: str | None = None) -> str:
    return child_name(endpoint_name, variant)


def service_name(endpoint_name: str, variant: str | None = None) -> str:
    """The Service shares the Endpoint's name so the URL is http://NAME.NAMESPACE.svc.cluster.local; a declared
    variant's Service is `<name>-<variant>` (the gateway sends that variant's share there)."""
    return child_name(endpoint_name, variant)


def config_map_name(endpoint_name: str, variant: str | None = None) -> str:
    return f"{child_name(endpoint_name, variant)}-endpoint"


def autoscaler_name(endpoint_name: str, variant: str | None = None) -> str:
    return child_name(endpoint_name, variant)


def service_url(endpoint_name: str, namespace: str, variant: str | None = None) -> str:
    return f"http://{service_name(endpoint_name, variant)}.{namespace}.svc.cluster.local"
