"""`bundleserve render`: the examples render to strictly schema-valid manifests; bad input is a one-line error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bundleserve.cli import main as cli_main
from tests.unit.controller_support import VERSIONS, validate_strict

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(REPO.glob("examples/*/endpoint.yaml")) + sorted(REPO.glob("examples/*.yaml"))


@pytest.fixture(autouse=True)
def operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUNDLESERVE_REDIS_SECRET", "bundleserve-redis")
    monkeypatch.setenv("BUNDLESERVE_KEDA", "auto")


def test_the_examples_render_to_valid_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    assert EXAMPLES, "no example manifests found"
    assert cli_main(["render", *map(str, EXAMPLES), "--namespace", "models"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    variants = [len(yaml.safe_load(path.read_text())["spec"].get("variants") or [None]) for path in EXAMPLES]
    assert len(deployments) == sum(variants)  # one per variant (examples/canary has two)
    for document in documents:
        assert document["metadata"]["namespace"] == "models"
        for version in VERSIONS:
            validate_strict(document, version)


def test_keda_on_renders_a_scaled_object_for_async_endpoints(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: jobs}\n"
        "spec: {modes: [async], bundle: {image: reg/j:1, python: {entrypoint: 'j:run'}},"
        " scaling: {minReplicas: 0, maxReplicas: 4}}\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BUNDLESERVE_KEDA", "on")
        assert cli_main(["render", str(manifest)]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["ConfigMap", "NetworkPolicy", "Deployment", "ScaledObject", "PodDisruptionBudget"]


def test_an_async_only_endpoint_without_keda_shows_the_operator_scaler(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With KEDA `auto` (the chart's default) render cannot ask a cluster; the queue scaler is no object, so the
    stream says in a comment who scales it (issue 12: it showed no scaler at all)."""
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: jobs}\n"
        "spec: {modes: [async], bundle: {image: reg/j:1, python: {entrypoint: 'j:run'}},"
        " scaling: {minReplicas: 0, maxReplicas: 4, targetConcurrency: 2}}\n"
    )
    assert cli_main(["render", str(manifest), "--namespace", "ml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "# ml/jobs: scaled by the operator's built-in queue scaler (patches Deployment replicas 0..4,"
    )
    assert "one replica per 2 queued or running tasks" in out
    assert [d["kind"] for d in yaml.safe_load_all(out)] == [
        "ConfigMap",
        "NetworkPolicy",
        "Deployment",
        "PodDisruptionBudget",
    ]


def test_a_sync_endpoint_at_zero_shows_the_demand_gate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Who takes it off zero is no object either (the operator's demand gate), so the stream says so."""
    manifest = tmp_path / "cold.yaml"
    manifest.write_text(
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: cold}\n"
        "spec: {modes: [sync], bundle: {image: reg/c:1, python: {entrypoint: 'c:run'}},"
        " scaling: {minReplicas: 0, scaleToZeroAfterSeconds: 90}}\n"
    )
    assert cli_main(["render", str(manifest), "--namespace", "ml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ml/cold: scales from zero: the operator's demand gate patches Deployment replicas")
    assert "back to 0 after 90s without calls\n" in out  # maxReplicas 1: no HPA above
    kinds = [d["kind"] for d in yaml.safe_load_all(out)]
    assert (
        "HorizontalPodAutoscaler" not in kinds
        and "replicas" not in next(d for d in yaml.safe_load_all(out) if d["kind"] == "Deployment")["spec"]
    )


def test_an_invalid_manifest_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: bad}\nspec: {modes: []}\n"
    )
    assert cli_main(["render", str(manifest)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "bad.yaml" in captured.err and "modes" in captured.err


def test_async_endpoints_render_against_their_own_credentials_secret_and_say_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: jobs}\n"
        "spec: {modes: [async], bundle: {image: reg/j:1, python: {entrypoint: 'j:run'}}}\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("BUNDLESERVE_REDIS_SECRET")
        assert cli_main(["render", str(manifest)]) == 0
    captured = capsys.readouterr()
    assert "<endpoint>-bundleserve-credentials" in captured.err
    deployment = next(d for d in yaml.safe_load_all(captured.out) if d["kind"] == "Deployment")
    refs = [
        env["valueFrom"]["secretKeyRef"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    assert set(refs) == {"jobs-bundleserve-credentials"}  # never a shared Secret (issue 17)


def test_the_console_command_prints_a_yaml_stream() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bundleserve.cli", "render", str(EXAMPLES[0])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert next(d["kind"] for d in yaml.safe_load_all(result.stdout)) == "ConfigMap"
