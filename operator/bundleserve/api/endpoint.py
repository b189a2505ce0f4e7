"""Typed model of the `Endpoint` custom resource (bundleserve.dev/v1alpha1).

Field names are camelCase on the wire (aliases) and snake_case in Python. Defaults follow the references
(SageMaker: 60 s sync timeout, 6 MiB payload, 6 h request TTL, 15 min invocation timeout). Cross-field rules
live in `bundleserve.api.rules` so that the pydantic model and the CRD's CEL rules share one table.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic.alias_generators import to_camel

GROUP = "bundleserve.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Endpoint"
PLURAL = "endpoints"
SINGULAR = "endpoint"
SHORT_NAMES = ["bse"]
CATEGORIES = ["bundleserve"]
#: The fully qualified resource name; `endpoints` alone means the core `Endpoints` kind.
RESOURCE = f"{PLURAL}.{GROUP}"

MIB = 1024 * 1024
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: Endpoint names become Service names, which must be RFC 1035 labels (start with a letter).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ENTRYPOINT = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
HTTP_PATH = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"
#: Kubernetes' own quantity grammar (apimachinery resource.Quantity), non-negative: a number, then one binary suffix
#: (Ki..Ei), one decimal suffix (n, u, m, k, M..E) or an exponent. "512mi" or "1.2.3" pass a looser pattern and are
#: then refused by the API server on the child, so the CRD refuses them on the Endpoint already.
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
#: An S3 location as SageMaker's S3OutputPath takes it: s3://, a bucket name (3-63 of a-z 0-9 . -), an optional key
#: prefix.
S3_PATH = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"


class Model(BaseModel):
    """Base for all spec models: camelCase aliases, unknown fields rejected (as a structural CRD prunes/rejects them).

    Strict types, like the CRD schema: `"60"` is not an integer and `"true"` is not a boolean.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
        strict=True,
        # The docstring under each field becomes its description in the CRD (`kubectl explain`).
        use_attribute_docstrings=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        """`field: null` means unset, as in the API server, which prunes nulls of non-nullable fields before defaulting."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Mode(StrEnum):
    SYNC = "sync"
    STREAMING = "streaming"
    ASYNC = "async"


class PythonBundle(Model):
    """A Python bundle, served by bundleserve's bundle runtime (`bundleserve bundle serve`)."""

    entrypoint: Annotated[
        str,
        Field(
            pattern=ENTRYPOINT,
            max_length=256,
            description="Python `module:callable` called once per request with the request's JSON arguments.",
        ),
    ]
    load: Annotated[
        str | None,
        Field(
            default=None,
            pattern=ENTRYPOINT,
            max_length=256,
            description="Python `module:callable` called once at start-up; its return value is passed to the entrypoint. Empty: no load step.",
        ),
    ] = None
    stream: Annotated[
        str | None,
        Field(
            default=None,
            pattern=ENTRYPOINT,
            max_length=256,
            description="Python `module:callable` yielding the chunks of a stream (default: the entrypoint when it is a "
            "generator function, else `stream` in the entrypoint's module).",
        ),
    ] = None
    batch_entrypoint: Annotated[
        str | None,
        Field(
            default=None,
            pattern=ENTRYPOINT,
            max_length=256,
            description="Python `module:callable` called with a list of calls' keyword-argument dicts, returning a list "
            "of as many results (or exception objects, one per failed call), in order. Used only, and required, with "
            "spec.invocation.batching; the entrypoint stays the per-call contract each call is checked against.",
        ),
    ] = None
    path: Annotated[
        str | None,
        Field(
            default=None,
            max_length=1024,
            description="Local mode only: a directory (relative to the manifest) put on sys.path. In a cluster the code is "
            "in the image.",
        ),
    ] = None


class Routes(Model):
    """HTTP routes of a runnable image (for a Python bundle the runtime's own routes are used)."""

    predict: Annotated[str, Field(pattern=HTTP_PATH, max_length=256)] = "/predict"
    """Path the router POSTs sync and async requests to (JSON body in, JSON body out)."""
    stream: Annotated[str | None, Field(default=None, pattern=HTTP_PATH, max_length=256)] = None
    """Path the router POSTs streaming requests to (the model answers with server-sent events). Empty: no streaming."""
    ready: Annotated[str, Field(pattern=HTTP_PATH, max_length=256)] = "/readyz"
    """Path the router polls (GET) until it answers 200; the pod is Ready only then."""


