"""The Deployment: the model container (user image) and the router sidecar in one pod.

Why it looks like this:
- The router fronts the model on localhost and is the only container with probes (it probes the model itself).
- The model container's preStop calls the router's drain route, so the kubelet does not stop the model before the
  router has finished (or handed back) every in-flight request; the grace period covers the longest request.
- After SIGTERM the router serves on, unready, for SHUTDOWN_DELAY_SECONDS (BUNDLESERVE_SHUTDOWN_DELAY_SECONDS)
  before it drains: the EndpointSlices and kube-proxy stop routing to a stopping pod only some seconds later (a
  rolling update under load on the real node failed calls without it); the grace period adds the delay.
- Restricted pod security everywhere; writable scratch space only in emptyDirs.
- `replicas` is omitted when an autoscaler owns it, so the operator never fights the HPA/KEDA/its own scaler.
"""

from __future__ import annotations

from typing import Any

from bundleserve.api.endpoint import CallbackAuth, Endpoint, Mode
from bundleserve.api.invocation import CALLBACK_SECRET_DIR, CALLBACK_SECRET_DIR_ENV
from bundleserve.api.runtime import bundle_runtime_args
from bundleserve.controller.builders.common import (
    BuildContext,
    BuildError,
    Manifest,
    Scaler,
    content_hash,
    metadata,
    scaler_for,
)
from bundleserve.controller.builders.configmap import ENDPOINT_FILE_KEY, build_config_map
from bundleserve.controller.config import OperatorConfig
from bundleserve.controller.labels import (
    CONFIG_HASH_ANNOTATION,
    common_labels,
    config_map_name,
    deployment_name,
    selector_labels,
)

ROUTER_PORT = 8080
ROUTER_PORT_ALT = 8081  # when the model itself listens on 8080 (SageMaker-style images)
#: The router's drain route: blocks until in-flight requests are done. The model container's preStop calls it.
DRAIN_PATH = "/wait-for-drain"
READY_PATH = "/readyz"
LIVE_PATH = "/healthz"
DRAIN_MARGIN_SECONDS = 30
#: How long a stopping router serves on before it drains (Knative's queue-proxy has the same kind of window): longer
#: than kube-proxy's lag behind an EndpointSlice change on a loaded node (seconds; tests/integration/
#: test_node_scenarios.py), short enough not to slow a rollout much.
SHUTDOWN_DELAY_SECONDS = 5
CONFIG_DIR = "/etc/bundleserve"
ENDPOINT_FILE = f"{CONFIG_DIR}/{ENDPOINT_FILE_KEY}"
API_KEYS_DIR = "/var/run/secrets/bundleserve/api-keys"
API_KEYS_KEY = "api-keys"
RESULTS_DIR = "/var/lib/bundleserve/results"
#: Keys of the BUNDLESERVE_RESULTS_S3_SECRET Secret, named like the env variables they become.
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
#: The bundleserve image's own user (Dockerfile `USER 10001:10001`): pods run as the user the image was built for,
#: so files the image gives that user stay theirs. tests/unit/test_bundle_dockerfile.py checks that both agree.
NON_ROOT_ID = 10001
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA GPU feature discovery


def router_port(endpoint: Endpoint) -> int:
    return ROUTER_PORT_ALT if endpoint.spec.bundle.port == ROUTER_PORT else ROUTER_PORT


def grace_period_seconds(endpoint: Endpoint) -> int:
    """Long enough for the shutdown delay, then the longest request this endpoint accepts to finish."""
    spec = endpoint.spec
    longest = 0
    if spec.serves(Mode.SYNC) or spec.serves(Mode.STREAMING):
        longest = spec.invocation.timeout_seconds
    if spec.serves(Mode.ASYNC):
        longest = max(longest, spec.async_settings.invocation_timeout_seconds)
    return SHUTDOWN_DELAY_SECONDS + longest + DRAIN_MARGIN_SECONDS


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_ID,
        "runAsGroup": NON_ROOT_ID,
        "fsGroup": NON_ROOT_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def model_command(endpoint: Endpoint) -> tuple[list[str] | None, list[str] | None]:
    """(command, args) of the model container; None keeps the image's own entrypoint/cmd."""
    bundle = endpoint.spec.bundle
    if bundle.python is not None:
        command = ["bundleserve", "bundle", "serve", *bundle_runtime_args(endpoint.spec)]
        return [*command, "--port", str(bundle.port)], None
    return (list(bundle.command) if bundle.command else None), (list(bundle.args) if bundle.args else None)


