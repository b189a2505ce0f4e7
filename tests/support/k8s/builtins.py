"""Server-side defaulting and the few validations of built-in types that an operator's diffing can trip over.

The real server fills many defaults (pod template, Service clusterIP/ports, HPA behavior, Secret stringData -> data);
an operator that compares its desired object with the stored one must ignore them, or it writes forever. Emulating
them makes "no write in steady state" a meaningful test. Full schema validation of built-ins is not emulated
(kubernetes-validate covers the builders in unit tests); only the checks listed in `validate` are.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import re
from typing import Any

from tests.support.k8s.errors import Cause
from tests.support.k8s.resources import ResourceType
from tests.support.k8s.selectors import match_label_selector

_PROBE_DEFAULTS = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Resources whose names must be DNS-1035/1123 labels (63 chars) rather than subdomains (253).
LABEL_NAMED = {"namespaces", "services"}


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_probe(probe: dict[str, Any]) -> None:
    for key, value in _PROBE_DEFAULTS.items():
        probe.setdefault(key, value)
    if "httpGet" in probe:
        probe["httpGet"].setdefault("scheme", "HTTP")
        probe["httpGet"].setdefault("path", "/")


def _default_container(container: dict[str, Any]) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    if "image" in container:
        container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
    resources = container.setdefault("resources", {})
    limits = resources.get("limits") or {}
    if limits:
        requests = resources.setdefault("requests", {})
        for key, value in limits.items():
            requests.setdefault(key, value)
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for probe_key in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(container.get(probe_key), dict):
            _default_probe(container[probe_key])
    for env in container.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef")
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            _default_container(container)
    for volume in spec.get("volumes") or []:
        for source in ("secret", "configMap"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)
        if isinstance(volume.get("downwardAPI"), dict):
            volume["downwardAPI"].setdefault("defaultMode", 420)


def _default_deployment(body: dict[str, Any]) -> None:
    spec = body.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
    default_pod_spec(template.setdefault("spec", {}))


def _allocate_cluster_ip(uid: str) -> str:
    number = int(uid.replace("-", "")[:6], 16) % 65000 + 10
    return str(ipaddress.IPv4Address("10.96.0.0") + number)


def _default_service(body: dict[str, Any], old: dict[str, Any] | None) -> None:
    spec = body.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        old_spec = (old or {}).get("spec", {})
        cluster_ip = spec.get("clusterIP") or old_spec.get("clusterIP") or _allocate_cluster_ip(body["metadata"]["uid"])
        spec["clusterIP"] = cluster_ip
        spec.setdefault("clusterIPs", [cluster_ip] if cluster_ip != "None" else ["None"])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    body.setdefault("status", {}).setdefault("loadBalancer", {})


def _default_hpa(body: dict[str, Any]) -> None:
    spec = body.setdefault("spec", {})
    spec.setdefault("minReplicas", 1)
    if not spec.get("metrics"):
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
            }
        ]
    behavior = spec.get("behavior")
    if isinstance(behavior, dict):
        up = behavior.setdefault("scaleUp", {})
        up.setdefault("stabilizationWindowSeconds", 0)
        up.setdefault("selectPolicy", "Max")
        up.setdefault(
            "policies",
            [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}],
        )
        down = behavior.setdefault("scaleDown", {})
        down.setdefault("stabilizationWindowSeconds", 300)
        down.setdefault("selectPolicy", "Max")
        down.setdefault("policies", [{"type": "Percent", "value": 100, "periodSeconds": 15}])


def _default_secret(body: dict[str, Any]) -> None:
    body.setdefault("type", "Opaque")
    string_data = body.pop("stringData", None) or {}
    if string_data:
        data = body.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


#: The status a new object shows before any controller ran (Go's non-omitempty zero values).
INITIAL_STATUS: dict[str, dict[str, Any]] = {
    "deployments": {},
    "replicasets": {"replicas": 0},
    "statefulsets": {"replicas": 0, "availableReplicas": 0},
    "horizontalpodautoscalers": {"desiredReplicas": 0},
    "poddisruptionbudgets": {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0},
}


def apply_defaults(resource: ResourceType, body: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    body = copy.deepcopy(body)
    if resource.group == "apps" and resource.plural in {"deployments", "replicasets", "statefulsets"}:
        if resource.plural == "deployments":
            _default_deployment(body)
        else:
            default_pod_spec(body.setdefault("spec", {}).setdefault("template", {}).setdefault("spec", {}))
    elif resource.plural == "pods" and not resource.group:
        default_pod_spec(body.setdefault("spec", {}))
        body.setdefault("status", {}).setdefault("phase", "Pending")
    elif resource.plural == "services" and not resource.group:
        _default_service(body, old)
    elif resource.plural == "horizontalpodautoscalers":
        _default_hpa(body)
    elif resource.plural == "secrets" and not resource.group:
        _default_secret(body)
    elif resource.plural == "namespaces" and not resource.group:
        name = body["metadata"]["name"]
        body["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        body.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        body.setdefault("status", {}).setdefault("phase", "Active")
    if old is None and "status" not in body and resource.plural in INITIAL_STATUS:
        body["status"] = copy.deepcopy(INITIAL_STATUS[resource.plural])
    return body


# --- validation -------------------------------------------------------------------------------------------------


def _typed(value: Any, expected: type | tuple[type, ...], where: str, go_type: str) -> str | None:
    if value is None or (isinstance(value, expected) and not (isinstance(value, bool) and expected is int)):
        return None
    return f"json: cannot unmarshal {_json_type(value)} into Go struct field {where} of type {go_type}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def decode_errors(resource: ResourceType, body: dict[str, Any]) -> list[str]:
    """What the real server's typed JSON decoding rejects with 400 (e.g. a number where Go has a string)."""
    problems: list[str | None] = []
    meta = body.get("metadata") or {}
    for key in ("labels", "annotations"):
        for value in (meta.get(key) or {}).values():
            problems.append(_typed(value, str, f"ObjectMeta.metadata.{key}", "string"))
    if resource.custom:
        return [p for p in problems if p]
    if resource.plural == "configmaps":
        for value in (body.get("data") or {}).values():
            problems.append(_typed(value, str, "ConfigMap.data", "string"))
    if resource.plural == "secrets":
        for key in ("data", "stringData"):
            for value in (body.get(key) or {}).values():
                problems.append(_typed(value, str, f"Secret.{key}", "string" if key == "stringData" else "[]uint8"))
    spec = body.get("spec") or {}
    problems.append(_typed(spec.get("replicas"), int, "spec.replicas", "int32"))
    pod_spec = (spec.get("template") or {}).get("spec") or (spec if resource.plural == "pods" else {})
    for container in (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or []):
        for env in container.get("env") or []:
            problems.append(_typed(env.get("value"), str, "EnvVar.spec.containers.env.value", "string"))
        for port in container.get("ports") or []:
            problems.append(
                _typed(port.get("containerPort"), int, "ContainerPort.spec.containers.ports.containerPort", "int32")
            )
    if resource.plural == "services":
        for port in spec.get("ports") or []:
            problems.append(_typed(port.get("port"), int, "ServicePort.spec.ports.port", "int32"))
    return [p for p in problems if p]


