"""pytest fixtures of the real control plane (tests/support/cluster.py) and node (tests/support/node.py); import
them in a conftest.

`kube_cluster` is session-scoped: the control plane starts once (the binaries are built on first use) and the tests
share it, each in namespaces of its own. It has no node: pods stay Pending (the tests using it expect that).

`kube_node` is session-scoped too, with a control plane of its own so that the node-less expectations above hold:
a real node (containerd, kubelet, kube-proxy, CNI, CoreDNS) where pods run. Its control plane is `kube_node.plane`.
Both stop when the session ends; the node leaves nothing behind (tests/integration/test_node_cleanup.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import node
from tests.support.cluster import ControlPlane, running


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running(tmp_path_factory.mktemp("control-plane")) as plane:
        yield plane


@pytest.fixture(scope="session")
def kube_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[node.Node]:
    with (
        running(tmp_path_factory.mktemp("node-control-plane")) as plane,
        node.running(plane, tmp_path_factory.mktemp("node")) as started,
    ):
        print(f"\nnode {started.name} ready in {started.started_in:.1f}s")
        yield started