def model_resources(endpoint: Endpoint) -> dict[str, Any]:
    res = endpoint.spec.resources
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpus:
        limits[GPU_RESOURCE] = str(res.gpus)
    # No CPU limit: CFS throttling of a busy model is a known tail-latency cause; requests drive scheduling and HPA.
    return {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": limits}


def model_container(endpoint: Endpoint) -> dict[str, Any]:
    bundle = endpoint.spec.bundle
    if bundle.image is None:
        raise BuildError(
            "ImageRequired", "spec.bundle.image is required in a cluster (localOnly endpoints run only locally)"
        )
    env = [item.model_dump(by_alias=True, exclude_none=True, mode="json") for item in bundle.env]
    if not any(item["name"] == "HOME" for item in env):
        env.append({"name": "HOME", "value": "/tmp"})  # a writable home on a read-only root filesystem
    container: dict[str, Any] = {"name": "model", "image": bundle.image}
    if bundle.image_pull_policy:
        container["imagePullPolicy"] = bundle.image_pull_policy
    command, args = model_command(endpoint)
    if command:
        container["command"] = command
    if args:
        container["args"] = args
    container["ports"] = [{"name": "model", "containerPort": bundle.port, "protocol": "TCP"}]
    container["env"] = env
    if bundle.env_from:
        container["envFrom"] = [
            item.model_dump(by_alias=True, exclude_none=True, mode="json") for item in bundle.env_from
        ]
    container["resources"] = model_resources(endpoint)
    container["lifecycle"] = {"preStop": {"httpGet": {"path": DRAIN_PATH, "port": router_port(endpoint)}}}
    container["securityContext"] = container_security_context()
    container["volumeMounts"] = [{"name": "model-tmp", "mountPath": "/tmp"}]
    return container


def router_env(endpoint: Endpoint, context: BuildContext) -> list[dict[str, Any]]:
    config = context.config
    env: list[dict[str, Any]] = []
    if endpoint.spec.serves(Mode.ASYNC):
        if not config.redis_secret:
            raise BuildError(
                "AsyncNotConfigured",
                "the async mode needs a Redis queue: the operator has no BUNDLESERVE_REDIS_URL configured",
            )
        env.append(secret_env("BUNDLESERVE_REDIS_URL", config.redis_secret, "url"))
        if scaler_for(endpoint, context.keda) is Scaler.KEDA:
            # KEDA's redis-streams scaler resolves these from the scale target's env (host:port and password).
            env.append(secret_env("BUNDLESERVE_REDIS_ADDRESS", config.redis_secret, "address", optional=True))
            env.append(secret_env("BUNDLESERVE_REDIS_USERNAME", config.redis_secret, "username", optional=True))
            env.append(secret_env("BUNDLESERVE_REDIS_PASSWORD", config.redis_secret, "password", optional=True))
        # What the operator read from the server's CONFIG (an endpoint's user may not): the durability decision.
        env.extend({"name": name, "value": value} for name, value in context.redis_observed)
    if config.api_keys_secret:
        env.append({"name": "BUNDLESERVE_API_KEYS_FILE", "value": f"{API_KEYS_DIR}/{API_KEYS_KEY}"})
    if callback_auth(endpoint) is not None:
        env.append({"name": CALLBACK_SECRET_DIR_ENV, "value": CALLBACK_SECRET_DIR})
    env.append({"name": "BUNDLESERVE_RESULTS_DIR", "value": RESULTS_DIR})
    env.append({"name": "BUNDLESERVE_SHUTDOWN_DELAY_SECONDS", "value": str(SHUTDOWN_DELAY_SECONDS)})
    # The destination guard and the byte quota as the cluster admin set them on the operator (ROUTER_SETTINGS).
    env.extend({"name": name, "value": value} for name, value in config.router_settings)
    env.extend(s3_results_env(config))
    return env


def s3_results_env(config: OperatorConfig) -> list[dict[str, Any]]:
    """The router's S3 result store: the URL and endpoint/region as plain values, credentials only as references to
    the configured Secret (the operator never reads the keys). No Secret: boto3's default chain (workload identity)."""
    if not config.results_url:
        return []
    env: list[dict[str, Any]] = [{"name": "BUNDLESERVE_RESULTS_URL", "value": config.results_url}]
    if config.results_s3_secret:
        env.append(secret_env(AWS_ACCESS_KEY_ID, config.results_s3_secret, AWS_ACCESS_KEY_ID))
        env.append(secret_env(AWS_SECRET_ACCESS_KEY, config.results_s3_secret, AWS_SECRET_ACCESS_KEY))
        env.append(secret_env(AWS_SESSION_TOKEN, config.results_s3_secret, AWS_SESSION_TOKEN, optional=True))
    if config.results_s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": config.results_s3_endpoint})
    if config.results_s3_region:
        # boto3 reads AWS_DEFAULT_REGION; newer AWS SDKs read AWS_REGION: set both.
        env.append({"name": "AWS_REGION", "value": config.results_s3_region})
        env.append({"name": "AWS_DEFAULT_REGION", "value": config.results_s3_region})
    return env


def results_store_fingerprint(config: OperatorConfig) -> dict[str, str | None] | None:
    """What the pods' result store depends on (names, never secret values); None when it is a volume."""
    if not config.results_url:
        return None
    return {
        "url": config.results_url,
        "secret": config.results_s3_secret,
        "endpoint": config.results_s3_endpoint,
        "region": config.results_s3_region,
    }


def secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def callback_auth(endpoint: Endpoint) -> CallbackAuth | None:
    """The endpoint's default callback credentials (`spec.async.callback.auth`): a Secret of its own namespace that the
    router reads from a mounted directory (queue.callbacks.auth_from_secret_dir), never from env or the task record."""
    settings = endpoint.spec.async_
    if settings is None or settings.callback is None or not endpoint.spec.serves(Mode.ASYNC):
        return None
    return settings.callback.auth


def router_container(endpoint: Endpoint, context: BuildContext, variant: str | None = None) -> dict[str, Any]:
    port = router_port(endpoint)
    mounts = [
        {"name": "endpoint-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "router-tmp", "mountPath": "/tmp"},
        {"name": "results", "mountPath": RESULTS_DIR},
    ]
    if context.config.api_keys_secret:
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    if callback_auth(endpoint) is not None:
        mounts.append({"name": "callback-auth", "mountPath": CALLBACK_SECRET_DIR, "readOnly": True})
    command = [
        "bundleserve",
        "router",
        "--endpoint-file",
        ENDPOINT_FILE,
        "--model-url",
        f"http://127.0.0.1:{endpoint.spec.bundle.port}",
        "--port",
        str(port),
    ]
    if variant is not None:
        command += ["--variant", variant]
    return {
        "name": "router",
        "image": context.config.image,
        "command": command,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": router_env(endpoint, context),
        "resources": router_resources(endpoint),
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": LIVE_PATH, "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }


def volumes(endpoint: Endpoint, context: BuildContext, variant: str | None = None) -> list[dict[str, Any]]:
    config = context.config
    found: list[dict[str, Any]] = [
        {"name": "endpoint-config", "configMap": {"name": config_map_name(endpoint.name, variant)}},
        {"name": "model-tmp", "emptyDir": {}},
        {"name": "router-tmp", "emptyDir": {}},
    ]
    if config.results_pvc:
        found.append({"name": "results", "persistentVolumeClaim": {"claimName": config.results_pvc}})
    else:
        found.append({"name": "results", "emptyDir": {}})  # per pod: results are only reachable through that pod
    if config.api_keys_secret:
        # Only the keys file: the Secret also holds the endpoint's Redis credentials, which only env references get.
        items = [{"key": API_KEYS_KEY, "path": API_KEYS_KEY}]
        found.append({"name": "api-keys", "secret": {"secretName": config.api_keys_secret, "items": items}})
    auth = callback_auth(endpoint)
    if auth is not None:
        found.append({"name": "callback-auth", "secret": {"secretName": auth.secret_name}})
    return found


def scheduling(endpoint: Endpoint, variant: str | None = None) -> dict[str, Any]:
    pod = endpoint.spec.pod
    resources = endpoint.spec.resources
    node_selector = dict(pod.node_selector)
    tolerations = [item.model_dump(by_alias=True, exclude_none=True, mode="json") for item in pod.tolerations]
    if resources.gpus:
        if resources.gpu_type:
            node_selector[GPU_PRODUCT_LABEL] = resources.gpu_type
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    found: dict[str, Any] = {}
    if node_selector:
        found["nodeSelector"] = node_selector
    if tolerations:
        found["tolerations"] = tolerations
    found["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(endpoint.name, variant)},
        }
    ]
    return found


def pod_template(endpoint: Endpoint, context: BuildContext, variant: str | None = None) -> dict[str, Any]:
    pod = endpoint.spec.pod
    document = build_config_map(endpoint, variant)["data"][ENDPOINT_FILE_KEY]
    store = results_store_fingerprint(context.config)
    # The S3 settings join the hash only when set, so pods of operators without S3 keep their hash across upgrades.
    config_hash = content_hash(document if store is None else [document, store])
    annotations = {
        **pod.annotations,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(router_port(endpoint)),
        "prometheus.io/path": "/metrics",
        CONFIG_HASH_ANNOTATION: config_hash,
    }
    spec: dict[str, Any] = {
        "containers": [model_container(endpoint), router_container(endpoint, context, variant)],
        "volumes": volumes(endpoint, context, variant),
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": grace_period_seconds(endpoint),
        "enableServiceLinks": False,
        **scheduling(endpoint, variant),
    }
    if pod.service_account_name:
        spec["serviceAccountName"] = pod.service_account_name
    else:
        spec["automountServiceAccountToken"] = False  # the pods never talk to the Kubernetes API
    if pod.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": ref.name} for ref in pod.image_pull_secrets]
    if pod.priority_class_name:
        spec["priorityClassName"] = pod.priority_class_name
    return {
        "metadata": {"labels": {**pod.labels, **common_labels(endpoint.name, variant)}, "annotations": annotations},
        "spec": spec,
    }


def build_deployment(endpoint: Endpoint, context: BuildContext, variant: str | None = None) -> Manifest:
    """The Deployment of one variant: `endpoint` as the variant runs it (api.variants.ServedVariant.endpoint), named
    and labelled by `variant` (None: the implicit variant, named as the endpoint)."""
    spec: dict[str, Any] = {}
    if scaler_for(endpoint, context.keda) is Scaler.STATIC:
        spec["replicas"] = endpoint.spec.scaling.min_replicas
    spec.update(
        {
            "selector": {"matchLabels": selector_labels(endpoint.name, variant)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": pod_template(endpoint, context, variant),
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(endpoint, deployment_name(endpoint.name, variant), variant=variant),
        "spec": spec,
    }


#: What a router needs besides request and reply bodies (interpreter, aiohttp, uvloop, metrics, buffers): an idle
#: router's RSS is about 60 MiB; the rest is headroom for connections, headers and allocator slack.
ROUTER_BASE_MEMORY = 160 * 1024 * 1024


def router_memory_limit(endpoint: Endpoint) -> int:
    """The router container's memory limit in bytes, derived from the Endpoint's own limits (issue 17, finding 4).

    With `B = maxPayloadBytes`: at most `concurrency + maxQueued` request bodies are in memory (admitted before their
    first byte is read, each held once), at most `concurrency` model replies (each refused past B), at most
    `concurrency` replies kept for retries (router.dedup, B each), and the transient copies of the one body being
    parsed or joined at a time (JSON parsing is synchronous: text, decoded value and cut args, plus a reply being
    joined or framed: 4 B). The numbers are measured by tests/integration/test_router_memory.py. The CRD refuses an
    Endpoint whose bodies would need more than `api.rules.ROUTER_BODY_BUDGET` (the limit stays at most 16 GiB).
    """
    invocation = endpoint.spec.invocation
    bodies = invocation.concurrency + invocation.max_queued
    replies = 2 * invocation.concurrency
    return ROUTER_BASE_MEMORY + invocation.max_payload_bytes * (bodies + replies + 4)


def router_resources(endpoint: Endpoint) -> dict[str, Any]:
    """Requests stay small (an idle router); the limit is what the Endpoint's own limits can make it hold."""
    mib = -(-router_memory_limit(endpoint) // (1024 * 1024))
    return {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": f"{mib}Mi"}}