class KeyRef(Model):
    """One key of a Secret or ConfigMap in the Endpoint's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Name of the Secret or ConfigMap."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key within it."""
    optional: bool | None = None
    """true: a missing object or key leaves the variable unset instead of keeping the pod from starting."""


class FieldRef(Model):
    """A field of the pod itself (the Kubernetes downward API)."""

    field_path: Annotated[str, Field(min_length=1, max_length=256)]
    """Path of the pod field, e.g. `metadata.name`, `metadata.namespace`, `status.podIP`."""


class EnvVarSource(Model):
    """Where the variable's value comes from; set exactly one."""

    secret_key_ref: KeyRef | None = None
    """A key of a Secret in the Endpoint's namespace."""
    config_map_key_ref: KeyRef | None = None
    """A key of a ConfigMap in the Endpoint's namespace."""
    field_ref: FieldRef | None = None
    """A field of the pod."""


class EnvVar(Model):
    """One environment variable of the model container (as in a Kubernetes container's `env`)."""

    name: Annotated[str, Field(pattern=ENV_NAME, max_length=256)]
    """Variable name; names must be unique in the list."""
    value: Annotated[str | None, Field(default=None, max_length=65536)] = None
    """Literal value (up to 64 KiB). Excludes valueFrom."""
    value_from: EnvVarSource | None = None
    """Read the value from a Secret, a ConfigMap or the pod. Excludes value."""


class NameRef(Model):
    """A Secret or ConfigMap in the Endpoint's namespace, by name."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Name of the object."""
    optional: bool | None = None
    """true: a missing object does not keep the pod from starting."""


class EnvFromSource(Model):
    """Every key of a Secret or ConfigMap as environment variables; set exactly one of secretRef and configMapRef."""

    prefix: Annotated[str | None, Field(default=None, max_length=256)] = None
    """Prepended to every key to form the variable name."""
    secret_ref: NameRef | None = None
    """A Secret of the Endpoint's namespace."""
    config_map_ref: NameRef | None = None
    """A ConfigMap of the Endpoint's namespace."""


class Bundle(Model):
    """What runs in the model container: a Python bundle, or a runnable image that serves HTTP itself."""

    image: Annotated[str | None, Field(default=None, min_length=1, max_length=512)] = None
    """Container image of the model (with the Python bundle's code and dependencies, or a server of its own).
    Required in a cluster; local mode (`bundleserve run`) may leave it empty."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Kubernetes imagePullPolicy of the model container. Empty: the Kubernetes default (Always for `:latest`,
    IfNotPresent otherwise)."""
    python: PythonBundle | None = None
    """Serve a Python callable with bundleserve's bundle runtime. Excludes command and routes."""
    command: Annotated[
        list[Annotated[str, Field(max_length=4096, description="One word of the command (up to 4096 characters).")]]
        | None,
        Field(default=None, min_length=1, max_length=256),
    ] = None
    """Runnable image: the command that starts the model's HTTP server. Empty: the image's ENTRYPOINT."""
    args: Annotated[
        list[Annotated[str, Field(max_length=4096, description="One argument (up to 4096 characters).")]] | None,
        Field(default=None, max_length=256),
    ] = None
    """Arguments of the command (or of the image's ENTRYPOINT)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 5005
    """TCP port the model listens on inside the pod (only the router reaches it, on 127.0.0.1)."""
    routes: Routes | None = None
    """HTTP paths of a runnable image; ignored for a Python bundle."""
    env: Annotated[list[EnvVar], Field(max_length=256)] = []
    """Environment variables of the model container (at most 256)."""
    env_from: Annotated[list[EnvFromSource], Field(max_length=64)] = []
    """Secrets and ConfigMaps whose keys all become environment variables (at most 64)."""

    @property
    def is_python(self) -> bool:
        return self.python is not None

    @property
    def effective_routes(self) -> Routes:
        """Routes the router calls: the bundle runtime's fixed routes for Python bundles."""
        if self.python is not None:
            return Routes(predict="/predict", stream="/stream", ready="/readyz")
        return self.routes or Routes()


