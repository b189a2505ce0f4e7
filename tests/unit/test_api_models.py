"""The Endpoint models: reference defaults, camelCase on the wire, strict types, derived properties, and the manifest
loader's located errors."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bundleserve.api.endpoint import (
    AsyncSettings,
    Bundle,
    Endpoint,
    EndpointSpec,
    InvocationSettings,
    Mode,
    PythonBundle,
    Routes,
    Scaling,
    is_valid_name,
)
from bundleserve.api.manifest import ManifestError, load_endpoints, parse_endpoint

ROOT = Path(__file__).resolve().parents[2]


def endpoint(name: str = "echo", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"modes": ["sync"], "bundle": {"image": "r/echo:1", "python": {"entrypoint": "m:f"}}}
    body.update(spec)
    return {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": name}, "spec": body}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_references() -> None:
    spec = Endpoint.model_validate(endpoint(modes=["async"], scaling={"minReplicas": 0})).spec
    assert spec.invocation.timeout_seconds == 60
    assert spec.invocation.max_payload_bytes == 6291456 == 6 * 1024 * 1024
    settings = spec.async_settings
    assert settings.request_ttl_seconds == 21600
    assert settings.invocation_timeout_seconds == 900
    assert settings.result_ttl_seconds == 86400
    assert settings.max_attempts == 3
    assert spec.async_ is None  # the defaults come from `async_settings`, the document stays as written
    assert spec.bundle.port == 5005
    assert (spec.resources.cpu, spec.resources.memory, spec.resources.gpus) == ("1", "2Gi", 0)


def test_camel_case_in_camel_case_out() -> None:
    document = endpoint(
        modes=["sync", "async"],
        localOnly=False,
        invocation={"timeoutSeconds": 30, "maxPayloadBytes": 2048, "maxQueued": 5},
        **{"async": {"requestTTLSeconds": 600, "resultTTLSeconds": 900, "invocationTimeoutSeconds": 10}},
        scaling={"minReplicas": 1, "maxReplicas": 2, "scaleDownDelaySeconds": 5},
        pod={"serviceAccountName": "runner", "imagePullSecrets": [{"name": "creds"}]},
    )
    document["spec"]["bundle"]["env"] = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    model = Endpoint.model_validate(document)
    assert model.spec.async_ is not None and model.spec.async_.request_ttl_seconds == 600
    assert model.spec.invocation.timeout_seconds == 30
    manifest = model.to_manifest()
    spec = manifest["spec"]
    assert spec["async"]["requestTTLSeconds"] == 600 and spec["async"]["resultTTLSeconds"] == 900
    assert spec["invocation"]["maxPayloadBytes"] == 2048
    assert spec["scaling"]["scaleDownDelaySeconds"] == 5
    assert spec["pod"]["serviceAccountName"] == "runner"
    assert spec["bundle"]["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "s", "key": "k"}
    assert manifest["apiVersion"] == "bundleserve.dev/v1alpha1"
    assert "_" not in "".join(keys_of(manifest)), sorted(k for k in keys_of(manifest) if "_" in k)
    assert Endpoint.model_validate(manifest) == model


def keys_of(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in [k, *keys_of(v)]]
    if isinstance(value, list):
        return [k for item in value for k in keys_of(item)]
    return []


def test_python_code_may_use_snake_case_names() -> None:
    spec = EndpointSpec(
        modes=[Mode.SYNC],
        bundle=Bundle(image="r/x:1", python=PythonBundle(entrypoint="m:f")),
        invocation=InvocationSettings(timeout_seconds=5),
        scaling=Scaling(min_replicas=2),
    )
    assert spec.invocation.timeout_seconds == 5 and spec.scaling.effective_max_replicas == 2


def test_types_are_strict_like_the_crd() -> None:
    with pytest.raises(ValidationError, match="valid integer"):
        InvocationSettings.model_validate({"timeoutSeconds": "60"})
    with pytest.raises(ValidationError, match="valid boolean"):
        AsyncSettings.model_validate({"retainOnDelete": "yes"})
    with pytest.raises(ValidationError, match="valid string"):
        Endpoint.model_validate(endpoint(resources={"cpu": True}))


def test_integer_quantities_are_read_as_text() -> None:
    resources = Endpoint.model_validate(endpoint(resources={"cpu": 2, "memory": 1073741824})).spec.resources
    assert (resources.cpu, resources.memory) == ("2", "1073741824")


def test_null_means_unset() -> None:
    document = endpoint(scaling={"minReplicas": 2, "maxReplicas": None})
    document["spec"]["bundle"]["port"] = None
    spec = Endpoint.model_validate(document).spec
    assert spec.bundle.port == 5005 and spec.scaling.max_replicas is None


def test_models_are_frozen() -> None:
    spec = Endpoint.model_validate(endpoint()).spec
    with pytest.raises(ValidationError, match="frozen"):
        spec.invocation.timeout_seconds = 5  # type: ignore[misc]


def test_derived_properties() -> None:
    python = Bundle(image="r/x:1", python=PythonBundle(entrypoint="m:f"))
    assert python.is_python
    assert python.effective_routes == Routes(predict="/predict", stream="/stream", ready="/readyz")
    runnable = Bundle(image="r/x:1", routes=Routes(predict="/invocations", ready="/ping"))
    assert not runnable.is_python and runnable.effective_routes.predict == "/invocations"
    assert Bundle(image="r/x:1").effective_routes == Routes()
    assert Scaling(min_replicas=0).effective_max_replicas == 1
    assert Scaling(min_replicas=1, max_replicas=3).autoscaled
    assert not Scaling(min_replicas=2).autoscaled
    model = Endpoint.model_validate(endpoint(modes=["sync", "async"]))
    assert model.spec.serves(Mode.ASYNC) and not model.spec.serves(Mode.STREAMING)
    assert model.name == "echo" and model.namespace == "default"


def test_endpoint_names_are_service_names() -> None:
    assert is_valid_name("echo-2")
    assert not is_valid_name("2echo")  # a Service name must start with a letter
    assert not is_valid_name("Echo")
    assert not is_valid_name("a" * 64)


def test_cross_field_rules_report_every_failure() -> None:
    document = endpoint(scaling={"minReplicas": 3, "maxReplicas": 2}, resources={"gpuType": "l4"})
    with pytest.raises(ManifestError) as error:
        parse_endpoint(document, source="bad.yaml")
    message = str(error.value)
    assert message.startswith("bad.yaml: invalid Endpoint: spec: ")
    assert "minReplicas must be less than or equal to spec.scaling.maxReplicas" in message
    assert "gpuType needs spec.resources.gpus greater than 0" in message


def test_load_errors_name_the_file_document_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path / "endpoints.yaml",
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: ok}\n"
        "spec: {modes: [sync], bundle: {image: 'r/x:1', python: {entrypoint: 'm:f'}}}\n"
        "---\n"
        "apiVersion: bundleserve.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: bad}\n"
        "spec: {modes: [sync], bundle: {image: 'r/x:1', python: {entrypoint: 'm:f'}, env: [{name: 'A B'}]}}\n",
    )
    with pytest.raises(ManifestError) as error:
        load_endpoints([path])
    assert str(error.value).startswith(f"{path}#1: invalid Endpoint: spec.bundle.env[0].name: String should match")


def test_multi_document_files_load_in_order(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", "---\n" + to_yaml(endpoint("one")) + "---\n" + to_yaml(endpoint("two")))
    second = write(tmp_path / "b.yaml", to_yaml(endpoint("three")))
    loaded = load_endpoints([first, second])
    assert [(path.name, model.name) for path, model in loaded] == [
        ("a.yaml", "one"),
        ("a.yaml", "two"),
        ("b.yaml", "three"),
    ]


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", to_yaml(endpoint("echo")))
    second = write(tmp_path / "b.yaml", to_yaml(endpoint("echo")) + "---\n" + to_yaml(endpoint("other")))
    with pytest.raises(ManifestError, match=r"duplicate Endpoint names: echo$"):
        load_endpoints([first, second])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", "#0: kind must be Endpoint, got 'ConfigMap'"),
        ("apiVersion: v1\nkind: Endpoints\nmetadata: {name: c}\n", "#0: kind must be Endpoint, got 'Endpoints'"),
        ("- just\n- a list\n", "#0: expected a mapping (an Endpoint document), got list"),
        ("spec: [unclosed\n", ": not valid YAML"),
    ],
)
def test_other_documents_are_rejected_with_the_file_name(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "thing.yaml", text)
    with pytest.raises(ManifestError) as error:
        load_endpoints([path])
    assert str(error.value).startswith(f"{path}{expected}")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ManifestError, match=r"nope\.yaml: cannot read: No such file or directory"):
        load_endpoints([missing])


def to_yaml(document: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False)


def test_operator_is_the_standard_library_module_in_the_project_environment() -> None:
    """The source root is called `operator/`; it must never shadow the standard library's `operator`."""
    for cwd in (ROOT, ROOT / "operator"):
        printed = subprocess.run(
            [
                sys.executable,
                "-c",
                "import operator, bundleserve; print(operator.__file__); print(bundleserve.__file__)",
            ],
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.splitlines()
        assert Path(printed[0]) == Path(sysconfig.get_paths()["stdlib"]) / "operator.py"
        assert Path(printed[1]) == ROOT / "operator" / "bundleserve" / "__init__.py"  # the project's environment
    assert not (ROOT / "operator" / "__init__.py").exists()
