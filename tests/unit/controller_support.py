"""Helpers for the controller's unit tests: Endpoint factories and strict schema validation (kubernetes-validate)."""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.manifest import parse_endpoint

OLDEST = "1.29.0"
NEWEST = kubernetes_validate.latest_version()
VERSIONS = (OLDEST, NEWEST)


def endpoint(name: str = "demo", *, namespace: str = "ml", uid: str | None = "uid-1", **spec: Any) -> Endpoint:
    spec.setdefault("modes", ["sync"])
    spec.setdefault("bundle", {"image": "registry.example.com/demo:1", "python": {"entrypoint": "demo:predict"}})
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "generation": 1}
    if uid:
        metadata["uid"] = uid
    return parse_endpoint(
        {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": metadata, "spec": spec}
    )


@functools.cache
def _validator(kind: str, api_version: str, version: str) -> jsonschema.protocols.Validator:
    """The same strict schema files kubernetes_validate.validate() uses, compiled once per kind and version."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"v{version}-local-strict"
    schema = kv_utils.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json", version
    )
    definitions = kv_utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate_strict(manifest: dict[str, Any], version: str) -> None:
    """Raise jsonschema.ValidationError when the manifest is not valid for that Kubernetes version (strict:
    unknown fields are errors)."""
    _validator(manifest["kind"], manifest["apiVersion"], version).validate(manifest)
