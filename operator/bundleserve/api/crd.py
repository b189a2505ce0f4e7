"""Generate the Endpoint CustomResourceDefinition from the pydantic models, so the CRD and the models cannot drift.

The OpenAPI v3 schema is built by walking the model fields (types, required, defaults, enums, patterns, bounds);
the cross-field rules of `bundleserve.api.rules` are attached at their scope as `x-kubernetes-validations`.
`python -m bundleserve.api.crd` prints the YAML that `make crds` commits as crds/endpoints.bundleserve.dev.yaml.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bundleserve.api import endpoint as api
from bundleserve.api.rules import RULES, rules_at

Schema = dict[str, Any]

#: How lists merge under server-side apply; lists not named here are atomic (replaced as a whole).
#: A `map` list rejects two items with the same key, a `set` list rejects repeated values.
LIST_TYPES: dict[tuple[type[BaseModel], str], Schema] = {
    (api.EndpointSpec, "modes"): {"x-kubernetes-list-type": "set"},
    (api.Bundle, "env"): {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    (api.EndpointStatus, "conditions"): {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
}

_READY = '.status.conditions[?(@.type=="Ready")]'
PRINTER_COLUMNS: list[Schema] = [
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason"},
    {"name": "Modes", "type": "string", "jsonPath": ".spec.modes"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "URL", "type": "string", "jsonPath": ".status.url"},
    {"name": "Traffic", "type": "string", "jsonPath": ".status.traffic"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": f"{_READY}.message", "priority": 1},
]


def _first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0] if text and text.strip() else None


def _one_line(text: str) -> str:
    """A field docstring wrapped over several source lines, as one line of text for `kubectl explain`."""
    return " ".join(text.split())


def _describe(description: str | None, default: Any) -> str | None:
    """The field's description with its default appended, so `kubectl explain` shows both (it prints no defaults)."""
    if description is None:
        return None
    text = _one_line(description)
    if default is None:
        return text
    shown = yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
    return f"{text.rstrip('.')}. Default: {shown}."


def _apply_constraints(schema: Schema, constraints: list[Any]) -> None:
    """Copy pydantic/annotated-types bounds onto the node; length bounds depend on the node's type."""
    length_keys = {"string": ("minLength", "maxLength"), "array": ("minItems", "maxItems")}
    low, high = length_keys.get(schema.get("type", "string"), ("minProperties", "maxProperties"))
    for item in constraints:
        if isinstance(item, annotated_types.Ge):
            schema["minimum"] = item.ge
        elif isinstance(item, annotated_types.Le):
            schema["maximum"] = item.le
        elif isinstance(item, annotated_types.Gt | annotated_types.Lt):
            raise TypeError(f"use ge/le bounds, exclusive bounds are not mapped: {item!r}")
        elif isinstance(item, annotated_types.MinLen):
            schema[low] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            schema[high] = item.max_length
        elif getattr(item, "pattern", None) is not None:
            schema["pattern"] = item.pattern
        elif isinstance(item, FieldInfo):
            _apply_constraints(schema, item.metadata)
            _apply_extras(schema, item)
            if item.description:  # an item or map value type's own description (the field's is set later)
                schema["description"] = _one_line(item.description)


def _apply_extras(schema: Schema, info: FieldInfo) -> None:
    """Honour `x-kubernetes-*` keys a model field declares in json_schema_extra (e.g. int-or-string)."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    for key, value in extra.items():
        if key.startswith("x-kubernetes-"):
            schema[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]


def type_schema(annotation: Any, *, defaults: bool) -> Schema:
    """The structural schema of one Python type annotation (Optional is dropped: absent and null mean unset)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        schema = type_schema(args[0], defaults=defaults)
        _apply_constraints(schema, list(args[1:]))
        return schema
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        if len(present) != 1:
            raise TypeError(f"only Optional unions are mapped to the CRD, got {annotation!r}")
        return type_schema(present[0], defaults=defaults)
    if origin is typing.Literal:
        if not all(isinstance(arg, str) for arg in args):
            raise TypeError(f"only string literals are mapped, got {annotation!r}")
        return {"type": "string", "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0], defaults=defaults)}
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"map keys must be strings, got {annotation!r}")
        return {"type": "object", "additionalProperties": type_schema(args[1], defaults=defaults)}
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return model_schema(annotation, defaults=defaults)
        if issubclass(annotation, enum.Enum):
            return {"type": "string", "enum": [member.value for member in annotation]}
        if issubclass(annotation, bool):
            return {"type": "boolean"}
        if issubclass(annotation, int):
            return {"type": "integer"}
        if issubclass(annotation, float):
            return {"type": "number"}
        if issubclass(annotation, str):
            return {"type": "string"}
    raise TypeError(f"no CRD mapping for {annotation!r}")


