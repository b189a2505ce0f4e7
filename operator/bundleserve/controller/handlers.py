"""Thin kopf handlers (registration only; the work they trigger is in state.py). Every path that may change children
ends in the same `reconcile()`:

- create / update / resume of an Endpoint, and a drift timer;
- events of any child (labelled managed-by us): a child edited or deleted by hand is restored at once;
- delete: a bounded finalizer that purges the endpoint's queue unless `spec.async.retainOnDelete`;
- a scaler timer for async-only endpoints without KEDA.
Reconciles of one Endpoint never overlap (a lock per Endpoint) and bursts of child events coalesce into one re-run.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from bundleserve.api.endpoint import GROUP, PLURAL, VERSION
from bundleserve.controller import kube
from bundleserve.controller.config import KedaMode
from bundleserve.controller.kube import KubeError
from bundleserve.controller.labels import ENDPOINT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from bundleserve.controller.state import Key, OperatorState

ENDPOINTS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": PLURAL}
CHILDREN = (
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("v1", "pods"),
    ("autoscaling/v2", "horizontalpodautoscalers"),
    ("policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "networkpolicies"),
)
KEDA_CHILD = ("keda.sh/v1alpha1", "scaledobjects")
FINALIZER = "bundleserve.dev/cleanup"


def _group(group_version: str) -> str:
    return group_version.rpartition("/")[0]


#: What kopf itself does with the API for these handlers: (group, resource, verbs). Kept next to the registrations
#: so the RBAC file (charts/bundleserve/files/operator-rbac.yaml) can be checked against it.
KOPF_API_USAGE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (GROUP, PLURAL, ("list", "watch", "patch")),  # watch; finalizer and handler-state annotations
    *((_group(gv), plural, ("list", "watch")) for gv, plural in (*CHILDREN, KEDA_CHILD)),
    ("", "events", ("create",)),  # kopf.event / warnings
    ("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch")),  # --peering, namespaced
    ("kopf.dev", "clusterkopfpeerings", ("get", "list", "watch", "patch")),  # --peering, cluster-wide
    ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),  # resource discovery
    ("", "namespaces", ("list", "watch")),  # namespace scanning
)


def _key(body: Any) -> Key:
    meta = body["metadata"]
    return (meta.get("namespace") or "default", meta["name"])


def build_registry(state: OperatorState) -> kopf.OperatorRegistry:
    """All handlers, bound to one OperatorState (no module-level globals: tests can run several operators)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # events only for warnings and our explicit transitions
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="bundleserve.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="bundleserve.dev", key="last-handled-configuration"
        )
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        await state.start()

    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        await state.stop()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kube.login(state.config.kubeconfig)

    async def reconcile_now(body: Any, **_: Any) -> None:
        try:
            await state.reconcile_key(_key(body))
        except KubeError as error:
            raise kopf.TemporaryError(str(error), delay=2 if error.status == 409 else 10) from None

    kopf.on.create(**ENDPOINTS, registry=registry, id="reconcile")(reconcile_now)
    kopf.on.update(**ENDPOINTS, registry=registry, id="reconcile")(reconcile_now)
    kopf.on.resume(**ENDPOINTS, registry=registry, id="reconcile")(reconcile_now)
    kopf.timer(
        **ENDPOINTS, registry=registry, id="drift", interval=state.drift_interval, initial_delay=state.drift_interval
    )(reconcile_now)

    @kopf.timer(
        **ENDPOINTS,
        registry=registry,
        id="scaler",
        interval=state.scaler_interval,
        when=lambda body, **_: state.uses_own_scaler(body),
    )
    async def scale(body: Any, **_: Any) -> None:
        try:
            await state.scale(_key(body), body)
        except KubeError as error:
            raise kopf.TemporaryError(str(error), delay=5) from None

    @kopf.on.delete(**ENDPOINTS, registry=registry, id="cleanup")
    async def delete(body: Any, runtime: Any, **_: Any) -> None:
        await state.clean_up(_key(body), body, runtime.total_seconds())

    async def child_event(body: Any, **_: Any) -> None:
        labels = body.get("metadata", {}).get("labels", {}) or {}
        owner = labels.get(ENDPOINT_LABEL)
        if owner:
            state.request((body["metadata"].get("namespace") or "default", owner))

    children = [*CHILDREN, KEDA_CHILD] if state.config.keda is not KedaMode.OFF else list(CHILDREN)
    for group_version, plural in children:
        kopf.on.event(
            group_version, plural, registry=registry, id=f"child-{plural}", labels={MANAGED_BY_LABEL: MANAGED_BY}
        )(child_event)
    return registry
