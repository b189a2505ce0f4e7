"""The Helm chart, rendered by the real Helm engine (helm-python-sdk) and checked object by object.

Each values set renders once per module; the tests then read the parsed objects. Every rendered object is validated
strictly against the official Kubernetes schemas of the oldest supported (1.29) and the newest shipped version.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from bundleserve.controller.config import HpaMetric, KedaMode, OperatorConfig
from bundleserve.controller.labels import common_labels
from bundleserve.dialects.sagemaker import sigv4

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "bundleserve"
SOURCE_CRD = ROOT / "crds" / "endpoints.bundleserve.dev.yaml"
CHART_CRD = CHART / "files" / "crds" / "endpoints.bundleserve.dev.yaml"
RBAC_FILE = CHART / "files" / "operator-rbac.yaml"

RELEASE = "bs"
NAMESPACE = "bundleserve-system"
KUBE_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
# Kinds outside the core schemas: checked against their own CRDs (peering) or by hand (ServiceMonitor).
PEERING_KINDS = {"ClusterKopfPeering", "KopfPeering"}
FOREIGN_KINDS = {"ServiceMonitor"}
# Resources a Role cannot grant; a namespaced operator gets them through its ClusterRole.
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings", "nodes"}

VALUES: dict[str, dict[str, Any]] = {
    "default": {},
    # Every optional feature on, with a namespaced HA operator.
    "all-on-namespaced": {
        "operator": {
            "replicas": 3,
            "scope": "namespaced",
            "watchNamespaces": ["team-a", "team-b"],
            "serviceMonitor": {"enabled": True},
            "keda": "off",
            "autoscaling": {"hpaMetric": "inflight", "cpuTargetUtilization": 55},
        },
        "gateway": {"enabled": True, "replicas": 2},
        "redis": {"enabled": True, "auth": {"password": "p@ss word/1"}},
        "apiKeys": {"existingSecret": "bundleserve-api-keys"},
        "results": {"existingClaim": "bundleserve-results"},
        "networkPolicy": {"enabled": True, "gatewayFrom": [{"namespaceSelector": {}}]},
    },
    # A cluster-wide HA operator with the gateway, an external Redis and a generated-password-free setup.
    "ha-cluster": {
        "operator": {"replicas": 2},
        "gateway": {"enabled": True},
        "redis": {"existingSecret": "external-redis"},
    },
    # Every route anonymous: no API-key Secret at all (documented, NOTES.txt warns).
    "auth-off": {"auth": {"enabled": False}, "gateway": {"enabled": True}},
    # Results in S3-compatible storage (MinIO-style endpoint) instead of a volume.
    "s3-results": {
        "redis": {"enabled": True},
        "gateway": {"enabled": True},
        "results": {
            "s3": {
                "url": "s3://bundleserve-results/prod",
                "existingSecret": "bundleserve-s3",
                "endpoint": "http://minio.storage:9000",
                "region": "eu-west-1",
            }
        },
    },
}


@dataclass(frozen=True)
class Rendered:
    values: dict[str, Any]
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        found = [
            obj
            for obj in self.of_kind(kind)
            if obj["metadata"]["name"] == name and (namespace is None or obj["metadata"].get("namespace") == namespace)
        ]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]


def _parse(manifests: dict[str, str]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, Rendered]:
    return {
        key: Rendered(values, _parse(chart.render(values, name=RELEASE, namespace=NAMESPACE)))
        for key, values in VALUES.items()
    }


@pytest.fixture(scope="module")
def chart_crds(chart: helm.Chart) -> list[dict[str, Any]]:
    """The CRDs in the chart's crds/ directory (kopf peering), which Helm applies before the templates."""
    return [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]


@pytest.fixture(scope="module")
def rbac_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(RBAC_FILE.read_text())
    return rules


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (obj["metadata"]["name"], obj["spec"]["template"])
        for obj in objects
        if obj["kind"] in {"Deployment", "StatefulSet"}
    ]


def _container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    containers = {c["name"]: c for c in obj["spec"]["template"]["spec"]["containers"]}
    container: dict[str, Any] = containers[name]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def _secret_value(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- lint, schema -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(VALUES))
