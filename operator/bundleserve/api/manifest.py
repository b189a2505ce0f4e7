"""Load Endpoint manifests from YAML files with readable, located errors (used by local mode, render and the router)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bundleserve.api.endpoint import Endpoint


class ManifestError(ValueError):
    """A manifest file could not be read or is not a valid Endpoint; the message names the file and the field."""


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, `field.path: message`, in the CRD's camelCase field names."""
    lines = []
    for item in error.errors():
        location = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".")
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{location}: {message}" if location else message)
    return "; ".join(lines)


def parse_endpoint(document: Any, *, source: str = "<document>") -> Endpoint:
    if not isinstance(document, dict):
        raise ManifestError(f"{source}: expected a mapping (an Endpoint document), got {type(document).__name__}")
    if document.get("kind") != "Endpoint":
        raise ManifestError(f"{source}: kind must be Endpoint, got {document.get('kind')!r}")
    try:
        return Endpoint.model_validate(document)
    except ValidationError as error:
        raise ManifestError(f"{source}: invalid Endpoint: {format_validation_error(error)}") from None


def load_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ManifestError(f"{path}: cannot read: {error.strerror}") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not valid YAML: {error}") from None


def load_endpoints(paths: Iterable[Path]) -> list[tuple[Path, Endpoint]]:
    """Every Endpoint in the given files (multi-document files allowed; other kinds are an error), in order."""
    found: list[tuple[Path, Endpoint]] = []
    for path in paths:
        for index, document in enumerate(load_documents(path)):
            found.append((path, parse_endpoint(document, source=f"{path}#{index}")))
    names = [endpoint.name for _, endpoint in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ManifestError(f"duplicate Endpoint names: {', '.join(duplicates)}")
    return found
