"""What the API server does with a custom resource body before storing it, driven by the CRD's openAPIV3Schema.

Order as on the real server: drop nulls of non-nullable fields, prune unknown fields (kept under
`x-kubernetes-preserve-unknown-fields`), apply `default`s, then validate (types, enums, bounds, patterns, required,
list-type set/map uniqueness, allOf/anyOf/oneOf/not) and evaluate `x-kubernetes-validations` CEL rules with cel-python.
Validation ratchets like Kubernetes >= 1.30: on update, a subtree equal to the old one is not re-validated.
CEL extension functions of Kubernetes are emulated only for the few string helpers listed in `CEL_EXTENSIONS`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
from collections.abc import Callable
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from tests.support.k8s.errors import Cause

_MISSING: Any = object()
ROOT_KEYS = ("apiVersion", "kind", "metadata")


def _cel_string(fn: Callable[..., str]) -> Callable[..., celtypes.StringType]:
    return lambda *args: celtypes.StringType(fn(*[a if not isinstance(a, str) else str(a) for a in args]))


CEL_EXTENSIONS: dict[str, Callable[..., Any]] = {
    "lowerAscii": _cel_string(lambda s: s.lower()),
    "upperAscii": _cel_string(lambda s: s.upper()),
    "trim": _cel_string(lambda s: s.strip()),
    "replace": _cel_string(lambda s, old, new: s.replace(old, new)),
    "indexOf": lambda s, sub: celtypes.IntType(str(s).find(str(sub))),
    "lastIndexOf": lambda s, sub: celtypes.IntType(str(s).rfind(str(sub))),
    "split": lambda s, sep: celtypes.ListType([celtypes.StringType(p) for p in str(s).split(str(sep))]),
    "join": lambda items, sep="": celtypes.StringType(str(sep).join(str(i) for i in items)),
}

_ENVIRONMENT = celpy.Environment()


@functools.lru_cache(maxsize=512)
def _program(rule: str) -> Any:
    return _ENVIRONMENT.program(_ENVIRONMENT.compile(rule), functions=CEL_EXTENSIONS)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return f'"{_type_name(value)}"'
    return str(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- pruning and defaulting -------------------------------------------------------------------------------------


def prune(value: Any, schema: dict[str, Any], path: str = "", *, root: bool = False) -> tuple[Any, list[str]]:
    """Return the value without unknown fields and non-nullable nulls, plus the pruned paths (for warnings)."""
    pruned: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        embedded = schema.get("x-kubernetes-embedded-resource", False)
        result: dict[str, Any] = {}
        for key, item in value.items():
            if (root or embedded) and key in ROOT_KEYS:
                result[key] = item
                continue
            child = (properties or {}).get(key)
            if child is None and isinstance(additional, dict):
                child = additional
            if child is None:
                if preserve or additional is True:
                    result[key] = item
                else:
                    pruned.append(_join(path, key))
                continue
            if item is None and not child.get("nullable", False):
                continue
            result[key], more = prune(item, child, _join(path, key))
            pruned.extend(more)
        return result, pruned
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = []
        for index, item in enumerate(value):
            new_item, more = prune(item, schema["items"], f"{path}[{index}]")
            items.append(new_item)
            pruned.extend(more)
        return items, pruned
    return value, pruned


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        result = dict(value)
        for key, child in (schema.get("properties") or {}).items():
            if key not in result and "default" in child:
                result[key] = copy.deepcopy(child["default"])
            if key in result:
                result[key] = apply_defaults(result[key], child)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in result:
                if key not in (schema.get("properties") or {}):
                    result[key] = apply_defaults(result[key], additional)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


# --- validation -------------------------------------------------------------------------------------------------


def _check_type(value: Any, schema: dict[str, Any], path: str) -> Cause | None:
    expected = schema.get("type")
    if value is None:
        return (
            None
            if schema.get("nullable")
            else Cause(
                "FieldValueTypeInvalid",
                f'Invalid value: "null": {path} in body must be of type {expected}: "null"',
                path,
            )
        )
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, int | str) and not isinstance(value, bool)
        expected = "integer or string"
    elif expected is None:
        return None
    else:
        ok = {
            "object": isinstance(value, dict),
            "array": isinstance(value, list),
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
        }.get(expected, True)
    if ok:
        return None
    actual = _type_name(value)
    return Cause(
        "FieldValueTypeInvalid",
        f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"',
        path,
    )


def _check_bounds(value: Any, schema: dict[str, Any], path: str) -> list[Cause]:
    causes: list[Cause] = []

    def bad(reason: str, message: str) -> None:
        causes.append(Cause(reason, message, path))

    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_show(v) for v in schema["enum"])
        bad("FieldValueNotSupported", f"Unsupported value: {_show(value)}: supported values: {supported}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") and value == low):
                op = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
                bad("FieldValueInvalid", f"Invalid value: {value}: {path} in body should be {op} {low}")
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") and value == high):
                op = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
                bad("FieldValueInvalid", f"Invalid value: {value}: {path} in body should be {op} {high}")
        if "multipleOf" in schema and value % schema["multipleOf"]:
            bad(
                "FieldValueInvalid",
                f"Invalid value: {value}: {path} in body should be a multiple of {schema['multipleOf']}",
            )
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            bad(
                "FieldValueInvalid",
                f'Invalid value: "{value}": {path} in body should be at least {schema["minLength"]} chars long',
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            bad("FieldValueTooLong", f"Too long: may not be more than {schema['maxLength']} bytes")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            bad("FieldValueInvalid", f"Invalid value: \"{value}\": {path} in body should match '{schema['pattern']}'")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            bad(
                "FieldValueInvalid",
                f"Invalid value: {len(value)}: {path} in body should have at least {schema['minItems']} items",
            )
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            bad("FieldValueTooMany", f"Too many: {len(value)}: must have at most {schema['maxItems']} items")
        causes.extend(_check_list_type(value, schema, path))
    if isinstance(value, dict):
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            bad(
                "FieldValueInvalid",
                f"Invalid value: {len(value)}: {path} in body should have at least {schema['minProperties']} properties",
            )
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            bad("FieldValueTooMany", f"Too many: {len(value)}: must have at most {schema['maxProperties']} items")
    return causes


def _check_list_type(value: list[Any], schema: dict[str, Any], path: str) -> list[Cause]:
    list_type = schema.get("x-kubernetes-list-type")
    causes: list[Cause] = []
    seen: list[Any] = []
    for index, item in enumerate(value):
        if list_type == "set":
            key = item
        elif list_type == "map" and isinstance(item, dict):
            key = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys", [])}
        else:
            return []
        if key in seen:
            causes.append(
                Cause(
                    "FieldValueDuplicate",
                    f"Duplicate value: {_show(key) if list_type == 'set' else key!r}",
                    f"{path}[{index}]",
                )
            )
        seen.append(key)
    return causes


def to_cel(value: Any, schema: dict[str, Any]) -> Any:
    """A value as Kubernetes hands it to CEL: typed by the schema (a `number` field holding 1 is the double 1.0)."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        converted = {
            celtypes.StringType(k): to_cel(v, properties.get(k, additional if isinstance(additional, dict) else {}))
            for k, v in value.items()
        }
        return celtypes.MapType(converted)
    if isinstance(value, list):
        items: dict[str, Any] = schema["items"] if isinstance(schema.get("items"), dict) else {}
        return celtypes.ListType([to_cel(item, items) for item in value])
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return celtypes.DoubleType(float(value))
    return json_to_cel(value)


