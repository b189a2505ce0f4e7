"""Builders: every combination of modes x bundle kind x GPU x autoscaling x KEDA yields strictly schema-valid children
(Kubernetes 1.29 and the newest version kubernetes-validate ships), with the properties the operator promises."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bundleserve.controller.builders import BuildContext, BuildError, Scaler, build_children, scaler_for
from bundleserve.controller.builders.common import content_hash
from bundleserve.controller.builders.deployment import (
    DRAIN_MARGIN_SECONDS,
    DRAIN_PATH,
    ROUTER_PORT_ALT,
    SHUTDOWN_DELAY_SECONDS,
)
from bundleserve.controller.config import HpaMetric, OperatorConfig
from bundleserve.controller.labels import CONFIG_HASH_ANNOTATION, DESIRED_HASH_ANNOTATION, ENDPOINT_LABEL
from tests.unit.controller_support import NEWEST, OLDEST, VERSIONS, endpoint, validate_strict

CONFIG = OperatorConfig(image="ghcr.io/bundleserve/bundleserve:test", redis_secret="redis", api_keys_secret="keys")
MODES = [["sync"], ["streaming"], ["async"], ["sync", "streaming"], ["sync", "streaming", "async"]]
BUNDLES = {
    "python": {"image": "reg.example.com/m:1", "python": {"entrypoint": "model:predict", "load": "model:load"}},
    "runnable": {
        "image": "reg.example.com/srv:2",
        "command": ["python", "-m", "server"],
        "args": ["--workers", "2"],
        "port": 9000,
        "routes": {"predict": "/v1/predict", "stream": "/v1/stream", "ready": "/health"},
        "env": [{"name": "LOG_LEVEL", "value": "info"}],
    },
    "sagemaker": {
        "image": "reg.example.com/sm:3",
        "port": 8080,
        "routes": {"predict": "/invocations", "ready": "/ping"},
    },
}
RESOURCES = {
    "cpu": {"cpu": "500m", "memory": "1Gi"},
    "gpu": {"cpu": "4", "memory": "16Gi", "gpus": 2, "gpuType": "A100"},
}
SCALING = {"fixed": {"minReplicas": 2, "maxReplicas": 2}, "auto": {"minReplicas": 1, "maxReplicas": 5}, "zero": None}

# KEDA's ScaledObject is not in kubernetes-validate: a strict schema of the fields we emit (per KEDA's documentation).
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "metadata": _STR_MAP,
                            "metricType": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}


def cases() -> list[tuple[str, list[str], str, str, str, bool]]:
    found = []
    for modes, bundle, resources, scaling, keda in itertools.product(MODES, BUNDLES, RESOURCES, SCALING, (False, True)):
        if bundle == "sagemaker" and "streaming" in modes:
            continue  # no stream route: rejected by the CRD
        if keda and "async" not in modes:
            continue  # KEDA changes nothing without a queue
        ident = f"{'+'.join(modes)}-{bundle}-{resources}-{scaling}{'-keda' if keda else ''}"
        found.append((ident, modes, bundle, resources, scaling, keda))
    return found


CASES = cases()


def make(modes: list[str], bundle: str, resources: str, scaling: str) -> Any:
    spec: dict[str, Any] = {"modes": modes, "bundle": BUNDLES[bundle], "resources": RESOURCES[resources]}
    spec["scaling"] = SCALING[scaling] or {"minReplicas": 0, "maxReplicas": 3}
    return endpoint("demo", **spec)


@pytest.mark.parametrize(
    ("modes", "bundle", "resources", "scaling", "keda"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_every_combination_is_schema_valid_and_consistent(
    modes: list[str], bundle: str, resources: str, scaling: str, keda: bool
) -> None:
    ep = make(modes, bundle, resources, scaling)
    children = build_children(ep, BuildContext(config=CONFIG, keda=keda))
    kinds = [child["kind"] for child in children]
    for child in children:
        if child["kind"] == "ScaledObject":
            jsonschema.validate(child, SCALED_OBJECT_SCHEMA)
        else:
            for version in VERSIONS:
                validate_strict(child, version)
        assert child["metadata"]["labels"][ENDPOINT_LABEL] == "demo"
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert child["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]

    assert ("Service" in kinds) == any(mode in modes for mode in ("sync", "streaming"))
    scaler = scaler_for(ep, keda)
    above_one = ep.spec.scaling.effective_max_replicas > 1
    assert ("HorizontalPodAutoscaler" in kinds) == (scaler is Scaler.HPA or (scaler is Scaler.DEMAND and above_one))
    assert ("ScaledObject" in kinds) == (scaler is Scaler.KEDA)
    assert ("PodDisruptionBudget" in kinds) == (ep.spec.scaling.effective_max_replicas > 1)
    deployment = next(child for child in children if child["kind"] == "Deployment")
    # never fight the autoscaler: replicas only when nothing else owns them
    assert ("replicas" in deployment["spec"]) == (scaler is Scaler.STATIC)
    if scaling == "zero":  # the queue's scalers for async only; the demand gate as soon as calls come in
        assert scaler is (Scaler.DEMAND if modes != ["async"] else Scaler.KEDA if keda else Scaler.OPERATOR)
    pod = deployment["spec"]["template"]["spec"]
    model, router = pod["containers"]
    limits = model["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (resources == "gpu")
    if resources == "gpu":
        assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "A100"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert model["lifecycle"]["preStop"]["httpGet"]["path"] == DRAIN_PATH
    assert model["lifecycle"]["preStop"]["httpGet"]["port"] == router["ports"][0]["containerPort"]
    assert model["ports"][0]["containerPort"] != router["ports"][0]["containerPort"]
    redis_env = [env for env in router["env"] if env["name"] == "BUNDLESERVE_REDIS_URL"]
    assert bool(redis_env) == ("async" in modes)
    assert_only_the_router_port_is_admitted(children)


def assert_only_the_router_port_is_admitted(children: list[dict[str, Any]]) -> None:
    """The NetworkPolicy selects exactly the Deployment's pods and admits ingress on the router's port alone."""
    (policy,) = [child for child in children if child["kind"] == "NetworkPolicy"]
    deployment = next(child for child in children if child["kind"] == "Deployment")
    model, router = deployment["spec"]["template"]["spec"]["containers"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert all(pod_labels[key] == value for key, value in selector.items())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    admitted = [port for rule in policy["spec"]["ingress"] for port in rule["ports"]]
    assert admitted == [{"port": router["ports"][0]["containerPort"], "protocol": "TCP"}]
    assert model["ports"][0]["containerPort"] not in {port["port"] for port in admitted}
    # Before the pods: the model port is closed from the first pod on.
    kinds = [child["kind"] for child in children]
    assert kinds.index("NetworkPolicy") < kinds.index("Deployment")


def test_the_official_validate_function_agrees_with_the_cached_validator() -> None:
    children = build_children(
        make(["sync", "streaming", "async"], "python", "gpu", "auto"), BuildContext(config=CONFIG)
    )
    for child in children:
        for version in VERSIONS:
            kubernetes_validate.validate(child, version, strict=True)
    broken = {**children[1], "spec": {**children[1]["spec"], "bogus": True}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, NEWEST, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        validate_strict(broken, OLDEST)


def deployment_of(ep: Any, config: OperatorConfig = CONFIG, keda: bool = False) -> dict[str, Any]:
    children = build_children(ep, BuildContext(config=config, keda=keda))
    return next(child for child in children if child["kind"] == "Deployment")


def test_python_bundle_runs_the_bundle_runtime_and_the_router_sidecar() -> None:
    ep = endpoint(bundle={"image": "reg/m:1", "python": {"entrypoint": "m:predict", "load": "m:load"}, "port": 5005})
    model, router = deployment_of(ep)["spec"]["template"]["spec"]["containers"]
    assert model["image"] == "reg/m:1"
    assert model["command"] == [
        "bundleserve",
        "bundle",
        "serve",
        "--entrypoint",
        "m:predict",
        "--load",
        "m:load",
        "--port",
        "5005",
    ]
    assert router["image"] == CONFIG.image
    assert router["command"] == [
        "bundleserve",
        "router",
        "--endpoint-file",
        "/etc/bundleserve/endpoint.yaml",
        "--model-url",
        "http://127.0.0.1:5005",
        "--port",
        "8080",
    ]
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert router["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "readinessProbe" not in model  # the router probes the model


def test_the_runtime_gets_the_stream_callable_and_the_batching_settings() -> None:
    python = {"entrypoint": "m:predict", "stream": "m:tokens", "batchEntrypoint": "m:predict_batch"}
    ep = endpoint(
        bundle={"image": "reg/m:1", "python": python},
        invocation={"concurrency": 32, "batching": {"maxBatchSize": 16, "maxWaitMilliseconds": 25}},
    )
    model, _ = deployment_of(ep)["spec"]["template"]["spec"]["containers"]
    assert model["command"] == [
        *("bundleserve", "bundle", "serve", "--entrypoint", "m:predict", "--stream", "m:tokens"),
        *("--batch-entrypoint", "m:predict_batch", "--max-batch-size", "16", "--max-batch-wait-ms", "25"),
        *("--port", "5005"),
    ]


def test_restricted_security_context_and_writable_tmp() -> None:
    pod = deployment_of(endpoint())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        volume = next(v for v in pod["volumes"] if v["name"] == tmp[0]["name"])
        assert "emptyDir" in volume


@pytest.mark.parametrize(
    ("modes", "timeouts", "expected"),
    [
        (["sync"], {"invocation": {"timeoutSeconds": 120}}, 120),
        (["async"], {"async": {"invocationTimeoutSeconds": 1800}}, 1800),
        (["sync", "async"], {"invocation": {"timeoutSeconds": 600}, "async": {"invocationTimeoutSeconds": 60}}, 600),
    ],
)
def test_grace_period_covers_the_longest_request(modes: list[str], timeouts: dict[str, Any], expected: int) -> None:
    pod = deployment_of(endpoint(modes=modes, **timeouts))["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == SHUTDOWN_DELAY_SECONDS + expected + DRAIN_MARGIN_SECONDS
    router = next(c for c in pod["containers"] if c["name"] == "router")
    env = {item["name"]: item.get("value") for item in router["env"]}
    assert env["BUNDLESERVE_SHUTDOWN_DELAY_SECONDS"] == str(SHUTDOWN_DELAY_SECONDS)


def test_rolling_update_never_reduces_capacity() -> None:
    strategy = deployment_of(endpoint())["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_config_hash_rolls_pods_when_the_spec_changes_and_only_then() -> None:
    def config_hash(**spec: Any) -> str:
        annotations = deployment_of(endpoint(**spec))["spec"]["template"]["metadata"]["annotations"]
        return str(annotations[CONFIG_HASH_ANNOTATION])

    assert config_hash() == config_hash()
    assert config_hash(invocation={"concurrency": 4}) != config_hash(invocation={"concurrency": 5})


def test_the_configmap_carries_the_endpoint_document_the_router_reads() -> None:
    ep = endpoint(invocation={"timeoutSeconds": 42})
    config_map = build_children(ep, BuildContext(config=CONFIG))[0]
    document = yaml.safe_load(config_map["data"]["endpoint.yaml"])
    assert document["metadata"] == {"name": "demo", "namespace": "ml"}
    assert document["spec"]["invocation"] == {"timeoutSeconds": 42}


def test_a_model_on_8080_moves_the_router_to_another_port() -> None:
    ep = endpoint(bundle=BUNDLES["sagemaker"])
    model, router = deployment_of(ep)["spec"]["template"]["spec"]["containers"]
    assert model["ports"][0]["containerPort"] == 8080
    assert router["ports"][0]["containerPort"] == ROUTER_PORT_ALT
    assert "--model-url" in router["command"] and "http://127.0.0.1:8080" in router["command"]


def test_a_model_on_8080_is_not_admitted_when_the_router_moves() -> None:
    children = build_children(endpoint(bundle=BUNDLES["sagemaker"]), BuildContext(config=CONFIG, keda=False))
    (policy,) = [child for child in children if child["kind"] == "NetworkPolicy"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": ROUTER_PORT_ALT, "protocol": "TCP"}]}]
    assert_only_the_router_port_is_admitted(children)


def test_hpa_metric_is_cpu_by_default_and_inflight_on_request() -> None:
    ep = endpoint(scaling={"minReplicas": 1, "maxReplicas": 4, "targetConcurrency": 6, "scaleDownDelaySeconds": 120})

    def hpa(config: OperatorConfig) -> dict[str, Any]:
        return next(
            c for c in build_children(ep, BuildContext(config=config)) if c["kind"] == "HorizontalPodAutoscaler"
        )

    cpu = hpa(CONFIG)["spec"]
    assert cpu["metrics"][0]["resource"]["name"] == "cpu"
    assert cpu["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    inflight = hpa(OperatorConfig(hpa_metric=HpaMetric.INFLIGHT))["spec"]["metrics"][0]
    assert inflight["pods"]["metric"]["name"] == "bundleserve_router_in_flight_requests"
    assert inflight["pods"]["target"]["averageValue"] == "6"


def test_the_inflight_hpa_asks_for_a_metric_the_router_exports() -> None:
    """The HPA's Pods metric must be a gauge the router really exposes, or it never gets a value (issue 12)."""
    from bundleserve.router.metrics import RouterMetrics

    exported = {family.name: family.type for family in RouterMetrics("echo").collect()}
    ep = endpoint(scaling={"minReplicas": 1, "maxReplicas": 4})
    (hpa,) = (c for c in build_children(ep, BuildContext(config=OperatorConfig(hpa_metric=HpaMetric.INFLIGHT)))
              if c["kind"] == "HorizontalPodAutoscaler")  # fmt: skip
    asked = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert exported.get(asked) == "gauge", f"{asked} is not among the router's gauges {sorted(exported)}"


