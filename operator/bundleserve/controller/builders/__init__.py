"""Pure builders: Endpoint -> the desired child manifests. No I/O; `bundleserve render` and `reconcile()` both use them."""

from __future__ import annotations

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.variants import served_variants
from bundleserve.controller.builders.autoscaling import build_hpa, build_scaled_object
from bundleserve.controller.builders.common import (
    BuildContext,
    BuildError,
    Manifest,
    Scaler,
    scaler_for,
    serves_http,
    stamp_desired_hash,
)
from bundleserve.controller.builders.configmap import build_config_map
from bundleserve.controller.builders.deployment import build_deployment
from bundleserve.controller.builders.disruption import build_pdb, wants_pdb
from bundleserve.controller.builders.network import build_network_policy
from bundleserve.controller.builders.service import build_service

__all__ = ["BuildContext", "BuildError", "Manifest", "Scaler", "build_children", "scaler_for"]


def build_children(endpoint: Endpoint, context: BuildContext) -> list[Manifest]:
    """Every child the Endpoint should have, in apply order (config before the pods that mount it), each stamped
    with the hash of its desired state. Raises BuildError for a spec that cannot run here.

    Per variant (api.variants): a ConfigMap, a Deployment, its autoscaler and PodDisruptionBudget, and for a declared
    variant its own Service (the gateway's weighted split sends there); per endpoint: the Service in front of every
    variant's pods (status.url) and the NetworkPolicy. An Endpoint without spec.variants has exactly the children it
    had before variants existed, with the same names."""
    if endpoint.spec.local_only:
        raise BuildError("LocalOnly", "spec.localOnly endpoints run only with `bundleserve run`, not in a cluster")
    variants = served_variants(endpoint)
    children = [build_config_map(v.endpoint, v.child_variant) for v in variants]
    if serves_http(endpoint):
        children.append(build_service(endpoint))
        children.extend(build_service(v.endpoint, v.child_variant) for v in variants if v.declared)
    # Before the pods exist, so the model port is never reachable from outside the pod.
    children.append(build_network_policy(endpoint))
    for v in variants:
        children.append(build_deployment(v.endpoint, context, v.child_variant))
        scaler = scaler_for(v.endpoint, context.keda)
        above_zero = scaler is Scaler.DEMAND and v.endpoint.spec.scaling.effective_max_replicas > 1
        if scaler is Scaler.HPA or above_zero:  # the demand gate owns 0 <-> 1, an HPA above
            children.append(build_hpa(v.endpoint, context, v.child_variant))
        elif scaler is Scaler.KEDA:
            children.append(build_scaled_object(v.endpoint, context, v.child_variant))
        if wants_pdb(v.endpoint):
            children.append(build_pdb(v.endpoint, v.child_variant))
    return [stamp_desired_hash(child) for child in children]