def _is_transition_rule(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def _evaluate_rules(value: Any, old: Any, schema: dict[str, Any], path: str) -> list[Cause]:
    causes: list[Cause] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        activation: dict[str, Any] = {"self": to_cel(value, schema)}
        if _is_transition_rule(text):
            if old is _MISSING:
                continue  # transition rules only run on update, when there is an old value
            activation["oldSelf"] = to_cel(old, schema)
        field = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
        try:
            result = _program(text).evaluate(activation)
            error: Exception | None = result if isinstance(result, CELEvalError) else None
        except (CELEvalError, CELParseError, TypeError, ValueError) as failure:
            result, error = None, failure
        if error is not None:
            causes.append(
                Cause(
                    "FieldValueInvalid", f'Invalid value: "{_type_name(value)}": rule evaluation error: {error}', field
                )
            )
            continue
        if bool(result):
            continue
        message = rule.get("message") or f"failed rule: {text}"
        if rule.get("messageExpression"):
            with contextlib.suppress(Exception):  # the real server falls back to `message` when it fails
                message = str(_program(rule["messageExpression"]).evaluate(activation))
        reason = rule.get("reason", "FieldValueInvalid")
        prefix = {
            "FieldValueRequired": "Required value",
            "FieldValueForbidden": "Forbidden",
            "FieldValueDuplicate": f'Duplicate value: "{_type_name(value)}"',
        }.get(reason, f'Invalid value: "{_type_name(value)}"')
        causes.append(Cause(reason, f"{prefix}: {message}", field))
    return causes


def validate(
    value: Any, schema: dict[str, Any], path: str = "", old: Any = _MISSING, *, root: bool = False
) -> list[Cause]:
    """Causes for everything wrong with `value`; `old` is the stored value on update (ratcheting, oldSelf)."""
    if old is not _MISSING and value == old and not root:
        return []
    type_error = _check_type(value, schema, path or "<root>")
    if type_error:
        return [type_error]
    if value is None:
        return []
    causes = _check_bounds(value, schema, path)
    for combinator in ("allOf", "anyOf", "oneOf", "not"):
        if combinator in schema:
            causes.extend(_check_combinator(combinator, value, schema[combinator], path))
    if isinstance(value, dict):
        for key in schema.get("required") or []:
            if key not in value:
                causes.append(Cause("FieldValueRequired", "Required value", _join(path, key)))
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        old_map = old if isinstance(old, dict) else {}
        for key, item in value.items():
            if root and key in ROOT_KEYS:
                continue
            child = properties.get(key, additional if isinstance(additional, dict) else None)
            if child is not None:
                causes.extend(validate(item, child, _join(path, key), old_map.get(key, _MISSING)))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        old_items = old if isinstance(old, list) else []
        for index, item in enumerate(value):
            old_item = _correlated_item(item, index, old_items, schema)
            causes.extend(validate(item, schema["items"], f"{path}[{index}]", old_item))
    if not causes:  # the real server skips CEL where the schema already failed (cost and clarity)
        causes.extend(_evaluate_rules(value, old, schema, path))
    return causes


def _correlated_item(item: Any, index: int, old_items: list[Any], schema: dict[str, Any]) -> Any:
    """Old value of a list item: by map keys for list-type map, never for atomic lists (as for transition rules)."""
    if schema.get("x-kubernetes-list-type") == "map" and isinstance(item, dict):
        keys = schema.get("x-kubernetes-list-map-keys", [])
        for old in old_items:
            if isinstance(old, dict) and all(old.get(k) == item.get(k) for k in keys):
                return old
    return _MISSING


def _check_combinator(kind: str, value: Any, sub: Any, path: str) -> list[Cause]:
    if kind == "not":
        return (
            []
            if validate(value, sub, path)
            else [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_show(value)}: {path} in body must not validate the schema (not)",
                    path,
                )
            ]
        )
    results = [validate(value, schema, path) for schema in sub]
    if kind == "allOf":
        return [cause for result in results for cause in result]
    passing = sum(1 for result in results if not result)
    if kind == "anyOf" and passing == 0:
        return [
            Cause(
                "FieldValueInvalid",
                f"Invalid value: {_show(value)}: {path} in body must validate at least one schema (anyOf)",
                path,
            )
        ]
    if kind == "oneOf" and passing != 1:
        return [
            Cause(
                "FieldValueInvalid",
                f"Invalid value: {_show(value)}: {path} in body must validate one and only one schema (oneOf)",
                path,
            )
        ]
    return []


