"""What every builder shares: the build inputs, object metadata with owner reference, and the hashes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.controller.config import OperatorConfig
from bundleserve.controller.labels import DESIRED_HASH_ANNOTATION, common_labels

Manifest = dict[str, Any]


class BuildError(ValueError):
    """The Endpoint cannot be turned into children (a spec the CRD let through, or operator configuration missing).

    `reason` is the CamelCase reason the Degraded condition carries.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Scaler(StrEnum):
    """Who owns `spec.replicas` of the Deployment."""

    STATIC = "static"  # the operator sets minReplicas (min == max)
    HPA = "hpa"  # a HorizontalPodAutoscaler (sync/streaming traffic)
    KEDA = "keda"  # a KEDA ScaledObject (async queue, plus CPU for mixed endpoints)
    OPERATOR = "operator"  # the operator's own queue-depth scaler (async-only endpoints without KEDA)
    #: sync/streaming with minReplicas 0: the operator's demand gate moves 0 <-> first replicas (the gateway holds
    #: calls meanwhile), an HPA scales above that when maxReplicas > 1 (KEDA or not: its triggers cannot see calls)
    DEMAND = "demand"


@dataclass(frozen=True)
class BuildContext:
    """Inputs of the pure builders besides the Endpoint itself."""

    config: OperatorConfig
    keda: bool = False  # KEDA is enabled and its CRDs are served
    #: (env name, value) of the queue server's durability settings as the operator's master credential read them
    #: (queue.connection.observed_config): routers' own users may not read CONFIG.
    redis_observed: tuple[tuple[str, str], ...] = ()


def scaler_for(endpoint: Endpoint, keda: bool) -> Scaler:
    spec = endpoint.spec
    if not spec.scaling.autoscaled:
        return Scaler.STATIC
    if spec.scales_from_zero:
        return Scaler.DEMAND
    if spec.serves(Mode.ASYNC) and keda:
        return Scaler.KEDA
    if list(spec.modes) == [Mode.ASYNC]:
        return Scaler.OPERATOR
    return Scaler.HPA


def serves_http(endpoint: Endpoint) -> bool:
    """Sync or streaming: the endpoint needs a Service in front of its pods."""
    return endpoint.spec.serves(Mode.SYNC) or endpoint.spec.serves(Mode.STREAMING)


def owner_reference(endpoint: Endpoint) -> dict[str, Any] | None:
    """The controller reference to the Endpoint (None when rendering a manifest that was never stored: no uid)."""
    if not endpoint.metadata.uid:
        return None
    return {
        "apiVersion": endpoint.api_version,
        "kind": endpoint.kind,
        "name": endpoint.name,
        "uid": endpoint.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    endpoint: Endpoint, name: str, *, annotations: dict[str, str] | None = None, variant: str | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": endpoint.namespace,
        "labels": common_labels(endpoint.name, variant),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    owner = owner_reference(endpoint)
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return meta


def content_hash(value: Any) -> str:
    """A short stable hash of JSON-able data (sorted keys), for annotations."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def stamp_desired_hash(manifest: Manifest) -> Manifest:
    """Record the hash of what we want on the object itself: a changed hash means the desired state moved on
    (including fields we stopped setting, which a subset comparison of live vs desired cannot see)."""
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations.pop(DESIRED_HASH_ANNOTATION, None)
    annotations[DESIRED_HASH_ANNOTATION] = content_hash(manifest)
    return manifest