class Batching(Model):
    """Dynamic batching: the bundle runtime joins concurrent calls (sync and async) into one call of
    spec.bundle.python.batchEntrypoint. Streams are never batched."""

    max_batch_size: Annotated[int, Field(ge=1, le=1024)] = 8
    """Most calls in one batch; a batch is dispatched as soon as it has this many."""
    max_wait_milliseconds: Annotated[int, Field(ge=0, le=60_000)] = 10
    """Longest a call waits for others to join its batch before the batch is dispatched with what it has (0: no
    waiting; calls that arrive while a batch runs still form the next one). One batch runs at a time per replica."""


class InvocationSettings(Model):
    """Limits of sync and streaming calls, enforced per replica by the router (async tasks share `concurrency`), and
    dynamic batching, done by the bundle runtime."""

    timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    """Seconds a sync call (or a stream's wait for its first byte) may take before the router answers 504."""
    max_payload_bytes: Annotated[int, Field(ge=1024, le=1024 * MIB)] = 6 * MIB
    """Largest request body in bytes (6 MiB by default, as SageMaker); larger requests get 413 before the body is read."""
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    """Requests the router passes to the model at once, per replica."""
    max_queued: Annotated[int, Field(ge=0, le=100_000)] = 80
    """Requests that wait in the router for a free slot, per replica; beyond that the router answers 429."""
    batching: Batching | None = None
    """Join concurrent calls into batches for spec.bundle.python.batchEntrypoint (Python bundles only). Empty: every
    call is its own call of the entrypoint. concurrency must be at least maxBatchSize (twice it keeps the next batch
    filling while one runs)."""


class CallbackAuth(Model):
    """Credentials come from a Secret: keys `username`/`password` (basic) or `tls.crt`/`tls.key` (mtls)."""

    kind: Literal["basic", "mtls"]
    """basic: HTTP Basic with the Secret's username/password. mtls: a TLS client certificate from tls.crt/tls.key."""
    secret_name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
    """Secret in the Endpoint's namespace holding the credentials; missing, the Endpoint reports Degraded."""


class Callback(Model):
    """The default callback: the router POSTs each finished task's outcome here (a task may name its own URL)."""

    url: Annotated[str, Field(min_length=8, max_length=2048)]
    """http(s) URL that receives the callbacks; https is required when auth is set. Cloud metadata, private, loopback
    and link-local addresses are refused in a cluster (a range the cluster admin opens with BUNDLESERVE_URL_ALLOW
    excepted; metadata addresses never)."""
    auth: CallbackAuth | None = None
    """Credentials sent with each callback. Empty: none."""


class AsyncSettings(Model):
    """Queued async invocation (a durable Redis stream per endpoint)."""

    request_ttl_seconds: Annotated[int, Field(ge=60, le=7 * 86400, alias="requestTTLSeconds")] = 21600
    """Seconds a queued task may wait for a worker before it expires (6 h by default, as SageMaker)."""
    invocation_timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = 900
    """Seconds one attempt of a task may run before it is abandoned (15 min by default, as SageMaker)."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    """Attempts per task, the first one included, before it fails for good (a worker crash or timeout counts)."""
    result_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 86400, alias="resultTTLSeconds")] = 86400
    """Seconds a finished task's record and result are kept for status reads and downloads (1 day by default)."""
    callback: Callback | None = None
    """Default callback for every task of the endpoint. Empty: tasks are polled (or name their own callback)."""
    retain_on_delete: bool = False
    """true: deleting the Endpoint keeps its queue, tasks and results in Redis (false purges them)."""
    s3_output_path: Annotated[
        str | None, Field(default=None, pattern=S3_PATH, max_length=512, alias="s3OutputPath")
    ] = None
    """SageMaker's S3OutputPath (s3://bucket/prefix): where InvokeEndpointAsync results are written as
    <task id>.out when results are stored in S3 (BUNDLESERVE_RESULTS_URL=s3://...). Empty: under the result store's
    own bucket, in the namespace's prefix: <prefix>/<namespace>/sagemaker/<name>/."""
    s3_failure_path: Annotated[
        str | None, Field(default=None, pattern=S3_PATH, max_length=512, alias="s3FailurePath")
    ] = None
    """SageMaker's S3FailurePath (s3://bucket/prefix): where a failed InvokeEndpointAsync's error is written as
    <task id>-error.out. Needs s3OutputPath. Empty: the output path."""


