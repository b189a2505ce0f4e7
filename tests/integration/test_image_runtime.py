"""The built images run the way the operator's pods run them (runc; tests/support/oci_pod.py says what that covers).

Why: the Deployment builder asks for a non-root user, a read-only root filesystem, no capabilities and no privilege
escalation, with writes only to the volumes it mounts. Whether the images work under exactly that is a property of
the images, so the pod template the builder makes for an example Endpoint is what these tests run (users, security
settings, commands, env and mounts all read from it, nothing restated here), from the archives `make image` built
(tests/support/images.py), with loopback as the only network.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bundleserve import __version__
from bundleserve.api.manifest import parse_endpoint
from bundleserve.controller.builders import BuildContext
from bundleserve.controller.builders.configmap import build_config_map
from bundleserve.controller.builders.deployment import READY_PATH, pod_template
from bundleserve.controller.config import OperatorConfig
from tests.support.images import BUNDLESERVE_IMAGE, EXAMPLES_IMAGE, project_images
from tests.support.oci_pod import (
    PodSandbox,
    Runc,
    UnpackedImage,
    default_spec,
    process_status,
    root_mount_options,
    runtime_spec,
    unpack,
    volume_paths,
)
from tests.support.processes import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(900)  # the first use may build the images (minutes) and unpacks two of them


def iris_pod() -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """The pod template and ConfigMaps of examples/iris as the operator builds them (sync only: no Redis here)."""
    document = yaml.safe_load((REPO / "examples" / "iris" / "endpoint.yaml").read_text())
    document["spec"]["modes"] = ["sync"]
    document["spec"].pop("async", None)
    endpoint = parse_endpoint(document)
    config_map = build_config_map(endpoint)
    template = pod_template(endpoint, BuildContext(config=OperatorConfig()))
    return template, {config_map["metadata"]["name"]: config_map["data"]}


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, UnpackedImage]]:
    archives = project_images().archives()
    work = tmp_path_factory.mktemp("images")
    try:
        yield {name: unpack(archive, work / name.rsplit("/", 1)[1].split(":")[0]) for name, archive in archives.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)  # two root filesystems, hundreds of MB


@pytest.fixture
def runc(tmp_path: Path) -> Iterator[Runc]:
    runtime = Runc(tmp_path / "runc-state")
    yield runtime
    for name in runtime.list():  # a failed test still leaves no container behind
        runtime.delete(name)


@pytest.fixture
def sandbox() -> Iterator[PodSandbox]:
    pod = PodSandbox()
    yield pod
    pod.close()


def test_the_bundleserve_cli_answers_help_and_version_under_the_pod_security_context(
    unpacked: dict[str, UnpackedImage], runc: Runc, sandbox: PodSandbox, tmp_path: Path
) -> None:
    template, config_maps = iris_pod()
    router = next(c for c in template["spec"]["containers"] if c["name"] == "router")
    assert router["image"] == BUNDLESERVE_IMAGE
    volumes = volume_paths(template["spec"]["volumes"], config_maps, tmp_path)
    outputs = {}
    for flag in ("--version", "--help"):
        container = {**router, "command": ["bundleserve", flag]}
        spec = runtime_spec(
            default_spec(),
            container=container,
            pod_security=template["spec"]["securityContext"],
            image=unpacked[BUNDLESERVE_IMAGE],
            volume_paths=volumes,
            netns=sandbox.netns,
            hostname="cli",
        )
        runc.write_bundle(tmp_path / flag.strip("-"), spec)
        done = runc.run(f"cli-{flag.strip('-')}", tmp_path / flag.strip("-"))
        assert done.returncode == 0, done.stdout + done.stderr
        outputs[flag] = done.stdout
    assert outputs["--version"].strip() == f"bundleserve {__version__}"
    for command in ("run", "operator", "router", "gateway", "bundle"):
        assert command in outputs["--help"]
    assert runc.list() == []


def test_the_router_and_the_iris_bundle_answer_a_prediction_as_the_pod_spec_runs_them(
    unpacked: dict[str, UnpackedImage], runc: Runc, sandbox: PodSandbox, tmp_path: Path
) -> None:
    template, config_maps = iris_pod()
    pod_security = template["spec"]["securityContext"]
    volumes = volume_paths(template["spec"]["volumes"], config_maps, tmp_path)
    containers = {c["name"]: c for c in template["spec"]["containers"]}
    assert containers["model"]["image"] == EXAMPLES_IMAGE and containers["router"]["image"] == BUNDLESERVE_IMAGE
    pids: dict[str, int] = {}
    started = time.monotonic()
    for name, container in containers.items():
        spec = runtime_spec(
            default_spec(),
            container=container,
            pod_security=pod_security,
            image=unpacked[container["image"]],
            volume_paths=volumes,
            netns=sandbox.netns,
            hostname="iris",
        )
        runc.write_bundle(tmp_path / name, spec)
        pids[name] = runc.start(f"iris-{name}", tmp_path / name, tmp_path / f"{name}.log")
    port = containers["router"]["ports"][0]["containerPort"]
    base = f"http://127.0.0.1:{port}"

    def logs() -> str:
        return "\n".join(f"--- {name}\n{(tmp_path / f'{name}.log').read_text(errors='replace')}" for name in containers)

    try:
        wait_until(
            lambda: sandbox.http("GET", base + READY_PATH)[0] == 200, timeout=300, interval=0.2, what="router /readyz"
        )
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{logs()}") from error
    ready_after = time.monotonic() - started
    body = {"args": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}
    status, answer = sandbox.http("POST", f"{base}/v1/endpoints/iris/predict", json.dumps(body).encode())
    assert status == 200, answer.decode(errors="replace") + logs()
    result = json.loads(answer)
    assert result["status"] == "SUCCESS", result
    assert result["result"]["class"] == "setosa", result  # a real scikit-learn model, trained at load time in the image
    print(f"start-to-ready (router /readyz, both containers started by runc): {ready_after:.1f} s")

    # What the kernel says the processes run with, for each container: the pod's user, no capabilities, no new
    # privileges, a read-only root filesystem.
    uid = str(pod_security["runAsUser"])
    for name, pid in pids.items():
        status_fields = process_status(pid)
        assert status_fields["Uid"].split() == [uid] * 4, (name, status_fields["Uid"])
        assert int(status_fields["CapEff"], 16) == 0 and int(status_fields["CapBnd"], 16) == 0, name
        assert status_fields["NoNewPrivs"] == "1", name
        assert "ro" in root_mount_options(pid), name
    for name in containers:
        runc.delete(f"iris-{name}")
    assert runc.list() == []
