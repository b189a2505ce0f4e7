"""Resolving a bundle's module:callable names (bundleserve.bundle.loader)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bundleserve.bundle.loader import BundleConfigError, import_target, resolve_bundle, split_target


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a uniquely named module into a directory on sys.path; forget it afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    created: list[str] = []

    def make(source: str) -> str:
        name = f"bundle_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(source)
        created.append(name)
        return name

    sys.path.insert(0, str(tmp_path))
    yield make
    for name in created:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("bad", ["module", "module:", ":fn", "a b:fn", "module:fn.attr", "mod:1fn"])
def test_split_target_rejects_malformed_names(bad: str) -> None:
    with pytest.raises(BundleConfigError, match="module:callable"):
        split_target(bad)


def test_split_target_accepts_dotted_modules() -> None:
    assert split_target("pkg.sub.model:predict") == ("pkg.sub.model", "predict")


def test_an_unimportable_module_names_itself_and_the_fix() -> None:
    with pytest.raises(BundleConfigError) as caught:
        import_target("no_such_bundle_module:predict")
    assert str(caught.value) == (
        "cannot import module 'no_such_bundle_module': no module named 'no_such_bundle_module' "
        "(is its directory on --path?)"
    )


def test_a_missing_dependency_of_the_module_is_named(make_module: Callable[[str], str]) -> None:
    name = make_module("import dependency_that_is_not_installed\n")
    with pytest.raises(
        BundleConfigError, match="ModuleNotFoundError: No module named 'dependency_that_is_not_installed'"
    ):
        import_target(f"{name}:predict")


def test_a_module_that_raises_on_import_gives_one_line(make_module: Callable[[str], str]) -> None:
    name = make_module("raise RuntimeError('bad config\\nsecond line')\n")
    with pytest.raises(BundleConfigError) as caught:
        import_target(f"{name}:predict")
    assert str(caught.value) == f"cannot import module {name!r}: RuntimeError: bad config"


def test_missing_and_non_callable_attributes(make_module: Callable[[str], str]) -> None:
    name = make_module("VALUE = 3\n")
    with pytest.raises(BundleConfigError, match=f"module '{name}' has no attribute 'predict'"):
        import_target(f"{name}:predict")
    with pytest.raises(BundleConfigError, match="is not callable"):
        import_target(f"{name}:VALUE")


def test_a_generator_entrypoint_is_its_own_stream(make_module: Callable[[str], str]) -> None:
    name = make_module("def predict():\n    yield 1\n\ndef stream():\n    yield 2\n")
    spec = resolve_bundle(f"{name}:predict")
    assert spec.stream is not None and spec.stream.name == f"{name}:predict"


def test_an_async_generator_entrypoint_is_its_own_stream(make_module: Callable[[str], str]) -> None:
    name = make_module("async def generate():\n    yield 1\n")
    spec = resolve_bundle(f"{name}:generate")
    assert spec.stream is not None and spec.stream.name == f"{name}:generate"


def test_a_sibling_named_stream_is_the_stream(make_module: Callable[[str], str]) -> None:
    name = make_module("def predict():\n    return 1\n\ndef stream():\n    yield 2\n")
    spec = resolve_bundle(f"{name}:predict")
    assert spec.stream is not None and spec.stream.name == f"{name}:stream" and spec.load is None


def test_an_explicit_stream_wins_and_none_is_none(make_module: Callable[[str], str]) -> None:
    name = make_module("def predict():\n    return 1\n\ndef stream():\n    yield 2\n\ndef tokens():\n    yield 3\n")
    assert resolve_bundle(f"{name}:predict", stream=f"{name}:tokens").stream.name == f"{name}:tokens"  # type: ignore[union-attr]
    plain = make_module("def predict():\n    return 1\n\nstream = 'not callable'\n")
    assert resolve_bundle(f"{plain}:predict").stream is None


def test_paths_go_first_on_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"bundle_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text("def load():\n    return 1\n\ndef predict(model):\n    return model\n")
    try:
        spec = resolve_bundle(f"{name}:predict", load=f"{name}:load", paths=[tmp_path])
        assert sys.path[0] == str(tmp_path.resolve())
        assert spec.load is not None and spec.load.function() == 1
    finally:
        sys.modules.pop(name, None)


def test_a_path_that_is_not_a_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(BundleConfigError, match="is not a directory"):
        resolve_bundle("json:dumps", paths=[tmp_path / "missing"])
