"""The built image imports into a real containerd image store under the name the chart uses (what a node runs).

Why: a node of this machine cannot pull, so `import_into_containerd()` is how the project's images reach a kubelet;
the archive must carry a name containerd keeps (an OCI archive's ref name alone is easy to get wrong) and layers its
snapshotter unpacks. containerd runs here with a configuration of its own: its root, state and socket in the test's
directory, the CRI plugin off (no kubelet talks to it).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import BUNDLESERVE_IMAGE, ImageImportError, import_into_containerd, project_images
from tests.support.processes import Server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(900)  # the first use may build the images (minutes)


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[str]:
    socket = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{tmp_path / "root"}"\n'
        f'state = "{tmp_path / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{tmp_path / "opt"}"\n'
    )
    server = Server(["containerd", "--config", str(config)], log_path=tmp_path / "containerd.log")
    try:
        wait_until(
            lambda: subprocess.run(["ctr", "--address", str(socket), "version"], capture_output=True).returncode == 0,
            timeout=60,
            what="containerd to answer",
        )
        yield str(socket)
    finally:
        server.stop()


def test_the_bundleserve_image_imports_under_its_name_and_unpacks(containerd: str) -> None:
    archive = project_images().bundleserve
    assert import_into_containerd(archive, containerd, namespace="k8s.io") == BUNDLESERVE_IMAGE
    check = subprocess.run(
        ["ctr", "--address", containerd, "-n", "k8s.io", "images", "check", f"name=={BUNDLESERVE_IMAGE}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "complete" in check.stdout, check.stdout  # every blob of the manifest is in the content store
    unpacked = subprocess.run(
        ["ctr", "--address", containerd, "-n", "k8s.io", "snapshots", "ls"], capture_output=True, text=True, check=True
    )
    assert len(unpacked.stdout.splitlines()) > 1, unpacked.stdout  # the layers are unpacked for the overlay snapshotter


def test_an_archive_that_is_not_an_image_is_refused_with_its_reason(containerd: str, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    subprocess.run(["tar", "-cf", str(bogus), "-C", str(tmp_path), "config.toml"], check=True)
    with pytest.raises(ImageImportError, match=r"no index\.json"):
        import_into_containerd(bogus, containerd)
