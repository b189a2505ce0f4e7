"""Pure builders: Endpoint -> the desired child manifests. No I/O; `bundleserve render` and `reconcile()` both use them."""

from __future__ import annotations

from bundleserve.api.endpoint import Endpoint
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
    with the hash of its desired state. Raises BuildError for a spec that cannot run here."""
    if endpoint.spec.local_only:
        raise BuildError("LocalOnly", "spec.localOnly endpoints run only with `bundleserve run`, not in a cluster")
    children = [build_config_map(endpoint)]
    if serves_http(endpoint):
        children.append(build_service(endpoint))
    # Before the pods exist, so the model port is never reachable from outside the pod.
    children.append(build_network_policy(endpoint))
    children.append(build_deployment(endpoint, context))
    scaler = scaler_for(endpoint, context.keda)
    if scaler is Scaler.HPA or (scaler is Scaler.DEMAND and endpoint.spec.scaling.effective_max_replicas > 1):
        children.append(build_hpa(endpoint, context))
    elif scaler is Scaler.KEDA:
        children.append(build_scaled_object(endpoint, context))
    if wants_pdb(endpoint):
        children.append(build_pdb(endpoint))
    return [stamp_desired_hash(child) for child in children]
