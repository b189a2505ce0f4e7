"""The emulated etcd + registry logic of the API server: pure Python, synchronous, thread-safe, no I/O.

Every object write bumps one global resourceVersion counter and appends a watch event to a bounded log
(watches resume from any version still in the log; older ones get 410 Gone, see `compact`). The store
implements the semantics the operator and kopf rely on: uid, generation bumped only by spec changes,
the status subresource split, finalizers + deletionTimestamp, ownerReference garbage collection
(background, foreground, orphan), namespace and CRD termination, optimistic concurrency, no-op writes
that change nothing (no new resourceVersion, no event).
"""

from __future__ import annotations

import base64
import collections
import copy
import datetime
import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from tests.support.k8s import builtins, errors, patching, schema
from tests.support.k8s.errors import ApiError, Cause
from tests.support.k8s.resources import KOPF_PEERING_CRDS, Registry, ResourceType
from tests.support.k8s.selectors import parse_field_selector, parse_label_selector

Body = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)
Bucket = tuple[str, str]  # (group, plural)

CRD_BUCKET: Bucket = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_BUCKET: Bucket = ("", "namespaces")
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _generate_suffix(length: int = 5) -> str:
    return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=length))


@dataclass(frozen=True)
class WatchEvent:
    """One change in the log; `old` lets label-selector watches turn MODIFIED into ADDED/DELETED like the real cache."""

    resource_version: int
    bucket: Bucket
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    object: Body
    old: Body | None


