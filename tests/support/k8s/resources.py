"""The resource types the emulator serves: the built-ins the operator and kopf use, plus every CRD created at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support.k8s import errors

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One served group/version/resource. Objects of all versions of a group+plural share one storage bucket."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    tracks_generation: bool = False  # metadata.generation is maintained (bumped when the spec changes)
    custom: bool = False  # served from a CRD: schema-validated, no strategic merge, DELETE returns the object
    return_deleted_object: bool = False
    field_labels: tuple[str, ...] = ()  # field selectors supported beyond metadata.name/metadata.namespace
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)  # openAPIV3Schema (CRDs only)
    preferred: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def bucket(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        """`deployments.apps`, `endpoints.bundleserve.dev`, `configmaps`: the name used by write counters."""
        return errors.qualified(self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def discovery_entries(self) -> list[dict[str, Any]]:
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries = [main]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    status: bool = False,
    generation: bool = False,
    returns_object: bool = False,
    field_labels: tuple[str, ...] = (),
) -> ResourceType:
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        singular=kind.lower(),
        short_names=short,
        categories=("all",)
        if plural in {"pods", "services", "deployments", "replicasets", "horizontalpodautoscalers"}
        else (),
        status_subresource=status,
        tracks_generation=generation,
        return_deleted_object=returns_object,
        field_labels=field_labels,
    )


BUILTINS: tuple[ResourceType, ...] = (
    _builtin(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        short=("ns",),
        status=True,
        field_labels=("status.phase",),
    ),
    _builtin(
        "",
        "v1",
        "pods",
        "Pod",
        short=("po",),
        status=True,
        returns_object=True,
        field_labels=("status.phase", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "status.podIP"),
    ),
    _builtin(
        "", "v1", "services", "Service", short=("svc",), status=True, field_labels=("spec.clusterIP", "spec.type")
    ),
    _builtin("", "v1", "endpoints", "Endpoints", short=("ep",)),
    _builtin("", "v1", "secrets", "Secret", field_labels=("type",)),
    _builtin("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _builtin(
        "",
        "v1",
        "events",
        "Event",
        short=("ev",),
        field_labels=(
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ),
    ),
    _builtin("apps", "v1", "deployments", "Deployment", short=("deploy",), status=True, generation=True),
    _builtin("apps", "v1", "replicasets", "ReplicaSet", short=("rs",), status=True, generation=True),
    _builtin("apps", "v1", "statefulsets", "StatefulSet", short=("sts",), status=True, generation=True),
    _builtin(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short=("hpa",),
        status=True,
        generation=True,
    ),
    _builtin(
        "policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",), status=True, generation=True
    ),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short=("netpol",), generation=True),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short=("crd", "crds"),
        status=True,
        generation=True,
    ),
)

#: kopf's peering CRDs, installed at start-up as a cluster prepared for kopf would have them.
KOPF_PEERING_CRDS: tuple[dict[str, Any], ...] = tuple(
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    for plural, kind, scope in (
        ("clusterkopfpeerings", "ClusterKopfPeering", "Cluster"),
        ("kopfpeerings", "KopfPeering", "Namespaced"),
    )
)


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The served versions of a (valid) CRD as resource types; the storage version is the preferred one."""
    spec = crd["spec"]
    names = spec["names"]
    result = []
    versions = [v for v in spec["versions"] if v.get("served", True)]
    storage = next((v["name"] for v in spec["versions"] if v.get("storage")), versions[0]["name"] if versions else "")
    for version in versions:
        subresources = version.get("subresources") or spec.get("subresources") or {}
        schema = (version.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
        result.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or names["kind"].lower(),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in subresources,
                tracks_generation=True,
                custom=True,
                return_deleted_object=True,
                schema=schema,
                preferred=version["name"] == storage,
            )
        )
    return result


class Registry:
    """Lookup of served resource types by group/version/plural, and by names a test finds convenient."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._crd_types: dict[str, list[ResourceType]] = {}
        for resource in BUILTINS:
            self._types[(resource.group, resource.version, resource.plural)] = resource

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def register_crd(self, crd: dict[str, Any]) -> None:
        self.unregister_crd(crd["metadata"]["name"])
        new_types = types_from_crd(crd)
        self._crd_types[crd["metadata"]["name"]] = new_types
        for resource in new_types:
            self._types[(resource.group, resource.version, resource.plural)] = resource

    def unregister_crd(self, crd_name: str) -> None:
        for resource in self._crd_types.pop(crd_name, []):
            self._types.pop((resource.group, resource.version, resource.plural), None)

    def preferred(self, group: str, plural: str) -> ResourceType | None:
        candidates = [r for r in self._types.values() if r.group == group and r.plural == plural]
        return next((r for r in candidates if r.preferred), candidates[0] if candidates else None)

    def resolve(self, name: str) -> ResourceType:
        """`deployments.apps`, `deployments`, `Deployment`, `endpoints.bundleserve.dev`, `apps/v1/deployments`."""
        if name.count("/") >= 1:
            *group_parts, version, plural = name.split("/")
            found = self.get("/".join(group_parts), version, plural)
            if found:
                return found
        plural, _, group = name.partition(".")
        exact = self.preferred(group, plural)
        if exact:
            return exact
        for resource in self._types.values():
            if resource.preferred and name in {resource.kind, resource.singular, *resource.short_names}:
                return resource
        raise KeyError(f"no served resource named {name!r}")

    def for_api_version(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for resource in self._types.values():
            if resource.group == group and resource.version == version and resource.kind == kind:
                return resource
        raise KeyError(f"no served resource for {api_version} {kind}")
