"""Local mode's process plan: what `bundleserve run` starts for each kind of bundle."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from bundleserve.api.manifest import parse_endpoint
from bundleserve.local.plan import PlanError, needs_redis, plan_endpoints


def endpoint(name: str, modes: list[str], bundle: dict[str, Any]) -> Any:
    return parse_endpoint(
        {
            "apiVersion": "bundleserve.dev/v1alpha1",
            "kind": "Endpoint",
            "metadata": {"name": name},
            "spec": {"modes": modes, "localOnly": True, "bundle": bundle},
        }
    )


def plan(found: list[tuple[Path, Any]], tmp_path: Path) -> list[Any]:
    ports = itertools.count(20000)
    return plan_endpoints(
        found,
        endpoints_dir=tmp_path / "endpoints",
        results_dir=tmp_path / "results",
        redis_url="redis://127.0.0.1:1/0",
        allocate_port=lambda: next(ports),
    )


def test_python_bundle_runs_the_bundle_runtime_with_its_code_dir(tmp_path: Path) -> None:
    manifest = tmp_path / "models" / "endpoint.yaml"
    python_bundle = endpoint(
        "echo",
        ["sync", "streaming"],
        {
            "python": {"entrypoint": "m:f", "load": "m:load", "stream": "m:gen", "path": "src"},
            "env": [
                {"name": "DELAY", "value": "0.1"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
        },
    )
    found = [(manifest, python_bundle)]

    [only] = plan(found, tmp_path)

    argv = only.model.argv
    assert argv[argv.index("--entrypoint") + 1] == "m:f"
    assert argv[argv.index("--load") + 1] == "m:load"
    assert argv[argv.index("--stream") + 1] == "m:gen"
    assert only.model.env == {"DELAY": "0.1"}
    assert argv[argv.index("--path") + 1] == str((tmp_path / "models" / "src").resolve())
    assert only.model.ready_path == "/readyz"
    router = only.router.argv
    assert router[router.index("--model-url") + 1] == f"http://127.0.0.1:{only.model.port}"
    assert router[router.index("--endpoint-file") + 1] == str(tmp_path / "endpoints" / "echo.yaml")
    assert only.router.env["BUNDLESERVE_RESULTS_DIR"] == str(tmp_path / "results")


def test_batching_reaches_the_bundle_runtime_with_its_settings(tmp_path: Path) -> None:
    batched = parse_endpoint(
        {
            "apiVersion": "bundleserve.dev/v1alpha1",
            "kind": "Endpoint",
            "metadata": {"name": "batched"},
            "spec": {
                "modes": ["sync", "async"],
                "localOnly": True,
                "bundle": {"python": {"entrypoint": "m:f", "batchEntrypoint": "m:fb"}},
                "invocation": {"batching": {"maxBatchSize": 4}},
            },
        }
    )
    [only] = plan([(tmp_path / "endpoint.yaml", batched)], tmp_path)
    argv = only.model.argv
    assert argv[argv.index("--batch-entrypoint") + 1] == "m:fb"
    assert argv[argv.index("--max-batch-size") + 1] == "4"
    assert argv[argv.index("--max-batch-wait-ms") + 1] == "10"  # the spec's default window


def test_runnable_image_runs_its_command_with_the_port_and_its_ready_route(tmp_path: Path) -> None:
    bundle = {
        "command": ["python", "server.py", "--port", "$(PORT)"],
        "port": 8080,
        "routes": {"predict": "/invocations", "ready": "/ping"},
        "env": [{"name": "MODE", "value": "fast"}],
    }
    [only] = plan([(tmp_path / "e.yaml", endpoint("sm", ["sync"], bundle))], tmp_path)

    assert only.model.argv == ["python", "server.py", "--port", str(only.model.port)]
    assert only.model.env == {"MODE": "fast", "PORT": str(only.model.port)}
    assert only.model.ready_path == "/ping"


def test_runnable_image_without_a_command_cannot_run_locally(tmp_path: Path) -> None:
    image_only = endpoint("img", ["sync"], {"image": "registry.example.com/x:1"})
    with pytest.raises(PlanError, match=r"needs spec\.bundle\.command"):
        plan([(tmp_path / "e.yaml", image_only)], tmp_path)


def test_redis_is_needed_only_when_an_endpoint_serves_async() -> None:
    sync_only = endpoint("a", ["sync"], {"python": {"entrypoint": "m:f"}})
    with_async = endpoint("b", ["sync", "async"], {"python": {"entrypoint": "m:f"}})
    assert not needs_redis([sync_only])
    assert needs_redis([sync_only, with_async])


def test_every_process_gets_its_own_port(tmp_path: Path) -> None:
    found = [(tmp_path / "e.yaml", endpoint(n, ["sync"], {"python": {"entrypoint": "m:f"}})) for n in ("a", "b", "c")]
    ports = [p for item in plan(found, tmp_path) for p in (item.model.port, item.router.port)]
    assert len(set(ports)) == 6


def test_each_variant_runs_its_own_model_and_router(tmp_path: Path) -> None:
    canary = parse_endpoint(
        {
            "apiVersion": "bundleserve.dev/v1alpha1",
            "kind": "Endpoint",
            "metadata": {"name": "shop"},
            "spec": {
                "modes": ["sync"],
                "localOnly": True,
                "bundle": {"python": {"entrypoint": "m:f"}, "env": [{"name": "V", "value": "1"}]},
                "variants": [
                    {"name": "blue", "weight": 9},
                    {"name": "green", "weight": 1, "env": [{"name": "V", "value": "2"}]},
                ],
            },
        }
    )
    blue, green = plan([(tmp_path / "endpoint.yaml", canary)], tmp_path)
    assert (blue.name, blue.variant.name, green.variant.name) == ("shop", "blue", "green")
    assert (blue.model.env["V"], green.model.env["V"]) == ("1", "2")
    assert blue.model.name == "shop/blue/model" and green.router.name == "shop/green/router"
    assert green.router.argv[-2:] == ["--variant", "green"]
    assert blue.endpoint_file != green.endpoint_file
    assert len({blue.model.port, blue.router.port, green.model.port, green.router.port}) == 4