@dataclass(frozen=True)
class WatchFilter:
    namespace: str | None
    name: str | None
    labels: Callable[[Any], bool]
    fields: Callable[[Any], bool]

    def matches(self, obj: Body | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return self.labels(meta.get("labels") or {}) and self.fields(obj)


class Store:
    """All objects of all resources, the watch log, and the controllers the API server itself runs (GC, namespaces, CRDs)."""

    def __init__(self, *, history_limit: int = 200_000) -> None:
        self.registry = Registry()
        self._lock = threading.RLock()
        self._rv = 1000
        self._objects: dict[Bucket, dict[Key, Body]] = collections.defaultdict(dict)
        self._events: collections.deque[WatchEvent] = collections.deque(maxlen=history_limit)
        self._compacted = self._rv  # watches from versions below this are too old (410 Gone)
        self._listeners: list[Callable[[], None]] = []
        self._in_controllers = False
        self._uids: dict[str, tuple[Bucket, Key]] = {}
        self._dependents: dict[str, set[tuple[Bucket, Key]]] = collections.defaultdict(set)
        self._gc_queue: set[tuple[Bucket, Key]] = set()  # objects the garbage collector must look at
        for name in INITIAL_NAMESPACES:
            self.create(
                self.registry.resolve("namespaces"),
                None,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )
        for crd in KOPF_PEERING_CRDS:
            self.create(
                self.registry.resolve("customresourcedefinitions.apiextensions.k8s.io"), None, copy.deepcopy(crd)
            )

    # --- plumbing -------------------------------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called (under the store lock, must not block) after every change, e.g. to wake watch streams."""
        with self._lock:
            self._listeners.append(listener)

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def compact(self) -> int:
        """Forget the watch history, as etcd compaction does: every version handed out so far gets 410 Gone.

        The counter moves one step so that even a client that saw the very last event must re-list.
        """
        with self._lock:
            self._events.clear()
            self._rv += 1
            self._compacted = self._rv
            return self._rv

    @staticmethod
    def present(resource: ResourceType, obj: Body) -> Body:
        """The object as served in `resource`'s version (no conversion beyond apiVersion: `None` strategy)."""
        body = copy.deepcopy(obj)
        body["apiVersion"] = resource.api_version
        body["kind"] = resource.kind
        return body

    def _bucket(self, resource: ResourceType) -> dict[Key, Body]:
        return self._objects[resource.bucket]

    def _key(self, resource: ResourceType, namespace: str | None, name: str) -> Key:
        return ((namespace or "") if resource.namespaced else "", name)

    def _find(self, resource: ResourceType, namespace: str | None, name: str) -> Body:
        obj = self._bucket(resource).get(self._key(resource, namespace, name))
        if obj is None:
            raise errors.not_found(resource.group, resource.plural, name)
        return obj

    def _commit(self, resource: ResourceType, new: Body | None, old: Body | None, event_type: str) -> Body:
        """Store (or remove) one object version: new resourceVersion, watch event, indexes, GC work queue."""
        self._rv += 1
        target = new if new is not None else old
        assert target is not None
        target = copy.deepcopy(target)
        target["metadata"]["resourceVersion"] = str(self._rv)
        meta = target["metadata"]
        namespace = meta.get("namespace", "")
        key = (namespace, meta["name"])
        ref = (resource.bucket, key)
        previous = self._bucket(resource).get(key)
        for owner in (previous or {}).get("metadata", {}).get("ownerReferences") or []:
            self._dependents.get(owner.get("uid", ""), set()).discard(ref)
        if event_type == "DELETED":
            self._bucket(resource).pop(key, None)
            self._uids.pop(meta["uid"], None)
            self._gc_queue.update(self._dependents.get(meta["uid"], ()))
            for owner in meta.get("ownerReferences") or []:  # a foreground-deleting owner may now be free
                if owner.get("uid") in self._uids:
                    self._gc_queue.add(self._uids[owner["uid"]])
            if namespace:
                self._gc_queue.add((NAMESPACE_BUCKET, ("", namespace)))
            if resource.custom:
                self._gc_queue.add((CRD_BUCKET, ("", f"{resource.plural}.{resource.group}")))
        else:
            self._bucket(resource)[key] = target
            self._uids[meta["uid"]] = ref
            for owner in meta.get("ownerReferences") or []:
                self._dependents[owner.get("uid", "")].add(ref)
            if meta.get("ownerReferences") or meta.get("deletionTimestamp"):
                self._gc_queue.add(ref)
        self._events.append(WatchEvent(self._rv, resource.bucket, namespace, event_type, target, old))
        if self._events.maxlen and len(self._events) == self._events.maxlen:
            self._compacted = self._events[0].resource_version - 1
        for listener in self._listeners:
            listener()
        return target

    # --- reads ----------------------------------------------------------------------------------------------------

    def get(self, resource: ResourceType, namespace: str | None, name: str) -> Body:
        with self._lock:
            return self.present(resource, self._find(resource, namespace, name))

    def exists(self, resource: ResourceType, namespace: str | None, name: str) -> bool:
        with self._lock:
            return self._key(resource, namespace, name) in self._bucket(resource)

    def _select(self, resource: ResourceType, flt: WatchFilter) -> list[tuple[Key, Body]]:
        return sorted((key, obj) for key, obj in self._bucket(resource).items() if flt.matches(obj))

    def make_filter(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str | None,
        label_selector: str | None,
        field_selector: str | None,
    ) -> WatchFilter:
        return WatchFilter(
            namespace=namespace if resource.namespaced else None,
            name=name,
            labels=parse_label_selector(label_selector),
            fields=parse_field_selector(field_selector, resource.field_labels),
        )

    def list_objects(
        self,
        resource: ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Body:
        flt = self.make_filter(resource, namespace, None, label_selector, field_selector)
        with self._lock:
            selected = self._select(resource, flt)
            rv = self._rv
        if continue_token:
            try:
                start = tuple(json.loads(base64.urlsafe_b64decode(continue_token.encode())))
            except ValueError as error:
                raise errors.bad_request(f"continue key is not valid: {error}") from None
            selected = [(key, obj) for key, obj in selected if key > start]
        metadata: Body = {"resourceVersion": str(rv)}
        if limit and len(selected) > limit:
            last_key = selected[limit - 1][0]
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(list(last_key)).encode()).decode()
            metadata["remainingItemCount"] = len(selected) - limit
            selected = selected[:limit]
        items = []
        for _, obj in selected:
            item = self.present(resource, obj)
            if not resource.custom:  # typed lists of built-ins omit the items' kind/apiVersion
                item.pop("kind")
                item.pop("apiVersion")
            items.append(item)
        return {"kind": resource.list_kind, "apiVersion": resource.api_version, "metadata": metadata, "items": items}

    # --- watch ----------------------------------------------------------------------------------------------------

    def watch_start(
        self, resource: ResourceType, flt: WatchFilter, since: str | None, *, initial: bool
    ) -> tuple[int, list[Body]]:
        """(cursor, initial ADDED events): with no/zero version, the current objects come first as ADDED."""
        with self._lock:
            if since in (None, "", "0") or initial:
                events = [
                    {"type": "ADDED", "object": self.present(resource, obj)} for _, obj in self._select(resource, flt)
                ]
                return self._rv, events
            try:
                cursor = int(since)
            except ValueError:
                raise errors.bad_request(f'invalid resource version "{since}"') from None
            self._check_not_compacted(cursor)
            return cursor, []

    def _check_not_compacted(self, cursor: int) -> None:
        if cursor < self._compacted:
            raise errors.gone(f"too old resource version: {cursor} ({self._compacted + 1})")

    def events_after(self, resource: ResourceType, flt: WatchFilter, cursor: int) -> tuple[int, list[Body]]:
        """Watch events after `cursor` for this resource and filter, with selector transitions; raises 410 if compacted."""
        with self._lock:
            self._check_not_compacted(cursor)
            if cursor >= self._rv:
                return cursor, []
            out = []
            for event in self._iter_after(cursor):
                if event.bucket != resource.bucket:
                    continue
                now_matches = flt.matches(event.object) and event.type != "DELETED"
                was_matching = flt.matches(event.old)
                if event.type == "DELETED":
                    kind = "DELETED" if flt.matches(event.object) else None
                elif now_matches and was_matching:
                    kind = "MODIFIED"
                elif now_matches:
                    kind = "ADDED"
                elif was_matching:
                    kind = "DELETED"
                else:
                    kind = None
                if kind:
                    out.append({"type": kind, "object": self.present(resource, event.object)})
            return self._rv, out

    def _iter_after(self, cursor: int) -> Iterator[WatchEvent]:
        # The log is ordered by version: skip from the right end for the common case of a recent cursor.
        start = len(self._events)
        while start > 0 and self._events[start - 1].resource_version > cursor:
            start -= 1
        for index in range(start, len(self._events)):
            yield self._events[index]

    # --- admission ------------------------------------------------------------------------------------------------

    def _admit(
        self, resource: ResourceType, new: Body, old: Body | None, *, subresource: str | None, field_validation: str
    ) -> tuple[Body, list[str]]:
        """Normalize, default, prune and validate a body about to be stored; raises 422 Invalid with the causes."""
        meta = new.setdefault("metadata", {})
        name = meta.get("name", "")
        decoding = builtins.decode_errors(resource, new)
        if decoding:
            raise errors.bad_request(
                f'{resource.kind} in version "{resource.version}" cannot be handled as a {resource.kind}: {decoding[0]}'
            )
        if old is not None:
            old_meta = old["metadata"]
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                if key in old_meta:
                    meta[key] = old_meta[key]
                else:
                    meta.pop(key, None)
            if resource.status_subresource:
                if subresource == "status":
                    status = new.get("status")
                    preserved_meta = meta
                    new = copy.deepcopy(old)
                    new["metadata"] = {**old_meta, "resourceVersion": preserved_meta.get("resourceVersion")}
                    if status is None:
                        new.pop("status", None)
                    else:
                        new["status"] = status
                    meta = new["metadata"]
                elif "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if old_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    raise errors.invalid(
                        resource.group,
                        resource.kind,
                        name,
                        [
                            Cause(
                                "FieldValueForbidden",
                                f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)!r}",
                                "metadata.finalizers",
                            )
                        ],
                    )
        elif resource.status_subresource:
            new.pop("status", None)
        warnings: list[str] = []
        causes = builtins.validate_metadata(meta)
        if resource.custom:
            new, schema_causes, warnings = schema.admit(new, resource.schema, old)
            causes.extend(schema_causes)
            if warnings and field_validation == "Strict":
                raise errors.bad_request("strict decoding error: " + ", ".join(warnings))
            if field_validation == "Ignore":
                warnings = []
        else:
            new = builtins.apply_defaults(resource, new, old)
            causes.extend(builtins.validate(resource, new, old))
        if resource.bucket == CRD_BUCKET:
            causes.extend(self._validate_crd(new, old))
        if causes:
            raise errors.invalid(resource.group, resource.kind, name, causes)
        meta = new["metadata"]
        if resource.tracks_generation:
            if old is None:
                meta["generation"] = 1
            elif self._spec_of(resource, new) != self._spec_of(resource, old):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        return new, warnings

    @staticmethod
    def _spec_of(resource: ResourceType, body: Body) -> Any:
        """The part whose change bumps metadata.generation: all but metadata (and status when it is a subresource)."""
        if not resource.custom:
            return body.get("spec")
        skip = {"metadata", "apiVersion", "kind"} | ({"status"} if resource.status_subresource else set())
        return {k: v for k, v in body.items() if k not in skip}

    def _validate_crd(self, crd: Body, old: Body | None) -> list[Cause]:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        causes = []
        for field in ("group", "names", "scope", "versions"):
            if not spec.get(field):
                causes.append(Cause("FieldValueRequired", "Required value", f"spec.{field}"))
        for field in ("plural", "kind"):
            if not names.get(field):
                causes.append(Cause("FieldValueRequired", "Required value", f"spec.names.{field}"))
        if causes:
            return causes
        expected = f"{names['plural']}.{spec['group']}"
        if crd["metadata"].get("name") != expected:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f'Invalid value: "{crd["metadata"].get("name")}": must be spec.names.plural+"."+spec.group',
                    "metadata.name",
                )
            )
        if sum(1 for v in spec["versions"] if v.get("storage")) != 1:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    "Invalid value: must have exactly one version marked as storage version",
                    "spec.versions",
                )
            )
        if old is not None and old["spec"].get("scope") != spec.get("scope"):
            causes.append(
                Cause("FieldValueInvalid", f'Invalid value: "{spec.get("scope")}": field is immutable', "spec.scope")
            )
        for index, version in enumerate(spec["versions"]):
            openapi = (version.get("schema") or {}).get("openAPIV3Schema")
            if openapi is None:
                causes.append(
                    Cause(
                        "FieldValueRequired",
                        "Required value: schemas are required",
                        f"spec.versions[{index}].schema.openAPIV3Schema",
                    )
                )
                continue
            for problem in schema.is_structural(openapi):
                causes.append(Cause("FieldValueInvalid", problem, f"spec.versions[{index}].schema.openAPIV3Schema"))
        return causes

    # --- writes ---------------------------------------------------------------------------------------------------

    def _check_namespace(self, resource: ResourceType, namespace: str | None) -> None:
        if not resource.namespaced:
            return
        ns = self._objects[NAMESPACE_BUCKET].get(("", namespace or ""))
        if ns is None:
            raise errors.not_found("", "namespaces", namespace or "")
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{resource.plural}{"." + resource.group if resource.group else ""} "" is forbidden: unable to create new content in namespace {namespace} because it is being terminated',
                {
                    "kind": resource.plural,
                    "group": resource.group,
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {namespace} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def _check_kind(self, resource: ResourceType, body: Body) -> None:
        """A missing kind/apiVersion is taken from the URL (kopf posts events without them); a different one is a 400."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request is not a JSON object")
        body.setdefault("apiVersion", resource.api_version)
        body.setdefault("kind", resource.kind)
        served = {r.api_version for r in self.registry.all() if r.bucket == resource.bucket}
        if body["apiVersion"] not in served:
            raise errors.bad_request(
                f"the API version in the data ({body['apiVersion']}) does not match the expected API version ({resource.api_version})"
            )
        if body["kind"] != resource.kind:
            raise errors.bad_request(
                f"the kind in the data ({body['kind']}) does not match the expected kind ({resource.kind})"
            )

    def create(
        self,
        resource: ResourceType,
        namespace: str | None,
        body: Body,
        *,
        dry_run: bool = False,
        field_validation: str = "Warn",
    ) -> tuple[Body, list[str]]:
        body = copy.deepcopy(body)
        self._check_kind(resource, body)
        meta = body.setdefault("metadata", {})
        if resource.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise errors.bad_request("the server could not find the requested resource: a namespace is required")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        with self._lock:
            if not meta.get("name"):
                if meta.get("generateName"):
                    meta["name"] = meta["generateName"] + _generate_suffix()
                else:
                    raise errors.invalid(
                        resource.group,
                        resource.kind,
                        "",
                        [
                            Cause(
                                "FieldValueRequired",
                                "Required value: name or generateName is required",
                                "metadata.name",
                            )
                        ],
                    )
            name = meta["name"]
            name_causes = builtins.validate_name(resource, name)
            if name_causes:
                raise errors.invalid(resource.group, resource.kind, name, name_causes)
            self._check_namespace(resource, namespace)
            if self.registry.get(resource.group, resource.version, resource.plural) is None:
                raise errors.path_not_found(resource.plural)
            self._check_crd_not_terminating(resource)
            if self._key(resource, namespace, name) in self._bucket(resource):
                raise errors.already_exists(resource.group, resource.plural, name)
            for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation", "managedFields"):
                meta.pop(key, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            if resource.bucket == CRD_BUCKET:
                meta["finalizers"] = sorted({*(meta.get("finalizers") or []), CRD_CLEANUP_FINALIZER})
            new, warnings = self._admit(resource, body, None, subresource=None, field_validation=field_validation)
            if dry_run:
                new["metadata"]["resourceVersion"] = ""
                return self.present(resource, new), warnings
            stored = self._commit(resource, new, None, "ADDED")
            if resource.bucket == CRD_BUCKET:
                stored = self._establish_crd(resource, stored)
            self._run_controllers()
            return self.present(resource, stored), warnings

    def _check_crd_not_terminating(self, resource: ResourceType) -> None:
        if not resource.custom:
            return
        crd = self._objects[CRD_BUCKET].get(("", f"{resource.plural}.{resource.group}"))
        if crd is not None and crd["metadata"].get("deletionTimestamp"):
            raise errors.method_not_allowed("create not allowed while custom resource definition is terminating")

    def _establish_crd(self, resource: ResourceType, crd: Body) -> Body:
        """What the apiextensions controllers do right after a CRD is written: accept names, serve the versions."""
        new = copy.deepcopy(crd)
        spec = new["spec"]
        storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
        stored_versions = sorted({*(new.get("status") or {}).get("storedVersions", []), storage})
        conditions = [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now(),
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now(),
            },
        ]
        existing = (crd.get("status") or {}).get("conditions") or []
        if [(c.get("type"), c.get("status")) for c in existing] == [(c["type"], c["status"]) for c in conditions]:
            conditions = existing  # unchanged conditions keep their transition times
        new["status"] = {
            "acceptedNames": copy.deepcopy(spec["names"]),
            "conditions": conditions,
            "storedVersions": stored_versions,
        }
        self.registry.register_crd(new)
        if new.get("status") == crd.get("status"):
            return crd
        return self._commit(resource, new, crd, "MODIFIED")

    def update(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        body: Body,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Warn",
    ) -> tuple[Body, list[str]]:
        body = copy.deepcopy(body)
        self._check_kind(resource, body)
        meta = body.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        if resource.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        with self._lock:
            old = self._find(resource, namespace, name)
            rv = meta.get("resourceVersion")
            if not rv and resource.custom:
                raise errors.invalid(
                    resource.group,
                    resource.kind,
                    name,
                    [
                        Cause(
                            "FieldValueInvalid",
                            "Invalid value: 0x0: must be specified for an update",
                            "metadata.resourceVersion",
                        )
                    ],
                )
            return self._write(
                resource, old, body, subresource=subresource, dry_run=dry_run, field_validation=field_validation
            )

    def _write(
        self,
        resource: ResourceType,
        old: Body,
        body: Body,
        *,
        subresource: str | None,
        dry_run: bool,
        field_validation: str,
    ) -> tuple[Body, list[str]]:
        meta = body.setdefault("metadata", {})
        name = old["metadata"]["name"]
        if subresource not in (None, "status") or (subresource == "status" and not resource.status_subresource):
            raise errors.path_not_found(f"{resource.plural}/{subresource}")
        rv = meta.get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.group, resource.plural, name)
        uid = meta.get("uid")
        if uid and uid != old["metadata"]["uid"]:
            raise errors.conflict(
                resource.group,
                resource.plural,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {old['metadata']['uid']}",
            )
        if meta.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        if resource.namespaced:
            meta["namespace"] = old["metadata"]["namespace"]
        meta.pop("managedFields", None)
        new, warnings = self._admit(resource, body, old, subresource=subresource, field_validation=field_validation)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:  # a no-op write: the real server stores nothing, emits nothing, keeps the version
            return self.present(resource, old), warnings
        if dry_run:
            return self.present(resource, new), warnings
        stored = self._commit(resource, new, old, "MODIFIED")
        if resource.bucket == CRD_BUCKET:
            stored = self._establish_crd(resource, stored)
        if (
            stored["metadata"].get("deletionTimestamp")
            and not stored["metadata"].get("finalizers")
            and not self._spec_finalizers(resource, stored)
        ):
            self._commit(resource, None, stored, "DELETED")
            if resource.bucket == CRD_BUCKET:
                self.registry.unregister_crd(name)
        self._run_controllers()
        return self.present(resource, stored), warnings

    def patch(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_manager: str | None = None,
        field_validation: str = "Warn",
    ) -> tuple[Body, list[str]]:
        content_type = content_type.split(";")[0].strip()
        accepted = [JSON_PATCH, MERGE_PATCH, APPLY_PATCH] if resource.custom else list(PATCH_TYPES)
        if content_type not in accepted:
            raise errors.unsupported_media_type(content_type, accepted)
        if content_type == APPLY_PATCH:
            if not field_manager:
                raise errors.bad_request("PATCH requests with apply content type must specify fieldManager")
            if isinstance(patch, str | bytes):
                patch = yaml.safe_load(patch)
        with self._lock:
            try:
                old = self._find(resource, namespace, name)
            except ApiError:
                if content_type != APPLY_PATCH:
                    raise
                return self.create(resource, namespace, patch, dry_run=dry_run, field_validation=field_validation)
            current = self.present(resource, old)
            try:
                if content_type == JSON_PATCH:
                    patched = patching.json_patch(current, patch)
                elif content_type == MERGE_PATCH or (content_type == APPLY_PATCH and resource.custom):
                    patched = patching.merge_patch(current, patch)
                else:
                    patched = patching.strategic_merge(current, patch)
            except patching.PatchError as error:
                raise ApiError(422, "Invalid", str(error)) from None
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch did not produce an object")
            if (patched.get("metadata") or {}).get("resourceVersion") is None:
                patched.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self._write(
                resource, old, patched, subresource=subresource, dry_run=dry_run, field_validation=field_validation
            )

    # --- deletion -------------------------------------------------------------------------------------------------

    @staticmethod
    def _spec_finalizers(resource: ResourceType, obj: Body) -> list[str]:
        return list((obj.get("spec") or {}).get("finalizers") or []) if resource.bucket == NAMESPACE_BUCKET else []

    def delete(self, resource: ResourceType, namespace: str | None, name: str, options: Body | None = None) -> Body:
        options = options or {}
        with self._lock:
            obj = self._find(resource, namespace, name)
            preconditions = options.get("preconditions") or {}
            if preconditions.get("uid") and preconditions["uid"] != obj["metadata"]["uid"]:
                raise errors.conflict(
                    resource.group,
                    resource.plural,
                    name,
                    f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {obj['metadata']['uid']}",
                )
            if (
                preconditions.get("resourceVersion")
                and preconditions["resourceVersion"] != obj["metadata"]["resourceVersion"]
            ):
                raise errors.conflict(
                    resource.group,
                    resource.plural,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {preconditions['resourceVersion']}, ResourceVersion in object meta: {obj['metadata']['resourceVersion']}",
                )
            if "All" in (options.get("dryRun") or []):
                return self.present(resource, obj)
            if obj["metadata"].get("deletionTimestamp"):
                return self.present(resource, obj)
            policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else "Background")
            if policy not in ("Background", "Foreground", "Orphan"):
                raise errors.invalid(
                    resource.group,
                    resource.kind,
                    name,
                    [
                        Cause(
                            "FieldValueNotSupported",
                            f'Unsupported value: "{policy}": supported values: "Background", "Foreground", "Orphan"',
                            "propagationPolicy",
                        )
                    ],
                )
            finalizers = list(obj["metadata"].get("finalizers") or [])
            if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            if finalizers or self._spec_finalizers(resource, obj):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                new["metadata"]["finalizers"] = finalizers
                if resource.bucket == NAMESPACE_BUCKET:
                    new.setdefault("status", {})["phase"] = "Terminating"
                stored = self._commit(resource, new, obj, "MODIFIED")
                self._run_controllers()
                return self.present(resource, stored)
            stored = self._commit(resource, None, obj, "DELETED")
            self._run_controllers()
            if resource.return_deleted_object:
                return self.present(resource, stored)
            details = {"name": name, "kind": resource.plural, "uid": obj["metadata"]["uid"]}
            if resource.group:
                details["group"] = resource.group
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def delete_collection(
        self,
        resource: ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None,
        field_selector: str | None,
        options: Body | None,
    ) -> Body:
        with self._lock:
            listed = self.list_objects(
                resource, namespace, label_selector=label_selector, field_selector=field_selector
            )
            items = []
            for item in listed["items"]:
                meta = item["metadata"]
                try:
                    items.append(self.delete(resource, meta.get("namespace"), meta["name"], options))
                except ApiError as error:
                    if error.code != 404:
                        raise
            return {**listed, "items": items}

    # --- the API server's own controllers -------------------------------------------------------------------------

    def _run_controllers(self) -> None:
        """Garbage collector, namespace and CRD finalization, run to a fixed point after each write (synchronously).

        Work comes from a queue filled by `_commit`: objects with owners or a deletionTimestamp, dependents of a
        deleted object, the namespace / CRD of a deleted object. The real collector is asynchronous; here the
        cascade has happened by the time the triggering request returns.
        """
        if self._in_controllers:
            return
        self._in_controllers = True
        try:
            while self._gc_queue:
                bucket, key = self._gc_queue.pop()
                obj = self._objects[bucket].get(key)
                resource = self.registry.preferred(*bucket)
                if obj is not None and resource is not None:
                    self._reconcile(resource, obj)
        finally:
            self._in_controllers = False

    def _reconcile(self, resource: ResourceType, obj: Body) -> None:
        meta = obj["metadata"]
        owners = meta.get("ownerReferences") or []
        if owners and not meta.get("deletionTimestamp") and not any(o.get("uid") in self._uids for o in owners):
            self.delete(resource, meta.get("namespace"), meta["name"])  # every owner is gone
            return
        if not meta.get("deletionTimestamp"):
            return
        if resource.bucket == NAMESPACE_BUCKET:
            self._finalize_namespace(resource, obj)
        elif resource.bucket == CRD_BUCKET:
            self._finalize_crd(resource, obj)
        finalizers = meta.get("finalizers") or []
        dependents = self._live_dependents(meta["uid"])
        if "orphan" in finalizers:
            for dep_resource, dep in dependents:
                new = copy.deepcopy(dep)
                kept = [r for r in dep["metadata"]["ownerReferences"] if r.get("uid") != meta["uid"]]
                new["metadata"]["ownerReferences"] = kept
                if not kept:
                    del new["metadata"]["ownerReferences"]
                self._commit(dep_resource, new, dep, "MODIFIED")
            self._remove_finalizer(resource, obj, "orphan")
        elif "foregroundDeletion" in finalizers:
            for dep_resource, dep in dependents:
                if not dep["metadata"].get("deletionTimestamp"):
                    dep_meta = dep["metadata"]
                    self.delete(
                        dep_resource, dep_meta.get("namespace"), dep_meta["name"], {"propagationPolicy": "Foreground"}
                    )
            current = self._bucket(resource).get((meta.get("namespace", ""), meta["name"]))
            if current is not None and not self._live_dependents(meta["uid"]):
                self._remove_finalizer(resource, current, "foregroundDeletion")

    def _live_dependents(self, uid: str) -> list[tuple[ResourceType, Body]]:
        found = []
        for bucket, key in sorted(self._dependents.get(uid, ())):
            obj = self._objects[bucket].get(key)
            resource = self.registry.preferred(*bucket)
            if obj is not None and resource is not None:
                found.append((resource, obj))
        return found

    def _remove_finalizer(self, resource: ResourceType, obj: Body, finalizer: str) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers", []) if f != finalizer]
        stored = self._commit(resource, new, obj, "MODIFIED")
        if not stored["metadata"]["finalizers"] and not self._spec_finalizers(resource, stored):
            self._commit(resource, None, stored, "DELETED")

    def _finalize_namespace(self, namespaces: ResourceType, ns: Body) -> None:
        """The namespace controller: delete everything inside, then drop the `kubernetes` finalizer."""
        name = ns["metadata"]["name"]
        left = 0
        for bucket, objects in list(self._objects.items()):
            resource = self.registry.preferred(*bucket)
            if resource is None or not resource.namespaced:
                continue
            for (obj_ns, obj_name), obj in list(objects.items()):
                if obj_ns != name:
                    continue
                if not obj["metadata"].get("deletionTimestamp"):
                    self.delete(resource, name, obj_name)
                left += 1 if (obj_ns, obj_name) in self._objects[bucket] else 0
        current = self._objects[NAMESPACE_BUCKET].get(("", name))
        if left == 0 and current is not None and (current.get("spec") or {}).get("finalizers"):
            new = copy.deepcopy(current)
            new["spec"]["finalizers"] = []
            stored = self._commit(namespaces, new, current, "MODIFIED")
            if not stored["metadata"].get("finalizers"):
                self._commit(namespaces, None, stored, "DELETED")

    def _finalize_crd(self, crds: ResourceType, crd: Body) -> None:
        """The CRD finalizer: delete every instance (their finalizers still hold), then stop serving the resource."""
        if CRD_CLEANUP_FINALIZER not in crd["metadata"].get("finalizers", []):
            return
        bucket = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        instances = self.registry.preferred(*bucket)
        if instances is not None:
            for obj in list(self._objects[bucket].values()):
                if not obj["metadata"].get("deletionTimestamp"):
                    self.delete(instances, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        current = self._objects[CRD_BUCKET].get(("", crd["metadata"]["name"]))
        if not self._objects[bucket] and current is not None:
            self._remove_finalizer(crds, current, CRD_CLEANUP_FINALIZER)
            if ("", crd["metadata"]["name"]) not in self._objects[CRD_BUCKET]:
                self.registry.unregister_crd(crd["metadata"]["name"])

    # --- direct access for simulation knobs (no HTTP, not counted as API writes) ----------------------------------

    def write_status(self, resource: ResourceType, namespace: str | None, name: str, status: Body) -> Body:
        """Replace an object's status as a controller would (through the status subresource semantics)."""
        with self._lock:
            old = self._find(resource, namespace, name)
            body = copy.deepcopy(old)
            body["status"] = status
            body["apiVersion"], body["kind"] = resource.api_version, resource.kind
            return self._write(
                resource,
                old,
                body,
                subresource="status" if resource.status_subresource else None,
                dry_run=False,
                field_validation="Warn",
            )[0]

    def dependents(self, owner_uid: str, resource: ResourceType) -> list[Body]:
        """Objects of `resource` whose ownerReferences name `owner_uid` (via the collector's index)."""
        with self._lock:
            return [self.present(r, obj) for r, obj in self._live_dependents(owner_uid) if r.bucket == resource.bucket]

    def changed_since(self, resource: ResourceType, cursor: int) -> tuple[int, set[Key] | None]:
        """Keys of `resource` written after `cursor` (None: history compacted, look at everything)."""
        with self._lock:
            if cursor < self._compacted:
                return self._rv, None
            keys = {
                (e.object["metadata"].get("namespace", ""), e.object["metadata"]["name"])
                for e in self._iter_after(cursor)
                if e.bucket == resource.bucket
            }
            return self._rv, keys

    def objects(self, resource: ResourceType, namespace: str | None = None) -> list[Body]:
        with self._lock:
            return [
                self.present(resource, obj)
                for (ns, _), obj in sorted(self._bucket(resource).items())
                if namespace is None or ns == namespace
            ]