def admit(
    body: dict[str, Any], schema: dict[str, Any] | None, old: dict[str, Any] | None
) -> tuple[dict[str, Any], list[Cause], list[str]]:
    """Prune, default and validate a whole custom resource: (stored body, causes, warnings about pruned fields)."""
    if not schema:
        return body, [], []
    pruned_body, pruned = prune(body, schema, root=True)
    defaulted = apply_defaults(pruned_body, schema)
    causes = validate(defaulted, schema, "", old if old is not None else _MISSING, root=True)
    name_schema = ((schema.get("properties") or {}).get("metadata") or {}).get("properties", {}).get("name")
    name = (defaulted.get("metadata") or {}).get("name")
    if isinstance(name_schema, dict) and isinstance(name, str) and old is None:
        causes.extend(validate(name, name_schema, "metadata.name"))  # the only metadata constraint CRDs may set
    warnings = [f'unknown field "{path}"' for path in pruned]
    return defaulted, causes, warnings


def is_structural(schema: dict[str, Any]) -> list[str]:
    """Minimal structural-schema check for CRD creation: every node with properties/items declares a type."""
    problems: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if (
            ("properties" in node or "items" in node)
            and "type" not in node
            and not node.get("x-kubernetes-int-or-string")
        ):
            problems.append(f"{path}.type: Required value: must not be empty for specified object fields")
        for key, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.properties[{key}]")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}.items")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.additionalProperties")
        for rule in node.get("x-kubernetes-validations") or []:
            try:
                _program(rule["rule"])
            except Exception as error:
                problems.append(f"{path}.x-kubernetes-validations: Invalid value: compilation failed: {error}")

    walk(schema, "spec.validation.openAPIV3Schema")
    return problems
