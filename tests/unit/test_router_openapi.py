"""/openapi.json describes exactly the routes the router registers (no HTTP needed: the app's router table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bundleserve.api.manifest import parse_endpoint
from bundleserve.dialects import openapi
from bundleserve.router.app import build_app
from bundleserve.router.settings import Settings


def endpoint(modes: list[str]) -> Any:
    spec: dict[str, Any] = {"modes": modes, "localOnly": True, "bundle": {"python": {"entrypoint": "m:f"}}}
    return parse_endpoint(
        {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "e"}, "spec": spec}
    )


@pytest.mark.parametrize(
    ("modes", "redis_url"),
    [(["sync"], None), (["sync", "streaming"], None), (["sync", "streaming", "async"], "redis://127.0.0.1:1/0")],
)
def test_document_matches_the_router_table(modes: list[str], redis_url: str | None, tmp_path: Path) -> None:
    settings = Settings(
        endpoint=endpoint(modes), model_url="http://127.0.0.1:1", redis_url=redis_url, results_dir=tmp_path
    )
    app = build_app(settings)
    document = openapi.build_document(app, title="t", version="0")
    registered = {(method.lower(), path) for method, path in openapi.registered_routes(app)}
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == registered
    for path, item in document["paths"].items():
        for operation in item.values():
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}
    assert ("post", "/v1/endpoints/{name}/stream") in registered or "streaming" not in modes
    assert ("post", "/v1/endpoints/{name}/predict") in registered
    if "async" in modes:
        assert ("post", "/v1/endpoints/{name}/async") in registered


def test_every_route_has_a_description() -> None:
    for key, operation in openapi.OPERATIONS.items():
        assert operation["summary"] and operation["responses"], key