def validate_name(resource: ResourceType, name: str) -> list[Cause]:
    label = resource.plural in LABEL_NAMED
    limit = 63 if label else 253
    pattern = _DNS_LABEL if label else _DNS_SUBDOMAIN
    if len(name) > limit or not pattern.match(name):
        what = "a lowercase RFC 1123 label" if label else "a lowercase RFC 1123 subdomain"
        return [
            Cause(
                "FieldValueInvalid",
                f"Invalid value: \"{name}\": {what} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                "metadata.name",
            )
        ]
    return []


def validate_metadata(metadata: dict[str, Any]) -> list[Cause]:
    causes = []
    for key, value in (metadata.get("labels") or {}).items():
        prefix, _, name = key.rpartition("/")
        if not _LABEL_NAME.match(name) or len(name) > 63 or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.'",
                    "metadata.labels",
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: \"{value}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                    "metadata.labels",
                )
            )
    for index, owner in enumerate(metadata.get("ownerReferences") or []):
        for key in ("apiVersion", "kind", "name", "uid"):
            if not owner.get(key):
                causes.append(Cause("FieldValueRequired", "Required value", f"metadata.ownerReferences[{index}].{key}"))
    controllers = [o for o in metadata.get("ownerReferences") or [] if o.get("controller")]
    if len(controllers) > 1:
        causes.append(
            Cause(
                "FieldValueInvalid",
                "Invalid value: only one reference can have Controller set to true",
                "metadata.ownerReferences",
            )
        )
    return causes


