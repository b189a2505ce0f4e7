"""The ConfigMap holding the Endpoint document the router sidecar reads (`--endpoint-file`)."""

from __future__ import annotations

import yaml

from bundleserve.api.endpoint import Endpoint
from bundleserve.controller.builders.common import Manifest, metadata
from bundleserve.controller.labels import config_map_name

ENDPOINT_FILE_KEY = "endpoint.yaml"


def endpoint_document(endpoint: Endpoint) -> str:
    """The Endpoint as the router loads it: only what the user set (so operator upgrades do not roll pods)."""
    document = {
        "apiVersion": endpoint.api_version,
        "kind": endpoint.kind,
        "metadata": {"name": endpoint.name, "namespace": endpoint.namespace},
        "spec": endpoint.spec.model_dump(by_alias=True, exclude_unset=True, mode="json"),
    }
    return yaml.safe_dump(document, sort_keys=True, default_flow_style=False)


def build_config_map(endpoint: Endpoint, variant: str | None = None) -> Manifest:
    """`endpoint` as the variant runs it (api.variants.ServedVariant.endpoint); `variant` None: the implicit one."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(endpoint, config_map_name(endpoint.name, variant), variant=variant),
        "data": {ENDPOINT_FILE_KEY: endpoint_document(endpoint)},
    }