def _default_value(info: FieldInfo) -> Any:
    """The default the API server should fill in, or None when the field is left absent.

    Empty lists/maps and None stay absent (the models treat them like unset); a default sub-model becomes `{}` so the
    API server fills in its nested defaults, as pydantic does.
    """
    value = info.default
    if value is PydanticUndefined or value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    if isinstance(value, list | dict) and not value:
        return None
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _model_type(annotation: Any) -> type[BaseModel] | None:
    """The sub-model behind `Model` or `Model | None`, for its docstring."""
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_schema(model: type[BaseModel], name: str, info: FieldInfo, *, defaults: bool) -> Schema:
    schema = type_schema(info.annotation, defaults=defaults)
    _apply_constraints(schema, info.metadata)
    _apply_extras(schema, info)
    schema.update(LIST_TYPES.get((model, name), {}))
    if schema.get("type") == "array" and "x-kubernetes-list-type" not in schema:
        schema["x-kubernetes-list-type"] = "atomic"
    description = info.description
    model_type = _model_type(info.annotation)
    if description is None and model_type is not None:
        description = _first_line(model_type.__doc__)
    default = _default_value(info) if defaults else None
    # A sub-model's node carries its class docstring; the field's own description wins.
    schema.pop("description", None)
    described = _describe(description, default if not isinstance(default, dict) else None)
    if described:
        schema = {"description": described, **schema}
    if default is not None:
        schema["default"] = default
    return schema


def model_schema(model: type[BaseModel], *, defaults: bool) -> Schema:
    properties: Schema = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        properties[key] = field_schema(model, name, info, defaults=defaults)
        if info.is_required():
            required.append(key)
    schema: Schema = {"type": "object", "properties": properties}
    own_doc = model.__dict__.get("__doc__")
    if own_doc:  # items of a list of models show it; a field's node replaces it with the field's description
        schema = {"description": _first_line(own_doc), **schema}
    if required:
        schema["required"] = required
    return schema


def _attach_rules(schema: Schema, path: str = "") -> set[str]:
    """Place each rule of the shared table on the schema node named by its scope; returns the scopes used."""
    attached: set[str] = set()
    for key, child in schema.get("properties", {}).items():
        scope = f"{path}.{key}" if path else key
        attached |= _attach_rules(child, scope)
        rules = rules_at(scope)
        if rules:
            child["x-kubernetes-validations"] = rules
            attached.add(scope)
    return attached


def openapi_schema() -> Schema:
    """The openAPIV3Schema of the Endpoint resource (spec with defaults and CEL rules; status as the operator writes it)."""
    spec = model_schema(api.EndpointSpec, defaults=True)
    status = model_schema(api.EndpointStatus, defaults=False)
    name = api.ObjectMeta.model_fields["name"]
    metadata_name = type_schema(name.annotation, defaults=False)
    _apply_constraints(metadata_name, name.metadata)
    schema: Schema = {
        "description": _first_line(api.Endpoint.__doc__),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": f"Always {api.API_VERSION}.", "type": "string"},
            "kind": {"description": f"Always {api.KIND}.", "type": "string"},
            # Only type and restrictions of name/generateName are allowed here (not even a description): the API
            # server publishes metadata as the documented ObjectMeta.
            "metadata": {"type": "object", "properties": {"name": metadata_name}},
            "spec": {"description": "Desired state: what to serve and how.", **spec},
            "status": {"description": "Observed state, written by the operator.", **status},
        },
    }
    missing = {rule.scope for rule in RULES} - _attach_rules(schema)
    if missing:
        raise ValueError(f"rules scoped to fields the schema does not have: {sorted(missing)}")
    return schema


def build_crd() -> Schema:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of `endpoints.bundleserve.dev`."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": api.RESOURCE},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated by `make crds` (python -m bundleserve.api.crd) from bundleserve.api; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120, allow_unicode=True)


if __name__ == "__main__":
    print(render_crd_yaml(), end="")
