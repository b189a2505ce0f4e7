"""The committed CRD is the generated one, it is a valid CustomResourceDefinition (kubernetes-validate, strict), and its
schema meets the structural-schema rules the API server enforces beyond JSON schema."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from bundleserve.api.crd import build_crd, render_crd_yaml
from bundleserve.api.rules import RULES
from tests.unit.fixtures.crd_admission import cel_problems, prune_nulls_and_default

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "endpoints.bundleserve.dev.yaml"
SCALARS = {"string", "integer", "number", "boolean"}


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (`[]` for list items, `{}` for map values)."""
    yield path, schema
    for key, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{key}" if path else key)
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")
    for index, alternative in enumerate(schema.get("anyOf", [])):
        yield from nodes(alternative, f"{path}<anyOf{index}>")


def test_committed_crd_is_the_generated_one() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml(), "the models changed: run `make crds` and commit the result"


def test_module_prints_the_crd_yaml() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "bundleserve.api.crd"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert yaml.safe_load(printed) == build_crd()


@pytest.mark.parametrize("kubernetes_version", ["1.29", latest_version()])
def test_crd_validates_strictly_against_the_kubernetes_schema(kubernetes_version: str) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert kubernetes_validate.validate(crd, kubernetes_version, strict=True) == ".".join(
        kubernetes_version.split(".")[:2]
    )


def test_strict_validation_catches_a_misspelled_crd_field() -> None:
    """The control for the test above: strict mode is strict (an unknown key in a schema node is an error)."""
    crd = build_crd()
    root_schema(crd)["properties"]["spec"]["x-kubernetes-validation"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, "1.29", strict=True)


def test_names_columns_and_subresources() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "endpoints.bundleserve.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == ("Endpoint", "endpoints", "endpoint")
    assert names["shortNames"] == ["bse"] and "ep" not in names["shortNames"]
    assert names["categories"] == ["bundleserve"]
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Reason", "Modes", "Replicas", "URL", "Traffic", "Age", "Message"]
    assert columns["Traffic"]["jsonPath"] == ".status.traffic"  # the variants' split, e.g. "blue 90%, green 10%"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert columns["Message"]["priority"] == 1
    assert all("priority" not in c for name, c in columns.items() if name != "Message")


def test_status_schema_has_the_observed_fields() -> None:
    status = root_schema(build_crd())["properties"]["status"]
    assert set(status["properties"]) == {
        "observedGeneration",
        "conditions",
        "replicas",
        "readyReplicas",
        "url",
        "queue",
        "variants",
        "traffic",
    }
    condition = status["properties"]["conditions"]["items"]
    assert set(condition["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert set(status["properties"]["queue"]["properties"]) == {"name", "pending", "inFlight", "backlog"}
    variant = status["properties"]["variants"]["items"]
    assert set(variant["properties"]) == {"name", "weight", "trafficPercent", "replicas", "readyReplicas"}
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_every_node_is_structural() -> None:
    """Structural schema: every node has a type (or is int-or-string / preserves unknown fields); properties and
    additionalProperties exclude each other; no uniqueItems, $ref, or additionalProperties: false; required names exist."""
    for path, node in nodes(root_schema(build_crd())):
        if path.endswith(("<anyOf0>", "<anyOf1>")):
            assert set(node) == {"type"} and node["type"] in SCALARS, path
            continue
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node and node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        elif not node.get("x-kubernetes-preserve-unknown-fields"):
            assert node.get("type") in SCALARS | {"object", "array"}, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties", {}) is not False, path
        assert not node.get("uniqueItems"), path
        assert "$ref" not in node and "nullable" not in node, path
        assert set(node.get("required", [])) <= set(node.get("properties", {})), path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path


def test_metadata_only_restricts_the_name() -> None:
    metadata = root_schema(build_crd())["properties"]["metadata"]
    assert set(metadata) <= {"type", "properties"}  # the API server refuses even a description here
    assert set(metadata["properties"]) <= {"name", "generateName"}
    assert set(metadata["properties"]["name"]) <= {"type", "maxLength", "pattern"}


def test_list_types_are_well_formed() -> None:
    for path, node in nodes(root_schema(build_crd())):
        list_type = node.get("x-kubernetes-list-type")
        if node.get("type") == "array":
            assert list_type in {"atomic", "set", "map"}, f"{path} needs an x-kubernetes-list-type"
        if list_type == "set":
            assert node["items"].get("type") in SCALARS, path
        if list_type == "map":
            items = node["items"]
            assert items["type"] == "object", path
            for key in node["x-kubernetes-list-map-keys"]:
                assert items["properties"][key].get("type") in SCALARS, (path, key)
                assert key in items.get("required", []) or "default" in items["properties"][key], (path, key)


def test_defaults_are_valid_and_stay_out_of_metadata() -> None:
    for path, node in nodes(root_schema(build_crd())):
        if "default" not in node:
            continue
        assert not path.startswith("metadata"), path
        default = prune_nulls_and_default(copy.deepcopy(node["default"]), node)
        without_default = {k: v for k, v in node.items() if k != "default"}
        jsonschema.Draft7Validator(without_default).validate(default)
        assert cel_problems(default, node) == [], path  # the API server also runs the node's rules on its default


def test_every_spec_collection_and_string_is_bounded_for_cel_cost_estimation() -> None:
    """The API server rejects rules whose estimated cost is unbounded; bounded lists, maps and strings keep it finite."""
    spec = root_schema(build_crd())["properties"]["spec"]
    for path, node in nodes(spec, "spec"):
        if "<anyOf" in path:  # the alternatives of an int-or-string node; its bounds sit on the node itself
            continue
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path
        if node.get("type") == "string" or node.get("x-kubernetes-int-or-string"):
            assert "maxLength" in node or "enum" in node, path


def test_every_rule_is_placed_once_at_its_scope_and_compiles() -> None:
    placed = [
        (path, validation["rule"], validation["message"])
        for path, node in nodes(root_schema(build_crd()))
        for validation in node.get("x-kubernetes-validations", [])
    ]
    assert sorted(placed) == sorted((r.scope, r.cel, r.message) for r in RULES)
    environment = celpy.Environment()
    for _, rule, message in placed:
        environment.compile(rule)
        assert "\n" not in message and len(message) <= 512


def test_every_node_has_a_description_for_kubectl_explain() -> None:
    """`kubectl explain endpoints.spec.async` prints each node's description: every field, list item and map value
    carries one. Excluded: anyOf alternatives (int-or-string quantities), where a structural schema forbids a
    description (the field above them has its own), and metadata, where the API server refuses anything but type and
    restrictions of name (it publishes metadata as the documented ObjectMeta)."""
    missing = [
        path or "<root>"
        for path, node in nodes(root_schema(build_crd()))
        if "<anyOf" not in path and path.split(".")[0] != "metadata" and not node.get("description", "").strip()
    ]
    assert missing == [], f"schema nodes without a description (add a field docstring in bundleserve.api): {missing}"


def test_every_defaulted_field_names_its_default_in_its_description() -> None:
    """kubectl explain does not print `default`, so the text says it; scalar defaults only (an object default `{}`
    just lets the API server fill in the nested defaults, each described at its own field)."""
    for path, node in nodes(root_schema(build_crd())):
        default = node.get("default")
        if default is not None and not isinstance(default, dict):
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            assert node["description"].endswith(f"Default: {shown}."), (path, node["description"])
