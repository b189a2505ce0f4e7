"""pytest fixture of the real control plane (tests/support/cluster.py); import it in a conftest.

`kube_cluster` is session-scoped: the control plane starts once (the binaries are built on first use) and the tests
share it, each in namespaces of its own. It stops when the session ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import ControlPlane, running


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running(tmp_path_factory.mktemp("control-plane")) as plane:
        yield plane
