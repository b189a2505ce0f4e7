"""The lock in requirements/ agrees with pyproject.toml, both ways, and is a lock a fresh machine can trust.

Why: every environment the project installs (`make run`, `make test`, the bench and mutation extras, the scale-launch
client's environment, the image) is synced to one of these files, so a range in pyproject.toml that the lock no longer
satisfies, a dependency added without `make lock`, or a removed one still pinned would install something nobody tested.
The check is by specifier, not by re-resolving, so it runs offline: every direct requirement of the extras a lock file
is made from is pinned in it at a version inside its range, and every package the lock says comes from pyproject.toml
still does.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"

#: lock file -> the extras of pyproject.toml it is compiled from (the Makefile's `lock` target says the same).
FROM_PYPROJECT = {
    "run.txt": ["examples"],
    "test.txt": ["test"],
    "bench.txt": ["test", "bench"],
    "mutation.txt": ["mutation", "test"],
    "image.txt": ["s3"],
    "examples-image.txt": ["s3", "examples"],
}
#: lock file -> the input file it is compiled from.
FROM_INPUT = {"launch.txt": "launch.in", "uv.txt": "uv.in", "build.txt": "build.in"}

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: int
    via_pyproject: bool


def read_lock(path: Path) -> dict[str, Pin]:
    """name -> Pin, from a `uv pip compile --generate-hashes` file (pin line, hash lines, `# via` comment lines)."""
    pins: dict[str, Pin] = {}
    name = ""
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            name = canonicalize_name(match["name"])
            pins[name] = Pin(Version(match["version"]), 0, False)
        elif name and line.strip().startswith("--hash=sha256:"):
            old = pins[name]
            pins[name] = Pin(old.version, old.hashes + 1, old.via_pyproject)
        elif name and "bundleserve (pyproject.toml)" in line:
            old = pins[name]
            pins[name] = Pin(old.version, old.hashes, True)
    return pins


def direct_requirements(extras: list[str]) -> list[Requirement]:
    """The base dependencies plus the named extras, following the self-references (`bundleserve[examples]`)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional: dict[str, list[str]] = project["optional-dependencies"]
    found = [Requirement(text) for text in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "bundleserve":
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def test_every_lock_file_is_made_and_named_in_the_makefile() -> None:
    makefile = (REPO / "Makefile").read_text()
    for name in [*FROM_PYPROJECT, *FROM_INPUT]:
        assert (LOCKS / name).is_file(), f"requirements/{name} is missing: run `make lock`"
        assert f"requirements/{name}" in makefile, f"the Makefile's lock target does not write requirements/{name}"


@pytest.mark.parametrize("lock_name", sorted(FROM_PYPROJECT))
def test_lock_satisfies_pyproject(lock_name: str) -> None:
    pins = read_lock(LOCKS / lock_name)
    for requirement in direct_requirements(FROM_PYPROJECT[lock_name]):
        if requirement.marker is not None and not requirement.marker.evaluate({"sys_platform": "linux"}):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is in pyproject.toml but not in requirements/{lock_name}: `make lock`"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"requirements/{lock_name} pins {requirement.name}=={pin.version} outside pyproject's {requirement}: `make lock`"
        )


@pytest.mark.parametrize("lock_name", sorted(FROM_PYPROJECT))
def test_lock_holds_nothing_pyproject_dropped(lock_name: str) -> None:
    direct = {canonicalize_name(r.name) for r in direct_requirements(FROM_PYPROJECT[lock_name])}
    stale = sorted(
        name for name, pin in read_lock(LOCKS / lock_name).items() if pin.via_pyproject and name not in direct
    )
    assert not stale, (
        f"requirements/{lock_name} still pins {stale} for pyproject.toml, which no longer asks: `make lock`"
    )


@pytest.mark.parametrize("lock_name", sorted(FROM_INPUT))
def test_lock_satisfies_its_input_file(lock_name: str) -> None:
    pins = read_lock(LOCKS / lock_name)
    for line in (LOCKS / FROM_INPUT[lock_name]).read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None and requirement.specifier.contains(pin.version, prereleases=True), (
            f"requirements/{lock_name} does not satisfy {requirement} of {FROM_INPUT[lock_name]}: `make lock`"
        )


@pytest.mark.parametrize("lock_name", sorted([*FROM_PYPROJECT, *FROM_INPUT]))
def test_lock_pins_every_package_by_hash_and_names_no_package_host(lock_name: str) -> None:
    text = (LOCKS / lock_name).read_text()
    pins = read_lock(LOCKS / lock_name)
    assert pins, f"requirements/{lock_name} pins nothing"
    unhashed = sorted(name for name, pin in pins.items() if pin.hashes == 0)
    assert not unhashed, f"requirements/{lock_name} has packages without a hash: {unhashed}"
    assert not re.search(r"--(extra-)?index-url|--find-links|https?://", text), (
        f"requirements/{lock_name} names a package host; the lock records names, versions and hashes only"
    )
    assert not re.search(r"^\S+ @ ", text, re.MULTILINE), f"requirements/{lock_name} has a direct URL reference"


def test_the_examples_image_lock_keeps_every_version_of_the_bundleserve_image() -> None:
    # examples/Dockerfile installs examples-image.txt on top of the bundleserve image (image.txt): a package pinned
    # differently would be replaced there, giving the examples image a set nobody locked together.
    image, examples = read_lock(LOCKS / "image.txt"), read_lock(LOCKS / "examples-image.txt")
    differ = sorted(name for name, pin in image.items() if examples.get(name, pin).version != pin.version)
    missing = sorted(set(image) - set(examples))
    assert not differ and not missing, f"examples-image.txt differs from image.txt in {differ}, lacks {missing}"


def test_the_build_lock_is_the_build_system_of_pyproject() -> None:
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    listed = [line.split("#", 1)[0].strip() for line in (LOCKS / "build.in").read_text().splitlines()]
    assert sorted(str(Requirement(r)) for r in requires) == sorted(str(Requirement(r)) for r in listed if r)
