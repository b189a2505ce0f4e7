"""The CRD (schema + defaults + CEL, as the API server applies them) and the pydantic model accept and reject the same
documents, with the expected message on both sides. The corpus is tests/unit/fixtures/endpoint_corpus.yaml plus every
examples/**/endpoint.yaml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bundleserve.api.endpoint import Endpoint
from bundleserve.api.manifest import ManifestError, parse_endpoint
from bundleserve.api.rules import RULES
from tests.unit.fixtures.crd_admission import admit

ROOT = Path(__file__).resolve().parents[2]
CORPUS = yaml.safe_load((Path(__file__).parent / "fixtures" / "endpoint_corpus.yaml").read_text())
DELETE = "<delete>"


def merge(base: Any, patch: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if value == DELETE:
            merged.pop(key, None)
        else:
            merged[key] = merge(merged.get(key), value) if key in merged else merge(None, value)
    return merged


def document_of(case: dict[str, Any]) -> Any:
    return case["document"] if "document" in case else merge(CORPUS["base"], case["patch"])


def example_documents() -> list[Any]:
    documents = []
    for path in sorted(ROOT.glob("examples/**/endpoint.yaml")):
        for index, document in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d is not None):
            documents.append(pytest.param(document, id=f"{path.relative_to(ROOT)}#{index}"))
    return documents


def model_problems(document: Any) -> list[tuple[str, str, str]]:
    """(path, pydantic error type, message) for every error, paths written like the CRD's (`env[0].name`)."""
    try:
        Endpoint.model_validate(document)
    except ValidationError as error:
        found = []
        for item in error.errors():
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"]).lstrip(".")
            found.append((path, item["type"], item["msg"]))
        return found
    return []


def without_empty(value: Any) -> Any:
    """Drop empty lists/maps: the model writes `env: []` where the CRD leaves the field absent; both mean none."""
    if isinstance(value, dict):
        cleaned = {k: without_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [without_empty(v) for v in value]
    return value


def quantities_as_text(spec: dict[str, Any]) -> dict[str, Any]:
    resources = spec.get("resources", {})
    for key in ("cpu", "memory"):
        if isinstance(resources.get(key), int):
            resources[key] = str(resources[key])
    return spec


@pytest.mark.parametrize(
    "document",
    [pytest.param(document_of(case), id=case["id"]) for case in CORPUS["valid"]] + example_documents(),
)
def test_valid_document_is_accepted_by_both_with_the_same_defaults(document: Any) -> None:
    defaulted, problems = admit(document)
    assert problems == [], [str(p) for p in problems]
    assert model_problems(document) == []

    model = Endpoint.model_validate(document)
    # The API server stores the defaulted object; the operator reads it with the model: nothing may change meaning.
    assert Endpoint.model_validate(defaulted) == model
    # Every default the model fills in, the CRD fills in too (and with the same value).
    model_spec = without_empty(model.to_manifest()["spec"])
    assert model_spec == without_empty(quantities_as_text(copy.deepcopy(defaulted["spec"])))


def test_the_examples_are_in_the_corpus() -> None:
    assert any("echo" in str(p.id) for p in example_documents())


INVALID = [pytest.param(case, id=case["id"]) for case in CORPUS["invalid"]]


@pytest.mark.parametrize("case", INVALID)
def test_invalid_document_is_rejected_by_both_with_the_expected_message(case: dict[str, Any]) -> None:
    document = document_of(case)
    _, crd_problems = admit(document)
    model_errors = model_problems(document)
    assert crd_problems, "the CRD accepted it"
    assert model_errors, "the model accepted it"
    with pytest.raises(ManifestError) as readable:
        parse_endpoint(document, source="case.yaml")
    assert str(readable.value).startswith("case.yaml: ")

    if "rule" in case:
        (rule,) = [r for r in RULES if r.message == case["rule"]]
        crd_rules = {p.message for p in crd_problems if p.reason == "rule"}
        assert f'Invalid value: "object": {rule.message}' in crd_rules
        assert next(p for p in crd_problems if p.reason == "rule" and rule.message in p.message).path == rule.scope
        (model_error,) = model_errors
        assert model_error[0] == "spec"
        model_rules = set(model_error[2].removeprefix("Value error, ").split("; "))
        # Same rules fail on both sides, not just the expected one.
        assert model_rules == {m.removeprefix('Invalid value: "object": ') for m in crd_rules}
        assert f"spec: {rule.message}" in str(readable.value)
    else:
        keyword, crd_message = case["crd"]
        error_type, model_message = case["model"]
        assert any(p.path == case["path"] and p.reason == keyword and crd_message in p.message for p in crd_problems), [
            str(p) for p in crd_problems
        ]
        assert any(
            path == case["path"] and kind == error_type and model_message in message
            for path, kind, message in model_errors
        ), model_errors
        assert case["path"] in str(readable.value)


def test_every_rule_has_an_invalid_case() -> None:
    covered = {case.get("rule") for case in CORPUS["invalid"]}
    assert [r.message for r in RULES if r.message not in covered] == []


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS["invalid"]) >= 20
    field_cases = [case for case in CORPUS["invalid"] if "rule" not in case]
    keywords = {case["crd"][0] for case in field_cases}
    assert {"pattern", "enum", "minimum", "maximum", "unknown", "required", "type"} <= keywords


def test_crd_defaults_are_the_reference_defaults() -> None:
    minimal = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": "tiny"},
        "spec": {"modes": ["async"], "bundle": {"image": "x:1"}, "async": {}},
    }
    defaulted, problems = admit(minimal)
    assert problems == []
    spec = defaulted["spec"]
    assert spec["invocation"] == {"timeoutSeconds": 60, "maxPayloadBytes": 6291456, "concurrency": 8, "maxQueued": 80}
    assert spec["async"] == {
        "requestTTLSeconds": 21600,
        "invocationTimeoutSeconds": 900,
        "maxAttempts": 3,
        "resultTTLSeconds": 86400,
        "retainOnDelete": False,
    }
    assert spec["scaling"]["minReplicas"] == 1
    assert "maxReplicas" not in spec["scaling"]


def test_a_null_field_is_pruned_then_defaulted_like_the_api_server() -> None:
    document = merge(CORPUS["base"], {"spec": {"bundle": {"port": None}}})
    defaulted, problems = admit(document)
    assert problems == []
    assert defaulted["spec"]["bundle"]["port"] == 5005
    assert Endpoint.model_validate(document).spec.bundle.port == 5005
