"""Production variants of an Endpoint: one place that says which variants an Endpoint serves and what each runs.

An Endpoint without `spec.variants` serves one implicit variant, `AllTraffic` (SageMaker's name for a single
variant), with the endpoint's own spec; its children keep the endpoint's names. An Endpoint with `spec.variants`
serves each declared variant with the endpoint's spec plus that variant's image, env, resources and scaling. The
operator builds one Deployment per variant from `served_variants`, local mode one model and router per variant, the
gateway splits requests that name no variant by `traffic_shares`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bundleserve.api.endpoint import IMPLICIT_VARIANT, Endpoint, EndpointSpec, EnvVar, Variant

#: Request header naming the production variant to call; response header naming the variant that answered (the
#: gateway sets it; clients and the SDK read it).
VARIANT_HEADER = "X-Bundleserve-Variant"
#: The longest child base name: Services must be DNS-1035 labels.
_MAX_NAME = 63


def child_name(endpoint_name: str, variant: str | None = None) -> str:
    """The base name of a variant's children (Deployment, Service, autoscaler): the endpoint's name, or
    `<name>-<variant>` for a declared variant, shortened with a hash of both when longer than a DNS label may be, so
    every name is a valid Service name. The operator names the children so and the gateway finds the Services so."""
    if variant is None:
        return endpoint_name
    name = f"{endpoint_name}-{variant}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - 9].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class ServedVariant:
    """One variant of an Endpoint and the Endpoint as that variant runs it."""

    #: The public name (`AllTraffic` for the implicit variant).
    name: str
    weight: int
    #: False for the implicit variant of an Endpoint without spec.variants (its children keep the endpoint's names).
    declared: bool
    #: The Endpoint with this variant's image, env, resources and scaling in its spec and no spec.variants: what the
    #: variant's router and model are started with.
    endpoint: Endpoint

    @property
    def child_variant(self) -> str | None:
        """The variant name children are named and labelled by; None for the implicit variant."""
        return self.name if self.declared else None


def merged_env(base: list[EnvVar], override: list[EnvVar]) -> list[EnvVar]:
    """The endpoint's env with the variant's entries on top: same name replaces (in place), new names appended."""
    replacements = {item.name: item for item in override}
    merged = [replacements.pop(item.name, item) for item in base]
    return merged + [item for item in override if item.name in replacements]


def variant_spec(spec: EndpointSpec, variant: Variant) -> EndpointSpec:
    """The spec a declared variant runs: the endpoint's, with the variant's overrides and without spec.variants."""
    bundle = spec.bundle.model_copy(
        update={"image": variant.image or spec.bundle.image, "env": merged_env(spec.bundle.env, variant.env)}
    )
    copied = spec.model_copy(
        update={
            "bundle": bundle,
            "resources": variant.resources or spec.resources,
            "scaling": variant.scaling or spec.scaling,
            "variants": [],
        }
    )
    # Unset, not an empty list: the variant's router document (dumped with exclude_unset) then reads as an Endpoint
    # without variants.
    copied.__pydantic_fields_set__.discard("variants")
    return copied


def served_variants(endpoint: Endpoint) -> list[ServedVariant]:
    """The variants the Endpoint serves, in spec order (one implicit variant when it declares none)."""
    if not endpoint.spec.variants:
        return [ServedVariant(name=IMPLICIT_VARIANT, weight=1, declared=False, endpoint=endpoint)]
    return [
        ServedVariant(
            name=variant.name,
            weight=variant.weight,
            declared=True,
            endpoint=endpoint.model_copy(update={"spec": variant_spec(endpoint.spec, variant)}),
        )
        for variant in endpoint.spec.variants
    ]


def traffic_shares(weights: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(name, percent) of each variant's share of unnamed requests, rounded to whole percent (for status)."""
    total = sum(weight for _, weight in weights)
    return [(name, round(100 * weight / total) if total else 0) for name, weight in weights]


def traffic_line(weights: list[tuple[str, int]]) -> str:
    """The split in one line for `kubectl get`: `blue 90%, green 10%`."""
    return ", ".join(f"{name} {percent}%" for name, percent in traffic_shares(weights))
