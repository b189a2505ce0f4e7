"""Resolve a bundle's `module:callable` names into Python objects, once, before the runtime serves anything.

Problems are configuration errors with a one-line reason (the CLI prints it and exits non-zero), not tracebacks.
The streaming callable is, in order: `--stream mod:fn` when given; the entrypoint itself when it is a (sync or async)
generator function; else a callable named `stream` in the entrypoint's module; else none (the stream route says so).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundleserve.bundle.calling import batch_signature_problem
from bundleserve.bundle.errors import describe

TARGET = re.compile(r"^(?P<module>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$")
STREAM_SIBLING = "stream"


class BundleConfigError(Exception):
    """The bundle cannot be served as configured; the message is one line meant for a human."""


@dataclass(frozen=True)
class Target:
    """A resolved callable and the `module:callable` name it came from (used in messages and logs)."""

    name: str
    function: Callable[..., Any]


@dataclass(frozen=True)
class BundleSpec:
    predict: Target
    stream: Target | None
    load: Target | None
    #: With `--batch-entrypoint`: the callable that takes a list of calls (`predict` stays the per-call contract).
    batch: Target | None = None


def split_target(name: str) -> tuple[str, str]:
    match = TARGET.match(name)
    if match is None:
        raise BundleConfigError(f"{name!r} is not of the form module:callable (e.g. my_model:predict)")
    return match["module"], match["attr"]


def import_module(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name == error.name or module_name.startswith(f"{error.name}.")):
            raise BundleConfigError(
                f"cannot import module {module_name!r}: no module named {error.name!r} (is its directory on --path?)"
            ) from None
        raise BundleConfigError(f"cannot import module {module_name!r}: {describe(error)}") from None
    except (Exception, SystemExit) as error:  # the user's module raised (or exited) while importing
        raise BundleConfigError(f"cannot import module {module_name!r}: {describe(error)}") from None


def import_target(name: str) -> Target:
    module_name, attr = split_target(name)
    module = import_module(module_name)
    function = getattr(module, attr, None)
    if function is None:
        raise BundleConfigError(f"module {module_name!r} has no attribute {attr!r} (from {name!r})")
    if not callable(function):
        raise BundleConfigError(f"{name!r} is not callable (it is a {type(function).__name__})")
    return Target(name, function)


def is_generator_function(function: Callable[..., Any]) -> bool:
    return inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)


def find_stream(predict: Target) -> Target | None:
    """The streaming callable implied by the entrypoint (see the module docstring)."""
    if is_generator_function(predict.function):
        return predict
    module_name, attr = split_target(predict.name)
    if attr == STREAM_SIBLING:
        return None
    sibling = getattr(sys.modules[module_name], STREAM_SIBLING, None)
    return Target(f"{module_name}:{STREAM_SIBLING}", sibling) if callable(sibling) else None


def add_paths(paths: Iterable[str | Path]) -> None:
    """Put directories first on sys.path, in the given order, so the bundle's modules shadow installed ones."""
    for path in reversed([str(Path(p).resolve()) for p in paths]):
        if not Path(path).is_dir():
            raise BundleConfigError(f"--path {path!r} is not a directory")
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def resolve_bundle(
    entrypoint: str,
    *,
    load: str | None = None,
    stream: str | None = None,
    batch: str | None = None,
    paths: Iterable[str | Path] = (),
) -> BundleSpec:
    """Import everything the bundle names; raise `BundleConfigError` with a one-line reason on the first problem."""
    add_paths(paths)
    predict = import_target(entrypoint)
    batch_target = import_target(batch) if batch else None
    if batch_target is not None:
        problem = batch_signature_problem(batch_target.function, with_model=load is not None)
        if problem is not None:
            raise BundleConfigError(f"--batch-entrypoint {batch!r}: {problem}")
    return BundleSpec(
        predict=predict,
        stream=import_target(stream) if stream else find_stream(predict),
        load=import_target(load) if load else None,
        batch=batch_target,
    )