def _integer_quantity_as_text(value: Any) -> Any:
    """`cpu: 2` in YAML is an integer; Kubernetes quantities are int-or-string, so accept it as "2"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: A Kubernetes quantity ("500m", "2Gi", 2): int-or-string in the CRD, always text in Python.
Quantity = Annotated[
    str,
    BeforeValidator(_integer_quantity_as_text),
    Field(pattern=QUANTITY, max_length=32, json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class Resources(Model):
    """Compute of the model container (the router sidecar has fixed small requests of its own)."""

    cpu: Quantity = "1"
    """CPU request of the model container, a Kubernetes quantity in cores (e.g. 500m, 2); no CPU limit is set."""
    memory: Quantity = "2Gi"
    """Memory request and limit of the model container, a Kubernetes quantity in bytes (e.g. 512Mi, 2Gi)."""
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    """NVIDIA GPUs (nvidia.com/gpu) per replica."""
    gpu_type: Annotated[str | None, Field(default=None, min_length=1, max_length=128)] = None
    """GPU model to schedule on (node label nvidia.com/gpu.product, e.g. NVIDIA-A10G). Empty: any GPU."""


#: How long a sync or streaming endpoint at minReplicas 0 stays up without requests (Knative's default grace is 30 s;
#: KEDA's cooldown 300 s: a cold start is seconds to minutes, so an endpoint is kept a few minutes after its last call).
DEFAULT_SCALE_TO_ZERO_AFTER_SECONDS = 300


class Scaling(Model):
    """Replica count and autoscaling (an HPA for sync/streaming endpoints, queue depth for async ones)."""

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Fewest replicas; 0 lets the endpoint scale to zero: an async-only one while its queue is empty, one that serves
    sync or streaming after scaleToZeroAfterSeconds without a request through the gateway (the gateway holds the next
    request until a replica is ready)."""
    max_replicas: Annotated[int | None, Field(default=None, ge=1, le=1000)] = None
    """Most replicas; above minReplicas the endpoint is autoscaled. Empty: minReplicas (at least 1)."""
    target_concurrency: Annotated[int, Field(ge=1, le=1000)] = 4
    """In-flight requests (or queued tasks) per replica the autoscaler aims for."""
    scale_down_delay_seconds: Annotated[int, Field(ge=0, le=86400)] = 300
    """Seconds the load must stay low before replicas are removed (the scale-down stabilization window)."""
    scale_to_zero_after_seconds: Annotated[int | None, Field(default=None, ge=10, le=86400)] = None
    """With minReplicas 0 and the sync or streaming mode: seconds without a request held or in flight through the
    gateway (and, with async, without a queued task) before the endpoint goes back to zero replicas. Empty: 300."""

    @property
    def idle_seconds_before_zero(self) -> int:
        """scaleToZeroAfterSeconds in force (its default when unset)."""
        return self.scale_to_zero_after_seconds or DEFAULT_SCALE_TO_ZERO_AFTER_SECONDS

    @property
    def effective_max_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else max(self.min_replicas, 1)

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas < self.effective_max_replicas


class Toleration(Model):
    """A Kubernetes toleration: lets the pods run on nodes with a matching taint."""

    key: Annotated[str | None, Field(default=None, max_length=316)] = None
    """Taint key to tolerate. Empty with operator Exists: every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Equal: the taint's value must equal value. Exists: any value (value must be empty). Empty: Equal."""
    value: Annotated[str | None, Field(default=None, max_length=63)] = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match. Empty: every effect."""
    toleration_seconds: int | None = None
    """With effect NoExecute: seconds the pod stays bound after the taint appears. Empty: forever."""


class PodSettings(Model):
    """Pod-level knobs a platform team needs; everything else is derived by the operator."""

    labels: Annotated[
        dict[str, Annotated[str, Field(max_length=63, description="Label value (up to 63 characters).")]],
        Field(max_length=64),
    ] = {}
    """Extra labels on the pods (the operator's own labels win on conflict)."""
    annotations: Annotated[
        dict[str, Annotated[str, Field(max_length=65536, description="Annotation value (up to 64 KiB).")]],
        Field(max_length=64),
    ] = {}
    """Extra annotations on the pods."""
    service_account_name: Annotated[str | None, Field(default=None, max_length=253)] = None
    """ServiceAccount the pods run as (e.g. for workload identity). Empty: the namespace's default."""
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63, description="Required value of the node label.")]],
        Field(max_length=64),
    ] = {}
    """Node labels the pods must be scheduled on."""
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = []
    """Taints the pods tolerate."""
    image_pull_secrets: Annotated[list[NameRef], Field(max_length=16)] = []
    """Secrets (in the Endpoint's namespace) for pulling the model image."""
    priority_class_name: Annotated[str | None, Field(default=None, max_length=253)] = None
    """PriorityClass of the pods. Empty: the cluster default."""