def _pod_spec_causes(spec: Any, path: str) -> list[Cause]:
    if not isinstance(spec, dict):
        return [Cause("FieldValueRequired", "Required value", path)]
    causes = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append(Cause("FieldValueRequired", "Required value", f"{path}.containers"))
    names = set()
    for index, container in enumerate(containers):
        for key in ("name", "image"):
            if not container.get(key):
                causes.append(Cause("FieldValueRequired", "Required value", f"{path}.containers[{index}].{key}"))
        if container.get("name") in names:
            causes.append(
                Cause(
                    "FieldValueDuplicate",
                    f'Duplicate value: "{container.get("name")}"',
                    f"{path}.containers[{index}].name",
                )
            )
        names.add(container.get("name"))
    return causes


def validate(resource: ResourceType, body: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    causes: list[Cause] = []
    spec = body.get("spec") or {}
    old_spec = (old or {}).get("spec") or {}
    if resource.group == "apps" and resource.plural in {"deployments", "replicasets", "statefulsets"}:
        selector = spec.get("selector")
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not selector:
            causes.append(Cause("FieldValueRequired", "Required value", "spec.selector"))
        elif not match_label_selector(selector, labels):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {labels!r}: `selector` does not match template `labels`",
                    "spec.template.metadata.labels",
                )
            )
        if old is not None and selector != old_spec.get("selector"):
            causes.append(
                Cause("FieldValueInvalid", f"Invalid value: {selector!r}: field is immutable", "spec.selector")
            )
        causes.extend(_pod_spec_causes(template.get("spec"), "spec.template.spec"))
        replicas = spec.get("replicas")
        if isinstance(replicas, int) and replicas < 0:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {replicas}: must be greater than or equal to 0",
                    "spec.replicas",
                )
            )
    elif resource.plural == "pods" and not resource.group:
        causes.extend(_pod_spec_causes(spec, "spec"))
    elif resource.plural == "services" and not resource.group:
        if (
            spec.get("type", "ClusterIP") != "ExternalName"
            and not spec.get("ports")
            and spec.get("clusterIP") != "None"
        ):
            causes.append(Cause("FieldValueRequired", "Required value", "spec.ports"))
        if (
            old is not None
            and old_spec.get("clusterIP")
            and spec.get("clusterIP") not in (None, "", old_spec["clusterIP"])
        ):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f'Invalid value: "{spec.get("clusterIP")}": field is immutable',
                    "spec.clusterIP",
                )
            )
    elif resource.plural == "secrets" and not resource.group:
        for key, value in (body.get("data") or {}).items():
            try:
                base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                causes.append(Cause("FieldValueInvalid", "Invalid value: illegal base64 data", f"data[{key}]"))
    elif resource.plural == "horizontalpodautoscalers":
        if not spec.get("scaleTargetRef"):
            causes.append(Cause("FieldValueRequired", "Required value", "spec.scaleTargetRef"))
        if isinstance(spec.get("maxReplicas"), int) and spec["maxReplicas"] < spec.get("minReplicas", 1):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {spec['maxReplicas']}: must be greater than or equal to `minReplicas`",
                    "spec.maxReplicas",
                )
            )
    elif resource.plural == "poddisruptionbudgets" and "minAvailable" in spec and "maxUnavailable" in spec:
        causes.append(
            Cause("FieldValueInvalid", "Invalid value: minAvailable and maxUnavailable cannot be both set", "spec")
        )
    return causes