def test_lint_is_clean(key: str) -> None:
    report = helm.lint(CHART, VALUES[key], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_schema_accepts_the_defaults_and_every_values_set(chart: helm.Chart) -> None:
    for values in VALUES.values():
        chart.validate_schema(values)


def test_schema_rejects_an_unknown_key_by_name(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema({"operator": {"replicaCount": 2}})
    message = str(caught.value)
    assert "replicaCount" in message and "operator" in message, message
    with pytest.raises(helm.HelmValuesError, match="replicaCount"):
        chart.render({"operator": {"replicaCount": 2}}, name=RELEASE, namespace=NAMESPACE)


def test_schema_rejects_a_wrong_type_naming_the_field(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema({"operator": {"replicas": "two"}})
    message = str(caught.value)
    assert "replicas" in message and "integer" in message, message


def test_schema_rejects_an_unknown_operator_scope(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="scope"):
        chart.validate_schema({"operator": {"scope": "everywhere"}})


@pytest.mark.parametrize(
    "s3",
    [{"url": "https://bucket/prefix"}, {"url": "bucket/prefix"}, {"url": "s3://b", "endpoint": "minio:9000"}],
)
def test_schema_rejects_s3_settings_the_operator_would_refuse(chart: helm.Chart, s3: dict[str, str]) -> None:
    field = "endpoint" if "endpoint" in s3 else "url"
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema({"results": {"s3": s3}})
    assert field in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("results", "named"),
    [
        ({"existingClaim": "results", "s3": {"url": "s3://bucket"}}, "exclude each other"),
        ({"s3": {"existingSecret": "bundleserve-s3"}}, "need results.s3.url"),
    ],
)
def test_render_refuses_conflicting_result_stores(chart: helm.Chart, results: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmError, match=named):
        chart.render({"results": results}, name=RELEASE, namespace=NAMESPACE)


# --- strict Kubernetes validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("key", list(VALUES))
def test_every_object_validates_strictly(
    rendered: dict[str, Rendered], chart_crds: list[dict[str, Any]], key: str, version: str
) -> None:
    objects = [obj for obj in rendered[key].objects if obj["kind"] not in PEERING_KINDS | FOREIGN_KINDS]
    assert objects
    for obj in [*objects, *chart_crds]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {error.message}")


def test_peering_objects_validate_against_the_chart_peering_crds(
    rendered: dict[str, Rendered], chart_crds: list[dict[str, Any]]
) -> None:
    schemas = {
        crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for crd in chart_crds
    }
    scopes = {crd["spec"]["names"]["kind"]: crd["spec"]["scope"] for crd in chart_crds}
    peerings = [obj for r in rendered.values() for obj in r.objects if obj["kind"] in PEERING_KINDS]
    assert {obj["kind"] for obj in peerings} == PEERING_KINDS
    for obj in peerings:
        assert obj["apiVersion"] == "kopf.dev/v1"
        jsonschema.validate(obj, schemas[obj["kind"]])
        assert ("namespace" in obj["metadata"]) == (scopes[obj["kind"]] == "Namespaced")


def test_service_monitor_scrapes_the_metrics_service(rendered: dict[str, Rendered]) -> None:
    objects = rendered["all-on-namespaced"]
    (monitor,) = objects.of_kind("ServiceMonitor")
    service = objects.one("Service", f"{RELEASE}-bundleserve-operator-metrics")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert re.fullmatch(r"\d+s", endpoint["interval"])


# --- CRDs -----------------------------------------------------------------------------------------------------------


def test_chart_crd_is_a_byte_identical_copy_of_the_repository_crd() -> None:
    assert SOURCE_CRD.exists(), f"{SOURCE_CRD} is missing (generate it with `make crds`)"
    assert CHART_CRD.read_bytes() == SOURCE_CRD.read_bytes(), (
        f"{CHART_CRD.relative_to(ROOT)} differs from {SOURCE_CRD.relative_to(ROOT)}: copy it over"
    )


def test_rendered_crd_is_the_copy_plus_labels_and_keep(rendered: dict[str, Rendered]) -> None:
    source = yaml.safe_load(CHART_CRD.read_text())
    (crd,) = rendered["default"].of_kind("CustomResourceDefinition")
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"] == "endpoints.bundleserve.dev"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_crd_template_can_be_switched_off_and_not_kept(chart: helm.Chart) -> None:
    off = _parse(chart.render({"crds": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE))
    assert not [obj for obj in off if obj["kind"] == "CustomResourceDefinition"]
    unkept = _parse(chart.render({"crds": {"keep": False}}, name=RELEASE, namespace=NAMESPACE))
    (crd,) = [obj for obj in unkept if obj["kind"] == "CustomResourceDefinition"]
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_chart_crds_directory_holds_the_kopf_peering_crds(chart_crds: list[dict[str, Any]]) -> None:
    assert {crd["metadata"]["name"] for crd in chart_crds} == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


# --- defaults and features -------------------------------------------------------------------------------------------


def test_optional_features_are_off_by_default(rendered: dict[str, Rendered]) -> None:
    kinds = sorted(obj["kind"] for obj in rendered["default"].objects)
    # The Secret is the generated API key: auth is not optional by default.
    expected = ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"]
    assert kinds == sorted([*expected, "Service", "Secret"])


def test_default_operator_is_cluster_wide_and_standalone(rendered: dict[str, Rendered]) -> None:
    deployment = rendered["default"].one("Deployment", f"{RELEASE}-bundleserve-operator")
    container = _container(deployment, "operator")
    assert container["image"] == "ghcr.io/bundleserve/bundleserve:0.1.0"
    assert container["args"] == ["operator", "--all-namespaces", "--health-port=8081", "--standalone"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = _env(container)
    assert env["BUNDLESERVE_IMAGE"] == container["image"]
    assert env["BUNDLESERVE_KEDA"] == "auto"
    assert not {"BUNDLESERVE_REDIS_SECRET", "BUNDLESERVE_RESULTS_PVC"} & set(env)
    assert env["BUNDLESERVE_API_KEYS_SECRET"] == f"{RELEASE}-bundleserve-api-keys"  # secure by default


def test_operator_probes_use_the_health_port(rendered: dict[str, Rendered]) -> None:
    container = _container(rendered["default"].one("Deployment", f"{RELEASE}-bundleserve-operator"), "operator")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz"  # the loop answers
    assert readiness["httpGet"]["path"] == "/readyz"  # kopf has started
    for probe in (liveness, readiness):
        assert ports[probe["httpGet"]["port"]] == 8081


def test_namespaced_ha_operator_peers_in_every_watched_namespace(rendered: dict[str, Rendered]) -> None:
    objects = rendered["all-on-namespaced"]
    name = f"{RELEASE}-bundleserve-operator"
    deployment = objects.one("Deployment", name)
    args = _container(deployment, "operator")["args"]
    assert args == ["operator", "--namespace=team-a", "--namespace=team-b", "--health-port=8081", f"--peering={name}"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert {p["metadata"]["namespace"] for p in objects.of_kind("KopfPeering")} == {"team-a", "team-b"}
    assert {p["metadata"]["name"] for p in objects.of_kind("KopfPeering")} == {name}
    assert not objects.of_kind("ClusterKopfPeering")
    env = _env(_container(deployment, "operator"))
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_cluster_ha_operator_uses_one_cluster_peering_and_a_pdb(rendered: dict[str, Rendered]) -> None:
    objects = rendered["ha-cluster"]
    name = f"{RELEASE}-bundleserve-operator"
    deployment = objects.one("Deployment", name)
    assert f"--peering={name}" in _container(deployment, "operator")["args"]
    (peering,) = objects.of_kind("ClusterKopfPeering")
    assert peering["metadata"]["name"] == name
    pdb = objects.one("PodDisruptionBudget", name, NAMESPACE)
    assert pdb["spec"]["minAvailable"] == 1
    assert _selects(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])


def test_operator_env_names_the_configured_secrets_and_claim(rendered: dict[str, Rendered]) -> None:
    objects = rendered["all-on-namespaced"]
    env = _env(_container(objects.one("Deployment", f"{RELEASE}-bundleserve-operator"), "operator"))
    assert env["BUNDLESERVE_REDIS_SECRET"] == f"{RELEASE}-bundleserve-redis"
    assert env["BUNDLESERVE_API_KEYS_SECRET"] == "bundleserve-api-keys"
    assert env["BUNDLESERVE_RESULTS_PVC"] == "bundleserve-results"
    assert "url" in objects.one("Secret", env["BUNDLESERVE_REDIS_SECRET"])["data"]
    external = _env(_container(rendered["ha-cluster"].one("Deployment", f"{RELEASE}-bundleserve-operator"), "operator"))
    assert external["BUNDLESERVE_REDIS_SECRET"] == "external-redis"
    assert not rendered["ha-cluster"].of_kind("StatefulSet")


def test_bundled_redis_secret_has_the_keys_keda_reads(rendered: dict[str, Rendered]) -> None:
    """KEDA's trigger reads `address` and `password` through the router's env (BUNDLESERVE_REDIS_ADDRESS/PASSWORD)."""
    secret = rendered["all-on-namespaced"].one("Secret", f"{RELEASE}-bundleserve-redis")
    assert _secret_value(secret, "address") == f"{RELEASE}-bundleserve-redis.{NAMESPACE}.svc:6379"
    assert _secret_value(secret, "password") == "p@ss word/1"
    assert _secret_value(secret, "url").endswith(f"@{_secret_value(secret, 'address')}/0")


@pytest.mark.parametrize(("key", "secret"), [("all-on-namespaced", f"{RELEASE}-bundleserve-redis"),
                                             ("ha-cluster", "external-redis")])  # fmt: skip
def test_operator_gets_the_queue_connection_from_the_redis_secret(
    rendered: dict[str, Rendered], key: str, secret: str
) -> None:
    """Without BUNDLESERVE_REDIS_URL the operator's scaler and queue purge do nothing (issue 12)."""
    container = _container(rendered[key].one("Deployment", f"{RELEASE}-bundleserve-operator"), "operator")
    (url,) = [item for item in container["env"] if item["name"] == "BUNDLESERVE_REDIS_URL"]
    assert url["valueFrom"] == {"secretKeyRef": {"name": secret, "key": "url"}}


def test_operator_reads_the_rendered_environment(rendered: dict[str, Rendered]) -> None:
    """The operator's own config reader accepts what the chart sets, value for value."""
    objects = rendered["all-on-namespaced"]
    container = _container(objects.one("Deployment", f"{RELEASE}-bundleserve-operator"), "operator")
    plain = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    config = OperatorConfig.from_env(plain)
    assert config.image == container["image"]
    assert config.redis_secret == f"{RELEASE}-bundleserve-redis"
    assert config.api_keys_secret == "bundleserve-api-keys"
    assert config.results_pvc == "bundleserve-results"
    assert (config.keda, config.hpa_metric, config.cpu_target_utilization) == (KedaMode.OFF, HpaMetric.INFLIGHT, 55)
    default = rendered["default"].one("Deployment", f"{RELEASE}-bundleserve-operator")
    defaults = {item["name"]: item["value"] for item in _container(default, "operator")["env"] if "value" in item}
    generated = f"{RELEASE}-bundleserve-api-keys"
    assert OperatorConfig.from_env(defaults) == OperatorConfig(image=config.image, api_keys_secret=generated)


def test_s3_results_reach_the_operator_environment(rendered: dict[str, Rendered]) -> None:
    """With results.s3 set the operator gets names and plain settings only, and its config reader accepts them."""
    objects = rendered["s3-results"]
    container = _container(objects.one("Deployment", f"{RELEASE}-bundleserve-operator"), "operator")
    env = _env(container)
    assert env["BUNDLESERVE_RESULTS_URL"] == "s3://bundleserve-results/prod"
    assert env["BUNDLESERVE_RESULTS_S3_SECRET"] == "bundleserve-s3"
    assert env["BUNDLESERVE_RESULTS_S3_ENDPOINT"] == "http://minio.storage:9000"
    assert env["BUNDLESERVE_RESULTS_S3_REGION"] == "eu-west-1"
    assert "BUNDLESERVE_RESULTS_PVC" not in env
    assert not any(name.startswith("AWS_") for name in env)  # the operator never holds the S3 credentials
    config = OperatorConfig.from_env({item["name"]: item["value"] for item in container["env"] if "value" in item})
    assert (config.results_url, config.results_s3_secret) == ("s3://bundleserve-results/prod", "bundleserve-s3")
    assert (config.results_s3_endpoint, config.results_s3_region) == ("http://minio.storage:9000", "eu-west-1")
    default = _env(_container(rendered["default"].one("Deployment", f"{RELEASE}-bundleserve-operator"), "operator"))
    assert not any(name.startswith("BUNDLESERVE_RESULTS_") for name in default)


def test_s3_results_reach_the_gateway_like_the_routers(rendered: dict[str, Rendered]) -> None:
    """The gateway answers SageMaker's async calls itself, so it needs the routers' S3 store: the URL and settings
    as plain env, the credentials only as references to the Secret (in the release's namespace)."""
    objects = rendered["s3-results"]
    gateway = _container(objects.one("Deployment", f"{RELEASE}-bundleserve-gateway"), "gateway")
    env = _env(gateway)
    assert env["BUNDLESERVE_RESULTS_URL"] == "s3://bundleserve-results/prod"
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    references = {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in gateway["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert references[name]["name"] == "bundleserve-s3"
        assert references[name]["key"] == name
    assert references["AWS_SESSION_TOKEN"]["optional"] is True


def test_bundled_redis_is_durable_and_its_url_reaches_it(rendered: dict[str, Rendered]) -> None:
    objects = rendered["all-on-namespaced"]
    name = f"{RELEASE}-bundleserve-redis"
    statefulset = objects.one("StatefulSet", name)
    secret = objects.one("Secret", name)
    service = objects.one("Service", name)
    assert statefulset["spec"]["replicas"] == 1
    args = _container(statefulset, "redis")["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert _selects(service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"])

    url = urllib.parse.urlsplit(_secret_value(secret, "url"))
    assert url.scheme == "redis"
    assert url.hostname == f"{name}.{NAMESPACE}.svc" and url.port == service["spec"]["ports"][0]["port"] == 6379
    assert urllib.parse.unquote(url.password or "") == _secret_value(secret, "password") == "p@ss word/1"


def test_bundled_redis_generates_a_password_when_none_is_given(chart: helm.Chart) -> None:
    objects = _parse(chart.render({"redis": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE))
    (secret,) = [obj for obj in objects if obj["kind"] == "Secret" and obj["metadata"]["name"].endswith("-redis")]
    password = _secret_value(secret, "password")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert urllib.parse.urlsplit(_secret_value(secret, "url")).password == password


def test_gateway_serves_its_port_with_the_shared_configuration(rendered: dict[str, Rendered]) -> None:
    objects = rendered["all-on-namespaced"]
    name = f"{RELEASE}-bundleserve-gateway"
    deployment = objects.one("Deployment", name)
    container = _container(deployment, "gateway")
    # namespaced scope: the gateway watches exactly the namespaces its Roles grant
    assert container["args"] == ["gateway", "--port=8080", "--namespace=team-a", "--namespace=team-b"]
    cluster_wide = _container(rendered["ha-cluster"].one("Deployment", name), "gateway")
    assert cluster_wide["args"] == ["gateway", "--port=8080"]
    env = _env(container)
    assert env["BUNDLESERVE_REDIS_URL"] == {"secretKeyRef": {"name": f"{RELEASE}-bundleserve-redis", "key": "url"}}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["BUNDLESERVE_API_KEYS_FILE"] == f"{mounts['api-keys']}/api-keys"
    assert env["BUNDLESERVE_RESULTS_DIR"] == mounts["results"] == "/var/lib/bundleserve/results"
    service = objects.one("Service", name)
    assert _selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == 8080
    assert objects.one("PodDisruptionBudget", name)["spec"]["minAvailable"] == 1
    assert {role["metadata"]["namespace"] for role in objects.of_kind("Role") if role["metadata"]["name"] == name} == {
        "team-a",
        "team-b",
    }


def test_gateway_results_dir_is_writable_without_a_claim(chart: helm.Chart) -> None:
    """Found on the real node: with a Redis and no results claim, the gateway opens its filesystem result store at
    start and crashed on its read-only root filesystem ("Read-only file system: '/var/lib/bundleserve'"). Like the
    routers' pods, it gets an emptyDir there."""
    values = {"gateway": {"enabled": True}, "redis": {"existingSecret": "queue"}}
    objects = _parse(chart.render(values, name=RELEASE, namespace=NAMESPACE))
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway")]
    container = _container(deployment, "gateway")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts.get("results") == "/var/lib/bundleserve/results"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["results"]


def test_gateway_mounts_the_scoped_sagemaker_keys_secret(chart: helm.Chart) -> None:
    """`gateway.sagemakerKeysSecret` gives the gateway its SigV4 keys file (scoped lines, docs/security.md) from a
    Secret: the env variable names the file the Secret's `keys` key becomes, read-only; without it nothing is mounted."""
    values = {"gateway": {"enabled": True, "sagemakerKeysSecret": "sigv4-keys"}}
    objects = _parse(chart.render(values, name=RELEASE, namespace=NAMESPACE))
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway")]
    container = _container(deployment, "gateway")
    path = _env(container)[sigv4.ENV_KEYS_FILE]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "sagemaker-keys"]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["sagemaker-keys"]["secret"]
    assert secret["secretName"] == "sigv4-keys"
    (item,) = secret["items"]
    assert item["key"] == "keys" and f"{mount['mountPath']}/{item['path']}" == path

    plain = _parse(chart.render({"gateway": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE))
    (deployment,) = [o for o in plain if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway")]
    assert sigv4.ENV_KEYS_FILE not in _env(_container(deployment, "gateway"))
    assert "sagemaker-keys" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}


def test_network_policies_cover_each_enabled_component(rendered: dict[str, Rendered]) -> None:
    objects = rendered["all-on-namespaced"]
    policies = {p["metadata"]["name"]: p for p in objects.of_kind("NetworkPolicy")}
    components = {"operator", "gateway", "redis"}
    assert set(policies) == {f"{RELEASE}-bundleserve-{component}" for component in components}
    workloads = [obj for obj in objects.objects if obj["kind"] in {"Deployment", "StatefulSet"}]
    for policy in policies.values():
        selected = [
            w
            for w in workloads
            if _selects(policy["spec"]["podSelector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert [w["metadata"]["name"] for w in selected] == [policy["metadata"]["name"]]
    gateway = policies[f"{RELEASE}-bundleserve-gateway"]
    assert gateway["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {}}]


def test_redis_admits_this_release_and_endpoint_pods_only(rendered: dict[str, Rendered]) -> None:
    objects = rendered["all-on-namespaced"]
    policy = objects.one("NetworkPolicy", f"{RELEASE}-bundleserve-redis")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    same_namespace = [peer["podSelector"]["matchLabels"] for peer in rule["from"] if "namespaceSelector" not in peer]
    any_namespace = [peer["podSelector"]["matchLabels"] for peer in rule["from"] if "namespaceSelector" in peer]

    def admitted(labels: dict[str, str], in_release_namespace: bool) -> bool:
        peers = any_namespace + (same_namespace if in_release_namespace else [])
        return any(_selects(selector, labels) for selector in peers)

    for name in (f"{RELEASE}-bundleserve-operator", f"{RELEASE}-bundleserve-gateway"):
        assert admitted(objects.one("Deployment", name)["spec"]["template"]["metadata"]["labels"], True), name
    assert admitted(common_labels("echo"), False)
    assert not admitted({"app.kubernetes.io/name": "something-else"}, True)
    assert not admitted({**common_labels("echo"), "app.kubernetes.io/name": "intruder"}, False)


# --- RBAC -------------------------------------------------------------------------------------------------------------


def _cluster_scoped_subset(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    subset = []
    for rule in rules:
        resources = [r for r in rule.get("resources", []) if r in CLUSTER_SCOPED]
        if resources:
            subset.append({**rule, "resources": resources})
    return subset


def test_cluster_rbac_rules_equal_the_operator_rbac_file(
    rendered: dict[str, Rendered], rbac_rules: list[dict[str, Any]]
) -> None:
    objects = rendered["default"]
    name = f"{RELEASE}-bundleserve-operator"
    assert objects.one("ClusterRole", name)["rules"] == rbac_rules
    binding = objects.one("ClusterRoleBinding", name)
    account = objects.one("Deployment", name)["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    objects.one("ServiceAccount", account, NAMESPACE)


def test_namespaced_rbac_rules_equal_the_operator_rbac_file(
    rendered: dict[str, Rendered], rbac_rules: list[dict[str, Any]]
) -> None:
    objects = rendered["all-on-namespaced"]
    name = f"{RELEASE}-bundleserve-operator"
    for namespace in ("team-a", "team-b"):
        assert objects.one("Role", name, namespace)["rules"] == rbac_rules
        binding = objects.one("RoleBinding", name, namespace)
        assert binding["roleRef"]["name"] == name and binding["subjects"][0]["namespace"] == NAMESPACE
    assert objects.one("ClusterRole", name)["rules"] == _cluster_scoped_subset(rbac_rules)


def test_gateway_may_only_read_endpoints(rendered: dict[str, Rendered]) -> None:
    name = f"{RELEASE}-bundleserve-gateway"
    read_only = [{"apiGroups": ["bundleserve.dev"], "resources": ["endpoints"], "verbs": ["get", "list", "watch"]}]
    assert rendered["ha-cluster"].one("ClusterRole", name)["rules"] == read_only
    binding = rendered["ha-cluster"].one("ClusterRoleBinding", name)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    assert all(
        role["rules"] == read_only
        for role in rendered["all-on-namespaced"].of_kind("Role")
        if role["metadata"]["name"] == name
    )


def test_rbac_file_names_our_resource_fully(rbac_rules: list[dict[str, Any]]) -> None:
    ours = [rule for rule in rbac_rules if "endpoints" in rule.get("resources", [])]
    assert ours and all(rule["apiGroups"] == ["bundleserve.dev"] for rule in ours)


# --- security and selectors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(VALUES))
def test_security_contexts_are_restricted(rendered: dict[str, Rendered], key: str) -> None:
    pods = _pod_specs(rendered[key].objects)
    assert pods
    for name, template in pods:
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not template["spec"].get("hostNetwork") and not template["spec"].get("hostPID"), name
        for container in template["spec"]["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name


@pytest.mark.parametrize("key", list(VALUES))
def test_selectors_carry_no_version_and_select_their_pods(rendered: dict[str, Rendered], key: str) -> None:
    objects = rendered[key].objects
    version_keys = {"helm.sh/chart", "app.kubernetes.io/version"}
    selectors = []
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] in {"Deployment", "StatefulSet", "PodDisruptionBudget"}:
            selectors.append(spec["selector"]["matchLabels"])
        elif obj["kind"] == "Service":
            selectors.append(spec["selector"])
        elif obj["kind"] == "NetworkPolicy":
            selectors.append(spec["podSelector"]["matchLabels"])
    assert selectors
    pod_labels = [template["metadata"]["labels"] for _, template in _pod_specs(objects)]
    for selector in selectors:
        assert not version_keys & set(selector), selector
        assert not any("0.1.0" in value for value in selector.values()), selector
        assert sum(_selects(selector, labels) for labels in pod_labels) == 1, selector


def test_names_fit_kubernetes_limits_for_the_longest_release_name(chart: helm.Chart) -> None:
    release = "r" * 53  # Helm's own limit on release names
    everything_on = VALUES["all-on-namespaced"]
    objects = _parse(chart.render(everything_on, name=release, namespace=NAMESPACE))
    label = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] != "CustomResourceDefinition":
            assert len(name) <= 63 and label.fullmatch(name), f"{obj['kind']} {name}"
        assert all(len(value) <= 63 for value in obj["metadata"]["labels"].values()), name
    assert len({(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in objects}) == len(
        objects
    )


# --- secure by default: the generated API-key Secret ---------------------------------------------------------------

GENERATED_KEYS = f"{RELEASE}-bundleserve-api-keys"


def _notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    (notes,) = [text for path, text in manifests.items() if path.endswith("NOTES.txt")]
    return notes


def _generated_key(objects: list[dict[str, Any]]) -> str:
    secret = Rendered({}, objects).one("Secret", GENERATED_KEYS, NAMESPACE)
    return _secret_value(secret, "api-keys")


@pytest.mark.parametrize("key", ["default", "ha-cluster"])
def test_the_default_install_generates_an_api_key_and_wires_it_everywhere(
    rendered: dict[str, Rendered], key: str
) -> None:
    """With no apiKeys.existingSecret the chart makes one random key, and the operator (which copies it into every
    Endpoint namespace for the routers) and the gateway both use it: no route is anonymous by default."""
    objects = rendered[key].objects
    secret = rendered[key].one("Secret", GENERATED_KEYS, NAMESPACE)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", _generated_key(objects))
    # Kept on uninstall: clients hold the key; a reinstall of the release adopts the Secret and its key.
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    operator = rendered[key].one("Deployment", f"{RELEASE}-bundleserve-operator")
    assert _env(_container(operator, "operator"))["BUNDLESERVE_API_KEYS_SECRET"] == GENERATED_KEYS
    config = OperatorConfig.from_env(
        {k: v for k, v in _env(_container(operator, "operator")).items() if isinstance(v, str)}
    )
    assert config.api_keys_secret == GENERATED_KEYS
    for gateway in [d for d in rendered[key].of_kind("Deployment") if d["metadata"]["name"].endswith("-gateway")]:
        volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
        assert volumes["api-keys"]["secret"]["secretName"] == GENERATED_KEYS
        assert _env(_container(gateway, "gateway"))["BUNDLESERVE_API_KEYS_FILE"].endswith("/api-keys")


def test_an_offline_render_makes_a_new_key_each_time(chart: helm.Chart) -> None:
    """Without a cluster `lookup` finds nothing: every install generates a fresh key (the upgrade path, which
    finds the installed Secret and keeps its key, runs against the real API server in test_chart_cluster.py)."""
    first, second = (_parse(chart.render({}, name=RELEASE, namespace=NAMESPACE)) for _ in range(2))
    assert _generated_key(first) != _generated_key(second)


def test_an_existing_secret_replaces_the_generated_one(rendered: dict[str, Rendered]) -> None:
    objects = rendered["all-on-namespaced"].objects
    assert not [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == GENERATED_KEYS]
    operator = rendered["all-on-namespaced"].one("Deployment", f"{RELEASE}-bundleserve-operator")
    assert _env(_container(operator, "operator"))["BUNDLESERVE_API_KEYS_SECRET"] == "bundleserve-api-keys"


def test_auth_off_renders_no_key_anywhere_and_warns(chart: helm.Chart, rendered: dict[str, Rendered]) -> None:
    objects = rendered["auth-off"].objects
    assert not [o for o in objects if o["kind"] == "Secret" and "api-keys" in o["metadata"]["name"]]
    for deployment in rendered["auth-off"].of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = _env(container)
            assert "BUNDLESERVE_API_KEYS_SECRET" not in env and "BUNDLESERVE_API_KEYS_FILE" not in env
        assert "api-keys" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    notes = _notes(chart, VALUES["auth-off"])
    assert "WARNING: auth.enabled=false" in notes and "ANONYMOUS" in notes, notes


def test_the_notes_show_how_to_read_the_generated_key(chart: helm.Chart) -> None:
    notes = _notes(chart, {})
    command = f"kubectl -n {NAMESPACE} get secret {GENERATED_KEYS} -o jsonpath='{{.data.api-keys}}' | base64 -d"
    assert command in notes, notes
    assert "WARNING" not in notes


def test_auth_off_with_an_existing_secret_is_refused_by_name(chart: helm.Chart) -> None:
    values = {"auth": {"enabled": False}, "apiKeys": {"existingSecret": "keys"}}
    with pytest.raises(helm.HelmError, match=r"auth\.enabled"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