class OpenAISettings(Model):
    """The OpenAI-compatible API of this endpoint (docs/dialects.md, "OpenAI"): the endpoint is listed by
    `GET /openai/v1/models` and answers chat and text completions whose `model` is its name. Needs the streaming mode:
    the completions call the bundle's streaming callable (docs/bundles.md, "OpenAI-compatible models")."""

    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    """The most tokens a request may ask for (`max_tokens` or `max_completion_tokens`; more is a 400), and what the
    model is asked for when a request names no limit, so every generation is bounded."""
    owned_by: Annotated[str, Field(min_length=1, max_length=256)] = "bundleserve"
    """The `owned_by` of the model in `GET /openai/v1/models`."""


#: The name of the one variant of an Endpoint without spec.variants, as SageMaker names a single production variant:
#: what `InvokedProductionVariant` answers and `TargetVariant` (or the native variant header) may name. Declared
#: variant names are DNS labels (lowercase), so they never equal it.
IMPLICIT_VARIANT = "AllTraffic"
#: The most variants an Endpoint declares (SageMaker's limit of production variants per endpoint config).
MAX_VARIANTS = 10


class Variant(Model):
    """One production variant: a version of the model with its own pods that gets a weighted share of the requests
    that name no variant (docs/operator.md, "Production variants")."""

    name: Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]
    """Name of the variant (a DNS label, unique in the list): what SageMaker's TargetVariant and the native
    X-Bundleserve-Variant header name, and what InvokedProductionVariant answers."""
    weight: Annotated[int, Field(ge=0, le=1000)]
    """Relative share of the requests that name no variant: weight divided by the sum of all weights (90 and 10 is a
    90/10 split). 0: only requests that name this variant reach it."""
    image: Annotated[str | None, Field(default=None, min_length=1, max_length=512)] = None
    """Container image of this variant's model (a new model version). Empty: spec.bundle.image."""
    env: Annotated[list[EnvVar], Field(max_length=64)] = []
    """Environment variables of this variant's model container (at most 64), on top of spec.bundle.env (an entry of
    the same name replaces the endpoint's)."""
    resources: Resources | None = None
    """CPU, memory and GPUs of this variant's model container. Empty: spec.resources."""
    scaling: Scaling | None = None
    """Replicas and autoscaling of this variant. Empty: spec.scaling."""


class EndpointSpec(Model):
    """Desired state of an Endpoint: what to serve and how."""

    modes: Annotated[
        list[Annotated[Mode, Strict(False), Field(description="sync, streaming or async.")]],
        Field(min_length=1, max_length=3),
    ]
    """How the endpoint is invoked: any of sync (request/response), streaming (server-sent events) and async
    (queued tasks, polled or called back)."""
    local_only: Annotated[
        bool,
        Field(description="Run only with `bundleserve run`; lifts the image requirement. Rejected by the operator."),
    ] = False
    bundle: Bundle
    """What runs in the model container."""
    invocation: InvocationSettings = InvocationSettings()
    """Limits of sync and streaming calls, per replica, and dynamic batching."""
    async_: Annotated[AsyncSettings | None, Field(default=None, alias="async")] = None
    """Queue settings of the async mode. Empty with async in modes: the defaults."""
    resources: Resources = Resources()
    """CPU, memory and GPUs of the model container."""
    scaling: Scaling = Scaling()
    """Replicas and autoscaling."""
    pod: PodSettings = PodSettings()
    """Pod-level settings: labels, scheduling, service account, pull secrets."""
    openai: OpenAISettings | None = None
    """Serve the OpenAI-compatible API (chat and text completions, the model list) for this endpoint. Empty: not
    served. Needs the streaming mode."""
    variants: Annotated[list[Variant], Field(max_length=MAX_VARIANTS)] = []
    """Production variants (at most 10): each runs its own Deployment with its own image, env, resources and
    scaling, and requests that name no variant are split by weight (canary and blue/green rollouts). The bundle's
    calling contract (python or runnable image, routes, port), modes and invocation limits are the endpoint's and
    shared. Empty: one implicit variant, AllTraffic, with the endpoint's children and names."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> EndpointSpec:
        from bundleserve.api.rules import check_spec

        check_spec(self)
        return self

    def serves(self, mode: Mode) -> bool:
        return mode in self.modes

    @property
    def scales_from_zero(self) -> bool:
        """minReplicas 0 with the sync or streaming mode: the gateway holds requests while a replica starts and the
        operator's demand gate moves the Deployment between 0 and 1 (docs/operator.md, "Scale from zero")."""
        return self.scaling.min_replicas == 0 and (self.serves(Mode.SYNC) or self.serves(Mode.STREAMING))

    @property
    def async_settings(self) -> AsyncSettings:
        """The async settings in force (defaults when the async mode is on without an `async` block)."""
        return self.async_ or AsyncSettings()


