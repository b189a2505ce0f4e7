"""Production variants in the operator's pure parts: which children an Endpoint with spec.variants gets (one
Deployment, ConfigMap, Service, autoscaler and PDB per variant, strictly schema-valid), what each variant runs, the
names, and the status that shows the split."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bundleserve.api.variants import child_name, served_variants, traffic_line, traffic_shares
from bundleserve.controller.builders import BuildContext, build_children
from bundleserve.controller.builders.configmap import ENDPOINT_FILE_KEY
from bundleserve.controller.config import OperatorConfig
from bundleserve.controller.labels import ENDPOINT_LABEL, VARIANT_LABEL
from bundleserve.controller.status import Observed, VariantObservation, build_status
from tests.unit.controller_support import NEWEST, endpoint, validate_strict

CONFIG = OperatorConfig(image="ghcr.io/bundleserve/bundleserve:test", redis_secret="redis", api_keys_secret="keys")
VARIANTS = [
    {"name": "blue", "weight": 90},
    {
        "name": "green",
        "weight": 10,
        "image": "registry.example.com/demo:2",
        "env": [{"name": "MODEL_VERSION", "value": "2"}],
        "resources": {"cpu": "250m", "memory": "512Mi"},
        "scaling": {"minReplicas": 1, "maxReplicas": 3},
    },
]


def by_kind_and_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(child["kind"], child["metadata"]["name"]): child for child in children}


def canary(**spec: Any) -> Any:
    return endpoint(
        "demo",
        bundle={
            "image": "registry.example.com/demo:1",
            "python": {"entrypoint": "demo:predict"},
            "env": [{"name": "MODEL_VERSION", "value": "1"}, {"name": "LOG_LEVEL", "value": "info"}],
        },
        scaling={"minReplicas": 2, "maxReplicas": 2},
        variants=VARIANTS,
        **spec,
    )


def test_an_endpoint_without_variants_keeps_its_children_and_names() -> None:
    children = build_children(endpoint("demo"), BuildContext(CONFIG))
    assert sorted(by_kind_and_name(children)) == [
        ("ConfigMap", "demo-endpoint"),
        ("Deployment", "demo"),
        ("NetworkPolicy", "demo"),
        ("Service", "demo"),
    ]
    assert all(VARIANT_LABEL not in child["metadata"]["labels"] for child in children)
    deployment = by_kind_and_name(children)[("Deployment", "demo")]
    router = deployment["spec"]["template"]["spec"]["containers"][1]
    assert "--variant" not in router["command"]


def test_each_variant_gets_its_own_children_and_the_endpoint_keeps_one_service_and_policy() -> None:
    children = by_kind_and_name(build_children(canary(), BuildContext(CONFIG)))
    assert sorted(children) == [
        ("ConfigMap", "demo-blue-endpoint"),
        ("ConfigMap", "demo-green-endpoint"),
        ("Deployment", "demo-blue"),
        ("Deployment", "demo-green"),
        ("HorizontalPodAutoscaler", "demo-green"),
        ("NetworkPolicy", "demo"),
        ("PodDisruptionBudget", "demo-blue"),
        ("PodDisruptionBudget", "demo-green"),
        ("Service", "demo"),
        ("Service", "demo-blue"),
        ("Service", "demo-green"),
    ]
    for child in children.values():
        validate_strict(child, NEWEST)
        assert child["metadata"]["labels"][ENDPOINT_LABEL] == "demo"
    # The endpoint's Service and policy select every variant's pods; a variant's objects only its own.
    assert VARIANT_LABEL not in children[("Service", "demo")]["spec"]["selector"]
    assert VARIANT_LABEL not in children[("NetworkPolicy", "demo")]["spec"]["podSelector"]["matchLabels"]
    for name in ("blue", "green"):
        deployment = children[("Deployment", f"demo-{name}")]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector[VARIANT_LABEL] == name
        assert deployment["spec"]["template"]["metadata"]["labels"][VARIANT_LABEL] == name
        assert children[("Service", f"demo-{name}")]["spec"]["selector"] == selector
        assert children[("PodDisruptionBudget", f"demo-{name}")]["spec"]["selector"]["matchLabels"] == selector
        pod = deployment["spec"]["template"]["spec"]
        router = pod["containers"][1]
        assert router["command"][-2:] == ["--variant", name]
        volume = next(v for v in pod["volumes"] if v["name"] == "endpoint-config")
        assert volume["configMap"]["name"] == f"demo-{name}-endpoint"
    assert children[("HorizontalPodAutoscaler", "demo-green")]["spec"]["scaleTargetRef"]["name"] == "demo-green"


def test_a_variant_runs_its_own_image_env_resources_and_scaling() -> None:
    children = by_kind_and_name(build_children(canary(), BuildContext(CONFIG)))
    blue = children[("Deployment", "demo-blue")]["spec"]
    green = children[("Deployment", "demo-green")]["spec"]
    blue_model, green_model = blue["template"]["spec"]["containers"][0], green["template"]["spec"]["containers"][0]
    assert blue_model["image"] == "registry.example.com/demo:1"
    assert green_model["image"] == "registry.example.com/demo:2"
    assert {e["name"]: e.get("value") for e in blue_model["env"]}["MODEL_VERSION"] == "1"
    green_env = {e["name"]: e.get("value") for e in green_model["env"]}
    assert (green_env["MODEL_VERSION"], green_env["LOG_LEVEL"]) == ("2", "info")  # replaced by name, the rest kept
    assert green_model["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}
    assert blue["replicas"] == 2 and "replicas" not in green  # blue: the endpoint's fixed 2; green: autoscaled
    # The router reads the variant's own document: no variants in it, the variant's image.
    document = yaml.safe_load(children[("ConfigMap", "demo-green-endpoint")]["data"][ENDPOINT_FILE_KEY])
    assert "variants" not in document["spec"]
    assert document["spec"]["bundle"]["image"] == "registry.example.com/demo:2"


def test_async_variants_scale_on_their_own_queue() -> None:
    spec = canary(modes=["async"])
    children = by_kind_and_name(build_children(spec, BuildContext(CONFIG, keda=True)))
    scaled = children[("ScaledObject", "demo-green")]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "demo-green"
    assert scaled["spec"]["triggers"][0]["metadata"]["stream"] == "bundleserve:{ml/demo/green}:stream"


def test_long_names_are_shortened_to_a_dns_label_and_stay_distinct() -> None:
    name = "e" * 60
    first, second = child_name(name, "blue"), child_name(name, "bluer")
    assert len(first) <= 63 and len(second) <= 63 and first != second
    assert first.startswith("e" * 50) and first[-1] != "-"
    assert child_name("demo", None) == "demo" and child_name("demo", "blue") == "demo-blue"


def test_served_variants_of_an_endpoint_without_variants_is_the_implicit_one() -> None:
    (only,) = served_variants(endpoint("demo"))
    assert (only.name, only.declared, only.child_variant) == ("AllTraffic", False, None)


@pytest.mark.parametrize(
    ("weights", "shares"),
    [
        ([("blue", 90), ("green", 10)], [("blue", 90), ("green", 10)]),
        ([("a", 1), ("b", 1), ("c", 2)], [("a", 25), ("b", 25), ("c", 50)]),
        ([("a", 3), ("b", 0)], [("a", 100), ("b", 0)]),
    ],
)
def test_traffic_shares(weights: list[tuple[str, int]], shares: list[tuple[str, int]]) -> None:
    assert traffic_shares(weights) == shares


def deployment(replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
            "availableReplicas": ready,
        },
    }


def test_status_shows_the_split_and_is_ready_only_when_every_variant_is() -> None:
    ready = Observed(
        generation=3,
        variants=[
            VariantObservation("blue", 90, deployment(2, 2)),
            VariantObservation("green", 10, deployment(1, 1)),
        ],
    )
    status = build_status(ready, None, "2026-01-01T00:00:00Z")
    assert status["traffic"] == traffic_line([("blue", 90), ("green", 10)]) == "blue 90%, green 10%"
    assert (status["replicas"], status["readyReplicas"]) == (3, 3)
    assert status["variants"] == [
        {"name": "blue", "weight": 90, "trafficPercent": 90, "replicas": 2, "readyReplicas": 2},
        {"name": "green", "weight": 10, "trafficPercent": 10, "replicas": 1, "readyReplicas": 1},
    ]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Degraded"]["status"]) == ("True", "False")

    green_down = Observed(
        generation=3,
        variants=[
            VariantObservation("blue", 90, deployment(2, 2)),
            VariantObservation("green", 10, deployment(1, 0)),
        ],
    )
    conditions = {c["type"]: c for c in build_status(green_down, status, "2026-01-01T00:01:00Z")["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["message"].startswith("variant green: ")
    assert conditions["Progressing"]["status"] == "True"


def test_status_of_an_endpoint_without_variants_has_no_split() -> None:
    status = build_status(Observed(generation=1, deployment=deployment(1, 1)), None, "2026-01-01T00:00:00Z")
    assert "traffic" not in status and "variants" not in status
