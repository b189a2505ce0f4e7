"""Cross-field rules of the Endpoint spec: one table, two enforcers.

Each rule carries a CEL expression (placed in the CRD as an `x-kubernetes-validations` entry at `scope`, so
`kubectl apply` rejects a bad Endpoint) and a Python predicate over the typed model (so local mode rejects the
same documents with the same message). Tests evaluate both on a corpus and prove they agree.
Rules use only standard CEL (`has`, `in`, `size`, `startsWith`, `all`) so any CEL library can evaluate them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bundleserve.api.endpoint import EndpointSpec


#: The bytes of request and reply bodies a router may be asked to hold at once (its derived memory limit, less the
#: base: controller.builders.deployment.router_memory_limit, at most 16 GiB).
ROUTER_BODY_BUDGET = 17012097024


@dataclass(frozen=True)
class Rule:
    scope: str  # dotted path below the resource root where the CEL rule is attached ("spec", "spec.scaling", ...)
    cel: str
    message: str
    holds: Callable[[EndpointSpec], bool]


def _has_async(spec: EndpointSpec) -> bool:
    return "async" in spec.modes


def _allowed_callback(spec: EndpointSpec) -> bool:
    callback = spec.async_.callback if spec.async_ else None
    return callback is None or callback.url.startswith(("https://", "http://"))


def _batch_entrypoint(spec: EndpointSpec) -> str | None:
    return spec.bundle.python.batch_entrypoint if spec.bundle.python is not None else None


RULES: tuple[Rule, ...] = (
    Rule(
        scope="spec",
        cel="self.modes.all(m, self.modes.exists_one(n, n == m))",
        message="spec.modes must not repeat a mode",
        holds=lambda s: len(set(s.modes)) == len(s.modes),
    ),
    Rule(
        scope="spec",
        cel="!has(self.scaling) || !has(self.scaling.maxReplicas) || "
        "(has(self.scaling.minReplicas) ? self.scaling.minReplicas : 1) <= self.scaling.maxReplicas",
        message="spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas",
        holds=lambda s: s.scaling.max_replicas is None or s.scaling.min_replicas <= s.scaling.max_replicas,
    ),
    Rule(
        scope="spec",
        cel="!has(self.scaling) || !has(self.scaling.scaleToZeroAfterSeconds) || "
        "(has(self.scaling.minReplicas) && self.scaling.minReplicas == 0 && "
        "('sync' in self.modes || 'streaming' in self.modes))",
        message="spec.scaling.scaleToZeroAfterSeconds needs spec.scaling.minReplicas 0 and the sync or streaming mode "
        "(an async-only endpoint goes to zero after scaleDownDelaySeconds with an empty queue)",
        holds=lambda s: s.scaling.scale_to_zero_after_seconds is None or s.scales_from_zero,
    ),
    Rule(
        scope="spec.bundle",
        cel="!(has(self.python) && has(self.command))",
        message="spec.bundle: set either python (a Python bundle run by bundleserve's runtime) "
        "or command (a runnable image), not both",
        holds=lambda s: not (s.bundle.python is not None and s.bundle.command is not None),
    ),
    Rule(
        scope="spec.bundle",
        cel="!(has(self.python) && has(self.routes))",
        message="spec.bundle.routes is only for runnable images: a Python bundle uses the runtime's routes",
        holds=lambda s: not (s.bundle.python is not None and s.bundle.routes is not None),
    ),
    Rule(
        scope="spec.bundle",
        cel="has(self.python) || has(self.image) || has(self.command)",
        message="spec.bundle needs python (a Python bundle) or image/command (a runnable image)",
        holds=lambda s: s.bundle.python is not None or s.bundle.image is not None or s.bundle.command is not None,
    ),
    Rule(
        scope="spec",
        cel="has(self.bundle.image) || (has(self.localOnly) && self.localOnly)",
        message="spec.bundle.image is required (only an Endpoint with spec.localOnly: true may omit it)",
        holds=lambda s: s.bundle.image is not None or s.local_only,
    ),
    Rule(
        scope="spec",
        cel="!has(self.async) || 'async' in self.modes",
        message="spec.async settings need the async mode in spec.modes",
        holds=lambda s: s.async_ is None or _has_async(s),
    ),
    Rule(
        scope="spec",
        cel="!('streaming' in self.modes) || has(self.bundle.python) || "
        "(has(self.bundle.routes) && has(self.bundle.routes.stream))",
        message="the streaming mode needs a Python bundle or spec.bundle.routes.stream",
        holds=lambda s: (
            "streaming" not in s.modes
            or s.bundle.python is not None
            or (s.bundle.routes is not None and s.bundle.routes.stream is not None)
        ),
    ),
    Rule(
        scope="spec",
        cel="!has(self.openai) || 'streaming' in self.modes",
        message="spec.openai needs the streaming mode in spec.modes (completions call the bundle's streaming callable)",
        holds=lambda s: s.openai is None or "streaming" in s.modes,
    ),
    Rule(
        scope="spec.async.callback",
        cel="self.url.startsWith('https://') || self.url.startsWith('http://')",
        message="spec.async.callback.url must be an http:// or https:// URL",
        holds=_allowed_callback,
    ),
    Rule(
        scope="spec.async",
        cel="!has(self.s3FailurePath) || has(self.s3OutputPath)",
        message="spec.async.s3FailurePath needs spec.async.s3OutputPath (as SageMaker's OutputConfig)",
        holds=lambda s: s.async_ is None or s.async_.s3_failure_path is None or s.async_.s3_output_path is not None,
    ),
    Rule(
        scope="spec.resources",
        cel="!has(self.gpuType) || (has(self.gpus) && self.gpus > 0)",
        message="spec.resources.gpuType needs spec.resources.gpus greater than 0",
        holds=lambda s: s.resources.gpu_type is None or s.resources.gpus > 0,
    ),
    Rule(
        scope="spec.invocation",
        cel="!has(self.maxQueued) || self.maxQueued <= 1000 * (has(self.concurrency) ? self.concurrency : 8)",
        message="spec.invocation.maxQueued must be at most 1000 times spec.invocation.concurrency",
        holds=lambda s: s.invocation.max_queued <= 1000 * s.invocation.concurrency,
    ),
    Rule(
        scope="spec.invocation",
        cel="(has(self.maxPayloadBytes) ? self.maxPayloadBytes : 6291456) * "
        "(3 * (has(self.concurrency) ? self.concurrency : 8) + (has(self.maxQueued) ? self.maxQueued : 80) + 4) "
        f"<= {ROUTER_BODY_BUDGET}",
        message="spec.invocation: maxPayloadBytes x (3 x concurrency + maxQueued + 4) must be at most 16 GiB - 160 MiB: "
        "the router holds that many bodies and replies at once and its memory limit is derived from it",
        holds=lambda s: (
            s.invocation.max_payload_bytes * (3 * s.invocation.concurrency + s.invocation.max_queued + 4)
            <= ROUTER_BODY_BUDGET
        ),
    ),
    Rule(
        scope="spec",
        cel="!has(self.invocation) || !has(self.invocation.batching) || "
        "(has(self.bundle.python) && has(self.bundle.python.batchEntrypoint))",
        message="spec.invocation.batching needs a Python bundle with spec.bundle.python.batchEntrypoint "
        "(the callable that takes a list of calls)",
        holds=lambda s: s.invocation.batching is None or _batch_entrypoint(s) is not None,
    ),
    Rule(
        scope="spec",
        cel="!has(self.bundle.python) || !has(self.bundle.python.batchEntrypoint) || "
        "(has(self.invocation) && has(self.invocation.batching))",
        message="spec.bundle.python.batchEntrypoint is called only with spec.invocation.batching set",
        holds=lambda s: _batch_entrypoint(s) is None or s.invocation.batching is not None,
    ),
    Rule(
        scope="spec.invocation",
        cel="!has(self.batching) || (has(self.concurrency) ? self.concurrency : 8) >= "
        "(has(self.batching.maxBatchSize) ? self.batching.maxBatchSize : 8)",
        message="spec.invocation.concurrency must be at least spec.invocation.batching.maxBatchSize "
        "(the router lets only concurrency calls reach the model at once, so larger batches could never form)",
        holds=lambda s: (
            s.invocation.batching is None or s.invocation.concurrency >= s.invocation.batching.max_batch_size
        ),
    ),
    Rule(
        scope="spec.bundle",
        cel="!has(self.env) || self.env.all(e, self.env.exists_one(f, f.name == e.name))",
        message="spec.bundle.env: each name may appear only once",
        holds=lambda s: len({e.name for e in s.bundle.env}) == len(s.bundle.env),
    ),
    Rule(
        scope="spec",
        cel="!has(self.bundle.env) || self.bundle.env.all(e, !(has(e.value) && has(e.valueFrom)))",
        message="spec.bundle.env: an entry may set value or valueFrom, not both",
        holds=lambda s: all(not (e.value is not None and e.value_from is not None) for e in s.bundle.env),
    ),
    Rule(
        scope="spec",
        cel="!has(self.variants) || self.variants.all(v, self.variants.exists_one(w, w.name == v.name))",
        message="spec.variants: each variant name may appear only once",
        holds=lambda s: len({v.name for v in s.variants}) == len(s.variants),
    ),
    Rule(
        scope="spec",
        cel="!has(self.variants) || size(self.variants) == 0 || self.variants.exists(v, v.weight > 0)",
        message="spec.variants: at least one variant needs a weight above 0 (requests that name no variant are split "
        "by weight)",
        holds=lambda s: not s.variants or any(v.weight > 0 for v in s.variants),
    ),
    Rule(
        scope="spec",
        cel="!has(self.variants) || self.variants.all(v, !has(v.scaling) || !has(v.scaling.maxReplicas) || "
        "(has(v.scaling.minReplicas) ? v.scaling.minReplicas : 1) <= v.scaling.maxReplicas)",
        message="spec.variants[].scaling.minReplicas must be less than or equal to its maxReplicas",
        holds=lambda s: all(
            v.scaling is None or v.scaling.max_replicas is None or v.scaling.min_replicas <= v.scaling.max_replicas
            for v in s.variants
        ),
    ),
    Rule(
        scope="spec",
        cel="!has(self.variants) || (size(self.modes) == 1 && self.modes[0] == 'async') || "
        "self.variants.all(v, !has(v.scaling) || ((has(v.scaling.minReplicas) ? v.scaling.minReplicas : 1) == 0) == "
        "(has(self.scaling) && has(self.scaling.minReplicas) && self.scaling.minReplicas == 0))",
        message="spec.variants[].scaling.minReplicas: with the sync or streaming mode the variants scale from zero "
        "together with the endpoint (the gateway holds calls while none has a replica): a variant's minReplicas is 0 "
        "exactly when spec.scaling.minReplicas is 0",
        holds=lambda s: (
            list(s.modes) == ["async"]
            or all(v.scaling is None or (v.scaling.min_replicas == 0) == s.scales_from_zero for v in s.variants)
        ),
    ),
    Rule(
        scope="spec",
        cel="!has(self.variants) || self.variants.all(v, !has(v.resources) || !has(v.resources.gpuType) || "
        "(has(v.resources.gpus) && v.resources.gpus > 0))",
        message="spec.variants[].resources.gpuType needs its gpus greater than 0",
        holds=lambda s: all(
            v.resources is None or v.resources.gpu_type is None or v.resources.gpus > 0 for v in s.variants
        ),
    ),
    Rule(
        scope="spec",
        cel="!has(self.variants) || self.variants.all(v, !has(v.env) || "
        "v.env.all(e, v.env.exists_one(f, f.name == e.name) && !(has(e.value) && has(e.valueFrom))))",
        message="spec.variants[].env: each name may appear only once, and an entry may set value or valueFrom, "
        "not both",
        holds=lambda s: all(
            len({e.name for e in v.env}) == len(v.env)
            and all(not (e.value is not None and e.value_from is not None) for e in v.env)
            for v in s.variants
        ),
    ),
)


class SpecRuleError(ValueError):
    """A cross-field rule failed; the message is the same text the CRD's CEL rule reports."""


def check_spec(spec: EndpointSpec) -> None:
    failures = [rule.message for rule in RULES if not rule.holds(spec)]
    if failures:
        raise SpecRuleError("; ".join(failures))


def rules_at(scope: str) -> list[dict[str, Any]]:
    """The `x-kubernetes-validations` entries for one schema node of the CRD."""
    return [{"rule": r.cel, "message": r.message} for r in RULES if r.scope == scope]