class ObjectMeta(BaseModel):
    """The parts of metadata we read; everything else is carried through untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: Annotated[str, Field(pattern=DNS_1035_LABEL, max_length=63)]
    namespace: str | None = None
    uid: str | None = None
    #: RFC 3339 UTC (`2026-01-02T03:04:05Z`, so text order is time order); the gateway gives a name used in two
    #: namespaces to the older Endpoint.
    creation_timestamp: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(BaseModel):
    """One condition of the Endpoint (the Kubernetes metav1.Condition shape)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True)

    type: str
    """Ready (the endpoint serves every mode it declares), Progressing (a rollout is under way) or Degraded (something
    keeps it from the desired state: reason and message say what)."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    """CamelCase machine-readable cause of the status, e.g. MinimumReplicasAvailable, ChildRejected, QueueUnavailable."""
    message: str = ""
    """Human-readable details."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339, UTC)."""
    observed_generation: int | None = None
    """metadata.generation of the spec this condition was computed from."""


class QueueStatus(BaseModel):
    """The async queue, as last read by the operator (every reconcile and the scaler's polls)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True)

    name: str
    """Queue id in Redis (namespace and Endpoint name)."""
    pending: int = 0
    """Tasks waiting for a worker."""
    in_flight: int = 0
    """Tasks held by a worker right now."""
    backlog: int = 0
    """pending plus inFlight: what the autoscaler sizes the replicas by."""


class VariantStatus(BaseModel):
    """One declared variant as last observed by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True)

    name: str
    """The variant's name (spec.variants[].name)."""
    weight: int = 0
    """Its weight in the spec."""
    traffic_percent: int = 0
    """Its share of the requests that name no variant, in percent (rounded)."""
    replicas: int = 0
    """Pods of the variant's Deployment."""
    ready_replicas: int = 0
    """Pods of the variant that pass their readiness probe."""


class EndpointStatus(BaseModel):
    """Observed state of an Endpoint, written by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True)

    observed_generation: int | None = None
    """metadata.generation of the spec last reconciled; lower than metadata.generation while a change is pending."""
    conditions: list[Condition] = []
    """Ready, Progressing and Degraded, one each."""
    replicas: int = 0
    """Pods of the endpoint's Deployment."""
    ready_replicas: int = 0
    """Pods that pass their readiness probe (router and model both ready)."""
    url: str | None = None
    """In-cluster base URL of the endpoint's routers (the Service). Empty for an async-only endpoint (no Service)."""
    queue: QueueStatus | None = None
    """Depth of the async queue. Empty without the async mode."""
    variants: list[VariantStatus] = []
    """The declared variants with their traffic shares and replicas. Empty for an Endpoint without spec.variants."""
    traffic: str | None = None
    """The split in one line, e.g. `blue 90%, green 10%` (the Traffic column of `kubectl get`). Empty for an
    Endpoint without spec.variants."""


class Endpoint(BaseModel):
    """A whole Endpoint document as stored in Kubernetes or in a local manifest file."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["bundleserve.dev/v1alpha1"]
    kind: Literal["Endpoint"]
    metadata: ObjectMeta
    spec: EndpointSpec
    status: EndpointStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    def to_manifest(self) -> dict[str, Any]:
        """The document as a user would write it (camelCase, defaults omitted where unset)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def is_valid_name(name: str) -> bool:
    return len(name) <= 63 and re.match(DNS_1035_LABEL, name) is not None
