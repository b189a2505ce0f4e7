"""One idempotent, level-based reconcile: desired children from the spec, compared with what exists, written only
when different; then status from what is observed. Called for create, update, resume, child events and the timer.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.api.manifest import format_validation_error
from bundleserve.api.variants import ServedVariant, served_variants
from bundleserve.controller import secrets
from bundleserve.controller.builders import BuildContext, BuildError, Manifest, Scaler, build_children, scaler_for
from bundleserve.controller.builders.common import serves_http
from bundleserve.controller.diff import needs_write, replacement
from bundleserve.controller.kube import Conflict, KubeClient, KubeError
from bundleserve.controller.labels import ENDPOINT_LABEL, deployment_name, selector_labels, service_url
from bundleserve.controller.status import (
    Observed,
    Problem,
    QueueObservation,
    VariantObservation,
    build_status,
    rolling_out,
    status_patch,
    transitions,
)
from bundleserve.queue import keys
from bundleserve.queue.config import queue_ids

#: (pending, in_flight) of the queue `keys.queue_id(namespace, name)`, or an exception when it cannot be read.
BacklogReader = Callable[[str], Awaitable[tuple[int, int]]]
#: API answers to a child write that retrying the same object cannot fix: 400 BadRequest, 403 Forbidden (a quota
#: denial, or RBAC the cluster admin must grant), 422 Invalid (a quantity like `512mi`, a toleration `Exists` with a
#: value, a label value Kubernetes refuses). They end in Degraded=True/ChildRejected carrying the API server's own
#: message; the drift timer and any spec change try again. 409 and 5xx stay transient (the caller retries soon).
REJECTED_STATUSES = frozenset({400, 403, 422})
#: Children that exist only for some specs (a variant's, or a Service, autoscaler or PDB the spec no longer asks
#: for): listed by the endpoint's label and deleted when owned by the Endpoint and not desired. Secrets and the
#: NetworkPolicy are per endpoint and always wanted.
OPTIONAL_KINDS = (
    "ConfigMap",
    "Service",
    "Deployment",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ScaledObject",
)
#: The Ready message of a sync/streaming endpoint at zero replicas (docs/operator.md, "Scale from zero").
ZERO_ON_DEMAND = "no replicas: the gateway holds the next call and a replica starts"
#: Deleted before the desired children are applied: KEDA's admission webhook refuses a ScaledObject for a Deployment
#: that an HPA still manages ("already managed by the hpa"), so switching an Endpoint to async must delete the HPA
#: before the ScaledObject is created (and the other way round, KEDA removes its own HPA with the ScaledObject).
#: The rest goes after: a removed variant's pods serve until the remaining ones are applied.
AUTOSCALER_KINDS = ("HorizontalPodAutoscaler", "ScaledObject")


@dataclass
class ReconcileResult:
    status: Manifest
    patch: Manifest | None
    writes: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, kind, name)
    problem: Problem | None = None
    transitions: list[dict[str, Any]] = field(default_factory=list)
    endpoint: Endpoint | None = None


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(body: Manifest) -> Endpoint:
    document = {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body}
    return Endpoint.model_validate(document)


def owned_by(live: Manifest, uid: str | None) -> bool:
    refs = live.get("metadata", {}).get("ownerReferences", []) or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def with_initial_replicas(endpoint: Endpoint, manifest: Manifest) -> Manifest:
    """An autoscaled Deployment starts at minReplicas (the API default would be 1); after creation the autoscaler
    owns the count and the desired state never mentions it."""
    if manifest["kind"] != "Deployment" or "replicas" in manifest["spec"]:
        return manifest
    return {**manifest, "spec": {"replicas": endpoint.spec.scaling.min_replicas, **manifest["spec"]}}


async def apply_children(
    endpoint: Endpoint, desired: list[Manifest], kube: KubeClient, writes: list[tuple[str, str, str]]
) -> dict[tuple[str, str], Manifest]:
    """Create what is missing, replace what differs; returns the live objects by (kind, name). Refuses to take over
    an object of the same name that another owner (or a human) created: that is a ChildConflict problem.

    A desired manifest that names a `resourceVersion` was built from that version of the live object (the
    credentials Secret, whose password it keeps): it is written over that version only, and a Conflict (409: the
    reconcile is retried and builds it again) when the object changed or was deleted since, e.g. a Secret deleted to
    rotate its password while this reconcile was running."""
    uid = endpoint.metadata.uid
    live_by_kind: dict[tuple[str, str], Manifest] = {}
    for manifest in desired:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        live = await kube.get(kind, endpoint.namespace, name)
        based_on = manifest["metadata"].get("resourceVersion")
        if based_on is not None and (live is None or live.get("metadata", {}).get("resourceVersion") != based_on):
            raise Conflict(409, f"{kind} {name} changed while it was being reconciled; building it again")
        try:
            if live is None:
                live = await kube.create(with_initial_replicas(endpoint, manifest))
                writes.append(("create", kind, name))
            elif not owned_by(live, uid):
                raise BuildError("ChildConflict", f"{kind} {name} already exists and is not owned by this Endpoint")
            elif needs_write(manifest, live):
                live = await kube.replace(replacement(manifest, live))
                writes.append(("update", kind, name))
        except KubeError as error:
            if error.status not in REJECTED_STATUSES:
                raise
            raise BuildError("ChildRejected", f"the API server refused {kind} {name}: {error.message}") from None
        live_by_kind[(kind, name)] = live
    return live_by_kind


async def delete_unwanted(
    endpoint: Endpoint,
    desired: list[Manifest],
    context: BuildContext,
    kube: KubeClient,
    writes: list[tuple[str, str, str]],
    kinds: tuple[str, ...] = OPTIONAL_KINDS,
) -> None:
    """Delete the children of this Endpoint the spec no longer wants: a removed variant's, a Service, autoscaler
    or PDB the spec dropped, the implicit variant's after switching to spec.variants (and the other way round).
    Found by the endpoint's label, deleted only when this Endpoint is their controller."""
    wanted = {(manifest["kind"], manifest["metadata"]["name"]) for manifest in desired}
    for kind in kinds:
        if kind == "ScaledObject" and not context.keda:
            continue
        for live in await kube.list(kind, endpoint.namespace, {ENDPOINT_LABEL: endpoint.name}):
            name = live.get("metadata", {}).get("name", "")
            if (kind, name) in wanted or not owned_by(live, endpoint.metadata.uid):
                continue
            await kube.delete(kind, endpoint.namespace, name)
            writes.append(("delete", kind, name))


