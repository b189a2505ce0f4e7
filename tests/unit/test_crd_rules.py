"""Each rule's CEL expression and its Python predicate give the same verdict, rule by rule, on every combination of the
fields the rules read (not only on the hand-written corpus)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import celpy
import pytest

from bundleserve.api import rules as rules_module
from bundleserve.api.endpoint import EndpointSpec
from bundleserve.api.rules import RULES, Rule
from tests.unit.fixtures.crd_admission import compile_rule, openapi_schema, prune_nulls_and_default

BUNDLES: dict[str, dict[str, Any]] = {
    "python": {"image": "r/x:1", "python": {"entrypoint": "m:f"}},
    "python-no-image": {"python": {"entrypoint": "m:f"}},
    "python+command": {"image": "r/x:1", "python": {"entrypoint": "m:f"}, "command": ["serve"]},
    "python+routes": {"image": "r/x:1", "python": {"entrypoint": "m:f"}, "routes": {"stream": "/s"}},
    "image": {"image": "r/x:1"},
    "image+stream-route": {"image": "r/x:1", "routes": {"predict": "/p", "stream": "/s"}},
    "command-no-image": {"command": ["serve"]},
    "nothing": {},
    "env-both": {"image": "r/x:1", "env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]},
    "env-duplicate": {"image": "r/x:1", "env": [{"name": "A", "value": "1"}, {"name": "A"}]},
    "python-batched": {"image": "r/x:1", "python": {"entrypoint": "m:f", "batchEntrypoint": "m:fb"}},
}
MODES = [list(c) for n in (1, 2, 3) for c in itertools.combinations(["sync", "streaming", "async"], n)] + [
    ["async", "async"]
]
EXTRAS: dict[str, dict[str, Any]] = {
    "plain": {},
    "local": {"localOnly": True},
    "async-block": {"async": {"callback": {"url": "https://h.example.com/x"}}},
    "ftp-callback": {"async": {"callback": {"url": "ftp://h.example.com/x"}}},
    "scale-to-zero": {"scaling": {"minReplicas": 0, "maxReplicas": 2}},
    "zero-after": {"scaling": {"minReplicas": 0, "scaleToZeroAfterSeconds": 30}},
    "zero-after-min-one": {"scaling": {"scaleToZeroAfterSeconds": 30}},
    "min-above-max": {"scaling": {"minReplicas": 3, "maxReplicas": 2}},
    "gpu-type-only": {"resources": {"gpuType": "l4"}},
    "gpu": {"resources": {"gpuType": "l4", "gpus": 1}},
    "deep-queue": {"invocation": {"concurrency": 2, "maxQueued": 2001}},
    "openai": {"openai": {}},
    "bodies-over-budget": {"invocation": {"maxPayloadBytes": 1073741824}},
    "bodies-at-budget": {"invocation": {"maxPayloadBytes": 16777216, "concurrency": 16, "maxQueued": 960}},
    "s3-paths": {"async": {"s3OutputPath": "s3://b-1/out", "s3FailurePath": "s3://b-1/failed"}},
    "s3-failure-path-only": {"async": {"s3FailurePath": "s3://b-1/failed"}},
    "batching": {"invocation": {"batching": {"maxBatchSize": 4}}},
    "batching-defaults-low-concurrency": {"invocation": {"concurrency": 4, "batching": {}}},
    "batching-above-concurrency": {"invocation": {"concurrency": 2, "batching": {"maxBatchSize": 3}}},
    "variants": {"variants": [{"name": "blue", "weight": 90}, {"name": "green", "weight": 10, "image": "r/x:2"}]},
    "variants-repeated-name": {"variants": [{"name": "blue", "weight": 1}, {"name": "blue", "weight": 1}]},
    "variants-all-weight-zero": {"variants": [{"name": "blue", "weight": 0}, {"name": "green", "weight": 0}]},
    "variants-one-weight-zero": {"variants": [{"name": "blue", "weight": 0}, {"name": "green", "weight": 3}]},
    "variant-min-above-max": {
        "variants": [{"name": "a", "weight": 1, "scaling": {"minReplicas": 3, "maxReplicas": 2}}]
    },
    "variant-scale-to-zero": {
        "variants": [{"name": "a", "weight": 1, "scaling": {"minReplicas": 0, "maxReplicas": 2}}]
    },
    "variant-gpu-type-only": {"variants": [{"name": "a", "weight": 1, "resources": {"gpuType": "l4"}}]},
    "variant-gpu": {"variants": [{"name": "a", "weight": 1, "resources": {"gpuType": "l4", "gpus": 1}}]},
    "variant-env-duplicate": {"variants": [{"name": "a", "weight": 1, "env": [{"name": "A"}, {"name": "A"}]}]},
    "variant-env-both": {
        "variants": [
            {
                "name": "a",
                "weight": 1,
                "env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
            }
        ]
    },
}


def specs() -> list[Any]:
    cases = []
    for (bundle_id, bundle), modes, (extra_id, extra) in itertools.product(BUNDLES.items(), MODES, EXTRAS.items()):
        spec = {"modes": modes, "bundle": copy.deepcopy(bundle), **copy.deepcopy(extra)}
        cases.append(pytest.param(spec, id=f"{bundle_id}-{'+'.join(modes)}-{extra_id}"))
    return cases


def node_at(document: dict[str, Any], scope: str) -> Any:
    value: Any = document
    for key in scope.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def cel_holds(rule: Rule, defaulted: dict[str, Any]) -> bool:
    node = node_at(defaulted, rule.scope)
    if node is None:  # the API server only evaluates a rule where its node exists
        return True
    return bool(compile_rule(rule.cel).evaluate({"self": celpy.json_to_cel(node)}))


@pytest.fixture
def spec_without_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build specs that break rules, so each predicate can be asked on its own."""
    monkeypatch.setattr(rules_module, "check_spec", lambda spec: None)


@pytest.mark.usefixtures("spec_without_rules")
def test_cel_and_python_agree_rule_by_rule() -> None:
    checked = 0
    failures_seen: set[str] = set()
    for param in specs():
        spec_document = param.values[0]
        document = prune_nulls_and_default({"spec": copy.deepcopy(spec_document)}, openapi_schema())
        spec = EndpointSpec.model_validate(spec_document)
        for rule in RULES:
            python_verdict = rule.holds(spec)
            assert cel_holds(rule, document) == python_verdict, (param.id, rule.message)
            if not python_verdict:
                failures_seen.add(rule.message)
            checked += 1
    # Every rule was seen failing, so the agreement means something.
    assert failures_seen == {rule.message for rule in RULES}
    assert checked == len(BUNDLES) * len(MODES) * len(EXTRAS) * len(RULES)
