"""The gateway's variant pick: a named variant or a weighted band of the draw; unknown names refused; registry
entries of a watched Endpoint carry each variant's Service."""

from __future__ import annotations

import pytest

from bundleserve.api.errors import UnknownVariant
from bundleserve.dialects.sagemaker import protocol
from bundleserve.gateway.kube import build_entry
from bundleserve.gateway.registry import VariantRoute
from bundleserve.gateway.variants import pick_variant, request_key, stable_draw

ROUTES = (
    VariantRoute("blue", 90, "http://blue"),
    VariantRoute("shadow", 0, "http://shadow"),
    VariantRoute("green", 10, "http://green"),
)


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, "blue"), (0.5, "blue"), (0.8999, "blue"), (0.9, "green"), (0.95, "green"), (0.99999, "green")],
)
def test_the_draw_falls_in_a_weight_band(draw: float, expected: str) -> None:
    assert pick_variant(ROUTES, None, draw).name == expected


def test_a_weight_zero_variant_is_reached_only_by_name() -> None:
    draws = [i / 1000 for i in range(1000)]
    picked = [pick_variant(ROUTES, None, draw).name for draw in draws]
    assert "shadow" not in picked
    assert (picked.count("blue"), picked.count("green")) == (900, 100)  # a uniform grid: exactly the weights
    assert pick_variant(ROUTES, "shadow", 0.1).router_url == "http://shadow"


def test_an_unknown_variant_is_refused_with_the_known_names() -> None:
    with pytest.raises(UnknownVariant, match=r"no production variant 'red' \(it has: blue, shadow, green\)") as error:
        pick_variant(ROUTES, "red", 0.1)
    assert (error.value.status, error.value.code) == (400, "unknown_variant")
    # SageMaker renders it as its ValidationError.
    assert protocol.error_shape(error.value).code == "ValidationError"


def watched(spec_variants: list[dict[str, object]] | None) -> dict[str, object]:
    spec: dict[str, object] = {"modes": ["sync"], "bundle": {"image": "r/x:1", "python": {"entrypoint": "m:f"}}}
    if spec_variants is not None:
        spec["variants"] = spec_variants
    return {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": "demo", "namespace": "ml"},
        "spec": spec,
    }


def test_a_watched_endpoint_routes_to_each_variants_service() -> None:
    entry = build_entry(watched([{"name": "blue", "weight": 3}, {"name": "green", "weight": 1}]))
    assert entry is not None
    assert entry.routes == (
        VariantRoute("blue", 3, "http://demo-blue.ml.svc.cluster.local"),
        VariantRoute("green", 1, "http://demo-green.ml.svc.cluster.local"),
    )
    plain = build_entry(watched(None))
    assert plain is not None
    assert plain.routes == (VariantRoute("AllTraffic", 1, "http://demo.ml.svc.cluster.local"),)


def test_a_key_draws_the_same_variant_every_time_and_keys_spread_by_weight() -> None:
    assert stable_draw("call-1") == stable_draw("call-1")
    assert 0.0 <= stable_draw("call-1") < 1.0
    picks = [pick_variant(ROUTES, None, stable_draw(f"key-{i}")).name for i in range(10_000)]
    # Binomial(10000, 0.1): sd 30; 5 sd either side.
    assert 850 <= picks.count("green") <= 1150
    assert request_key({"Idempotency-Key": "a"}) == "a"
    assert request_key({"amz-sdk-invocation-id": "b"}) == "b"
    assert request_key({}) is None