def test_keda_scaled_object_watches_the_endpoint_stream() -> None:
    ep = endpoint(modes=["async"], scaling={"minReplicas": 0, "maxReplicas": 7, "targetConcurrency": 3})
    children = build_children(ep, BuildContext(config=CONFIG, keda=True))
    scaled = next(c for c in children if c["kind"] == "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == "bundleserve:{ml/demo}:stream"
    assert trigger["metadata"]["consumerGroup"] == "workers"
    assert trigger["metadata"]["lagCount"] == "3"
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] == 7
    router = deployment_of(ep, keda=True)["spec"]["template"]["spec"]["containers"][1]
    assert {env["name"] for env in router["env"]} >= {"BUNDLESERVE_REDIS_ADDRESS", "BUNDLESERVE_REDIS_URL"}


def test_user_pod_settings_reach_the_pod_but_never_override_our_selector() -> None:
    ep = endpoint(
        pod={
            "labels": {"team": "ml", ENDPOINT_LABEL: "hijack"},
            "serviceAccountName": "model-sa",
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"pool": "inference"},
            "priorityClassName": "high",
        }
    )
    template = deployment_of(ep)["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["metadata"]["labels"][ENDPOINT_LABEL] == "demo"
    assert template["spec"]["serviceAccountName"] == "model-sa"
    assert "automountServiceAccountToken" not in template["spec"]
    assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert template["spec"]["nodeSelector"] == {"pool": "inference"}


def test_secrets_are_referenced_never_inlined() -> None:
    pod = deployment_of(endpoint(modes=["sync", "async"]))["spec"]["template"]["spec"]
    router = pod["containers"][1]
    redis = next(env for env in router["env"] if env["name"] == "BUNDLESERVE_REDIS_URL")
    assert redis == {"name": "BUNDLESERVE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}}
    items = [{"key": "api-keys", "path": "api-keys"}]  # only the keys file: the Secret holds Redis credentials too
    assert {"name": "api-keys", "secret": {"secretName": "keys", "items": items}} in pod["volumes"]


@pytest.mark.parametrize(
    ("spec", "config", "reason"),
    [
        ({"modes": ["async"]}, OperatorConfig(), "AsyncNotConfigured"),
        ({"localOnly": True, "bundle": {"python": {"entrypoint": "m:f"}}}, CONFIG, "LocalOnly"),
    ],
)
def test_specs_that_cannot_run_raise_a_build_error_with_a_reason(
    spec: dict[str, Any], config: OperatorConfig, reason: str
) -> None:
    with pytest.raises(BuildError) as caught:
        build_children(endpoint(**spec), BuildContext(config=config))
    assert caught.value.reason == reason


def test_rendering_without_a_uid_has_no_owner_reference() -> None:
    children = build_children(endpoint(uid=None), BuildContext(config=CONFIG))
    assert all("ownerReferences" not in child["metadata"] for child in children)


def test_desired_hash_is_stable_and_tracks_the_spec() -> None:
    def hashes(**spec: Any) -> list[str]:
        return [
            c["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
            for c in build_children(endpoint(**spec), BuildContext(config=CONFIG))
        ]

    assert hashes() == hashes()
    changed = hashes(resources={"cpu": "2"})
    assert changed[0] != hashes()[0]  # the ConfigMap carries the spec
    assert changed[-1] != hashes()[-1]  # and the Deployment's resources moved


S3_CONFIG = OperatorConfig(
    image=CONFIG.image,
    redis_secret="redis",
    results_url="s3://results-bucket/bundleserve",
    results_s3_secret="s3-creds",
    results_s3_endpoint="http://minio.storage:9000",
    results_s3_region="eu-west-1",
)


def test_s3_results_reach_the_router_with_credentials_by_reference_only() -> None:
    ep = endpoint(modes=["sync", "async"])
    children = build_children(ep, BuildContext(config=S3_CONFIG))
    for child in children:
        for version in VERSIONS:
            validate_strict(child, version)
    pod = next(child for child in children if child["kind"] == "Deployment")["spec"]["template"]["spec"]
    model, router = pod["containers"]
    env = {item["name"]: item for item in router["env"]}
    assert env["BUNDLESERVE_RESULTS_URL"] == {"name": "BUNDLESERVE_RESULTS_URL", "value": S3_CONFIG.results_url}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
    assert env["AWS_REGION"]["value"] == env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": key}}}
    token = env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "s3-creds", "key": "AWS_SESSION_TOKEN", "optional": True}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert "value" not in env[key]  # never an inline credential
    assert not any(item["name"].startswith("AWS_") for item in model.get("env", []))  # the model gets none of it
    assert not any(volume.get("persistentVolumeClaim") for volume in pod["volumes"])


def test_s3_without_a_secret_leaves_credentials_to_the_default_chain() -> None:
    config = OperatorConfig(image=CONFIG.image, results_url="s3://bucket")
    router = deployment_of(endpoint(), config)["spec"]["template"]["spec"]["containers"][1]
    names = {item["name"] for item in router["env"]}
    assert "BUNDLESERVE_RESULTS_URL" in names
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"}
    no_s3 = deployment_of(endpoint(), OperatorConfig(image=CONFIG.image))["spec"]["template"]["spec"]["containers"][1]
    assert not any(item["name"] in ("BUNDLESERVE_RESULTS_URL", "AWS_REGION") for item in no_s3["env"])


@pytest.mark.parametrize(
    "change",
    [
        {"results_url": "s3://other-bucket/bundleserve"},
        {"results_s3_secret": "rotated-creds"},
        {"results_s3_secret": None},
        {"results_s3_endpoint": "https://s3.example.com"},
        {"results_s3_region": "us-east-1"},
        {"results_url": None, "results_s3_secret": None, "results_s3_endpoint": None, "results_s3_region": None},
    ],
)
def test_config_hash_changes_with_the_s3_settings(change: dict[str, Any]) -> None:
    def config_hash(config: OperatorConfig) -> str:
        annotations = deployment_of(endpoint(), config)["spec"]["template"]["metadata"]["annotations"]
        return str(annotations[CONFIG_HASH_ANNOTATION])

    assert config_hash(S3_CONFIG) == config_hash(S3_CONFIG)
    assert config_hash(S3_CONFIG) != config_hash(dataclasses.replace(S3_CONFIG, **change))


def test_without_s3_the_config_hash_is_the_endpoint_document_alone() -> None:
    """Operators upgraded without S3 must not roll every pod: the hash input is unchanged when S3 is off."""
    ep = endpoint()
    document = build_children(ep, BuildContext(config=CONFIG))[0]["data"]["endpoint.yaml"]
    annotations = deployment_of(ep)["spec"]["template"]["metadata"]["annotations"]
    assert annotations[CONFIG_HASH_ANNOTATION] == content_hash(document)


def test_a_sync_endpoint_at_min_zero_up_to_one_replica_gets_no_hpa_and_no_replicas() -> None:
    """minReplicas 0 without maxReplicas: the demand gate alone moves 0 <-> 1 (an HPA of 1..1 would do nothing)."""
    ep = endpoint(modes=["sync"], scaling={"minReplicas": 0, "scaleToZeroAfterSeconds": 60})
    assert scaler_for(ep, keda=True) is Scaler.DEMAND
    children = build_children(ep, BuildContext(config=CONFIG, keda=True))
    kinds = [child["kind"] for child in children]
    assert "HorizontalPodAutoscaler" not in kinds and "ScaledObject" not in kinds
    assert "replicas" not in deployment_of(ep)["spec"]