async def observe_queue(endpoint: Endpoint, read_backlog: BacklogReader | None) -> QueueObservation | None:
    if read_backlog is None or not endpoint.spec.serves(Mode.ASYNC):
        return None
    pending = in_flight = 0
    try:
        for queue in queue_ids(endpoint):  # an endpoint with variants: the sum over its variants' queues
            queue_pending, queue_in_flight = await read_backlog(queue)
            pending, in_flight = pending + queue_pending, in_flight + queue_in_flight
    except Exception as error:  # the queue being down must not break reconciling the children
        logging.getLogger(__name__).warning("cannot read the queue of %s: %s", endpoint.name, error)
        return None
    name = ", ".join(keys.stream(queue) for queue in queue_ids(endpoint))  # each variant's stream, or the one
    return QueueObservation(name=name, pending=pending, in_flight=in_flight)


async def reconcile(
    body: Manifest,
    kube: KubeClient,
    context: BuildContext,
    *,
    read_backlog: BacklogReader | None = None,
    ensure_user: secrets.EnsureQueueUser | None = None,
    now: Callable[[], str] = utc_now,
) -> ReconcileResult:
    """Bring the children of one Endpoint to the desired state and write its status if it changed.

    Raises KubeError (Conflict included) for API failures: the caller retries. Spec problems do not raise: they end
    in a Degraded status and leave existing children untouched.
    """
    namespace = body["metadata"].get("namespace") or "default"
    name = body["metadata"]["name"]
    generation = int(body["metadata"].get("generation") or 0)
    previous = body.get("status") or {}
    writes: list[tuple[str, str, str]] = []
    endpoint: Endpoint | None = None
    try:
        endpoint = parse(body)
    except ValidationError as error:
        observed = Observed(
            generation=generation,
            deployment=await kube.get("Deployment", namespace, name),  # still serving the last valid spec?
            problem=Problem("InvalidSpec", format_validation_error(error)),
        )
    else:
        observed = await _reconcile_valid(endpoint, kube, context, read_backlog, ensure_user, writes, generation)
    status = build_status(observed, previous, now())
    patch = status_patch(previous, status)
    if patch is not None:
        await kube.patch_endpoint_status(namespace, name, patch)
        writes.append(("patch", "Endpoint/status", name))
    return ReconcileResult(
        status=status,
        patch=patch,
        writes=writes,
        problem=observed.problem,
        transitions=transitions(previous, status),
        endpoint=endpoint,
    )


