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


class Model(BaseModel):
    """Base for all spec models: camelCase aliases, unknown fields rejected (as a structural CRD prunes/rejects them).

    Strict types, like the CRD schema: `"60"` is not an integer and `"true"` is not a boolean.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, validate_default=True, strict=True
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
        str, Field(pattern=ENTRYPOINT, max_length=256, description="module:callable called per request")
    ]
    load: Annotated[
        str | None, Field(default=None, pattern=ENTRYPOINT, max_length=256, description="module:callable called once")
    ] = None
    stream: Annotated[
        str | None,
        Field(
            default=None,
            pattern=ENTRYPOINT,
            max_length=256,
            description="module:callable yielding the chunks of a stream (default: the entrypoint when it is a "
            "generator function, else `stream` in the entrypoint's module)",
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
    stream: Annotated[str | None, Field(default=None, pattern=HTTP_PATH, max_length=256)] = None
    ready: Annotated[str, Field(pattern=HTTP_PATH, max_length=256)] = "/readyz"


class KeyRef(Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(min_length=1, max_length=253)]
    optional: bool | None = None


class FieldRef(Model):
    field_path: Annotated[str, Field(min_length=1, max_length=256)]


class EnvVarSource(Model):
    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None
    field_ref: FieldRef | None = None


class EnvVar(Model):
    name: Annotated[str, Field(pattern=ENV_NAME, max_length=256)]
    value: Annotated[str | None, Field(default=None, max_length=65536)] = None
    value_from: EnvVarSource | None = None


class NameRef(Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    optional: bool | None = None


class EnvFromSource(Model):
    prefix: Annotated[str | None, Field(default=None, max_length=256)] = None
    secret_ref: NameRef | None = None
    config_map_ref: NameRef | None = None


class Bundle(Model):
    """What runs in the model container: a Python bundle, or a runnable image that serves HTTP itself."""

    image: Annotated[str | None, Field(default=None, min_length=1, max_length=512)] = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    python: PythonBundle | None = None
    command: Annotated[
        list[Annotated[str, Field(max_length=4096)]] | None, Field(default=None, min_length=1, max_length=256)
    ] = None
    args: Annotated[list[Annotated[str, Field(max_length=4096)]] | None, Field(default=None, max_length=256)] = None
    port: Annotated[int, Field(ge=1, le=65535)] = 5005
    routes: Routes | None = None
    env: Annotated[list[EnvVar], Field(max_length=256)] = []
    env_from: Annotated[list[EnvFromSource], Field(max_length=64)] = []

    @property
    def is_python(self) -> bool:
        return self.python is not None

    @property
    def effective_routes(self) -> Routes:
        """Routes the router calls: the bundle runtime's fixed routes for Python bundles."""
        if self.python is not None:
            return Routes(predict="/predict", stream="/stream", ready="/readyz")
        return self.routes or Routes()


class Invocation(Model):
    """Sync and streaming invocation limits, enforced per replica by the router."""

    timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    max_payload_bytes: Annotated[int, Field(ge=1024, le=1024 * MIB)] = 6 * MIB
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    max_queued: Annotated[int, Field(ge=0, le=100_000)] = 80


class CallbackAuth(Model):
    """Credentials come from a Secret: keys `username`/`password` (basic) or `tls.crt`/`tls.key` (mtls)."""

    kind: Literal["basic", "mtls"]
    secret_name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]


class Callback(Model):
    url: Annotated[str, Field(min_length=8, max_length=2048)]
    auth: CallbackAuth | None = None


class AsyncSettings(Model):
    """Queued async invocation (a durable Redis stream per endpoint)."""

    request_ttl_seconds: Annotated[int, Field(ge=60, le=7 * 86400, alias="requestTTLSeconds")] = 21600
    invocation_timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = 900
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    result_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 86400, alias="resultTTLSeconds")] = 86400
    callback: Callback | None = None
    retain_on_delete: bool = False


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
    cpu: Quantity = "1"
    memory: Quantity = "2Gi"
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    gpu_type: Annotated[str | None, Field(default=None, min_length=1, max_length=128)] = None


class Scaling(Model):
    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    max_replicas: Annotated[int | None, Field(default=None, ge=1, le=1000, description="defaults to minReplicas")] = (
        None
    )
    target_concurrency: Annotated[int, Field(ge=1, le=1000)] = 4
    scale_down_delay_seconds: Annotated[int, Field(ge=0, le=86400)] = 300

    @property
    def effective_max_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else max(self.min_replicas, 1)

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas < self.effective_max_replicas


class Toleration(Model):
    key: Annotated[str | None, Field(default=None, max_length=316)] = None
    operator: Literal["Exists", "Equal"] | None = None
    value: Annotated[str | None, Field(default=None, max_length=63)] = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PodSettings(Model):
    """Pod-level knobs a platform team needs; everything else is derived by the operator."""

    labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] = {}
    annotations: Annotated[dict[str, Annotated[str, Field(max_length=65536)]], Field(max_length=64)] = {}
    service_account_name: Annotated[str | None, Field(default=None, max_length=253)] = None
    node_selector: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] = {}
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = []
    image_pull_secrets: Annotated[list[NameRef], Field(max_length=16)] = []
    priority_class_name: Annotated[str | None, Field(default=None, max_length=253)] = None


class EndpointSpec(Model):
    modes: Annotated[list[Annotated[Mode, Strict(False)]], Field(min_length=1, max_length=3)]
    local_only: Annotated[
        bool,
        Field(description="Run only with `bundleserve run`; lifts the image requirement. Rejected by the operator."),
    ] = False
    bundle: Bundle
    invocation: Invocation = Invocation()
    async_: Annotated[AsyncSettings | None, Field(default=None, alias="async")] = None
    resources: Resources = Resources()
    scaling: Scaling = Scaling()
    pod: PodSettings = PodSettings()

    @model_validator(mode="after")
    def _cross_field_rules(self) -> EndpointSpec:
        from bundleserve.api.rules import check_spec

        check_spec(self)
        return self

    def serves(self, mode: Mode) -> bool:
        return mode in self.modes

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
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    type: str
    status: ConditionStatus
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class QueueStatus(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    pending: int = 0
    in_flight: int = 0
    backlog: int = 0


class EndpointStatus(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    observed_generation: int | None = None
    conditions: list[Condition] = []
    replicas: int = 0
    ready_replicas: int = 0
    url: str | None = None
    queue: QueueStatus | None = None


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
