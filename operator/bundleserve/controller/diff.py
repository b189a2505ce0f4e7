"""Does a live child differ from what we want? Compare only what we set, so server-defaulted fields never cause writes.

Two signals, both needed:
- the desired-hash annotation we stamp on every child: it changes when our desired state changes, including fields we
  stopped setting (which a subset comparison cannot see);
- a subset comparison of desired vs live: it notices hand edits of fields we own (restored on the next reconcile).
Resource quantities compare by value ("0.5" and the server's canonical "500m", "1000" and "1k" are equal), and an
empty value we set ("", [], {}) equals an absent one: Go's `omitempty` drops it on the server, so a literal comparison
would rewrite the child on every pass.
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from bundleserve.controller.labels import DESIRED_HASH_ANNOTATION

Manifest = dict[str, Any]

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+)?$")
_SUFFIX = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
#: Fields the API server fills in that a full replace must carry over (kind -> paths under the object).
_PRESERVED: dict[str, tuple[tuple[str, ...], ...]] = {
    "Service": (("spec", "clusterIP"), ("spec", "clusterIPs"), ("spec", "ipFamilies"), ("spec", "ipFamilyPolicy")),
    "Deployment": (("spec", "replicas"),),  # only when we leave replicas to an autoscaler
}


def parse_quantity(value: str | int | float) -> Decimal | None:
    """The numeric value of a Kubernetes quantity ("500m", "2Gi", "1e3"), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if not match:
        return None
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation:
        return None
    if suffix and suffix[0] in "eE":
        return base * (Decimal(10) ** int(suffix[1:]))
    return base * _SUFFIX[suffix]


def _omitted(value: Any) -> bool:
    """A value the API server does not store (omitempty): absent on the live object means the same."""
    return value is None or value == "" or value == [] or value == {}


def _equal_scalars(desired: Any, live: Any, in_resources: bool) -> bool:
    if desired == live and type(desired) is type(live):
        return True
    if in_resources and isinstance(desired, str | int) and isinstance(live, str | int):
        a, b = parse_quantity(desired), parse_quantity(live)
        return a is not None and a == b
    return False


def covers(live: Any, desired: Any, *, in_resources: bool = False) -> bool:
    """True when every field of `desired` is present in `live` with the same value (lists: same length, items
    compared in order; dicts: extra live keys ignored)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(
            covers(live[key], value, in_resources=in_resources or key == "resources")
            if key in live
            else _omitted(value)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(
            covers(item_live, item, in_resources=in_resources) for item_live, item in zip(live, desired, strict=True)
        )
    return _equal_scalars(desired, live, in_resources)


def desired_hash(manifest: Manifest) -> str | None:
    value = manifest.get("metadata", {}).get("annotations", {}).get(DESIRED_HASH_ANNOTATION)
    return value if isinstance(value, str) else None


def needs_write(desired: Manifest, live: Manifest) -> bool:
    if desired_hash(desired) != desired_hash(live):
        return True
    meta_d, meta_l = desired["metadata"], live.get("metadata", {})
    for key in ("labels", "annotations", "ownerReferences"):
        if key in meta_d and not covers(meta_l.get(key), meta_d[key]):
            return True
    body_d = {k: v for k, v in desired.items() if k not in ("metadata", "status", "apiVersion", "kind")}
    body_l = {k: v for k, v in live.items() if k not in ("metadata", "status", "apiVersion", "kind")}
    return not covers(body_l, body_d)


def _dig(obj: Manifest, path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _put(obj: Manifest, path: tuple[str, ...], value: Any) -> None:
    node = obj
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def replacement(desired: Manifest, live: Manifest) -> Manifest:
    """The full object to PUT over `live`: our fields replace theirs (fields we dropped disappear), while metadata
    others added (labels, annotations, owners, finalizers) and server-allocated fields are kept."""
    body = copy.deepcopy(desired)
    meta = body["metadata"]
    live_meta = live.get("metadata", {})
    meta["resourceVersion"] = live_meta.get("resourceVersion")
    for key in ("labels", "annotations"):
        meta[key] = {**live_meta.get(key, {}), **meta.get(key, {})}
    ours = {ref.get("uid") for ref in meta.get("ownerReferences", [])}
    others = [ref for ref in live_meta.get("ownerReferences", []) if ref.get("uid") not in ours]
    if others or "ownerReferences" in meta:
        meta["ownerReferences"] = [*others, *meta.get("ownerReferences", [])]
    if live_meta.get("finalizers"):
        meta["finalizers"] = live_meta["finalizers"]
    for path in _PRESERVED.get(str(desired.get("kind")), ()):
        present_in_desired, _ = _dig(body, path)
        present_in_live, value = _dig(live, path)
        if not present_in_desired and present_in_live:
            _put(body, path, value)
    return body