async def _reconcile_valid(
    endpoint: Endpoint,
    kube: KubeClient,
    context: BuildContext,
    read_backlog: BacklogReader | None,
    ensure_user: secrets.EnsureQueueUser | None,
    writes: list[tuple[str, str, str]],
    generation: int,
) -> Observed:
    url = service_url(endpoint.name, endpoint.namespace) if serves_http(endpoint) else None
    queue = await observe_queue(endpoint, read_backlog)
    try:
        if endpoint.spec.scales_from_zero and not context.config.redis_url:
            # the demand gate reads the gateways' demand in the queue's Redis: without it nothing would wake the
            # endpoint and every call at zero would wait for its deadline
            raise BuildError(
                "ScaleFromZeroNotConfigured",
                "minReplicas 0 with the sync or streaming mode needs the queue's Redis, where the gateway reports "
                "demand: the operator has no BUNDLESERVE_REDIS_URL configured",
            )
        # The Endpoint's own credentials first: the Deployment references them.
        context, own = await secrets.credentials(endpoint, context, kube, ensure_user)
        desired = own + build_children(endpoint, context)
        await delete_unwanted(endpoint, desired, context, kube, writes, AUTOSCALER_KINDS)
        live = await apply_children(endpoint, desired, kube, writes)
        others = tuple(kind for kind in OPTIONAL_KINDS if kind not in AUTOSCALER_KINDS)
        await delete_unwanted(endpoint, desired, context, kube, writes, others)
    except BuildError as error:
        deployment = await kube.get("Deployment", endpoint.namespace, endpoint.name)
        return Observed(
            generation=generation,
            deployment=deployment,
            url=url,
            queue=queue,
            problem=Problem(error.reason, error.message),
        )
    variants = served_variants(endpoint)
    seen = [await _observe_variant(variant, live, context, kube, writes) for variant in variants]
    if not variants[0].declared:
        only = seen[0]
        return Observed(
            generation=generation,
            deployment=only.deployment,
            pods=only.pods,
            url=url,
            queue=queue,
            scale_to_zero=only.scale_to_zero,
            zero_message=only.zero_message,
        )
    return Observed(generation=generation, url=url, queue=queue, variants=seen)


async def _observe_variant(
    variant: ServedVariant,
    live: dict[tuple[str, str], Manifest],
    context: BuildContext,
    kube: KubeClient,
    writes: list[tuple[str, str, str]],
) -> VariantObservation:
    """One variant's Deployment as applied (started from zero when an HPA now owns it) and, while it is not all
    ready, its pods (for the reason why)."""
    endpoint = variant.endpoint
    name = deployment_name(endpoint.name, variant.child_variant)
    deployment = live[("Deployment", name)]
    scaler = scaler_for(endpoint, context.keda)
    if scaler is Scaler.HPA and deployment.get("spec", {}).get("replicas") == 0:
        # An HPA never scales a Deployment up from zero (e.g. an endpoint that was async-only and scaled to zero).
        start = max(endpoint.spec.scaling.min_replicas, 1)
        deployment = await kube.merge_patch("Deployment", endpoint.namespace, name, {"spec": {"replicas": start}})
        writes.append(("patch", "Deployment", name))
    status = deployment.get("status", {}) or {}
    wanted = deployment.get("spec", {}).get("replicas", 1)
    pods: list[Manifest] = []
    if (status.get("readyReplicas", 0) or 0) < wanted or rolling_out(deployment):
        pods = await kube.list("Pod", endpoint.namespace, selector_labels(endpoint.name, variant.child_variant))
    return VariantObservation(
        name=variant.name,
        weight=variant.weight,
        deployment=deployment,
        pods=pods,
        scale_to_zero=scaler in (Scaler.KEDA, Scaler.OPERATOR, Scaler.DEMAND)
        and endpoint.spec.scaling.min_replicas == 0,
        zero_message=ZERO_ON_DEMAND if scaler is Scaler.DEMAND else VariantObservation.zero_message,
    )
